//! Pings through the NAT (one flow per VM and echo identifier) and ICMP errors to VMs.

use std::time::Instant;

use smoltcp::wire::{Icmpv4DstUnreachable, Icmpv4Repr, Ipv4Repr};

use super::flows::{FlowId, FlowKind};
use super::{Nat, NatAction, NatProtocol};
use crate::emit::OutPacket;

impl Nat {
    /// An echo request from a VM to an outside address.
    pub(crate) fn handle_ping(
        &mut self,
        now: Instant,
        ip: &Ipv4Repr,
        ident: u16,
        seq: u16,
        data: &[u8],
    ) {
        let allowed = match self.internet {
            true => self
                .config
                .policy
                .check(NatProtocol::Icmp, ip.dst_addr, None),
            false => Err(super::DenyReason::InternetOff),
        };
        if let Err(reason) = allowed {
            self.stats.denied.add(reason);
            return;
        }
        let key = (ip.src_addr, ident);
        let flow = match self.ping_flows.get(&key) {
            Some(&flow) => flow,
            None => {
                if let Err(reason) = self.admit(now, ip.src_addr, NatProtocol::Icmp) {
                    self.stats.denied.add(reason);
                    return;
                }
                let flow = self.new_flow(
                    now,
                    ip.src_addr,
                    FlowKind::Ping {
                        vm: ip.src_addr,
                        ident,
                        to: ip.dst_addr,
                    },
                );
                self.ping_flows.insert(key, flow);
                flow
            }
        };
        if let Some(entry) = self.flows.get_mut(&flow) {
            entry.last_active = now;
            if let FlowKind::Ping { to, .. } = &mut entry.kind {
                *to = ip.dst_addr;
            }
        }
        self.stats.bytes_out += data.len() as u64;
        self.actions.push_back(NatAction::PingSend {
            flow,
            to: ip.dst_addr,
            seq,
            payload: data.to_vec(),
        });
    }

    /// An echo reply for the ping flow's request `seq`.
    pub fn handle_ping_reply(&mut self, now: Instant, flow: FlowId, seq: u16, data: &[u8]) {
        let Some(entry) = self.flows.get_mut(&flow) else {
            return;
        };
        let FlowKind::Ping { vm, ident, to } = entry.kind else {
            return;
        };
        entry.last_active = now;
        self.stats.bytes_in += data.len() as u64;
        let reply = Icmpv4Repr::EchoReply {
            ident,
            seq_no: seq,
            data,
        };
        self.push(&OutPacket::icmp(to, vm, reply));
    }

    /// ICMP destination unreachable about `ip`, quoting the first 8 bytes of its payload;
    /// from the router, as a real one would send it.
    pub(super) fn push_unreachable(
        &mut self,
        ip: &Ipv4Repr,
        payload: &[u8],
        reason: Icmpv4DstUnreachable,
    ) {
        self.push(&OutPacket::unreachable(
            self.gateway_ip,
            ip,
            payload,
            reason,
        ));
    }
}
