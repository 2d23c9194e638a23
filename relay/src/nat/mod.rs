//! Layer 3: the host side of each LAN's NAT: the sockets behind [`gateway::Nat`]'s actions.
//!
//! The gateway task owns a [`NatHost`]. Every host connection has a reader and a writer
//! task; they talk to the gateway task through one event channel and per-flow channels:
//!
//! - host -> VM: the reader takes credits (a per-flow byte budget) before each read, so at
//!   most [`HOST_READ_BUDGET`] bytes wait outside smoltcp's send buffer; credits return as
//!   `tcp_send` moves bytes into it. A slow VM therefore slows the remote sender.
//! - VM -> host: data is taken from smoltcp only while the writer's channel has room; a
//!   slow remote leaves it in the receive buffer and the VM's window closes.

mod datagram;
mod pacing;
mod pages;
mod tcp;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::{ConnectFailure, FlowId, Gateway, NatAction, NatConfig};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

pub(crate) use datagram::PingMode;
use datagram::{PingSocket, UdpFlow};
pub(crate) use pages::release as release_pages;
use tcp::{TcpFlow, push_to_vm};

/// Bytes a host reader may have read ahead of smoltcp's send buffer.
pub(crate) const HOST_READ_BUDGET: usize = 4 * CHUNK;
/// Largest chunk moved at once either way.
pub(crate) const CHUNK: usize = 64 * 1024;
/// Chunks waiting for a host writer. Data the VM sends meanwhile stays in smoltcp and
/// goes in the next chunk: fewer, larger writes.
pub(crate) const WRITER_QUEUE: usize = 2;
/// Events from host tasks to the gateway task; senders wait when it is full.
pub(crate) const EVENT_QUEUE: usize = 1024;
/// Ping requests remembered for matching replies, per LAN.
const PING_MEMORY: usize = 1024;

/// What host tasks tell the gateway task.
#[derive(Debug)]
pub(crate) enum HostEvent {
    Connected(FlowId, TcpStream),
    ConnectFailed(FlowId, ConnectFailure),
    Data(FlowId, Bytes),
    Eof(FlowId),
    Failed(FlowId),
    /// A writer finished a chunk: there may be room for more.
    Drained(FlowId),
    Datagram(FlowId, SocketAddrV4, Bytes),
    PingReply {
        host_seq: u16,
        data: Bytes,
    },
}

/// Counts live host tasks relay-wide, so tests and /metrics can see none is left.
#[derive(Debug, Default)]
pub(crate) struct TaskGauge(AtomicI64);

impl TaskGauge {
    pub(crate) fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Decrements the gauge when its task ends, however it ends (abort included).
pub(crate) struct TaskGuard(Arc<TaskGauge>);

impl TaskGuard {
    pub(crate) fn new(gauge: &Arc<TaskGauge>) -> Self {
        gauge.0.fetch_add(1, Relaxed);
        TaskGuard(gauge.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Relaxed);
    }
}

enum HostFlow {
    /// The connect task, and the VM it is for.
    Connecting(AbortHandle, Ipv4Addr),
    Tcp(TcpFlow),
    Udp(UdpFlow),
    /// A UDP forward's client: answers leave from the forward's socket.
    InboundUdp(Arc<UdpSocket>),
}

impl Drop for HostFlow {
    fn drop(&mut self) {
        match self {
            HostFlow::Connecting(task, _) => task.abort(),
            HostFlow::Tcp(flow) => flow.tasks.iter().for_each(AbortHandle::abort),
            // UdpFlow aborts its own tasks.
            HostFlow::Udp(_) | HostFlow::InboundUdp(_) => {}
        }
    }
}

/// Shared by every LAN's NAT.
#[derive(Debug)]
pub(crate) struct NatShared {
    /// Every new LAN's NAT starts from this; a reload replaces its egress policy.
    pub(crate) config: std::sync::RwLock<NatConfig>,
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_mode: PingMode,
    pub(crate) tasks: Arc<TaskGauge>,
}

/// The host sockets of one LAN's NAT, driven from its gateway task.
pub(crate) struct NatHost {
    shared: Arc<NatShared>,
    events: mpsc::Sender<HostEvent>,
    flows: HashMap<FlowId, HostFlow>,
    ping: Option<PingSocket>,
    /// Each VM's NAT bandwidth, each way (`port_rate`).
    port_rate: Option<u64>,
    /// The budgets of VMs with paced flows, by address.
    pacers: HashMap<Ipv4Addr, Arc<pacing::Pacer>>,
    /// Ping flows alive; the ping socket closes with the last.
    ping_flows: std::collections::HashSet<FlowId>,
    lan: String,
}

impl NatHost {
    /// `port_rate`: each VM's NAT bandwidth each way, bytes per second (`None`: unlimited).
    pub(crate) fn new(
        shared: Arc<NatShared>,
        events: mpsc::Sender<HostEvent>,
        lan: &str,
        port_rate: Option<u64>,
    ) -> Self {
        Self {
            shared,
            events,
            port_rate,
            pacers: HashMap::new(),
            flows: HashMap::new(),
            ping: None,
            ping_flows: std::collections::HashSet::new(),
            lan: lan.to_owned(),
        }
    }

    /// The budget of the VM at `vm`, shared by its flows; `None` without a `port_rate`.
    fn pacer(&mut self, vm: Ipv4Addr) -> Option<Arc<pacing::Pacer>> {
        let rate = self.port_rate?;
        // Budgets of VMs without a flow are dropped, so the map stays as small as the LAN.
        if self.pacers.len() > 4096 {
            self.pacers.retain(|_, pacer| Arc::strong_count(pacer) > 1);
        }
        Some(
            self.pacers
                .entry(vm)
                .or_insert_with(|| Arc::new(pacing::Pacer::new(rate)))
                .clone(),
        )
    }

    /// Carries out the gateway's NAT actions and moves TCP data both ways.
    pub(crate) fn drain(&mut self, gateway: &mut Gateway) {
        let Some(nat) = gateway.nat_mut() else {
            return;
        };
        loop {
            if let Some(action) = nat.poll_action() {
                self.act(nat, action);
            } else if let Some(status) = nat.poll_tcp_status() {
                self.move_data(nat, status);
            } else {
                break;
            }
        }
    }

    /// An event from a host task.
    pub(crate) fn handle_event(&mut self, gateway: &mut Gateway, event: HostEvent) {
        let Some(nat) = gateway.nat_mut() else {
            return;
        };
        let now = Instant::now();
        match event {
            HostEvent::Connected(flow, stream) => {
                let vm = match self.flows.get(&flow) {
                    Some(HostFlow::Connecting(_, vm)) if nat.handle_tcp_connected(now, flow) => *vm,
                    _ => {
                        self.flows.remove(&flow);
                        return;
                    }
                };
                let tcp = self.spawn_tcp(flow, stream, vm);
                self.flows.insert(flow, HostFlow::Tcp(tcp));
            }
            HostEvent::ConnectFailed(flow, why) => {
                self.flows.remove(&flow);
                nat.handle_tcp_connect_failed(now, flow, why);
            }
            HostEvent::Data(flow, data) => {
                if let Some(HostFlow::Tcp(tcp)) = self.flows.get_mut(&flow) {
                    tcp.pending.push_back(data);
                    push_to_vm(nat, now, flow, tcp);
                }
            }
            HostEvent::Eof(flow) => {
                if let Some(HostFlow::Tcp(tcp)) = self.flows.get_mut(&flow) {
                    tcp.host_eof = true;
                    push_to_vm(nat, now, flow, tcp);
                }
            }
            HostEvent::Failed(flow) => {
                self.flows.remove(&flow);
                nat.close_flow(now, flow);
            }
            HostEvent::Drained(flow) => {
                if let Some(HostFlow::Tcp(tcp)) = self.flows.get_mut(&flow) {
                    tcp.chunks_at_writer = tcp.chunks_at_writer.saturating_sub(1);
                }
                if let Some(status) = nat.tcp_status(flow) {
                    self.move_data(nat, status);
                }
            }
            HostEvent::Datagram(flow, from, data) => {
                nat.handle_udp_datagram(now, flow, from, &data);
            }
            HostEvent::PingReply { host_seq, data } => {
                if let Some(ping) = self.ping.as_mut()
                    && let Some((flow, seq)) = ping.requests.remove(&host_seq)
                {
                    nat.handle_ping_reply(now, flow, seq, &data);
                }
            }
        }
    }

    /// A host connection for a TCP forward to `target` in this LAN.
    pub(crate) fn inbound_tcp(
        &mut self,
        gateway: &mut Gateway,
        target: SocketAddrV4,
        stream: TcpStream,
    ) {
        let Some(nat) = gateway.nat_mut() else {
            return;
        };
        if let Some(flow) = nat.open_inbound_tcp(Instant::now(), target) {
            let tcp = self.spawn_tcp(flow, stream, *target.ip());
            self.flows.insert(flow, HostFlow::Tcp(tcp));
        }
    }

    /// A datagram from a UDP forward's client for `target` in this LAN.
    pub(crate) fn inbound_udp(
        &mut self,
        gateway: &mut Gateway,
        client: SocketAddrV4,
        target: SocketAddrV4,
        payload: &[u8],
        socket: Arc<UdpSocket>,
    ) {
        let Some(nat) = gateway.nat_mut() else {
            return;
        };
        if let Some(flow) = nat.inbound_udp(Instant::now(), client, target, payload) {
            self.flows
                .entry(flow)
                .or_insert_with(|| HostFlow::InboundUdp(socket));
        }
    }

    fn act(&mut self, nat: &mut gateway::Nat, action: NatAction) {
        match action {
            NatAction::TcpConnect { flow, vm, to } => {
                tracing::debug!(lan = %self.lan, %vm, %to, "NAT connect");
                let events = self.events.clone();
                let timeout = self.shared.connect_timeout;
                let guard = TaskGuard::new(&self.shared.tasks);
                let task = tokio::spawn(async move {
                    let _guard = guard;
                    let event = match tokio::time::timeout(timeout, TcpStream::connect(to)).await {
                        Ok(Ok(stream)) => {
                            let _ = stream.set_nodelay(true);
                            HostEvent::Connected(flow, stream)
                        }
                        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            HostEvent::ConnectFailed(flow, ConnectFailure::Refused)
                        }
                        Ok(Err(_)) => HostEvent::ConnectFailed(flow, ConnectFailure::Unreachable),
                        Err(_) => HostEvent::ConnectFailed(flow, ConnectFailure::TimedOut),
                    };
                    let _ = events.send(event).await;
                });
                self.flows
                    .insert(flow, HostFlow::Connecting(task.abort_handle(), *vm.ip()));
            }
            NatAction::UdpSend { flow, to, payload } => {
                if !self.flows.contains_key(&flow) {
                    match self.open_udp(flow) {
                        Ok(host) => {
                            self.flows.insert(flow, host);
                        }
                        Err(e) => {
                            tracing::warn!(lan = %self.lan, "NAT: cannot open a UDP socket: {e}");
                            nat.close_flow(Instant::now(), flow);
                            return;
                        }
                    }
                }
                if let Some(HostFlow::Udp(udp)) = self.flows.get_mut(&flow) {
                    udp.send(&self.shared.tasks, SocketAddr::V4(to), payload);
                }
            }
            NatAction::PingSend {
                flow,
                to,
                seq,
                payload,
            } => self.ping(flow, to, seq, &payload),
            NatAction::Close { flow } => {
                self.flows.remove(&flow);
                // The table keeps the room of its busiest moment; give most of it back
                // once it is a quarter full (after as many closes as it has room).
                if self.flows.capacity() > 64 && self.flows.len() < self.flows.capacity() / 4 {
                    self.flows.shrink_to(self.flows.len() * 2);
                }
                if self.ping_flows.remove(&flow) && self.ping_flows.is_empty() {
                    self.ping = None;
                }
            }
            NatAction::ForwardReply {
                flow,
                client,
                payload,
            } => {
                if let Some(HostFlow::InboundUdp(socket)) = self.flows.get(&flow) {
                    let _ = socket.try_send_to(&payload, SocketAddr::V4(client));
                }
            }
        }
    }
}

/// The relay host's IPv4 addresses, which VMs must not reach by default.
pub(crate) fn host_addresses() -> Vec<Ipv4Addr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
            .collect(),
        Err(e) => {
            tracing::warn!(
                "cannot list this host's addresses ({e}); only the built-in denials apply"
            );
            Vec::new()
        }
    }
}

impl NatShared {
    /// The config a new LAN's NAT starts with.
    pub(crate) fn config(&self) -> NatConfig {
        match self.config.read() {
            Ok(config) => config.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// New egress rules for LANs created from now on (live LANs get them by command).
    pub(crate) fn set_policy(&self, policy: gateway::EgressPolicy) {
        if let Ok(mut config) = self.config.write() {
            config.policy = policy;
        }
    }
}
