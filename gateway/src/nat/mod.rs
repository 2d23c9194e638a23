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
//!
//! # Driving it
//!
//! [`crate::Gateway`] owns the NAT: it classifies the VMs' frames, feeds the NAT, frames
//! the packets it emits and hands DNS-over-TCP queries to the DNS proxy. The driver reaches
//! it through [`crate::Gateway::nat_mut`] for everything about host sockets.
//!
//! ```text
//! inputs (host events)
//!   handle_tcp_connected(now, flow) -> bool     the host connect of a TcpConnect succeeded
//!   handle_tcp_connect_failed(now, flow, why)   ... or failed (ConnectFailure)
//!   handle_udp_datagram(now, flow, from, data)  a datagram on a UDP flow's host socket
//!   handle_ping_reply(now, flow, seq, data)     an echo reply for a PingSend
//!   handle_timeout(now)                         retransmissions, idle and handshake timeouts
//! commands
//!   tcp_recv(now, flow, max) / tcp_send(now, flow, data)   move TCP data (see TcpStatus)
//!   tcp_host_eof(now, flow) / tcp_abort(now, flow)         FIN / RST to the VM
//!   close_flow(now, flow)                                  the host side of any flow failed
//!   open_inbound_tcp(now, target) / inbound_udp(now, client, target, data)  port forwards
//!   set_host_addresses(addresses)                          the host's own addresses (policy)
//!   set_policy(policy)                                     new egress rules (reload)
//!   set_internet(enabled)                                  a teacher's switch: off refuses new flows
//! outputs
//!   poll_action() -> Option<NatAction>          host sockets to open, use and close
//!   poll_tcp_status() -> Option<TcpStatus>      TCP flows whose state changed; tcp_status(flow)
//!   poll_timeout() -> Option<Instant>           when to call handle_timeout
//! inspection
//!   config() / stats() / flows()
//! ```
//!
//! After every call, drain `poll_action` and `poll_tcp_status`, drain the gateway's
//! `poll_frame`, and re-arm the timer.
//!
//! # Where the code is
//!
//! One `impl Nat` block per file: this file (types, construction, the smoltcp glue),
//! `flows` (flow table, ids, admission and limits, deadline timers), `tcp`, `udp`, `icmp`,
//! `inbound` (port forwards from the gateway address), `dns_tcp` (DNS over TCP); `policy`
//! (the egress policy) and `device` (the smoltcp device).
//!
//! # Cost per packet
//!
//! Nothing here visits every flow. A segment finds its flow by its addresses and ports in
//! a `HashMap`, and each TCP flow has a [`SocketSet`] of its own holding its one socket:
//! smoltcp's `Interface::poll` and `poll_at` walk the set they are given, so passing the
//! flow's set makes them O(1) where the LAN-wide set made them O(flows) (the interface is
//! shared; with `Medium::Ip` and no fragmentation feature it holds no per-socket state).
//! Timers are deadlines in a `BTreeSet` keyed by (deadline, flow): idle timeouts and
//! smoltcp's retransmissions, ACK delays and keep-alives alike (see `flows`).

mod budget;
mod device;
mod dns_tcp;
mod flows;
mod icmp;
mod inbound;
mod policy;
mod quiet;
mod tcp;
mod udp;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp as tcp_socket;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Packet};

pub use budget::{BufferBudget, MIN_TCP_BUFFER, QUIET_AFTER, ReleasePages};
use device::OneShotDevice;
use dns_tcp::DnsConn;
use flows::{Flow, FlowKind, InboundUdpKey, SWEEP_INTERVAL, TcpKey, VmUsage};
pub use flows::{FlowId, FlowInfo};
use inbound::INBOUND_PORTS;
pub use policy::{DenyCounts, DenyReason, EgressPolicy, NatProtocol, PolicyRule};
pub use tcp::{ConnectFailure, TcpStatus};

use crate::config::GatewayConfig;
use crate::emit::{HEADROOM, OutPacket};
use crate::wire::frag::fragment;

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
    /// Where the buffers come from: shared by every LAN of the relay; a flow opened while
    /// it is short gets smaller buffers (see [`BufferBudget`]).
    pub buffer_budget: BufferBudget,
    pub max_tcp_flows_per_vm: usize,
    pub max_udp_flows_per_vm: usize,
    pub max_ping_flows_per_vm: usize,
    /// All flows of the LAN together.
    pub max_flows: usize,
    /// New flows per second per VM (a token bucket holding two seconds' worth).
    pub new_flows_per_sec: u32,
    pub tcp_idle_timeout: Duration,
    /// A VM that stops acknowledging (its tab closed mid-transfer) loses its connections
    /// after this long; idle connections are probed (keep-alive) every third of it.
    pub tcp_vm_timeout: Duration,
    /// Handshakes and half-closed connections.
    pub tcp_transitory_timeout: Duration,
    pub udp_idle_timeout: Duration,
    pub ping_idle_timeout: Duration,
    /// DNS over TCP connections to the DNS address, all VMs together.
    pub max_dns_tcp_connections: usize,
    /// How fast a flow sends toward its VM before the VM acknowledges.
    pub tcp_congestion: TcpCongestion,
}

/// The congestion control of the NAT's TCP toward the VMs. Without one a flow sends its
/// whole window at once: the VM's port queue overflows as soon as a few flows share a slow
/// link (a browser tab, a busy LAN) and the losses are repaired by timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpCongestion {
    /// NewReno: the best of the three in `loadtest/nat_bench.sh` (docs/benchmarks.md).
    #[default]
    Reno,
    Cubic,
    /// The whole window at once (what the relay did before it had a choice).
    None,
}

impl TcpCongestion {
    pub(crate) fn smoltcp(self) -> smoltcp::socket::tcp::CongestionControl {
        use smoltcp::socket::tcp::CongestionControl;
        match self {
            TcpCongestion::Reno => CongestionControl::Reno,
            TcpCongestion::Cubic => CongestionControl::Cubic,
            TcpCongestion::None => CongestionControl::None,
        }
    }
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            policy: EgressPolicy::default(),
            host_loopback: false,
            tcp_rx_buffer: 256 * 1024,
            tcp_tx_buffer: 256 * 1024,
            buffer_budget: BufferBudget::default(),
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
            tcp_congestion: TcpCongestion::default(),
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

/// Counters and gauges of the NAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Flows started, by [`NatProtocol`] index (tcp, udp, icmp).
    pub flows_started: [u64; NatProtocol::COUNT],
    /// Gauge: live flows by protocol.
    pub flows_active: [usize; NatProtocol::COUNT],
    pub denied: DenyCounts,
    /// Bytes from VMs to hosts and back (TCP and UDP payload, ping data).
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub connect_failed: u64,
    /// Flows ended by an idle or handshake timeout.
    pub timeouts: u64,
    /// Datagrams for VMs sent in fragments: UDP or echo replies over the LAN's MTU.
    pub fragmented: u64,
    /// UDP from peers the flow never sent to, or for flows that are gone.
    pub unsolicited: u64,
    /// Gauge: DNS over TCP connections.
    pub dns_tcp_connections: usize,
    /// Gauge: bytes of TCP flow buffers (both ways) this NAT is charged in the budget:
    /// what bytes can have touched, at most the buffers' size (see [`BufferBudget`]).
    pub buffer_bytes: usize,
    /// Times a quiet TCP flow gave its buffers' pages back.
    pub buffer_releases: u64,
    /// Connections opened into VMs for port forwards.
    pub inbound_connections: u64,
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
    /// Shared by every socket; each TCP flow brings its own [`SocketSet`] to `poll`.
    iface: Interface,
    /// The DNS-over-TCP listener and connections (at most `max_dns_tcp_connections` + 1).
    dns_sockets: SocketSet<'static>,
    /// Segments of no flow go through an empty set: smoltcp answers them with a RST.
    no_sockets: SocketSet<'static>,
    /// When each flow next needs attention (its timer), earliest first; a flow has at most
    /// one entry, `Flow::timer`.
    timers: BTreeSet<(Instant, FlowId)>,
    /// IP packets for the LAN, with [`HEADROOM`] in front.
    tx: VecDeque<Vec<u8>>,
    actions: VecDeque<NatAction>,
    next_flow: u64,
    flows: HashMap<FlowId, Flow>,
    tcp_flows: HashMap<TcpKey, FlowId>,
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
    /// DNS connections' idle checks and the per-VM rate buckets' cleanup (not flows).
    next_sweep: Instant,
    next_inbound_port: u16,
    /// IPv4 identification of the next datagram we fragment (the VM reassembles by it).
    next_ident: u16,
    /// Off: every new outbound flow is refused (a teacher's switch, kept apart from the
    /// policy so a config reload does not turn it back on).
    internet: bool,
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

/// A LAN that goes gives its flows' buffers back to the relay-wide budget.
impl Drop for Nat {
    fn drop(&mut self) {
        self.config.buffer_budget.give(self.stats.buffer_bytes);
    }
}

impl Nat {
    pub(crate) fn new(config: NatConfig, gateway: &GatewayConfig, now: Instant) -> Self {
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
            dns_sockets: SocketSet::new(Vec::new()),
            no_sockets: SocketSet::new(Vec::new()),
            timers: BTreeSet::new(),
            tx,
            actions: VecDeque::new(),
            next_flow: 1,
            flows: HashMap::new(),
            tcp_flows: HashMap::new(),
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
            next_ident: 1,
            internet: true,
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

    /// Replaces the egress policy (a config reload). Flows already open stay; every new
    /// flow is checked against the new rules.
    pub fn set_policy(&mut self, policy: EgressPolicy) {
        self.config.policy = policy;
    }

    /// Switches the LAN's internet access: off refuses every new outbound flow (a TCP SYN
    /// gets a RST at once, UDP an ICMP unreachable, ping nothing); flows already open stay.
    pub fn set_internet(&mut self, enabled: bool) {
        self.internet = enabled;
    }

    pub fn internet(&self) -> bool {
        self.internet
    }

    /// The next host action.
    pub fn poll_action(&mut self) -> Option<NatAction> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] has work: the earliest flow timer, and smoltcp's
    /// timers and the once-a-second sweep of the DNS connections. O(1) in the number of
    /// flows. (The per-VM rate buckets need no wake-up of their own: a stale one is
    /// harmless and goes at the next sweep that runs.)
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let flows = self.timers.first().map(|&(at, _)| at);
        let stamp = self.stamp(self.last_now);
        let dns = self
            .iface
            .poll_at(stamp, &self.dns_sockets)
            .map(|at| self.instant(at));
        let sweep = (!self.dns_conns.is_empty()).then_some(self.next_sweep);
        [flows, dns, sweep].into_iter().flatten().min()
    }

    /// Retransmissions and timeouts of the flows whose deadline has come, and the sweep.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.run_timers(now);
        self.poll_dns(now, None);
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            self.sweep(now);
        }
    }

    /// The next IP packet for the LAN, with [`HEADROOM`] bytes free in front.
    pub(crate) fn poll_packet(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    // ---- smoltcp and the LAN ----

    fn stamp(&mut self, now: Instant) -> smoltcp::time::Instant {
        self.last_now = self.last_now.max(now);
        let micros = self
            .last_now
            .saturating_duration_since(self.epoch)
            .as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// smoltcp's time as ours.
    fn instant(&self, at: smoltcp::time::Instant) -> Instant {
        self.epoch + Duration::from_micros(at.total_micros().max(0) as u64)
    }

    /// Gives smoltcp a segment of no flow: it answers with a RST (or nothing, for a RST).
    fn feed_unknown(&mut self, now: Instant, packet: &[u8]) {
        let stamp = self.stamp(now);
        let mut device = OneShotDevice {
            rx: Some(packet),
            tx: &mut self.tx,
            mtu: self.mtu,
        };
        self.iface.poll(stamp, &mut device, &mut self.no_sockets);
    }

    /// Lets the DNS-over-TCP sockets take `packet` (if any) and send what is due.
    fn poll_dns(&mut self, now: Instant, packet: Option<&[u8]>) {
        let stamp = self.stamp(now);
        let mut device = OneShotDevice {
            rx: packet,
            tx: &mut self.tx,
            mtu: self.mtu,
        };
        self.iface.poll(stamp, &mut device, &mut self.dns_sockets);
    }

    /// Lets one TCP flow's socket take `packet` (if any) and send what is due (ACKs, data,
    /// retransmissions), then re-arms the flow's timer. Only this flow's socket is visited.
    fn poll_flow(&mut self, now: Instant, flow: FlowId, packet: Option<&[u8]>) {
        let stamp = self.stamp(now);
        let Some(FlowKind::Tcp { sockets, quiet, .. }) =
            self.flows.get_mut(&flow).map(|f| &mut f.kind)
        else {
            return;
        };
        let before = self.tx.len();
        let mut device = OneShotDevice {
            rx: packet,
            tx: &mut self.tx,
            mtu: self.mtu,
        };
        self.iface.poll(stamp, &mut device, sockets);
        // One poll's segments acknowledge in order: the last one says it all.
        if self.tx.len() > before
            && let Some(last) = self.tx.back()
        {
            quiet.saw_to_vm(last);
        }
        self.arm(flow);
    }

    /// A TCP flow's socket.
    fn socket(&self, flow: FlowId) -> Option<&tcp_socket::Socket<'static>> {
        match &self.flows.get(&flow)?.kind {
            FlowKind::Tcp {
                sockets, handle, ..
            } => Some(sockets.get::<tcp_socket::Socket>(*handle)),
            _ => None,
        }
    }

    fn socket_mut(&mut self, flow: FlowId) -> Option<&mut tcp_socket::Socket<'static>> {
        match &mut self.flows.get_mut(&flow)?.kind {
            FlowKind::Tcp {
                sockets, handle, ..
            } => Some(sockets.get_mut::<tcp_socket::Socket>(*handle)),
            _ => None,
        }
    }

    /// Queues an IP packet for the LAN, with [`HEADROOM`] for its Ethernet header.
    ///
    /// Packets over the LAN's MTU (a large UDP datagram or echo reply from the internet;
    /// the host kernel reassembled it) are sent in fragments: toward the VM we are the
    /// sender, and a VM's stack reassembles like any host's. No ICMP "fragmentation
    /// needed" goes the other way: the remote's packet never crosses our LAN as such.
    fn push(&mut self, packet: &OutPacket) {
        if packet.len() <= self.mtu {
            self.tx.push_back(packet.packet_bytes(HEADROOM));
            return;
        }
        let mut whole = packet.packet_bytes(0);
        let mut ip = Ipv4Packet::new_unchecked(&mut whole[..]);
        ip.set_ident(self.next_ident);
        self.next_ident = self.next_ident.wrapping_add(1);
        let pieces = fragment(&whole, self.mtu, HEADROOM);
        if !pieces.is_empty() {
            self.stats.fragmented += 1;
            self.tx.extend(pieces);
        }
    }
}
