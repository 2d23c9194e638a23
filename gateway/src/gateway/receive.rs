//! The receive path: every frame the switch delivers is classified, answered here (ARP,
//! ping, DNS-over-TCP RST without NAT) or handed to DHCP, DNS or the NAT.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use dhcp::ReplyTarget;
use dns::ClientId;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
};

use super::{DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DNS_PORT, Gateway, is_host_mac};
use crate::emit::{self, OutPacket};
use crate::wire::frag::is_fragment;

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
    pub(super) fn dispatch_frame(&mut self, now: Instant, frame: &[u8]) {
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
        let frame = emit::arp_frame(self.config.gateway_mac, source_hardware_addr, &reply);
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
            Destination::Elsewhere if self.nat.is_none() => {
                self.stats.not_routed += 1;
                return;
            }
            Destination::Multicast => {
                self.stats.ignored += 1;
                return;
            }
            _ => {}
        }
        if is_fragment(&packet) {
            self.handle_fragment(now, frame_src, &packet, destination);
        } else if packet.dont_frag()
            && usize::from(packet.total_len()) > usize::from(self.config.mtu)
            && destination != Destination::Broadcast
        {
            self.answer_frag_needed(frame_src, &packet);
        } else {
            self.handle_whole_ipv4(now, frame_src, &packet, destination);
        }
    }

    /// A fragment from a LAN host to us or through the NAT goes to the reassembler; the
    /// datagram it completes is handled like any other. Broadcast fragments are dropped.
    fn handle_fragment(
        &mut self,
        now: Instant,
        frame_src: EthernetAddress,
        packet: &Ipv4Packet<&[u8]>,
        destination: Destination,
    ) {
        self.stats.fragments += 1;
        if destination == Destination::Broadcast || !self.config.is_host_address(packet.src_addr())
        {
            return;
        }
        let whole = self.frags.handle(now, packet.as_ref());
        self.sync_frag_stats();
        if let Some(whole) = whole
            && let Ok(whole) = Ipv4Packet::new_checked(&whole[..])
        {
            self.handle_whole_ipv4(now, frame_src, &whole, destination);
        }
    }

    /// A DF packet over the LAN's MTU: we would not carry it on a real link of that MTU,
    /// so the sender learns the MTU (RFC 1191) instead of having it dropped silently.
    fn answer_frag_needed(&mut self, frame_src: EthernetAddress, packet: &Ipv4Packet<&[u8]>) {
        let Ok(ip) = Ipv4Repr::parse(packet, &ChecksumCapabilities::default()) else {
            self.stats.malformed += 1;
            return;
        };
        if ip.src_addr.is_unspecified() {
            self.stats.ignored += 1;
            return;
        }
        self.stats.frag_needed += 1;
        let answer = OutPacket::frag_needed(
            self.config.gateway_ip,
            &ip,
            packet.payload(),
            self.config.mtu,
        );
        self.emit_ipv4(frame_src, &answer);
    }

    /// A whole IPv4 packet (never a fragment) to us, broadcast, or through the NAT.
    fn handle_whole_ipv4(
        &mut self,
        now: Instant,
        frame_src: EthernetAddress,
        packet: &Ipv4Packet<&[u8]>,
        destination: Destination,
    ) {
        if destination == Destination::Elsewhere {
            self.route_out(now, packet);
            return;
        }
        let Ok(ip) = Ipv4Repr::parse(packet, &ChecksumCapabilities::default()) else {
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
                self.route_local_tcp(now, &ip, packet);
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
