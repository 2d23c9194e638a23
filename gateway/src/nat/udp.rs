//! UDP flows: one per VM address and port; answers only from the peers it sent to.

use std::net::SocketAddrV4;
use std::time::Instant;

use smoltcp::wire::{Icmpv4DstUnreachable, Ipv4Repr, UDP_HEADER_LEN, UdpRepr};

use super::flows::{FlowId, FlowKind};
use super::{Nat, NatAction, NatProtocol};
use crate::emit::OutPacket;

/// Peers a UDP flow remembers.
const MAX_UDP_PEERS: usize = 64;

impl Nat {
    /// A UDP datagram from a VM to an outside address (or the gateway with host loopback).
    pub(crate) fn handle_udp(
        &mut self,
        now: Instant,
        ip: &Ipv4Repr,
        udp: &UdpRepr,
        datagram: &[u8],
    ) {
        let payload = &datagram[UDP_HEADER_LEN.min(datagram.len())..];
        let vm = SocketAddrV4::new(ip.src_addr, udp.src_port);
        let remote = SocketAddrV4::new(ip.dst_addr, udp.dst_port);
        let to = match self.outbound_target(NatProtocol::Udp, remote) {
            Ok(to) => to,
            Err(reason) => {
                self.stats.denied.add(reason);
                self.push_unreachable(ip, datagram, Icmpv4DstUnreachable::PortUnreachable);
                return;
            }
        };
        let flow = match self.udp_flows.get(&vm) {
            Some(&flow) => flow,
            None => {
                if let Err(reason) = self.admit(now, ip.src_addr, NatProtocol::Udp) {
                    self.stats.denied.add(reason);
                    self.push_unreachable(ip, datagram, Icmpv4DstUnreachable::PortUnreachable);
                    return;
                }
                let flow = self.new_flow(
                    now,
                    ip.src_addr,
                    FlowKind::Udp {
                        vm,
                        peers: Vec::new(),
                    },
                );
                self.udp_flows.insert(vm, flow);
                flow
            }
        };
        if let Some(entry) = self.flows.get_mut(&flow) {
            entry.last_active = now;
            if let FlowKind::Udp { peers, .. } = &mut entry.kind
                && !peers.contains(&remote)
            {
                if peers.len() >= MAX_UDP_PEERS {
                    peers.remove(0);
                }
                peers.push(remote);
            }
        }
        self.stats.bytes_out += payload.len() as u64;
        self.actions.push_back(NatAction::UdpSend {
            flow,
            to,
            payload: payload.to_vec(),
        });
    }

    /// A datagram from `from` to the UDP flow's host socket.
    pub fn handle_udp_datagram(
        &mut self,
        now: Instant,
        flow: FlowId,
        from: SocketAddrV4,
        payload: &[u8],
    ) {
        let Some(entry) = self.flows.get_mut(&flow) else {
            self.stats.unsolicited += 1;
            return;
        };
        let FlowKind::Udp { vm, peers } = &entry.kind else {
            return;
        };
        // With host loopback the VM talks to the gateway address and hears from it.
        let shown_from = if self.config.host_loopback && from.ip().is_loopback() {
            SocketAddrV4::new(self.gateway_ip, from.port())
        } else {
            from
        };
        if !peers.contains(&shown_from) {
            self.stats.unsolicited += 1;
            return;
        }
        let vm = *vm;
        entry.last_active = now;
        self.stats.bytes_in += payload.len() as u64;
        self.push_udp(shown_from, vm, payload);
    }

    pub(super) fn push_udp(&mut self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        self.push(&OutPacket::udp(from, to, payload));
    }
}
