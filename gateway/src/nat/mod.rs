//! Rootless userspace NAT for one LAN: smoltcp terminates the VMs' TCP, UDP datagrams and
//! pings become host-socket actions. The driver owns the host sockets and reports back.
//!
//! ```text
//! VM SYN to 198.18.0.2:80  -> policy/limits -> NatAction::TcpConnect (SYN-ACK held back)
//! handle_tcp_connected     -> SYN-ACK to the VM; then poll_tcp_status / tcp_recv / tcp_send
//! handle_tcp_connect_failed-> RST (refused) or ICMP host unreachable (unreachable, timeout)
//! tcp_host_eof / tcp_abort -> FIN / RST to the VM
//! VM UDP datagram          -> NatAction::UdpSend (one flow per VM address and port)
//! handle_udp_datagram      -> UDP to the VM (only from peers the flow has sent to)
//! VM ping                  -> NatAction::PingSend; handle_ping_reply -> echo reply
//! flow ends (any reason)   -> NatAction::Close
//! ```
//!
//! Flow control is end to end: the VM's data waits in the socket's receive buffer until
//! the driver takes it (a full buffer closes the VM's window), and `tcp_send` takes only
//! what fits in the send buffer (the driver stops reading the host socket meanwhile).

mod device;
mod policy;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::wire::{
    HardwareAddress, Icmpv4DstUnreachable, Icmpv4Repr, IpAddress, IpCidr, IpEndpoint,
    IpListenEndpoint, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, UDP_HEADER_LEN, UdpRepr,
};

use device::OneShotDevice;
pub use policy::{DenyCounts, DenyReason, EgressPolicy, NatProtocol, PolicyRule};

use crate::emit::{HEADROOM, OutPacket};

/// Identifies one NAT flow between the core and its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// NAT settings of one LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    pub policy: EgressPolicy,
    /// TCP and UDP to the gateway address reach the relay host's 127.0.0.1 on the same
    /// port (QEMU's 10.0.2.2), bypassing the policy.
    pub host_loopback: bool,
    /// Per-flow buffers, each way. They bound memory and set the TCP window.
    pub tcp_rx_buffer: usize,
    pub tcp_tx_buffer: usize,
    pub max_tcp_flows_per_vm: usize,
    pub max_udp_flows_per_vm: usize,
    pub max_ping_flows_per_vm: usize,
    /// All flows of the LAN together.
    pub max_flows: usize,
    /// New flows per second per VM (a token bucket holding two seconds' worth).
    pub new_flows_per_sec: u32,
    pub tcp_idle_timeout: Duration,
    /// A VM that stops acknowledging (its tab closed mid-transfer) loses its connections
    /// after this long; idle connections are probed (keep-alive) at the same interval.
    pub tcp_vm_timeout: Duration,
    /// Handshakes and half-closed connections.
    pub tcp_transitory_timeout: Duration,
    pub udp_idle_timeout: Duration,
    pub ping_idle_timeout: Duration,
    /// DNS over TCP connections to the DNS address, all VMs together.
    pub max_dns_tcp_connections: usize,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            policy: EgressPolicy::default(),
            host_loopback: false,
            tcp_rx_buffer: 256 * 1024,
            tcp_tx_buffer: 256 * 1024,
            max_tcp_flows_per_vm: 512,
            max_udp_flows_per_vm: 256,
            max_ping_flows_per_vm: 16,
            max_flows: 65_536,
            new_flows_per_sec: 200,
            tcp_idle_timeout: Duration::from_secs(7440),
            tcp_vm_timeout: Duration::from_secs(60),
            tcp_transitory_timeout: Duration::from_secs(240),
            udp_idle_timeout: Duration::from_secs(120),
            ping_idle_timeout: Duration::from_secs(30),
            max_dns_tcp_connections: 64,
        }
    }
}

/// What the driver must do with host sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatAction {
    /// Connect to `to`, then call [`Nat::handle_tcp_connected`] or
    /// [`Nat::handle_tcp_connect_failed`].
    TcpConnect {
        flow: FlowId,
        vm: SocketAddrV4,
        to: SocketAddrV4,
    },
    /// Send `payload` from the flow's UDP socket (opened on its first datagram).
    UdpSend {
        flow: FlowId,
        to: SocketAddrV4,
        payload: Vec<u8>,
    },
    /// Send an echo request; pass the reply to [`Nat::handle_ping_reply`] with `seq`.
    PingSend {
        flow: FlowId,
        to: Ipv4Addr,
        seq: u16,
        payload: Vec<u8>,
    },
    /// The flow is gone: drop its host socket and tasks.
    Close { flow: FlowId },
    /// A VM answered a UDP forward's `client`: send `payload` from the forward's socket.
    ForwardReply {
        flow: FlowId,
        client: SocketAddrV4,
        payload: Vec<u8>,
    },
}

/// Why a host connect failed; decides what the VM is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// RST to the VM.
    Refused,
    /// ICMP host unreachable to the VM.
    Unreachable,
    /// ICMP host unreachable to the VM.
    TimedOut,
}

/// A TCP flow's state, for the driver to move data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpStatus {
    pub flow: FlowId,
    /// Bytes from the VM waiting for [`Nat::tcp_recv`].
    pub readable: usize,
    /// Bytes [`Nat::tcp_send`] would take now.
    pub send_space: usize,
    /// The VM closed its side and everything it sent was taken: shut the host side's write.
    pub vm_finished: bool,
}

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

/// Counters and gauges of the NAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Flows started, by [`NatProtocol`] index (tcp, udp, icmp).
    pub flows_started: [u64; 3],
    /// Gauge: live flows by protocol.
    pub flows_active: [usize; 3],
    pub denied: DenyCounts,
    /// Bytes from VMs to hosts and back (TCP and UDP payload, ping data).
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub connect_failed: u64,
    /// Flows ended by an idle or handshake timeout.
    pub timeouts: u64,
    /// IPv4 fragments to outside addresses (not reassembled).
    pub fragments: u64,
    /// UDP from peers the flow never sent to, or for flows that are gone.
    pub unsolicited: u64,
    /// Gauge: DNS over TCP connections.
    pub dns_tcp_connections: usize,
    /// Connections opened into VMs for port forwards.
    pub inbound_connections: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TcpKey {
    vm: SocketAddrV4,
    /// The address the VM talks to (before host-loopback rewriting).
    remote: SocketAddrV4,
}

#[derive(Debug)]
enum FlowKind {
    Tcp {
        key: TcpKey,
        handle: SocketHandle,
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
struct InboundUdpKey {
    client: SocketAddrV4,
    target: SocketAddrV4,
}

#[derive(Debug)]
struct Flow {
    kind: FlowKind,
    vm_ip: Ipv4Addr,
    last_active: Instant,
    /// In the status queue already.
    dirty: bool,
}

impl Flow {
    fn protocol(&self) -> NatProtocol {
        match self.kind {
            FlowKind::Tcp { .. } => NatProtocol::Tcp,
            FlowKind::Udp { .. } => NatProtocol::Udp,
            FlowKind::Ping { .. } => NatProtocol::Icmp,
            FlowKind::InboundUdp { .. } => NatProtocol::Udp,
        }
    }
}

#[derive(Debug)]
struct VmUsage {
    flows: [usize; 3],
    tokens: f64,
    refilled: Instant,
}

/// Peers a UDP flow remembers.
const MAX_UDP_PEERS: usize = 64;
/// A DNS message over TCP is at most 65535 bytes plus its length prefix.
const DNS_TCP_BUFFER: usize = 65_537;
const DNS_PORT: u16 = 53;
const DNS_TCP_IDLE: Duration = Duration::from_secs(30);
/// How often flows are checked for timeouts.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Gateway-side ports of inbound forward connections (the IANA dynamic range).
const INBOUND_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

#[derive(Debug)]
struct DnsConn {
    conn: u64,
    last_active: Instant,
}

/// The NAT of one LAN. Owned by [`crate::Gateway`], which classifies frames and wraps the
/// packets it emits in Ethernet.
pub struct Nat {
    config: NatConfig,
    gateway_ip: Ipv4Addr,
    dns_ip: Ipv4Addr,
    mtu: usize,
    epoch: Instant,
    /// The latest `now` seen: smoltcp's clock must not go back.
    last_now: Instant,
    iface: Interface,
    sockets: SocketSet<'static>,
    /// IP packets for the LAN, with [`HEADROOM`] in front.
    tx: VecDeque<Vec<u8>>,
    actions: VecDeque<NatAction>,
    next_flow: u64,
    flows: HashMap<FlowId, Flow>,
    tcp_flows: HashMap<TcpKey, FlowId>,
    tcp_by_handle: HashMap<SocketHandle, FlowId>,
    udp_flows: HashMap<SocketAddrV4, FlowId>,
    ping_flows: HashMap<(Ipv4Addr, u16), FlowId>,
    inbound_udp: HashMap<InboundUdpKey, FlowId>,
    inbound_udp_ports: HashMap<u16, FlowId>,
    usage: HashMap<Ipv4Addr, VmUsage>,
    status_queue: VecDeque<FlowId>,
    dns_listener: Option<SocketHandle>,
    dns_conns: HashMap<SocketHandle, DnsConn>,
    dns_queries: VecDeque<(dns::ClientId, Vec<u8>)>,
    next_dns_conn: u64,
    next_sweep: Instant,
    next_inbound_port: u16,
    stats: NatStats,
}

impl std::fmt::Debug for Nat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nat")
            .field("config", &self.config)
            .field("flows", &self.flows.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Nat {
    pub(crate) fn new(config: NatConfig, gateway: &crate::GatewayConfig, now: Instant) -> Self {
        let mtu = usize::from(gateway.mtu);
        let mut tx = VecDeque::new();
        let mut device = OneShotDevice {
            rx: None,
            tx: &mut tx,
            mtu,
        };
        let mut iface = Interface::new(
            IfaceConfig::new(HardwareAddress::Ip),
            &mut device,
            smoltcp::time::Instant::ZERO,
        );
        iface.update_ip_addrs(|addrs| {
            let prefix = gateway.network.prefix_len();
            // Two addresses fit (IFACE_MAX_ADDR_COUNT); dns_ip may equal gateway_ip.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(gateway.gateway_ip), prefix));
            if gateway.dns_ip != gateway.gateway_ip {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(gateway.dns_ip), prefix));
            }
        });
        // Any-IP with a default route through ourselves: smoltcp accepts segments to every
        // outside address, and our listening sockets pick theirs.
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(gateway.gateway_ip);
        iface.set_any_ip(true);
        let mut nat = Self {
            config,
            gateway_ip: gateway.gateway_ip,
            dns_ip: gateway.dns_ip,
            mtu,
            epoch: now,
            last_now: now,
            iface,
            sockets: SocketSet::new(Vec::new()),
            tx,
            actions: VecDeque::new(),
            next_flow: 1,
            flows: HashMap::new(),
            tcp_flows: HashMap::new(),
            tcp_by_handle: HashMap::new(),
            udp_flows: HashMap::new(),
            ping_flows: HashMap::new(),
            inbound_udp: HashMap::new(),
            inbound_udp_ports: HashMap::new(),
            usage: HashMap::new(),
            status_queue: VecDeque::new(),
            dns_listener: None,
            dns_conns: HashMap::new(),
            dns_queries: VecDeque::new(),
            next_dns_conn: 1,
            next_sweep: now + SWEEP_INTERVAL,
            next_inbound_port: *INBOUND_PORTS.start(),
            stats: NatStats::default(),
        };
        nat.ensure_dns_listener();
        nat
    }

    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    pub fn stats(&self) -> &NatStats {
        &self.stats
    }

    /// Replaces the host addresses the policy denies (the driver reads them at start).
    pub fn set_host_addresses(&mut self, addresses: Vec<Ipv4Addr>) {
        self.config.policy.host_addresses = addresses;
    }

    /// The next host action.
    pub fn poll_action(&mut self) -> Option<NatAction> {
        self.actions.pop_front()
    }

    /// TCP flows whose state changed since they were last reported.
    pub fn poll_tcp_status(&mut self) -> Option<TcpStatus> {
        while let Some(flow) = self.status_queue.pop_front() {
            let Some(entry) = self.flows.get_mut(&flow) else {
                continue;
            };
            entry.dirty = false;
            if let Some(status) = self.tcp_status(flow) {
                return Some(status);
            }
        }
        None
    }

    /// The current state of a TCP flow (`None` when it is gone or still connecting).
    pub fn tcp_status(&mut self, flow: FlowId) -> Option<TcpStatus> {
        let FlowKind::Tcp {
            handle,
            connecting: None,
            ..
        } = self.flows.get(&flow)?.kind
        else {
            return None;
        };
        let socket = self.sockets.get::<tcp::Socket>(handle);
        let readable = socket.recv_queue();
        let send_space = if socket.may_send() {
            socket.send_capacity() - socket.send_queue()
        } else {
            0
        };
        Some(TcpStatus {
            flow,
            readable,
            send_space,
            vm_finished: readable == 0 && !socket.may_recv() && socket_past_handshake(socket),
        })
    }

    /// When [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let stamp = self.stamp(self.last_now);
        let smoltcp_at = self
            .iface
            .poll_at(stamp, &self.sockets)
            .map(|at| self.epoch + Duration::from_micros(at.total_micros().max(0) as u64));
        let sweep =
            (!self.flows.is_empty() || !self.dns_conns.is_empty()).then_some(self.next_sweep);
        match (smoltcp_at, sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Retransmissions and timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.poll(now);
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            self.sweep(now);
        }
    }

    /// The next IP packet for the LAN, with [`HEADROOM`] bytes free in front.
    pub(crate) fn poll_packet(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    // ---- from the VMs ----

    /// A TCP segment from a VM, to an outside address, to the DNS address, or (with
    /// host loopback) to the gateway address. `packet` is the whole IP packet.
    /// `false`: the segment was malformed.
    pub(crate) fn handle_tcp(
        &mut self,
        now: Instant,
        ip: &Ipv4Repr,
        packet: &[u8],
        segment_bytes: &[u8],
    ) -> bool {
        let caps = ChecksumCapabilities::default();
        let src = IpAddress::Ipv4(ip.src_addr);
        let dst = IpAddress::Ipv4(ip.dst_addr);
        let Ok(tcp_packet) = TcpPacket::new_checked(segment_bytes) else {
            return false;
        };
        let Ok(segment) = TcpRepr::parse(&tcp_packet, &src, &dst, &caps) else {
            return false;
        };
        let remote = SocketAddrV4::new(ip.dst_addr, segment.dst_port);
        let vm = SocketAddrV4::new(ip.src_addr, segment.src_port);
        if ip.dst_addr == self.dns_ip && segment.dst_port == DNS_PORT {
            self.feed(now, packet);
            self.after_dns_tcp(now);
            return true;
        }
        let key = TcpKey { vm, remote };
        if let Some(&flow) = self.tcp_flows.get(&key) {
            self.touch(flow, now);
            self.feed(now, packet);
            self.mark_dirty(flow);
            self.reap_tcp(flow);
            return true;
        }
        let is_syn = segment.control == TcpControl::Syn && segment.ack_number.is_none();
        if !is_syn {
            // Not a flow we know: smoltcp answers with RST (RST itself is ignored).
            self.feed(now, packet);
            return true;
        }
        let to = match self.outbound_target(NatProtocol::Tcp, remote) {
            Ok(to) => to,
            Err(reason) => {
                self.stats.denied.add(reason);
                self.push_reset(ip, &segment);
                return true;
            }
        };
        if let Err(reason) = self.admit(now, ip.src_addr, NatProtocol::Tcp) {
            self.stats.denied.add(reason);
            self.push_reset(ip, &segment);
            return true;
        }
        let mut socket = self.new_tcp_socket();
        socket.pause_synack(true);
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(remote.ip().to_owned())),
                port: remote.port(),
            })
            .is_err()
        {
            return false;
        }
        let handle = self.sockets.add(socket);
        let flow = self.new_flow(
            now,
            ip.src_addr,
            FlowKind::Tcp {
                key,
                handle,
                connecting: Some((*ip, quote(segment_bytes))),
            },
        );
        self.tcp_flows.insert(key, flow);
        self.tcp_by_handle.insert(handle, flow);
        // The listener takes the SYN now, before any other listener could.
        self.feed(now, packet);
        if self.sockets.get::<tcp::Socket>(handle).state() != tcp::State::SynReceived {
            // smoltcp refused the SYN (bad options): forget the flow.
            self.remove_flow(flow, false);
            return false;
        }
        self.actions
            .push_back(NatAction::TcpConnect { flow, vm, to });
        true
    }

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

    /// An echo request from a VM to an outside address.
    pub(crate) fn handle_ping(
        &mut self,
        now: Instant,
        ip: &Ipv4Repr,
        ident: u16,
        seq: u16,
        data: &[u8],
    ) {
        if let Err(reason) = self
            .config
            .policy
            .check(NatProtocol::Icmp, ip.dst_addr, None)
        {
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

    // ---- from the driver ----

    /// The host connect of `flow` succeeded: the VM gets its SYN-ACK. `false` when the flow
    /// is gone already (drop the connection).
    pub fn handle_tcp_connected(&mut self, now: Instant, flow: FlowId) -> bool {
        let Some(entry) = self.flows.get_mut(&flow) else {
            return false;
        };
        let FlowKind::Tcp {
            handle, connecting, ..
        } = &mut entry.kind
        else {
            return false;
        };
        let handle = *handle;
        *connecting = None;
        entry.last_active = now;
        self.sockets
            .get_mut::<tcp::Socket>(handle)
            .pause_synack(false);
        self.poll(now);
        self.mark_dirty(flow);
        true
    }

    /// The host connect of `flow` failed: RST or ICMP unreachable to the VM.
    pub fn handle_tcp_connect_failed(&mut self, now: Instant, flow: FlowId, why: ConnectFailure) {
        let Some(entry) = self.flows.get(&flow) else {
            return;
        };
        let FlowKind::Tcp {
            handle,
            connecting: Some(syn),
            ..
        } = &entry.kind
        else {
            return;
        };
        self.stats.connect_failed += 1;
        let handle = *handle;
        match why {
            ConnectFailure::Refused => {
                // Abort in SYN-RECEIVED sends the RST (RFC 9293 3.10.7.4).
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
                self.poll(now);
            }
            ConnectFailure::Unreachable | ConnectFailure::TimedOut => {
                let (ip, quoted) = *syn;
                self.push_unreachable(&ip, &quoted, Icmpv4DstUnreachable::HostUnreachable);
            }
        }
        self.remove_flow(flow, false);
    }

    /// Takes up to `max` bytes the VM sent on `flow` (for the host socket).
    pub fn tcp_recv(&mut self, now: Instant, flow: FlowId, max: usize) -> Vec<u8> {
        let Some(handle) = self.tcp_handle(flow) else {
            return Vec::new();
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let mut data = Vec::new();
        while data.len() < max {
            let taken = socket.recv(|buffer| {
                let n = buffer.len().min(max - data.len());
                data.extend_from_slice(&buffer[..n]);
                (n, n)
            });
            match taken {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        if !data.is_empty() {
            self.stats.bytes_out += data.len() as u64;
            self.touch(flow, now);
            // The window opened: tell the VM.
            self.poll(now);
        }
        data
    }

    /// Queues host data for the VM; returns how much fit.
    pub fn tcp_send(&mut self, now: Instant, flow: FlowId, data: &[u8]) -> usize {
        let Some(handle) = self.tcp_handle(flow) else {
            return 0;
        };
        let sent = self
            .sockets
            .get_mut::<tcp::Socket>(handle)
            .send_slice(data)
            .unwrap_or(0);
        if sent > 0 {
            self.stats.bytes_in += sent as u64;
            self.touch(flow, now);
            self.poll(now);
        }
        sent
    }

    /// The host closed its side: FIN to the VM after what is queued.
    pub fn tcp_host_eof(&mut self, now: Instant, flow: FlowId) {
        if let Some(handle) = self.tcp_handle(flow) {
            self.sockets.get_mut::<tcp::Socket>(handle).close();
            self.poll(now);
            self.reap_tcp(flow);
        }
    }

    /// The host connection failed: RST to the VM, flow removed.
    pub fn tcp_abort(&mut self, now: Instant, flow: FlowId) {
        if let Some(handle) = self.tcp_handle(flow) {
            self.sockets.get_mut::<tcp::Socket>(handle).abort();
            self.poll(now);
            self.remove_flow(flow, true);
        }
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

    /// Ends a flow from the driver's side (e.g. its host socket failed).
    pub fn close_flow(&mut self, now: Instant, flow: FlowId) {
        if self.tcp_handle(flow).is_some() {
            self.tcp_abort(now, flow);
        } else if self.flows.contains_key(&flow) {
            self.remove_flow(flow, true);
        }
    }

    /// Opens a TCP connection from the gateway address to a VM, for an inbound port
    /// forward; move data as for outbound flows once it is established. `None` when no
    /// local port is free or the LAN is at its flow limit.
    pub fn open_inbound_tcp(&mut self, now: Instant, target: SocketAddrV4) -> Option<FlowId> {
        if self.flows.len() >= self.config.max_flows {
            self.stats.denied.add(DenyReason::Limit);
            return None;
        }
        let mut chosen = None;
        for _ in 0..INBOUND_PORTS.len() {
            let port = self.next_inbound_port;
            self.next_inbound_port = if port >= *INBOUND_PORTS.end() {
                *INBOUND_PORTS.start()
            } else {
                port + 1
            };
            let key = TcpKey {
                vm: target,
                remote: SocketAddrV4::new(self.gateway_ip, port),
            };
            if !self.tcp_flows.contains_key(&key) {
                chosen = Some((port, key));
                break;
            }
        }
        let (port, key) = chosen?;
        self.stamp(now);
        let mut socket = self.new_tcp_socket();
        socket
            .connect(
                self.iface.context(),
                IpEndpoint::new(IpAddress::Ipv4(*target.ip()), target.port()),
                IpListenEndpoint {
                    addr: Some(IpAddress::Ipv4(self.gateway_ip)),
                    port,
                },
            )
            .ok()?;
        let handle = self.sockets.add(socket);
        let flow = self.new_flow(
            now,
            *target.ip(),
            FlowKind::Tcp {
                key,
                handle,
                connecting: None,
            },
        );
        self.tcp_flows.insert(key, flow);
        self.tcp_by_handle.insert(handle, flow);
        self.stats.inbound_connections += 1;
        self.poll(now);
        Some(flow)
    }

    /// A datagram from `client` of a UDP forward, for `target` in the LAN. It leaves from
    /// the gateway address on a port kept for this client, so the VM's answers come back
    /// as [`NatAction::ForwardReply`].
    pub fn inbound_udp(
        &mut self,
        now: Instant,
        client: SocketAddrV4,
        target: SocketAddrV4,
        payload: &[u8],
    ) -> Option<FlowId> {
        let key = InboundUdpKey { client, target };
        let flow = match self.inbound_udp.get(&key) {
            Some(&flow) => flow,
            None => {
                if self.flows.len() >= self.config.max_flows {
                    self.stats.denied.add(DenyReason::Limit);
                    return None;
                }
                let gateway_port = self.free_inbound_udp_port()?;
                let flow = self.new_flow(
                    now,
                    *target.ip(),
                    FlowKind::InboundUdp { key, gateway_port },
                );
                self.inbound_udp.insert(key, flow);
                self.inbound_udp_ports.insert(gateway_port, flow);
                flow
            }
        };
        let entry = self.flows.get_mut(&flow)?;
        entry.last_active = now;
        let FlowKind::InboundUdp { gateway_port, .. } = entry.kind else {
            return None;
        };
        self.stats.bytes_in += payload.len() as u64;
        self.push_udp(
            SocketAddrV4::new(self.gateway_ip, gateway_port),
            target,
            payload,
        );
        Some(flow)
    }

    fn free_inbound_udp_port(&mut self) -> Option<u16> {
        for _ in 0..INBOUND_PORTS.len() {
            let port = self.next_inbound_port;
            self.next_inbound_port = if port >= *INBOUND_PORTS.end() {
                *INBOUND_PORTS.start()
            } else {
                port + 1
            };
            if !self.inbound_udp_ports.contains_key(&port) {
                return Some(port);
            }
        }
        None
    }

    /// UDP from a VM to the gateway address: an answer to a UDP forward's client, or
    /// (with host loopback) a datagram for the host. `false` when neither.
    pub(crate) fn handle_udp_to_gateway(
        &mut self,
        now: Instant,
        ip: &Ipv4Repr,
        udp: &UdpRepr,
        datagram: &[u8],
    ) -> bool {
        if let Some(&flow) = self.inbound_udp_ports.get(&udp.dst_port)
            && let Some(entry) = self.flows.get_mut(&flow)
            && let FlowKind::InboundUdp { key, .. } = entry.kind
            && key.target == SocketAddrV4::new(ip.src_addr, udp.src_port)
        {
            entry.last_active = now;
            let payload = &datagram[UDP_HEADER_LEN.min(datagram.len())..];
            self.stats.bytes_out += payload.len() as u64;
            self.actions.push_back(NatAction::ForwardReply {
                flow,
                client: key.client,
                payload: payload.to_vec(),
            });
            return true;
        }
        if self.config.host_loopback {
            self.handle_udp(now, ip, udp, datagram);
            return true;
        }
        false
    }

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

    // ---- DNS over TCP ----

    /// A DNS query that arrived over TCP, for the DNS proxy.
    pub(crate) fn poll_dns_query(&mut self) -> Option<(dns::ClientId, Vec<u8>)> {
        self.dns_queries.pop_front()
    }

    /// An answer for a TCP client; dropped if its connection is gone.
    pub(crate) fn dns_tcp_answer(&mut self, now: Instant, conn: u64, answer: &[u8]) {
        let Some((&handle, _)) = self.dns_conns.iter().find(|(_, c)| c.conn == conn) else {
            return;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        // All or nothing: a partial message would corrupt the stream.
        if socket.send_capacity() - socket.send_queue() >= answer.len() + 2 {
            let _ = socket.send_slice(&len.to_be_bytes());
            let _ = socket.send_slice(answer);
        }
        self.poll(now);
    }

    fn ensure_dns_listener(&mut self) {
        if self.dns_listener.is_some()
            || self.dns_conns.len() >= self.config.max_dns_tcp_connections
        {
            return;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; DNS_TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; DNS_TCP_BUFFER]),
        );
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(self.dns_ip)),
                port: DNS_PORT,
            })
            .is_ok()
        {
            self.dns_listener = Some(self.sockets.add(socket));
        }
    }

    fn after_dns_tcp(&mut self, now: Instant) {
        if let Some(listener) = self.dns_listener
            && self.sockets.get::<tcp::Socket>(listener).state() != tcp::State::Listen
        {
            self.dns_listener = None;
            let conn = self.next_dns_conn;
            self.next_dns_conn += 1;
            self.dns_conns.insert(
                listener,
                DnsConn {
                    conn,
                    last_active: now,
                },
            );
            self.ensure_dns_listener();
        }
        let handles: Vec<SocketHandle> = self.dns_conns.keys().copied().collect();
        for handle in handles {
            self.serve_dns_conn(now, handle);
        }
        self.stats.dns_tcp_connections = self.dns_conns.len();
    }

    fn serve_dns_conn(&mut self, now: Instant, handle: SocketHandle) {
        let Some(conn) = self.dns_conns.get_mut(&handle) else {
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let client = match socket.remote_endpoint() {
            Some(IpEndpoint {
                addr: IpAddress::Ipv4(ip),
                port,
            }) => SocketAddrV4::new(ip, port),
            _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        // Whole messages only: peek the length, then take the message.
        loop {
            let mut prefix = [0u8; 2];
            if socket.peek_slice(&mut prefix) != Ok(2) {
                break;
            }
            let len = usize::from(u16::from_be_bytes(prefix));
            if socket.recv_queue() < 2 + len {
                break;
            }
            let mut message = vec![0; 2 + len];
            if socket.recv_slice(&mut message) != Ok(2 + len) {
                break;
            }
            conn.last_active = now;
            message.drain(..2);
            self.dns_queries
                .push_back((dns::ClientId::tcp(client, conn.conn), message));
        }
        let closed = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
        if !closed && !socket.may_recv() && socket.recv_queue() == 0 && socket.may_send() {
            // The VM is done asking: close our side once the answers are out.
            socket.close();
        }
        if closed || now.saturating_duration_since(conn.last_active) > DNS_TCP_IDLE {
            socket.abort();
            self.poll(now);
            self.sockets.remove(handle);
            self.dns_conns.remove(&handle);
            self.ensure_dns_listener();
        }
    }

    // ---- internals ----

    fn outbound_target(
        &self,
        protocol: NatProtocol,
        remote: SocketAddrV4,
    ) -> Result<SocketAddrV4, DenyReason> {
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
    fn admit(
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
            flows: [0; 3],
            tokens: rate * 2.0,
            refilled: now,
        });
        let limit = match protocol {
            NatProtocol::Tcp => self.config.max_tcp_flows_per_vm,
            NatProtocol::Udp => self.config.max_udp_flows_per_vm,
            NatProtocol::Icmp => self.config.max_ping_flows_per_vm,
        };
        if usage.flows[protocol as usize] >= limit {
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

    fn new_flow(&mut self, now: Instant, vm_ip: Ipv4Addr, kind: FlowKind) -> FlowId {
        let flow = FlowId(self.next_flow);
        self.next_flow += 1;
        let entry = Flow {
            kind,
            vm_ip,
            last_active: now,
            dirty: false,
        };
        let protocol = entry.protocol() as usize;
        self.stats.flows_started[protocol] += 1;
        self.stats.flows_active[protocol] += 1;
        if let Some(usage) = self.usage.get_mut(&vm_ip) {
            usage.flows[protocol] += 1;
        }
        self.flows.insert(flow, entry);
        flow
    }

    /// Forgets a flow; `tell_driver` queues [`NatAction::Close`].
    fn remove_flow(&mut self, flow: FlowId, tell_driver: bool) {
        let Some(entry) = self.flows.remove(&flow) else {
            return;
        };
        let protocol = entry.protocol() as usize;
        self.stats.flows_active[protocol] -= 1;
        if let Some(usage) = self.usage.get_mut(&entry.vm_ip) {
            usage.flows[protocol] = usage.flows[protocol].saturating_sub(1);
        }
        match entry.kind {
            FlowKind::Tcp { key, handle, .. } => {
                self.tcp_flows.remove(&key);
                self.tcp_by_handle.remove(&handle);
                self.sockets.remove(handle);
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

    fn tcp_handle(&self, flow: FlowId) -> Option<SocketHandle> {
        match self.flows.get(&flow)?.kind {
            FlowKind::Tcp {
                handle,
                connecting: None,
                ..
            } => Some(handle),
            _ => None,
        }
    }

    /// Removes a TCP flow whose connection is over (both sides closed, or reset).
    fn reap_tcp(&mut self, flow: FlowId) {
        let Some(FlowKind::Tcp { handle, .. }) = self.flows.get(&flow).map(|f| &f.kind) else {
            return;
        };
        let state = self.sockets.get::<tcp::Socket>(*handle).state();
        // TIME-WAIT protects nothing here: the host side has its own.
        if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
            self.remove_flow(flow, true);
        }
    }

    fn sweep(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (&flow, entry) in &self.flows {
            let idle = now.saturating_duration_since(entry.last_active);
            let limit = match &entry.kind {
                FlowKind::Tcp {
                    handle, connecting, ..
                } => {
                    let state = self.sockets.get::<tcp::Socket>(*handle).state();
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
            };
            if idle >= limit {
                expired.push(flow);
            }
        }
        for flow in expired {
            if let Some(handle) = self.flows.get(&flow).and_then(|f| match f.kind {
                FlowKind::Tcp { handle, .. } => Some(handle),
                _ => None,
            }) {
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                if !matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                    self.stats.timeouts += 1;
                    socket.abort();
                }
            } else {
                self.stats.timeouts += 1;
            }
            self.remove_flow(flow, true);
        }
        self.poll(now);
        let handles: Vec<SocketHandle> = self.dns_conns.keys().copied().collect();
        for handle in handles {
            self.serve_dns_conn(now, handle);
        }
        self.stats.dns_tcp_connections = self.dns_conns.len();
        let rate = f64::from(self.config.new_flows_per_sec.max(1));
        self.usage.retain(|_, usage| {
            usage.flows != [0; 3]
                || usage.tokens + now.saturating_duration_since(usage.refilled).as_secs_f64() * rate
                    < rate * 2.0
        });
    }

    fn touch(&mut self, flow: FlowId, now: Instant) {
        if let Some(entry) = self.flows.get_mut(&flow) {
            entry.last_active = now;
        }
    }

    fn mark_dirty(&mut self, flow: FlowId) {
        if let Some(entry) = self.flows.get_mut(&flow)
            && !entry.dirty
        {
            entry.dirty = true;
            self.status_queue.push_back(flow);
        }
    }

    fn new_tcp_socket(&self) -> tcp::Socket<'static> {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.config.tcp_rx_buffer]),
            tcp::SocketBuffer::new(vec![0; self.config.tcp_tx_buffer]),
        );
        // We forward what we get at once; delaying small writes only adds latency.
        socket.set_nagle_enabled(false);
        let vm_timeout = smoltcp::time::Duration::from_micros(
            u64::try_from(self.config.tcp_vm_timeout.as_micros()).unwrap_or(u64::MAX),
        );
        socket.set_timeout(Some(vm_timeout));
        socket.set_keep_alive(Some(vm_timeout));
        socket
    }

    fn stamp(&mut self, now: Instant) -> smoltcp::time::Instant {
        self.last_now = self.last_now.max(now);
        let micros = self
            .last_now
            .saturating_duration_since(self.epoch)
            .as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// Gives smoltcp one IP packet and lets it answer.
    fn feed(&mut self, now: Instant, packet: &[u8]) {
        let stamp = self.stamp(now);
        let mut device = OneShotDevice {
            rx: Some(packet),
            tx: &mut self.tx,
            mtu: self.mtu,
        };
        self.iface.poll(stamp, &mut device, &mut self.sockets);
    }

    fn poll(&mut self, now: Instant) {
        let stamp = self.stamp(now);
        let mut device = OneShotDevice {
            rx: None,
            tx: &mut self.tx,
            mtu: self.mtu,
        };
        self.iface.poll(stamp, &mut device, &mut self.sockets);
    }

    fn push_reset(&mut self, ip: &Ipv4Repr, segment: &TcpRepr) {
        if segment.control != TcpControl::Rst {
            self.push(&OutPacket::reset(ip, segment));
        }
    }

    /// ICMP destination unreachable about `ip`, quoting the first 8 bytes of its payload;
    /// from the router, as a real one would send it.
    fn push_unreachable(&mut self, ip: &Ipv4Repr, payload: &[u8], reason: Icmpv4DstUnreachable) {
        self.push(&OutPacket::unreachable(
            self.gateway_ip,
            ip,
            payload,
            reason,
        ));
    }

    fn push_udp(&mut self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        self.push(&OutPacket::udp(from, to, payload));
    }

    /// Queues an IP packet for the LAN, with [`HEADROOM`] for its Ethernet header.
    fn push(&mut self, packet: &OutPacket) {
        // The gateway drops what exceeds the MTU; build it anyway only if it fits.
        if packet.len() > self.mtu {
            return;
        }
        self.tx.push_back(packet.packet_bytes(HEADROOM));
    }
}

fn socket_past_handshake(socket: &tcp::Socket) -> bool {
    !matches!(
        socket.state(),
        tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
    )
}

/// What an ICMP error quotes of the offending packet's payload.
fn quote(payload: &[u8]) -> [u8; 8] {
    let mut quoted = [0; 8];
    let n = payload.len().min(8);
    quoted[..n].copy_from_slice(&payload[..n]);
    quoted
}
