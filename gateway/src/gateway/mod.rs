//! The gateway state machine: classifies frames, answers ARP and ping itself, and hands
//! DHCP and DNS to their crates.
//!
//! One `impl Gateway` block per file: this file (stats, the struct, the public API and
//! the output queue), `receive` (classifying and answering frames), `nat_route` (traffic
//! to and from the NAT) and `leases` (lease events, DNS names, neighbours).

mod leases;
mod nat_route;
mod receive;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use dhcp::{DhcpServer, LeaseEvent, LeaseSnapshot, RestoreReport};
use dns::{DnsProxy, Transport, UpstreamId, UpstreamQuery, UpstreamResult};
use smoltcp::wire::{ArpOperation, ArpRepr, EthernetAddress};

use crate::config::GatewayConfig;
use crate::emit::OutPacket;
use crate::nat::{Nat, NatConfig};
use crate::neighbors::NeighborCache;
use crate::wire::frag::{FragDropCounts, FragLimits, Reassembler};

/// Lease events kept for [`Gateway::poll_lease_event`]; the oldest are dropped beyond.
pub const MAX_PENDING_LEASE_EVENTS: usize = dhcp::MAX_PENDING_EVENTS;

const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
const DNS_PORT: u16 = 53;

/// Counters (monotonic) and gauges. Every frame given to [`Gateway::handle_frame`] ends up
/// in exactly one of `arp_replies`, `icmp_echo_replies`, `dhcp_messages`, `dns_queries`,
/// `dns_tcp_reset`, `not_routed`, `fragments`, `frag_needed`, `malformed` or `ignored`; a
/// datagram reassembled from fragments is then counted once more, like a frame.
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
    /// IPv4 fragments from the LAN (see `fragments_reassembled` and `fragment_drops`;
    /// fragments to broadcast addresses are dropped).
    pub fragments: u64,
    /// Datagrams reassembled from VMs' fragments (to us or through the NAT).
    pub fragments_reassembled: u64,
    /// Datagrams under reassembly discarded (or lone fragments refused), by reason.
    pub fragment_drops: FragDropCounts,
    /// Gauge: bytes held by datagrams under reassembly.
    pub fragment_bytes: usize,
    /// ICMP "fragmentation needed" sent for DF packets over the LAN's MTU.
    pub frag_needed: u64,
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
    /// Fragments from the LAN's hosts, until their datagrams are whole.
    frags: Reassembler,
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
            frags: Reassembler::new(FragLimits::default()),
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

    /// When [`Self::handle_timeout`] next has work: the earliest of the DHCP, DNS, NAT and
    /// fragment reassembly timers.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let nat = self.nat.as_mut().and_then(|nat| nat.poll_timeout());
        let frags = self.frags.poll_timeout();
        [
            self.dhcp.poll_timeout(),
            self.dns.poll_timeout(),
            nat,
            frags,
        ]
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
        self.frags.handle_timeout(now);
        self.sync_frag_stats();
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

    /// Broadcast ARP requests from the gateway for the `max` addresses it saw in use most
    /// recently. A machine whose transport came back on a socket that has not said which
    /// LAN it is on yet answers the one for its address, and its answer places it; being
    /// broadcast, a probe names no machine's MAC to whoever else receives it.
    pub fn neighbor_probes(&self, max: usize) -> Vec<Vec<u8>> {
        self.neighbors
            .recent()
            .take(max)
            .map(|ip| {
                let request = ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    source_hardware_addr: self.config.gateway_mac,
                    source_protocol_addr: self.config.gateway_ip,
                    target_hardware_addr: EthernetAddress([0; 6]),
                    target_protocol_addr: ip,
                };
                crate::emit::arp_frame(
                    self.config.gateway_mac,
                    EthernetAddress::BROADCAST,
                    &request,
                )
            })
            .collect()
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

    fn sync_frag_stats(&mut self) {
        let frags = self.frags.stats();
        self.stats.fragments_reassembled = frags.reassembled;
        self.stats.fragment_drops = frags.drops.clone();
        self.stats.fragment_bytes = self.frags.pending_bytes();
    }

    fn is_local(&self, ip: Ipv4Addr) -> bool {
        ip == self.config.gateway_ip || ip == self.config.dns_ip
    }
}

/// A unicast MAC a host could own (not multicast, broadcast or all-zero).
fn is_host_mac(mac: EthernetAddress) -> bool {
    mac.is_unicast() && mac != EthernetAddress([0; 6])
}
