//! Traffic between the LAN and the NAT: packets to outside addresses (and TCP to our own
//! with NAT on) go in, the NAT's packets come out framed, DNS-over-TCP queries go to the
//! DNS proxy.

use std::time::Instant;

use dns::Transport;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

use super::Gateway;
use crate::emit;

impl Gateway {
    /// TCP to our own addresses with NAT on: DNS over TCP, host loopback, or a RST (smoltcp
    /// answers segments no socket takes).
    pub(super) fn route_local_tcp(
        &mut self,
        now: Instant,
        ip: &Ipv4Repr,
        packet: &Ipv4Packet<&[u8]>,
    ) {
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
    pub(super) fn route_out(&mut self, now: Instant, packet: &Ipv4Packet<&[u8]>) {
        let src = packet.src_addr();
        if !self.config.is_host_address(src) {
            // Only LAN hosts get NAT: this also bounds the NAT's per-VM state.
            self.stats.ignored += 1;
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
    pub(super) fn frame_nat_packet(&mut self, packet: Vec<u8>) -> Option<Vec<u8>> {
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
    pub(super) fn drain_dns_tcp_queries(&mut self, now: Instant) {
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
}
