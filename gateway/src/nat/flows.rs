//! The flow table: ids, kinds and keys, admission (policy, per-VM limits, new-flow rate),
//! bookkeeping and the flows' deadline timers.
//!
//! Each flow has at most one entry in `Nat::timers`: the earlier of smoltcp's next timer
//! for its socket (retransmission, delayed ACK, keep-alive) and its idle deadline
//! (`last_active` + the timeout of its state). Traffic only moves `last_active` later, so
//! a packet does not touch the timer set unless the deadline got earlier; an entry that
//! fires early finds the flow still active and re-arms. Nothing scans the flows.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::Ipv4Repr;

use super::quiet::Quiet;
use super::{DenyReason, Nat, NatAction, NatProtocol};

/// Identifies one NAT flow between the core and its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// One flow as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowInfo {
    pub id: FlowId,
    pub protocol: NatProtocol,
    /// The VM's side.
    pub vm: SocketAddrV4,
    /// The far side as the VM sees it (the gateway address for inbound forwards).
    pub remote: Option<SocketAddrV4>,
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct TcpKey {
    pub(super) vm: SocketAddrV4,
    /// The address the VM talks to (before host-loopback rewriting).
    pub(super) remote: SocketAddrV4,
}

#[derive(Debug)]
pub(super) enum FlowKind {
    Tcp {
        key: TcpKey,
        /// This flow's socket alone, so that smoltcp visits nothing else for its packets.
        sockets: SocketSet<'static>,
        handle: SocketHandle,
        /// Bytes through its buffers: taken from the VM, queued for the VM.
        through: [u64; 2],
        /// What it is charged to the budget (`budget::touched` of both buffers).
        charged: usize,
        /// Whether its buffers hold bytes, for giving their pages back (`quiet`).
        quiet: Quiet,
        /// Waiting for the host connect: the SYN's IP header and first 8 bytes, for an
        /// ICMP error.
        connecting: Option<(Ipv4Repr, [u8; 8])>,
    },
    Udp {
        vm: SocketAddrV4,
        /// Peers the VM sent to: only they may answer (address-and-port filtering).
        peers: Vec<SocketAddrV4>,
    },
    Ping {
        vm: Ipv4Addr,
        ident: u16,
        to: Ipv4Addr,
    },
    /// A UDP forward's client, seen by the VM as the gateway address and `gateway_port`.
    InboundUdp {
        key: InboundUdpKey,
        gateway_port: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct InboundUdpKey {
    pub(super) client: SocketAddrV4,
    pub(super) target: SocketAddrV4,
}

#[derive(Debug)]
pub(super) struct Flow {
    pub(super) kind: FlowKind,
    pub(super) vm_ip: Ipv4Addr,
    pub(super) last_active: Instant,
    /// Its entry in `Nat::timers`.
    pub(super) timer: Option<Instant>,
    /// In the status queue already.
    pub(super) dirty: bool,
}

impl Flow {
    pub(super) fn protocol(&self) -> NatProtocol {
        match self.kind {
            FlowKind::Tcp { .. } => NatProtocol::Tcp,
            FlowKind::Udp { .. } => NatProtocol::Udp,
            FlowKind::Ping { .. } => NatProtocol::Icmp,
            FlowKind::InboundUdp { .. } => NatProtocol::Udp,
        }
    }
}

#[derive(Debug)]
pub(super) struct VmUsage {
    pub(super) flows: [usize; NatProtocol::COUNT],
    pub(super) tokens: f64,
    pub(super) refilled: Instant,
}

/// Shrinks `map` to twice its entries when they fill less than a quarter of its room.
fn shrink<K: Eq + std::hash::Hash, V>(map: &mut std::collections::HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// The earliest a flow's smoltcp timer is re-armed after a poll.
const MIN_TIMER: Duration = Duration::from_millis(1);

/// How often DNS connections and per-VM rate buckets are checked (not flows: they have
/// deadlines).
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl Nat {
    /// Every live flow, for the admin API.
    pub fn flows(&self) -> impl Iterator<Item = FlowInfo> + '_ {
        self.flows.iter().map(|(&id, flow)| {
            let (vm, remote) = match &flow.kind {
                FlowKind::Tcp { key, .. } => (key.vm, Some(key.remote)),
                FlowKind::Udp { vm, peers } => (*vm, peers.last().copied()),
                FlowKind::Ping { vm, to, .. } => {
                    (SocketAddrV4::new(*vm, 0), Some(SocketAddrV4::new(*to, 0)))
                }
                FlowKind::InboundUdp { key, gateway_port } => (
                    key.target,
                    Some(SocketAddrV4::new(self.gateway_ip, *gateway_port)),
                ),
            };
            FlowInfo {
                id,
                protocol: flow.protocol(),
                vm,
                remote,
                idle: self.last_now.saturating_duration_since(flow.last_active),
            }
        })
    }

    /// Ends a flow from the driver's side (e.g. its host socket failed).
    pub fn close_flow(&mut self, now: Instant, flow: FlowId) {
        if self.tcp_established(flow) {
            self.tcp_abort(now, flow);
        } else if self.flows.contains_key(&flow) {
            self.remove_flow(flow, true);
        }
    }

    pub(super) fn outbound_target(
        &self,
        protocol: NatProtocol,
        remote: SocketAddrV4,
    ) -> Result<SocketAddrV4, DenyReason> {
        if !self.internet {
            return Err(DenyReason::InternetOff);
        }
        if *remote.ip() == self.gateway_ip && self.config.host_loopback {
            return Ok(SocketAddrV4::new(Ipv4Addr::LOCALHOST, remote.port()));
        }
        if *remote.ip() == self.gateway_ip || *remote.ip() == self.dns_ip {
            // Our own addresses without host loopback: nothing listens there.
            return Err(DenyReason::Loopback);
        }
        self.config
            .policy
            .check(protocol, *remote.ip(), Some(remote.port()))?;
        Ok(remote)
    }

    /// Per-VM flow limits, the LAN's flow limit and the new-flow rate.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        vm: Ipv4Addr,
        protocol: NatProtocol,
    ) -> Result<(), DenyReason> {
        if self.flows.len() >= self.config.max_flows {
            return Err(DenyReason::Limit);
        }
        let rate = f64::from(self.config.new_flows_per_sec.max(1));
        let usage = self.usage.entry(vm).or_insert(VmUsage {
            flows: [0; NatProtocol::COUNT],
            tokens: rate * 2.0,
            refilled: now,
        });
        let limit = match protocol {
            NatProtocol::Tcp => self.config.max_tcp_flows_per_vm,
            NatProtocol::Udp => self.config.max_udp_flows_per_vm,
            NatProtocol::Icmp => self.config.max_ping_flows_per_vm,
        };
        if usage.flows[protocol.index()] >= limit {
            return Err(DenyReason::Limit);
        }
        let elapsed = now.saturating_duration_since(usage.refilled).as_secs_f64();
        usage.tokens = (usage.tokens + elapsed * rate).min(rate * 2.0);
        usage.refilled = now;
        if usage.tokens < 1.0 {
            return Err(DenyReason::Limit);
        }
        usage.tokens -= 1.0;
        Ok(())
    }

    pub(super) fn new_flow(&mut self, now: Instant, vm_ip: Ipv4Addr, kind: FlowKind) -> FlowId {
        let flow = FlowId(self.next_flow);
        self.next_flow += 1;
        let entry = Flow {
            kind,
            vm_ip,
            last_active: now,
            timer: None,
            dirty: false,
        };
        let protocol = entry.protocol().index();
        self.stats.flows_started[protocol] += 1;
        self.stats.flows_active[protocol] += 1;
        if let Some(usage) = self.usage.get_mut(&vm_ip) {
            usage.flows[protocol] += 1;
        }
        self.flows.insert(flow, entry);
        self.arm(flow);
        self.recharge(flow, [0, 0]);
        flow
    }

    /// Forgets a flow; `tell_driver` queues [`NatAction::Close`].
    pub(super) fn remove_flow(&mut self, flow: FlowId, tell_driver: bool) {
        let Some(entry) = self.flows.remove(&flow) else {
            return;
        };
        let protocol = entry.protocol().index();
        self.stats.flows_active[protocol] -= 1;
        if let Some(usage) = self.usage.get_mut(&entry.vm_ip) {
            usage.flows[protocol] = usage.flows[protocol].saturating_sub(1);
        }
        if let Some(at) = entry.timer {
            self.timers.remove(&(at, flow));
        }
        match entry.kind {
            FlowKind::Tcp { key, charged, .. } => {
                self.tcp_flows.remove(&key);
                self.config.buffer_budget.give(charged);
                self.stats.buffer_bytes = self.stats.buffer_bytes.saturating_sub(charged);
            }
            FlowKind::Udp { vm, .. } => {
                self.udp_flows.remove(&vm);
            }
            FlowKind::Ping { vm, ident, .. } => {
                self.ping_flows.remove(&(vm, ident));
            }
            FlowKind::InboundUdp { key, gateway_port } => {
                self.inbound_udp.remove(&key);
                self.inbound_udp_ports.remove(&gateway_port);
            }
        }
        if tell_driver {
            self.actions.push_back(NatAction::Close { flow });
        }
    }

    /// How long `entry` may stay idle in its present state.
    fn idle_limit(&self, entry: &Flow) -> Duration {
        match &entry.kind {
            FlowKind::Tcp {
                sockets,
                handle,
                connecting,
                ..
            } => {
                let state = sockets.get::<tcp::Socket>(*handle).state();
                if connecting.is_some() {
                    // The driver times out connects itself; this is a backstop.
                    self.config.tcp_transitory_timeout
                } else if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                    Duration::ZERO
                } else if state == tcp::State::Established {
                    self.config.tcp_idle_timeout
                } else {
                    self.config.tcp_transitory_timeout
                }
            }
            FlowKind::Udp { .. } | FlowKind::InboundUdp { .. } => self.config.udp_idle_timeout,
            FlowKind::Ping { .. } => self.config.ping_idle_timeout,
        }
    }

    /// Sets `flow`'s timer to its next deadline, unless an earlier entry is there already
    /// (that one fires, finds nothing due and re-arms): O(log flows) at most, and nothing
    /// at all for most packets.
    pub(super) fn arm(&mut self, flow: FlowId) {
        let stamp = self.stamp(self.last_now);
        let Some(entry) = self.flows.get(&flow) else {
            return;
        };
        let idle_at = entry.last_active + self.idle_limit(entry);
        let smoltcp_at = match &entry.kind {
            // While the host connect runs, the SYN-ACK is paused: smoltcp says "now" but
            // has nothing to send until `handle_tcp_connected`.
            FlowKind::Tcp {
                sockets,
                connecting: None,
                ..
            } => self.iface.poll_at(stamp, sockets),
            _ => None,
        }
        // This follows a poll of the flow, which did what was due: a deadline still in the
        // past would only spin.
        .map(|at| self.instant(at).max(self.last_now + MIN_TIMER));
        let due = [smoltcp_at, self.quiet_due(entry)]
            .into_iter()
            .flatten()
            .fold(idle_at, Instant::min);
        let Some(entry) = self.flows.get_mut(&flow) else {
            return;
        };
        match entry.timer {
            Some(at) if at <= due => {}
            old => {
                if let Some(at) = old {
                    self.timers.remove(&(at, flow));
                }
                entry.timer = Some(due);
                self.timers.insert((due, flow));
            }
        }
    }

    /// Flows whose timer has come: smoltcp's timers run, idle flows end, the rest re-arm.
    pub(super) fn run_timers(&mut self, now: Instant) {
        while let Some(&(at, flow)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.flows.get_mut(&flow) else {
                continue;
            };
            entry.timer = None;
            if matches!(entry.kind, FlowKind::Tcp { .. }) {
                // Retransmissions, delayed ACKs, keep-alives, smoltcp's own VM timeout.
                self.poll_flow(now, flow, None);
                self.mark_dirty(flow);
                self.reap_tcp(flow);
                self.release_if_quiet(now, flow);
            }
            let Some(entry) = self.flows.get(&flow) else {
                continue;
            };
            if now.saturating_duration_since(entry.last_active) < self.idle_limit(entry) {
                self.arm(flow);
                continue;
            }
            if let Some(socket) = self.socket_mut(flow) {
                if !matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                    socket.abort();
                    self.stats.timeouts += 1;
                    // The RST goes out now; the flow is forgotten below.
                    self.poll_flow(now, flow, None);
                }
            } else {
                self.stats.timeouts += 1;
            }
            self.remove_flow(flow, true);
        }
    }

    /// DNS connections' idle checks and the per-VM rate buckets (O(VMs), once a second).
    pub(super) fn sweep(&mut self, now: Instant) {
        let handles: Vec<SocketHandle> = self.dns_conns.keys().copied().collect();
        for handle in handles {
            self.serve_dns_conn(now, handle);
        }
        self.stats.dns_tcp_connections = self.dns_conns.len();
        let rate = f64::from(self.config.new_flows_per_sec.max(1));
        self.usage.retain(|_, usage| {
            usage.flows != [0; NatProtocol::COUNT]
                || usage.tokens + now.saturating_duration_since(usage.refilled).as_secs_f64() * rate
                    < rate * 2.0
        });
        // A table keeps the room of its busiest moment: after 17,000 flows closed, about
        // 10 MiB per LAN. Give it back once the flows are a quarter of it (amortized: a
        // table shrinks only after as many removals as it has room).
        shrink(&mut self.flows);
        shrink(&mut self.tcp_flows);
        shrink(&mut self.udp_flows);
        shrink(&mut self.ping_flows);
        shrink(&mut self.usage);
    }

    pub(super) fn touch(&mut self, flow: FlowId, now: Instant) {
        if let Some(entry) = self.flows.get_mut(&flow) {
            entry.last_active = now;
        }
    }

    pub(super) fn mark_dirty(&mut self, flow: FlowId) {
        if let Some(entry) = self.flows.get_mut(&flow)
            && !entry.dirty
        {
            entry.dirty = true;
            self.status_queue.push_back(flow);
        }
    }
}
