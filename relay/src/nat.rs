//! The host side of each LAN's NAT: the sockets behind [`gateway::Nat`]'s actions.
//!
//! The gateway task owns a [`NatHost`]. Every host connection has a reader and a writer
//! task; they talk to the gateway task through one event channel and per-flow channels:
//!
//! - host -> VM: the reader takes credits (a per-flow byte budget) before each read, so at
//!   most [`HOST_READ_BUDGET`] bytes wait outside smoltcp's send buffer; credits return as
//!   `tcp_send` moves bytes into it. A slow VM therefore slows the remote sender.
//! - VM -> host: data is taken from smoltcp only while the writer's channel has room; a
//!   slow remote leaves it in the receive buffer and the VM's window closes.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use gateway::{ConnectFailure, FlowId, Gateway, NatAction, NatConfig, PolicyRule, TcpStatus};
use smoltcp::wire::{EthernetAddress, Ipv4Cidr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

use crate::config::NatSection;

/// Bytes a host reader may have read ahead of smoltcp's send buffer.
pub const HOST_READ_BUDGET: usize = 4 * CHUNK;
/// Largest chunk moved at once either way.
const CHUNK: usize = 64 * 1024;
/// Chunks waiting for a host writer. Data the VM sends meanwhile stays in smoltcp and
/// goes in the next chunk: fewer, larger writes.
const WRITER_QUEUE: usize = 2;
/// Events from host tasks to the gateway task; senders wait when it is full.
pub const EVENT_QUEUE: usize = 1024;
/// Ping requests remembered for matching replies, per LAN.
const PING_MEMORY: usize = 1024;

/// The `[nat]` section as the core's config. Errors name the key and the fix.
pub fn core_config(section: &NatSection) -> Result<NatConfig, String> {
    let rules = |key: &str, list: &[String]| -> Result<Vec<PolicyRule>, String> {
        list.iter()
            .map(|text| {
                parse_rule(text).map_err(|problem| {
                    format!("{key}: `{text}` {problem}; write CIDR, CIDR:PORT or CIDR:LOW-HIGH, e.g. 198.18.0.0/15:80")
                })
            })
            .collect()
    };
    if section.tcp_buffer_bytes < 4096 || section.tcp_buffer_bytes > 16 << 20 {
        return Err(format!(
            "tcp_buffer_bytes = {} is out of range; use 4096 to 16777216 (default 262144)",
            section.tcp_buffer_bytes
        ));
    }
    if section.connect_timeout_secs == 0 {
        return Err("connect_timeout_secs must be at least 1 (default 10)".to_owned());
    }
    let mut config = NatConfig {
        host_loopback: section.host_loopback,
        tcp_rx_buffer: section.tcp_buffer_bytes,
        tcp_tx_buffer: section.tcp_buffer_bytes,
        max_tcp_flows_per_vm: section.max_tcp_flows_per_vm,
        max_udp_flows_per_vm: section.max_udp_flows_per_vm,
        new_flows_per_sec: section.new_flows_per_sec,
        tcp_idle_timeout: Duration::from_secs(section.tcp_idle_timeout_secs.max(1)),
        tcp_vm_timeout: Duration::from_secs(section.vm_timeout_secs.max(1)),
        udp_idle_timeout: Duration::from_secs(section.udp_idle_timeout_secs.max(1)),
        ..NatConfig::default()
    };
    config.policy.allow_private = section.allow_private;
    config.policy.allow = rules("allow", &section.allow)?;
    config.policy.deny = rules("deny", &section.deny)?;
    config.policy.denied_tcp_ports = section.denied_tcp_ports.clone();
    Ok(config)
}

fn parse_rule(text: &str) -> Result<PolicyRule, &'static str> {
    let (net, ports) = match text.split_once(':') {
        Some((net, ports)) => (net, Some(ports)),
        None => (text, None),
    };
    let network = if net.contains('/') {
        Ipv4Cidr::from_str(net).map_err(|_| "is not an IPv4 CIDR")?
    } else {
        Ipv4Cidr::new(net.parse().map_err(|_| "is not an IPv4 address")?, 32)
    };
    let network = Ipv4Cidr::new(network.network().address(), network.prefix_len());
    let ports = match ports {
        None => None,
        Some(ports) => {
            let (low, high) = ports.split_once('-').unwrap_or((ports, ports));
            let low: u16 = low.parse().map_err(|_| "has a bad port")?;
            let high: u16 = high.parse().map_err(|_| "has a bad port")?;
            if low > high {
                return Err("has a port range whose start is above its end");
            }
            Some((low, high))
        }
    };
    Ok(PolicyRule { network, ports })
}

/// `tcp:0.0.0.0:8080=default/10.0.2.15:80`: where the host listens and which VM gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub protocol: ForwardProtocol,
    pub listen: SocketAddr,
    pub lan: crate::lan::LanName,
    pub target: ForwardTarget,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardProtocol {
    Tcp,
    Udp,
}

/// A VM named by address, DHCP host name or MAC; names and MACs follow lease changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTarget {
    Ip(Ipv4Addr),
    Host(String),
    Mac(EthernetAddress),
}

impl std::fmt::Display for ForwardTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardTarget::Ip(ip) => write!(f, "{ip}"),
            ForwardTarget::Host(host) => f.write_str(host),
            ForwardTarget::Mac(mac) => write!(f, "{mac}"),
        }
    }
}

impl std::fmt::Display for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let protocol = match self.protocol {
            ForwardProtocol::Tcp => "tcp",
            ForwardProtocol::Udp => "udp",
        };
        write!(
            f,
            "{protocol}:{}={}/{}:{}",
            self.listen, self.lan, self.target, self.port
        )
    }
}

impl FromStr for Forward {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |problem: &str| {
            format!(
                "forward `{text}`: {problem}; write PROTO:LISTEN_IP:PORT=LAN/TARGET:PORT, e.g. tcp:0.0.0.0:8080=default/10.0.2.15:80 (TARGET: an IP, a DHCP host name or a MAC)"
            )
        };
        let (listen, target) = text.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let (protocol, listen) = listen.split_once(':').ok_or_else(|| bad("no protocol"))?;
        let protocol = match protocol {
            "tcp" => ForwardProtocol::Tcp,
            "udp" => ForwardProtocol::Udp,
            _ => return Err(bad("the protocol must be tcp or udp")),
        };
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| bad("the listen address is not IP:PORT"))?;
        let (lan, target) = target
            .split_once('/')
            .ok_or_else(|| bad("no LAN before `/`"))?;
        let lan = crate::lan::LanName::new(lan).map_err(|e| bad(&e.to_string()))?;
        let (target, port) = target
            .rsplit_once(':')
            .ok_or_else(|| bad("no target port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("the target port is not 1-65535"))?;
        let target = if let Ok(ip) = target.parse::<Ipv4Addr>() {
            ForwardTarget::Ip(ip)
        } else if let Ok(mac) = EthernetAddress::from_str(target) {
            ForwardTarget::Mac(mac)
        } else if !target.is_empty()
            && target.len() <= 63
            && target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            ForwardTarget::Host(target.to_ascii_lowercase())
        } else {
            return Err(bad(
                "the target is not an IPv4 address, a MAC or a host name",
            ));
        };
        Ok(Forward {
            protocol,
            listen,
            lan,
            target,
            port,
        })
    }
}

/// What host tasks tell the gateway task.
#[derive(Debug)]
pub enum HostEvent {
    Connected(FlowId, TcpStream),
    ConnectFailed(FlowId, ConnectFailure),
    Data(FlowId, Bytes),
    Eof(FlowId),
    Failed(FlowId),
    /// A writer finished a chunk: there may be room for more.
    Drained(FlowId),
    Datagram(FlowId, SocketAddrV4, Bytes),
    PingReply {
        from: Ipv4Addr,
        host_seq: u16,
        data: Bytes,
    },
}

enum ToHost {
    Data(Bytes),
    Shutdown,
}

/// Counts live host tasks relay-wide, so tests and /metrics can see none is left.
#[derive(Debug, Default)]
pub struct TaskGauge(AtomicI64);

impl TaskGauge {
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Decrements the gauge when its task ends, however it ends (abort included).
struct TaskGuard(Arc<TaskGauge>);

impl TaskGuard {
    fn new(gauge: &Arc<TaskGauge>) -> Self {
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
    Connecting(AbortHandle),
    Tcp(TcpFlow),
    Udp {
        socket: Arc<UdpSocket>,
        reader: AbortHandle,
    },
    /// A UDP forward's client: answers leave from the forward's socket.
    InboundUdp(Arc<UdpSocket>),
}

struct TcpFlow {
    to_host: mpsc::Sender<ToHost>,
    credits: Arc<Semaphore>,
    /// Host data smoltcp's send buffer had no room for yet.
    pending: VecDeque<Bytes>,
    host_eof: bool,
    eof_passed: bool,
    /// Chunks sent to the writer and not yet written.
    chunks_at_writer: usize,
    vm_fin_passed: bool,
    tasks: [AbortHandle; 2],
}

impl Drop for HostFlow {
    fn drop(&mut self) {
        match self {
            HostFlow::Connecting(task) => task.abort(),
            HostFlow::Tcp(flow) => flow.tasks.iter().for_each(AbortHandle::abort),
            HostFlow::Udp { reader, .. } => reader.abort(),
            HostFlow::InboundUdp(_) => {}
        }
    }
}

/// How the relay can send pings, found once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingMode {
    /// Unprivileged ICMP datagram sockets (`net.ipv4.ping_group_range`).
    Datagram,
    /// Raw sockets (root or CAP_NET_RAW).
    Raw,
    Unavailable,
}

impl PingMode {
    /// Tries an ICMP datagram socket, then a raw one.
    pub fn detect() -> PingMode {
        if icmp_socket(socket2::Type::DGRAM).is_ok() {
            PingMode::Datagram
        } else if icmp_socket(socket2::Type::RAW).is_ok() {
            PingMode::Raw
        } else {
            PingMode::Unavailable
        }
    }
}

fn icmp_socket(kind: socket2::Type) -> io::Result<socket2::Socket> {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, kind, Some(socket2::Protocol::ICMPV4))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Shared by every LAN's NAT.
#[derive(Debug)]
pub struct NatShared {
    pub config: NatConfig,
    pub connect_timeout: Duration,
    pub ping_mode: PingMode,
    pub tasks: Arc<TaskGauge>,
}

struct PingSocket {
    socket: Arc<UdpSocket>,
    reader: AbortHandle,
    /// Raw sockets see every reply on the host: ours carry this identifier.
    ident: u16,
    next_seq: u16,
    requests: HashMap<u16, (FlowId, u16)>,
    order: VecDeque<u16>,
}

impl Drop for PingSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The host sockets of one LAN's NAT, driven from its gateway task.
pub struct NatHost {
    shared: Arc<NatShared>,
    events: mpsc::Sender<HostEvent>,
    flows: HashMap<FlowId, HostFlow>,
    ping: Option<PingSocket>,
    /// Ping flows alive; the ping socket closes with the last.
    ping_flows: std::collections::HashSet<FlowId>,
    lan: String,
}

impl NatHost {
    pub fn new(shared: Arc<NatShared>, events: mpsc::Sender<HostEvent>, lan: &str) -> Self {
        Self {
            shared,
            events,
            flows: HashMap::new(),
            ping: None,
            ping_flows: std::collections::HashSet::new(),
            lan: lan.to_owned(),
        }
    }

    /// Carries out the gateway's NAT actions and moves TCP data both ways.
    pub fn drain(&mut self, gateway: &mut Gateway) {
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
    pub fn handle_event(&mut self, gateway: &mut Gateway, event: HostEvent) {
        let Some(nat) = gateway.nat_mut() else {
            return;
        };
        let now = Instant::now();
        match event {
            HostEvent::Connected(flow, stream) => {
                if !matches!(self.flows.get(&flow), Some(HostFlow::Connecting(_)))
                    || !nat.handle_tcp_connected(now, flow)
                {
                    self.flows.remove(&flow);
                    return;
                }
                let tcp = self.spawn_tcp(flow, stream);
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
            HostEvent::PingReply {
                from: _,
                host_seq,
                data,
            } => {
                if let Some(ping) = self.ping.as_mut()
                    && let Some((flow, seq)) = ping.requests.remove(&host_seq)
                {
                    nat.handle_ping_reply(now, flow, seq, &data);
                }
            }
        }
    }

    /// A host connection for a TCP forward to `target` in this LAN.
    pub fn inbound_tcp(&mut self, gateway: &mut Gateway, target: SocketAddrV4, stream: TcpStream) {
        let Some(nat) = gateway.nat_mut() else {
            return;
        };
        if let Some(flow) = nat.open_inbound_tcp(Instant::now(), target) {
            let tcp = self.spawn_tcp(flow, stream);
            self.flows.insert(flow, HostFlow::Tcp(tcp));
        }
    }

    /// A datagram from a UDP forward's client for `target` in this LAN.
    pub fn inbound_udp(
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
                    .insert(flow, HostFlow::Connecting(task.abort_handle()));
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
                if let Some(HostFlow::Udp { socket, .. }) = self.flows.get(&flow) {
                    // UDP may drop: a full socket buffer loses this datagram, like a NIC.
                    let _ = socket.try_send_to(&payload, SocketAddr::V4(to));
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

    fn move_data(&mut self, nat: &mut gateway::Nat, status: TcpStatus) {
        let Some(HostFlow::Tcp(tcp)) = self.flows.get_mut(&status.flow) else {
            return;
        };
        let now = Instant::now();
        let flow = status.flow;
        let mut readable = status.readable;
        while readable > 0 {
            if tcp.chunks_at_writer >= WRITER_QUEUE {
                // The writer will say Drained when there is room.
                break;
            }
            let Ok(permit) = tcp.to_host.try_reserve() else {
                break;
            };
            tcp.chunks_at_writer += 1;
            let data = nat.tcp_recv(now, flow, CHUNK);
            if data.is_empty() {
                break;
            }
            readable = readable.saturating_sub(data.len());
            permit.send(ToHost::Data(Bytes::from(data)));
        }
        let vm_finished = nat.tcp_status(flow).is_some_and(|s| s.vm_finished);
        if vm_finished
            && !tcp.vm_fin_passed
            && let Ok(permit) = tcp.to_host.try_reserve()
        {
            tcp.vm_fin_passed = true;
            permit.send(ToHost::Shutdown);
        }
        if status.send_space > 0 {
            push_to_vm(nat, now, flow, tcp);
        }
    }

    fn spawn_tcp(&self, flow: FlowId, stream: TcpStream) -> TcpFlow {
        let (mut read_half, mut write_half) = stream.into_split();
        let credits = Arc::new(Semaphore::new(HOST_READ_BUDGET));
        let (to_host, mut from_gateway) = mpsc::channel::<ToHost>(WRITER_QUEUE);
        let events = self.events.clone();
        let reader_credits = credits.clone();
        let guard = TaskGuard::new(&self.shared.tasks);
        let reader = tokio::spawn(async move {
            let _guard = guard;
            let mut buffer = BytesMut::new();
            loop {
                let Ok(permit) = reader_credits.acquire_many(CHUNK as u32).await else {
                    return;
                };
                let budget = permit.num_permits();
                permit.forget();
                buffer.reserve(budget);
                let mut limited = (&mut read_half).take(budget as u64);
                let event = match limited.read_buf(&mut buffer).await {
                    Ok(0) => HostEvent::Eof(flow),
                    Ok(n) => {
                        reader_credits.add_permits(budget - n);
                        HostEvent::Data(flow, buffer.split().freeze())
                    }
                    Err(_) => HostEvent::Failed(flow),
                };
                let last = !matches!(event, HostEvent::Data(..));
                if events.send(event).await.is_err() || last {
                    return;
                }
            }
        });
        let events = self.events.clone();
        let guard = TaskGuard::new(&self.shared.tasks);
        let writer = tokio::spawn(async move {
            let _guard = guard;
            while let Some(message) = from_gateway.recv().await {
                match message {
                    ToHost::Data(data) => {
                        if write_half.write_all(&data).await.is_err() {
                            let _ = events.send(HostEvent::Failed(flow)).await;
                            return;
                        }
                        if events.send(HostEvent::Drained(flow)).await.is_err() {
                            return;
                        }
                    }
                    ToHost::Shutdown => {
                        let _ = write_half.shutdown().await;
                        // Keep the half alive: dropping it would not reset, but the
                        // reader may still be receiving.
                        std::future::pending::<()>().await;
                    }
                }
            }
        });
        TcpFlow {
            to_host,
            credits,
            pending: VecDeque::new(),
            host_eof: false,
            eof_passed: false,
            chunks_at_writer: 0,
            vm_fin_passed: false,
            tasks: [reader.abort_handle(), writer.abort_handle()],
        }
    }

    /// A task that reads `socket` until aborted and passes what `to_event` makes of each
    /// datagram to the gateway task.
    fn spawn_reader(
        &self,
        socket: Arc<UdpSocket>,
        to_event: impl Fn(&[u8], SocketAddrV4) -> Option<HostEvent> + Send + 'static,
    ) -> AbortHandle {
        let events = self.events.clone();
        let guard = TaskGuard::new(&self.shared.tasks);
        let task = tokio::spawn(async move {
            let _guard = guard;
            let mut buffer = vec![0; 65536];
            loop {
                let from = match socket.recv_from(&mut buffer).await {
                    Ok((n, SocketAddr::V4(from))) => (n, from),
                    Ok(_) => continue,
                    Err(_) => {
                        // A persistent error must not spin a core.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Some(event) = to_event(&buffer[..from.0], from.1) else {
                    continue;
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
        });
        task.abort_handle()
    }

    fn open_udp(&self, flow: FlowId) -> io::Result<HostFlow> {
        let std_socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        std_socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let reader = self.spawn_reader(socket.clone(), move |datagram, from| {
            Some(HostEvent::Datagram(
                flow,
                from,
                Bytes::copy_from_slice(datagram),
            ))
        });
        Ok(HostFlow::Udp { socket, reader })
    }

    fn ping(&mut self, flow: FlowId, to: Ipv4Addr, seq: u16, payload: &[u8]) {
        if self.ping.is_none() {
            match self.open_ping() {
                Ok(ping) => self.ping = Some(ping),
                Err(e) => {
                    tracing::debug!(lan = %self.lan, "NAT: no ping socket: {e}");
                    return;
                }
            }
        }
        let Some(ping) = self.ping.as_mut() else {
            return;
        };
        self.ping_flows.insert(flow);
        let host_seq = ping.next_seq;
        ping.next_seq = ping.next_seq.wrapping_add(1);
        if let Some(old) = ping
            .requests
            .insert(host_seq, (flow, seq))
            .map(|_| host_seq)
        {
            ping.order.retain(|&s| s != old);
        }
        ping.order.push_back(host_seq);
        while ping.order.len() > PING_MEMORY {
            if let Some(oldest) = ping.order.pop_front() {
                ping.requests.remove(&oldest);
            }
        }
        let request = echo_request(ping.ident, host_seq, payload);
        let _ = ping.socket.try_send_to(&request, SocketAddr::from((to, 0)));
    }

    fn open_ping(&self) -> io::Result<PingSocket> {
        let (socket, raw) = match self.shared.ping_mode {
            PingMode::Datagram => (icmp_socket(socket2::Type::DGRAM)?, false),
            PingMode::Raw => (icmp_socket(socket2::Type::RAW)?, true),
            PingMode::Unavailable => {
                return Err(io::Error::other("ping is unavailable on this host"));
            }
        };
        let socket = Arc::new(UdpSocket::from_std(std::net::UdpSocket::from(socket))?);
        // Datagram sockets get their identifier from the kernel, which also filters
        // replies; raw sockets filter by ours.
        let ident = (std::process::id() as u16) ^ (rand_u16());
        let reader = self.spawn_reader(socket.clone(), move |mut packet, from| {
            if raw {
                // Raw sockets include the IPv4 header.
                let header = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
                if header < 20 || packet.len() < header {
                    return None;
                }
                packet = &packet[header..];
            }
            let (reply_ident, host_seq, data) = parse_echo_reply(packet)?;
            if raw && reply_ident != ident {
                return None;
            }
            Some(HostEvent::PingReply {
                from: *from.ip(),
                host_seq,
                data: Bytes::copy_from_slice(data),
            })
        });
        Ok(PingSocket {
            socket,
            reader,
            ident,
            next_seq: 0,
            requests: HashMap::new(),
            order: VecDeque::new(),
        })
    }
}

/// Moves waiting host data into smoltcp, returns the credits, and passes the host's EOF
/// once everything before it is in.
fn push_to_vm(nat: &mut gateway::Nat, now: Instant, flow: FlowId, tcp: &mut TcpFlow) {
    while let Some(front) = tcp.pending.front_mut() {
        let taken = nat.tcp_send(now, flow, front);
        tcp.credits.add_permits(taken);
        front.advance(taken);
        if front.is_empty() {
            tcp.pending.pop_front();
        } else {
            return;
        }
    }
    if tcp.host_eof && !tcp.eof_passed {
        tcp.eof_passed = true;
        nat.tcp_host_eof(now, flow);
    }
}

fn echo_request(ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr};
    let request = Icmpv4Repr::EchoRequest {
        ident,
        seq_no: seq,
        data: payload,
    };
    let mut buffer = vec![0; request.buffer_len()];
    request.emit(
        &mut Icmpv4Packet::new_unchecked(&mut buffer[..]),
        &ChecksumCapabilities::default(),
    );
    buffer
}

fn parse_echo_reply(packet: &[u8]) -> Option<(u16, u16, &[u8])> {
    use smoltcp::wire::{Icmpv4Message, Icmpv4Packet};
    let icmp = Icmpv4Packet::new_checked(packet).ok()?;
    if icmp.msg_type() != Icmpv4Message::EchoReply {
        return None;
    }
    Some((icmp.echo_ident(), icmp.echo_seq_no(), icmp.data()))
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u16
}

/// The relay host's IPv4 addresses, which VMs must not reach by default.
pub fn host_addresses() -> Vec<Ipv4Addr> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_and_print() {
        let forward: Forward = "tcp:0.0.0.0:8080=default/10.0.2.15:80".parse().unwrap();
        assert_eq!(forward.protocol, ForwardProtocol::Tcp);
        assert_eq!(
            forward.target,
            ForwardTarget::Ip(Ipv4Addr::new(10, 0, 2, 15))
        );
        assert_eq!(forward.to_string(), "tcp:0.0.0.0:8080=default/10.0.2.15:80");
        let by_mac: Forward = "udp:127.0.0.1:5353=lab/52:54:00:aa:bb:cc:53"
            .parse()
            .unwrap();
        assert_eq!(
            by_mac.target,
            ForwardTarget::Mac(EthernetAddress([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]))
        );
        let by_host: Forward = "tcp:127.0.0.1:2222=lab/Web-1:22".parse().unwrap();
        assert_eq!(by_host.target, ForwardTarget::Host("web-1".into()));
        for bad in [
            "tcp:0.0.0.0:8080",
            "sctp:0.0.0.0:1=default/10.0.2.15:80",
            "tcp:0.0.0.0:8080=default/10.0.2.15:0",
            "tcp:0.0.0.0:8080=bad name/10.0.2.15:80",
            "tcp:0.0.0.0:8080=default/a_b:80",
        ] {
            let err = bad.parse::<Forward>().unwrap_err();
            assert!(err.contains("PROTO:LISTEN_IP:PORT"), "{err}");
        }
    }

    #[test]
    fn rules_parse() {
        assert_eq!(
            parse_rule("198.18.0.0/15:80-90"),
            Ok(PolicyRule {
                network: "198.18.0.0/15".parse().unwrap(),
                ports: Some((80, 90))
            })
        );
        assert_eq!(
            parse_rule("127.0.0.1").unwrap().network,
            "127.0.0.1/32".parse().unwrap()
        );
        assert!(parse_rule("10.0.0.0/8:90-80").is_err());
        assert!(parse_rule("nope").is_err());
    }
}
