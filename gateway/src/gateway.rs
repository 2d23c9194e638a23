//! The gateway state machine: classifies frames, answers ARP and ping itself, and hands
//! DHCP and DNS to their crates.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use dhcp::{DhcpServer, LeaseEvent, LeaseSnapshot, ReplyTarget, RestoreReport};
use dns::{ClientId, DnsProxy, Transport, UpstreamId, UpstreamQuery, UpstreamResult};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
};

use crate::config::GatewayConfig;
use crate::emit::{self, OutPacket};
use crate::nat::{Nat, NatConfig};
use crate::neighbors::NeighborCache;

/// Lease events kept for [`Gateway::poll_lease_event`]; the oldest are dropped beyond.
pub const MAX_PENDING_LEASE_EVENTS: usize = dhcp::MAX_PENDING_EVENTS;

const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
const DNS_PORT: u16 = 53;

/// Counters (monotonic) and two gauges. Every frame given to [`Gateway::handle_frame`]
/// ends up in exactly one of `arp_replies`, `icmp_echo_replies`, `dhcp_messages`,
/// `dns_queries`, `dns_tcp_reset`, `not_routed`, `fragments`, `malformed` or `ignored`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// ARP requests for the gateway or DNS address answered.
    pub arp_replies: u64,
    /// ICMP echo requests to the gateway or DNS address answered.
    pub icmp_echo_replies: u64,
    /// UDP payloads handed to the DHCP server (its own stats say what became of them).
    pub dhcp_messages: u64,
    /// UDP payloads handed to the DNS proxy.
    pub dns_queries: u64,
    /// IPv4 to any other destination, dropped until NAT routes it.
    pub not_routed: u64,
    /// Bad Ethernet/ARP/IPv4/UDP/TCP/ICMP header or checksum, truncated, or a martian
    /// (broadcast, multicast, or one of our own) source address.
    pub malformed: u64,
    /// Not for us: other MACs, multicast, other ethertypes, ARP for other hosts or ARP
    /// replies, other protocols and ports on our addresses, broadcasts that are not DHCP.
    pub ignored: u64,
    /// TCP segments to DNS port 53 answered with RST (no DNS over TCP yet).
    pub dns_tcp_reset: u64,
    /// IPv4 fragments to our addresses (nothing we serve needs reassembly).
    pub fragments: u64,
    /// Frames not queued because the output queue was full.
    pub queue_drops: u64,
    /// Late DNS answers whose client address is not in the neighbour cache.
    pub no_neighbor: u64,
    /// Answers not sent because they would exceed the MTU (e.g. a DNS `max_udp_payload`
    /// above MTU - 28, or an oversized ping).
    pub oversized: u64,
    /// Lease events dropped because [`Gateway::poll_lease_event`] was not drained.
    pub lease_events_dropped: u64,
    /// Gauge: neighbour cache entries.
    pub neighbors: usize,
    /// Gauge: frames waiting in [`Gateway::poll_frame`].
    pub queued_frames: usize,
    /// IPv4 handed to the NAT (outside addresses, DNS over TCP, host loopback).
    pub nat_packets: u64,
}

/// The router port of one LAN. See the crate documentation for the driving loop.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    dhcp: DhcpServer,
    dns: DnsProxy,
    neighbors: NeighborCache,
    /// Host name published to DNS per leased address, so a lease that loses its name (a
    /// `Bound` event without one) can be withdrawn. Bounded by the DHCP lease table.
    published: HashMap<Ipv4Addr, String>,
    frames: VecDeque<Vec<u8>>,
    lease_events: VecDeque<LeaseEvent>,
    stats: GatewayStats,
    /// Routes traffic to outside addresses once enabled; without it, that is `not_routed`.
    nat: Option<Box<Nat>>,
}

/// Where an IPv4 packet that reached the gateway port is headed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    /// The gateway or DNS address.
    Local,
    /// 255.255.255.255 or the subnet broadcast.
    Broadcast,
    Multicast,
    /// Anything else: the NAT's business.
    Elsewhere,
}

impl Gateway {
    /// A gateway for one LAN. Call [`GatewayConfig::validate`] first: `new` never fails,
    /// and an invalid config gives a gateway that answers nothing useful.
    ///
    /// `dhcp` should hand out `config.gateway_ip` as router and `config.dns_ip` as DNS
    /// server, and `dns.max_udp_payload` should be at most `mtu - 28`.
    pub fn new(config: GatewayConfig, dhcp: DhcpServer, dns: DnsProxy) -> Self {
        let mut gateway = Self {
            neighbors: NeighborCache::new(config.max_neighbors),
            config,
            dhcp,
            dns,
            published: HashMap::new(),
            frames: VecDeque::new(),
            lease_events: VecDeque::new(),
            stats: GatewayStats::default(),
            nat: None,
        };
        // The server may come with leases already (restored before it was handed over).
        gateway.republish_leases();
        gateway.sync_leases();
        gateway
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Routes packets to outside addresses through NAT (see [`crate::nat`]), and serves
    /// DNS over TCP. Without it they are dropped and counted in `not_routed`.
    pub fn enable_nat(&mut self, config: NatConfig, now: Instant) {
        self.nat = Some(Box::new(Nat::new(config, &self.config, now)));
    }

    pub fn nat(&self) -> Option<&Nat> {
        self.nat.as_deref()
    }

    /// For the driver's host-socket results; the frames they cause come out of
    /// [`Self::poll_frame`].
    pub fn nat_mut(&mut self) -> Option<&mut Nat> {
        self.nat.as_deref_mut()
    }

    /// Every frame the LAN's switch delivers to the gateway port: broadcasts (ARP, DHCP
    /// discover) and unicast to the gateway MAC. Frames for other MACs are ignored.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        self.sync_leases();
        self.dispatch_frame(now, frame);
        self.drain_dns_tcp_queries(now);
        self.drain_dns_answers(now);
        self.sync_leases();
        self.stats.neighbors = self.neighbors.len();
    }

    /// The next frame to put on the LAN (source MAC = `gateway_mac`).
    pub fn poll_frame(&mut self) -> Option<Vec<u8>> {
        if let Some(frame) = self.frames.pop_front() {
            self.stats.queued_frames = self.frames.len();
            return Some(frame);
        }
        // NAT packets are framed only now: no second queue to bound.
        loop {
            let packet = self.nat.as_mut()?.poll_packet()?;
            if let Some(frame) = self.frame_nat_packet(packet) {
                return Some(frame);
            }
        }
    }

    /// The next lookup for the driver to resolve upstream (see [`DnsProxy::poll_upstream`]).
    pub fn poll_dns_upstream(&mut self) -> Option<UpstreamQuery> {
        self.dns.poll_upstream()
    }

    /// The upstream result for lookup `id`; the answers it unblocks are queued as frames.
    pub fn handle_dns_upstream(&mut self, now: Instant, id: UpstreamId, result: UpstreamResult) {
        self.dns.handle_upstream(now, id, result);
        self.drain_dns_answers(now);
    }

    /// When [`Self::handle_timeout`] next has work: the earliest of the DHCP, DNS and NAT
    /// timers.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let nat = self.nat.as_mut().and_then(|nat| nat.poll_timeout());
        [self.dhcp.poll_timeout(), self.dns.poll_timeout(), nat]
            .into_iter()
            .flatten()
            .min()
    }

    /// Expires leases and offers, fails overdue DNS lookups (their SERVFAIL answers are
    /// queued as frames) and purges the DNS cache.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.dhcp.handle_timeout(now);
        self.dns.handle_timeout(now);
        if let Some(nat) = self.nat.as_mut() {
            nat.handle_timeout(now);
        }
        self.drain_dns_tcp_queries(now);
        self.drain_dns_answers(now);
        self.sync_leases();
    }

    /// The next DHCP lease event, after the gateway applied it to DNS names and the
    /// neighbour cache, so the driver can log, count and persist.
    pub fn poll_lease_event(&mut self) -> Option<LeaseEvent> {
        self.sync_leases();
        self.lease_events.pop_front()
    }

    /// Restores a lease snapshot into the DHCP server and publishes the restored host
    /// names in DNS. (A restore through [`Self::dhcp_mut`] is picked up by the next
    /// `handle_*` or `poll_lease_event` call, through the DHCP events.)
    pub fn restore_leases(
        &mut self,
        snapshot: &LeaseSnapshot,
        now: Instant,
        unix_now_secs: u64,
    ) -> RestoreReport {
        let report = self.dhcp.restore(snapshot, now, unix_now_secs);
        self.sync_leases();
        // The DHCP event queue is bounded, so a large restore may have lost events.
        self.republish_leases();
        report
    }

    pub fn dhcp(&self) -> &DhcpServer {
        &self.dhcp
    }

    /// For snapshots, static changes and restores; lease events it causes are applied on
    /// the next gateway call.
    pub fn dhcp_mut(&mut self) -> &mut DhcpServer {
        &mut self.dhcp
    }

    pub fn dns(&self) -> &DnsProxy {
        &self.dns
    }

    pub fn stats(&self) -> &GatewayStats {
        &self.stats
    }

    /// The MAC last seen using `ip` on the LAN, if it is still cached.
    pub fn neighbor(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.neighbors.lookup(ip)
    }

    // ---- receive path ----

    fn dispatch_frame(&mut self, now: Instant, frame: &[u8]) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.stats.malformed += 1;
            return;
        };
        let Ok(eth_repr) = EthernetRepr::parse(&eth) else {
            self.stats.malformed += 1;
            return;
        };
        if eth_repr.dst_addr != self.config.gateway_mac && !eth_repr.dst_addr.is_broadcast() {
            // Multicast (ne2k guests cannot receive it anyway) and other hosts' unicast.
            self.stats.ignored += 1;
            return;
        }
        if eth_repr.src_addr == self.config.gateway_mac {
            // Our own broadcast coming back through the switch.
            self.stats.ignored += 1;
            return;
        }
        if !is_host_mac(eth_repr.src_addr) {
            self.stats.malformed += 1;
            return;
        }
        match eth_repr.ethertype {
            EthernetProtocol::Arp => self.handle_arp(eth.payload()),
            EthernetProtocol::Ipv4 => self.handle_ipv4(now, eth_repr.src_addr, eth.payload()),
            _ => self.stats.ignored += 1,
        }
    }

    fn handle_arp(&mut self, payload: &[u8]) {
        let Ok(packet) = ArpPacket::new_checked(payload) else {
            self.stats.malformed += 1;
            return;
        };
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            self.stats.malformed += 1;
            return;
        };
        if !is_host_mac(source_hardware_addr) || self.is_martian_source(source_protocol_addr) {
            self.stats.malformed += 1;
            return;
        }
        self.learn(source_protocol_addr, source_hardware_addr);
        // Requests for other addresses are other VMs' business (the switch floods them);
        // replies and gratuitous ARP only teach us neighbours.
        if operation != ArpOperation::Request || !self.is_local(target_protocol_addr) {
            self.stats.ignored += 1;
            return;
        }
        // Probes (sender 0.0.0.0, RFC 5227) are answered too: that defends our addresses.
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.config.gateway_mac,
            source_protocol_addr: target_protocol_addr,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let frame = emit::frame(
            self.config.gateway_mac,
            source_hardware_addr,
            EthernetProtocol::Arp,
            reply.buffer_len(),
            |buffer| reply.emit(&mut ArpPacket::new_unchecked(buffer)),
        );
        self.stats.arp_replies += 1;
        self.push_frame(frame);
    }

    fn handle_ipv4(&mut self, now: Instant, frame_src: EthernetAddress, payload: &[u8]) {
        // `new_checked` bounds everything by the IP total length, not the frame length:
        // ne2k pads short frames to 60 bytes.
        let Ok(packet) = Ipv4Packet::new_checked(payload) else {
            self.stats.malformed += 1;
            return;
        };
        if packet.version() != 4 || !packet.verify_checksum() {
            self.stats.malformed += 1;
            return;
        }
        let src = packet.src_addr();
        if self.is_martian_source(src) {
            self.stats.malformed += 1;
            return;
        }
        self.learn(src, frame_src);
        let destination = self.destination(packet.dst_addr());
        match destination {
            Destination::Elsewhere if self.nat.is_some() => {
                self.route_out(now, &packet);
                return;
            }
            Destination::Elsewhere => {
                self.stats.not_routed += 1;
                return;
            }
            Destination::Multicast => {
                self.stats.ignored += 1;
                return;
            }
            Destination::Local | Destination::Broadcast => {}
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            self.stats.fragments += 1;
            return;
        }
        let Ok(ip) = Ipv4Repr::parse(&packet, &ChecksumCapabilities::default()) else {
            self.stats.malformed += 1;
            return;
        };
        let data = packet.payload();
        match ip.next_header {
            IpProtocol::Icmp if destination == Destination::Local => {
                self.handle_icmp(frame_src, &ip, data);
            }
            IpProtocol::Udp => self.handle_udp(now, frame_src, &ip, data),
            IpProtocol::Tcp if destination == Destination::Local && self.nat.is_some() => {
                self.route_local_tcp(now, &ip, &packet);
            }
            IpProtocol::Tcp if destination == Destination::Local => {
                self.handle_tcp(frame_src, &ip, data);
            }
            // Broadcast pings and everything else.
            _ => self.stats.ignored += 1,
        }
    }

    fn handle_icmp(&mut self, frame_src: EthernetAddress, ip: &Ipv4Repr, data: &[u8]) {
        let Ok(packet) = Icmpv4Packet::new_checked(data) else {
            self.stats.malformed += 1;
            return;
        };
        if packet.msg_type() != Icmpv4Message::EchoRequest {
            self.stats.ignored += 1;
            return;
        }
        let Ok(Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }) = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
        else {
            self.stats.malformed += 1;
            return;
        };
        if ip.src_addr.is_unspecified() {
            self.stats.ignored += 1;
            return;
        }
        let reply = Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        };
        self.stats.icmp_echo_replies += 1;
        self.emit_ipv4(frame_src, &OutPacket::icmp(ip.dst_addr, ip.src_addr, reply));
    }

    fn handle_udp(&mut self, now: Instant, frame_src: EthernetAddress, ip: &Ipv4Repr, data: &[u8]) {
        let Ok(packet) = UdpPacket::new_checked(data) else {
            self.stats.malformed += 1;
            return;
        };
        let Ok(udp) = UdpRepr::parse(
            &packet,
            &IpAddress::Ipv4(ip.src_addr),
            &IpAddress::Ipv4(ip.dst_addr),
            &ChecksumCapabilities::default(),
        ) else {
            self.stats.malformed += 1;
            return;
        };
        let payload = packet.payload();
        match udp.dst_port {
            // Broadcast (DISCOVER, REQUEST) or unicast to the server (renewals).
            DHCP_SERVER_PORT if ip.dst_addr != self.config.dns_ip => {
                self.handle_dhcp(now, frame_src, payload);
            }
            DNS_PORT if ip.dst_addr == self.config.dns_ip => {
                self.handle_dns_udp(now, frame_src, ip.src_addr, udp.src_port, payload);
            }
            _ if ip.dst_addr == self.config.gateway_ip
                && self
                    .nat
                    .as_mut()
                    .is_some_and(|nat| nat.handle_udp_to_gateway(now, ip, &udp, data)) =>
            {
                self.stats.nat_packets += 1;
            }
            _ => self.stats.ignored += 1,
        }
    }

    fn handle_dhcp(&mut self, now: Instant, frame_src: EthernetAddress, payload: &[u8]) {
        self.stats.dhcp_messages += 1;
        // Errors are counted by the server (`DhcpStats::malformed`); nothing to send.
        let Ok(Some(reply)) = self.dhcp.handle_message(now, frame_src, payload) else {
            return;
        };
        let (mac, ip) = match reply.to {
            ReplyTarget::Broadcast => (EthernetAddress::BROADCAST, Ipv4Addr::BROADCAST),
            ReplyTarget::Unicast { mac, ip } => (mac, ip),
        };
        let from = SocketAddrV4::new(self.dhcp.server_id(), DHCP_SERVER_PORT);
        let to = SocketAddrV4::new(ip, DHCP_CLIENT_PORT);
        self.emit_ipv4(mac, &OutPacket::udp(from, to, &reply.payload));
    }

    fn handle_dns_udp(
        &mut self,
        now: Instant,
        frame_src: EthernetAddress,
        src: Ipv4Addr,
        src_port: u16,
        payload: &[u8],
    ) {
        if src.is_unspecified() || src_port == 0 {
            // No address to answer to.
            self.stats.ignored += 1;
            return;
        }
        self.stats.dns_queries += 1;
        let client = SocketAddrV4::new(src, src_port);
        // Errors are counted by the proxy; nothing to send.
        if let Ok(Some(answer)) = self.dns.handle_query(now, ClientId::udp(client), payload) {
            let from = SocketAddrV4::new(self.config.dns_ip, DNS_PORT);
            self.emit_ipv4(frame_src, &OutPacket::udp(from, client, &answer));
        }
    }

    /// DNS over TCP needs TCP termination, which comes with NAT: until then every segment
    /// to DNS:53 gets a RST (RFC 9293 3.10.7.1, closed port) so resolvers give up at once.
    fn handle_tcp(&mut self, frame_src: EthernetAddress, ip: &Ipv4Repr, data: &[u8]) {
        let src = IpAddress::Ipv4(ip.src_addr);
        let dst = IpAddress::Ipv4(ip.dst_addr);
        let caps = ChecksumCapabilities::default();
        let Ok(packet) = TcpPacket::new_checked(data) else {
            self.stats.malformed += 1;
            return;
        };
        let Ok(segment) = TcpRepr::parse(&packet, &src, &dst, &caps) else {
            self.stats.malformed += 1;
            return;
        };
        if ip.dst_addr != self.config.dns_ip
            || segment.dst_port != DNS_PORT
            || segment.control == TcpControl::Rst
            || ip.src_addr.is_unspecified()
        {
            // Never answer a RST; other ports wait for NAT (host alias, forwards).
            self.stats.ignored += 1;
            return;
        }
        self.stats.dns_tcp_reset += 1;
        self.emit_ipv4(frame_src, &OutPacket::reset(ip, &segment));
    }

    /// TCP to our own addresses with NAT on: DNS over TCP, host loopback, or a RST (smoltcp
    /// answers segments no socket takes).
    fn route_local_tcp(&mut self, now: Instant, ip: &Ipv4Repr, packet: &Ipv4Packet<&[u8]>) {
        let Some(nat) = self.nat.as_mut() else {
            return;
        };
        let bytes = &packet.as_ref()[..usize::from(packet.total_len())];
        if nat.handle_tcp(now, ip, bytes, packet.payload()) {
            self.stats.nat_packets += 1;
        } else {
            self.stats.malformed += 1;
        }
    }

    /// A packet to an outside address: NAT, if the source is one of the LAN's hosts.
    fn route_out(&mut self, now: Instant, packet: &Ipv4Packet<&[u8]>) {
        let src = packet.src_addr();
        if !self.config.is_host_address(src) {
            // Only LAN hosts get NAT: this also bounds the NAT's per-VM state.
            self.stats.ignored += 1;
            return;
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            self.stats.fragments += 1;
            return;
        }
        let caps = ChecksumCapabilities::default();
        let Ok(ip) = Ipv4Repr::parse(packet, &caps) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(nat) = self.nat.as_mut() else {
            return;
        };
        let data = packet.payload();
        let handled = match ip.next_header {
            IpProtocol::Tcp => {
                let bytes = &packet.as_ref()[..usize::from(packet.total_len())];
                nat.handle_tcp(now, &ip, bytes, data)
            }
            IpProtocol::Udp => match UdpPacket::new_checked(data).and_then(|udp| {
                UdpRepr::parse(
                    &udp,
                    &IpAddress::Ipv4(ip.src_addr),
                    &IpAddress::Ipv4(ip.dst_addr),
                    &caps,
                )
            }) {
                Ok(udp) => {
                    nat.handle_udp(now, &ip, &udp, data);
                    true
                }
                Err(_) => false,
            },
            IpProtocol::Icmp => match Icmpv4Packet::new_checked(data)
                .and_then(|icmp| Icmpv4Repr::parse(&icmp, &caps))
            {
                Ok(Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                }) => {
                    nat.handle_ping(now, &ip, ident, seq_no, data);
                    true
                }
                Ok(_) => {
                    self.stats.ignored += 1;
                    return;
                }
                Err(_) => false,
            },
            _ => {
                self.stats.ignored += 1;
                return;
            }
        };
        if handled {
            self.stats.nat_packets += 1;
        } else {
            self.stats.malformed += 1;
        }
    }

    /// Wraps a NAT packet (with headroom) in Ethernet to the VM that owns its destination.
    fn frame_nat_packet(&mut self, packet: Vec<u8>) -> Option<Vec<u8>> {
        let headroom = emit::HEADROOM;
        let dst = Ipv4Packet::new_checked(&packet[headroom..])
            .ok()?
            .dst_addr();
        let Some(mac) = self.neighbors.lookup(dst) else {
            self.stats.no_neighbor += 1;
            return None;
        };
        if packet.len() - headroom > usize::from(self.config.mtu) {
            self.stats.oversized += 1;
            return None;
        }
        Some(emit::frame_packet(packet, self.config.gateway_mac, mac))
    }

    /// DNS queries that came over TCP go to the proxy; answers go back on their connection.
    fn drain_dns_tcp_queries(&mut self, now: Instant) {
        let Some(nat) = self.nat.as_mut() else {
            return;
        };
        while let Some((client, query)) = nat.poll_dns_query() {
            self.stats.dns_queries += 1;
            if let Ok(Some(answer)) = self.dns.handle_query(now, client, &query)
                && let Transport::Tcp { conn } = client.transport
            {
                nat.dns_tcp_answer(now, conn, &answer);
            }
        }
    }

    // ---- transmit path ----

    /// Answers the DNS proxy produced later (upstream results, timeouts).
    fn drain_dns_answers(&mut self, now: Instant) {
        while let Some((client, answer)) = self.dns.poll_answer() {
            match client.transport {
                Transport::Udp => match self.neighbors.lookup(*client.addr.ip()) {
                    Some(mac) => {
                        let from = SocketAddrV4::new(self.config.dns_ip, DNS_PORT);
                        self.emit_ipv4(mac, &OutPacket::udp(from, client.addr, &answer));
                    }
                    None => self.stats.no_neighbor += 1,
                },
                Transport::Tcp { conn } => match self.nat.as_mut() {
                    Some(nat) => nat.dns_tcp_answer(now, conn, &answer),
                    None => self.stats.no_neighbor += 1,
                },
            }
        }
    }

    /// Queues `packet` in a frame to `dst_mac`, unless it exceeds the MTU or the queue is
    /// full (both counted).
    fn emit_ipv4(&mut self, dst_mac: EthernetAddress, packet: &OutPacket) {
        if packet.len() > usize::from(self.config.mtu) {
            self.stats.oversized += 1;
            return;
        }
        if self.frames.len() >= self.config.max_queued_frames {
            self.stats.queue_drops += 1;
            return;
        }
        self.push_frame(packet.frame_bytes(self.config.gateway_mac, dst_mac));
    }

    fn push_frame(&mut self, frame: Vec<u8>) {
        // Tail drop, like a NIC ring: what is queued already is older and as important.
        if self.frames.len() >= self.config.max_queued_frames {
            self.stats.queue_drops += 1;
            return;
        }
        self.frames.push_back(frame);
        self.stats.queued_frames = self.frames.len();
    }

    // ---- leases, names, neighbours ----

    /// Applies pending DHCP lease events to DNS names and neighbours, then keeps them for
    /// [`Self::poll_lease_event`].
    fn sync_leases(&mut self) {
        while let Some(event) = self.dhcp.poll_event() {
            self.apply_lease_event(&event);
            if self.lease_events.len() >= MAX_PENDING_LEASE_EVENTS {
                self.lease_events.pop_front();
                self.stats.lease_events_dropped += 1;
            }
            self.lease_events.push_back(event);
        }
        self.stats.neighbors = self.neighbors.len();
    }

    fn apply_lease_event(&mut self, event: &LeaseEvent) {
        match event {
            LeaseEvent::Bound { mac, ip, host_name } => {
                self.learn(*ip, *mac);
                match host_name {
                    Some(host) => self.publish(*ip, host),
                    None => self.unpublish(*ip, None),
                }
            }
            LeaseEvent::Released { ip, host_name, .. }
            | LeaseEvent::Expired { ip, host_name, .. } => {
                self.unpublish(*ip, host_name.as_deref());
            }
            LeaseEvent::Declined { ip, .. } => self.unpublish(*ip, None),
            LeaseEvent::PoolExhausted { .. } => {}
        }
    }

    /// Publishes every named lease the server holds (after a restore, or at start).
    fn republish_leases(&mut self) {
        let named: Vec<(Ipv4Addr, EthernetAddress, String)> = self
            .dhcp
            .leases()
            .filter_map(|lease| Some((lease.ip, lease.mac, lease.host_name.clone()?)))
            .collect();
        for (ip, mac, host) in named {
            self.learn(ip, mac);
            self.publish(ip, &host);
        }
    }

    fn publish(&mut self, ip: Ipv4Addr, host: &str) {
        if let Some(old) = self.published.get(&ip)
            && !old.eq_ignore_ascii_case(host)
        {
            self.dns.remove_local_host(old, ip);
        }
        self.dns.set_local_host(host, ip);
        self.published.insert(ip, host.to_owned());
    }

    fn unpublish(&mut self, ip: Ipv4Addr, host: Option<&str>) {
        if let Some(old) = self.published.remove(&ip) {
            self.dns.remove_local_host(&old, ip);
        }
        if let Some(host) = host {
            self.dns.remove_local_host(host, ip);
        }
    }

    /// Neighbours are LAN hosts only: that keeps spoofed sources from filling the cache
    /// with addresses we could never answer anyway.
    fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress) {
        if self.config.is_host_address(ip) && !self.is_local(ip) && is_host_mac(mac) {
            self.neighbors.learn(ip, mac);
        }
    }

    fn is_local(&self, ip: Ipv4Addr) -> bool {
        ip == self.config.gateway_ip || ip == self.config.dns_ip
    }

    /// Sources no VM may use. 0.0.0.0 is fine (DHCP clients, ARP probes).
    fn is_martian_source(&self, ip: Ipv4Addr) -> bool {
        ip.is_broadcast()
            || ip.is_multicast()
            || self.is_local(ip)
            || Some(ip) == self.config.broadcast()
    }

    fn destination(&self, ip: Ipv4Addr) -> Destination {
        if self.is_local(ip) {
            Destination::Local
        } else if ip.is_broadcast() || Some(ip) == self.config.broadcast() {
            Destination::Broadcast
        } else if ip.is_multicast() {
            Destination::Multicast
        } else {
            Destination::Elsewhere
        }
    }
}

/// A unicast MAC a host could own (not multicast, broadcast or all-zero).
fn is_host_mac(mac: EthernetAddress) -> bool {
    mac.is_unicast() && mac != EthernetAddress([0; 6])
}
