//! Layer 2: LANs and their ports, the runtime around [`switch::Switch`]
//! (docs/architecture.md, "Layers").
//!
//! A transport joins a LAN and gets a [`Port`] (its way in) and a [`PortReceiver`] (its own
//! bounded queue of frames to send out). [`Port::ingress`] runs the switch under the LAN's
//! lock and puts the frame on the queues the switch chose; a full queue drops the frame for
//! that port only, so a slow client never slows its neighbours. LANs appear on first join
//! and vanish with their last port.

mod close;
mod port;
mod queue;
mod returning;
mod shaping;
mod tap;
mod traffic;
mod view;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use switch::{PortId, Switch, SwitchConfig};

use crate::config::{Config, Rates};
use crate::shared::{LanName, Transport};

pub(crate) use port::Port;
pub(crate) use queue::PortReceiver;
pub(crate) use tap::{CaptureError, CaptureTap, Captured};
pub(crate) use traffic::{PortCounters, Totals, TrafficSnapshot};
#[cfg(test)]
pub(crate) use view::PortView;
pub(crate) use view::{LanView, TransportSnapshot};

/// Why a join was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum JoinError {
    #[error("the relay has reached its limit of {0} connections; try again later")]
    TooManyConnections(usize),
    #[error("LAN is full ({0} machines); use another LAN name")]
    LanFull(usize),
    #[error("the relay has reached its limit of {0} LANs; join an existing LAN")]
    TooManyLans(usize),
    /// The joiner may not create another LAN (see [`LanCreator`]).
    #[error("{0}")]
    CreateRefused(String),
}

/// Asked for a permit when a join would create a LAN; the permit lives as long as the LAN
/// (admission counts the LANs each client address has created this way).
pub(crate) trait LanCreator {
    fn permit_new_lan(&self) -> Result<LanPermitBox, String>;

    /// A bandwidth of the joiner's own (bytes per second; a token's `rate` claim) over the
    /// LAN's `port_rate`.
    fn port_rate(&self) -> Option<u64> {
        None
    }
}

/// Whatever a [`LanCreator`] wants kept while its LAN exists; dropped when the LAN goes.
pub(crate) type LanPermitBox = Box<dyn std::any::Any + Send + Sync>;

/// For joins nobody limits (tests).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct AnyCreator;

#[cfg(test)]
impl LanCreator for AnyCreator {
    fn permit_new_lan(&self) -> Result<LanPermitBox, String> {
        Ok(Box::new(()))
    }
}

/// Per-port limits and tunables taken from the config once.
#[derive(Clone, Debug)]
struct PortLimits {
    /// Bandwidth per LAN name (`[lans.NAME]`), else `default_rates`.
    rates: HashMap<String, Rates>,
    default_rates: Rates,
    max_frame_size: usize,
    queue_frames: usize,
    /// Broadcast copies a VM's queue may hold (a quarter of it, at least 64: a burst of
    /// broadcasts to a healthy VM must still pass).
    flood_queue_frames: usize,
    max_connections: usize,
    max_ports_per_lan: usize,
    max_lans: usize,
    switch: SwitchConfig,
}

/// Called when a LAN is created, to attach its services (the gateway port). A later layer
/// (`gateway_port`) implements it, so this layer never imports that one.
pub(crate) trait LanHooks: Send + Sync + fmt::Debug {
    fn lan_created(&self, registry: &Arc<LanRegistry>, lan: &Arc<Lan>);

    /// At most `max` frames that make a machine of LAN `lan` speak (its gateway's ARP requests, see
    /// `returning.rs`); empty when the LAN has no gateway here.
    fn neighbor_probes(
        &self,
        _lan: &LanName,
        _max: usize,
    ) -> BoxFuture<'static, Vec<bytes::Bytes>> {
        Box::pin(std::future::ready(Vec::new()))
    }
}

/// Where the ports of a LAN that another cluster node owns send their frames (the cluster
/// bus, docs/cluster.md). A later layer (`cluster`) implements it; while a LAN has one, its
/// switch is not used: the owner switches.
pub(crate) trait Uplink: Send + Sync + fmt::Debug {
    /// A frame from local port `port`; false when the bus queue was full and it was dropped.
    fn send(&self, port: PortId, frame: bytes::Bytes) -> bool;
    /// Local port `port` left.
    fn left(&self, port: PortId);
}

/// Every LAN of the relay.
#[derive(Debug)]
pub(crate) struct LanRegistry {
    hooks: Mutex<Option<Arc<dyn LanHooks>>>,
    lans: Mutex<HashMap<LanName, Arc<Lan>>>,
    next_port: AtomicU64,
    /// Live ports; changed only under the `lans` lock.
    connections: AtomicUsize,
    limits: PortLimits,
    totals: Totals,
    /// Captures running on every LAN together (`[capture] max_captures`).
    captures: AtomicUsize,
}

/// One virtual LAN: its switch and the queues of its ports.
#[derive(Debug)]
pub(crate) struct Lan {
    name: LanName,
    state: Mutex<LanState>,
    /// Cancelled when the LAN is removed from the registry: its services stop.
    removed: tokio_util::sync::CancellationToken,
    /// Woken when the last client leaves, so services can decide whether the LAN may go.
    idle: tokio::sync::Notify,
    /// A service (the gateway) decides when this LAN goes, since leases outlive clients.
    kept_by_service: std::sync::atomic::AtomicBool,
    /// The creator's permit (see [`LanCreator`]), released when the LAN is removed.
    creator_permit: Mutex<Option<LanPermitBox>>,
    /// Captures of this LAN (see `tap.rs`), and how many: the hot path reads only that.
    taps: Mutex<Vec<tap::Tap>>,
    capturing: AtomicUsize,
    /// The client address a private LAN belongs to (see `returning.rs`).
    origin: std::sync::OnceLock<std::net::IpAddr>,
}

#[derive(Debug)]
struct LanState {
    switch: Switch,
    /// The LAN's switched traffic together (`lan_rate`).
    shaper: shaping::Shaper,
    ports: HashMap<PortId, PortOutput>,
    clients: usize,
    /// Set while another cluster node owns this LAN.
    uplink: Option<Arc<dyn Uplink>>,
}

/// Where the switch puts a port's frames.
#[derive(Debug)]
struct PortOutput {
    queue: queue::QueueSender,
    /// Frames from other VMs to this port (`port_rate`).
    shaper: Arc<shaping::Shaper>,
    transport: Transport,
    counters: Arc<PortCounters>,
}

impl PortOutput {
    /// Puts a frame on the port's queue; false when it was dropped (a full queue is counted
    /// against the port and as a loss of its transport).
    fn offer(&self, frame: bytes::Bytes, totals: &Totals) -> bool {
        // The gateway serves the whole LAN from one queue, which the LAN's bulk NAT traffic
        // can keep full. ARP and broadcasts (DHCP) get room of their own past its bound: a
        // VM whose three ARP requests for its gateway go unanswered fails every connection
        // with "no route to host" (loadtest/nat_bench.sh, many flows).
        let sent = if self.transport == Transport::Gateway && is_control(&frame) {
            self.queue.try_send_control(frame)
        } else {
            self.queue.try_send(frame)
        };
        match sent {
            Ok(()) => true,
            Err(queue::SendError::Full) => {
                self.counters.queue_drops.fetch_add(1, Relaxed);
                totals.count_loss(self.transport, crate::shared::DropReason::QueueFull);
                false
            }
            // The port is leaving; its frames no longer matter.
            Err(queue::SendError::Closed) => false,
        }
    }
}

/// ARP, or a broadcast (a DHCP request, an ARP request).
fn is_control(frame: &[u8]) -> bool {
    const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
    // Frames reach the switch with a whole Ethernet header (checked on the way in).
    frame.len() >= crate::shared::ETHERNET_HEADER_LEN
        && (frame[12..14] == ETHERTYPE_ARP
            || switch::MacAddr::from_bytes(&frame[..6]).is_broadcast())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take every LAN down with it: the state stays usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LanRegistry {
    pub(crate) fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            hooks: Mutex::new(None),
            lans: Mutex::new(HashMap::new()),
            next_port: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            limits: PortLimits {
                // Checked at start-up, so the fallbacks never apply.
                default_rates: config.rates_for("default").unwrap_or_default(),
                rates: config
                    .lans
                    .keys()
                    .map(|lan| (lan.clone(), config.rates_for(lan).unwrap_or_default()))
                    .collect(),
                max_frame_size: config.limits.max_frame_size,
                queue_frames: config.limits.port_queue_frames,
                flood_queue_frames: (config.limits.port_queue_frames / 4).max(64),
                max_connections: config.limits.max_connections,
                max_ports_per_lan: config.limits.max_ports_per_lan,
                max_lans: config.limits.max_lans,
                switch: SwitchConfig {
                    mac_aging: Duration::from_secs(config.switch.mac_aging_secs),
                    max_macs_per_port: config.switch.max_macs_per_port,
                },
            },
            totals: Totals::default(),
            captures: AtomicUsize::new(0),
        })
    }

    pub(crate) fn set_hooks(&self, hooks: Arc<dyn LanHooks>) {
        *lock(&self.hooks) = Some(hooks);
    }

    pub(crate) fn totals(&self) -> &Totals {
        &self.totals
    }

    pub(crate) fn max_frame_size(&self) -> usize {
        self.limits.max_frame_size
    }

    /// Attaches a new port to LAN `name`, creating the LAN on first join.
    #[cfg(test)]
    pub(crate) fn join(
        self: &Arc<Self>,
        name: &LanName,
        transport: Transport,
    ) -> Result<(Port, PortReceiver), JoinError> {
        self.join_as(name, transport, &AnyCreator)
    }

    /// Whether LAN `name` exists now.
    pub(crate) fn exists(&self, name: &LanName) -> bool {
        lock(&self.lans).contains_key(name)
    }

    /// As [`join`](Self::join); a LAN this join creates asks `creator` for a permit first.
    pub(crate) fn join_as(
        self: &Arc<Self>,
        name: &LanName,
        transport: Transport,
        creator: &dyn LanCreator,
    ) -> Result<(Port, PortReceiver), JoinError> {
        let mut lans = lock(&self.lans);
        if self.connections.load(Relaxed) >= self.limits.max_connections {
            return Err(JoinError::TooManyConnections(self.limits.max_connections));
        }
        if !lans.contains_key(name) && lans.len() >= self.limits.max_lans {
            return Err(JoinError::TooManyLans(self.limits.max_lans));
        }
        let lan = match lans.get(name) {
            Some(lan) => lan.clone(),
            None => {
                let permit = creator.permit_new_lan().map_err(JoinError::CreateRefused)?;
                self.create(&mut lans, name, permit)
            }
        };
        let mut state = lock(&lan.state);
        if state.clients >= self.limits.max_ports_per_lan {
            return Err(JoinError::LanFull(self.limits.max_ports_per_lan));
        }
        state.clients += 1;
        drop(state);
        self.connections.fetch_add(1, Relaxed);
        drop(lans);
        let rate = creator.port_rate().or(self.rates(name).port);
        let (port, rx) = self.attach_shaped(&lan, transport, rate);
        self.totals.connections_opened[transport.index()].fetch_add(1, Relaxed);
        Ok((port, rx))
    }

    /// A client port on LAN `lan` as it is now, never creating one (the owner's port for a
    /// client of another cluster node). `None` when the LAN is gone or full.
    pub(crate) fn join_existing(
        self: &Arc<Self>,
        lan: &Arc<Lan>,
        transport: Transport,
    ) -> Option<(Port, PortReceiver)> {
        let lans = lock(&self.lans);
        if !lans.get(&lan.name).is_some_and(|l| Arc::ptr_eq(l, lan)) {
            return None;
        }
        let mut state = lock(&lan.state);
        if state.clients >= self.limits.max_ports_per_lan {
            return None;
        }
        state.clients += 1;
        drop(state);
        self.connections.fetch_add(1, Relaxed);
        drop(lans);
        let rate = self.rates(&lan.name).port;
        let joined = self.attach_shaped(lan, transport, rate);
        self.totals.connections_opened[transport.index()].fetch_add(1, Relaxed);
        Some(joined)
    }

    /// LAN `name`, if it exists.
    pub(crate) fn get(&self, name: &LanName) -> Option<Arc<Lan>> {
        lock(&self.lans).get(name).cloned()
    }

    /// The service that kept `lan` (its gateway) stopped without removing it: the LAN now
    /// goes with its last client, or now if it has none.
    pub(crate) fn release_service(&self, lan: &Arc<Lan>) {
        lan.kept_by_service.store(false, Relaxed);
        self.remove_if_idle(lan);
    }

    fn create(
        self: &Arc<Self>,
        lans: &mut HashMap<LanName, Arc<Lan>>,
        name: &LanName,
        permit: LanPermitBox,
    ) -> Arc<Lan> {
        let lan = Arc::new(Lan {
            name: name.clone(),
            state: Mutex::new(LanState {
                switch: Switch::new(self.limits.switch.clone()),
                shaper: shaping::Shaper::new(self.rates(name).lan, Instant::now()),
                ports: HashMap::new(),
                clients: 0,
                uplink: None,
            }),
            removed: tokio_util::sync::CancellationToken::new(),
            idle: tokio::sync::Notify::new(),
            kept_by_service: std::sync::atomic::AtomicBool::new(false),
            creator_permit: Mutex::new(Some(permit)),
            taps: Mutex::new(Vec::new()),
            capturing: AtomicUsize::new(0),
            origin: std::sync::OnceLock::new(),
        });
        lans.insert(name.clone(), lan.clone());
        tracing::info!(lan = %name, "LAN created");
        let hooks = lock(&self.hooks).clone();
        if let Some(hooks) = hooks {
            hooks.lan_created(self, &lan);
        }
        lan
    }

    /// Adds a port to `lan` (clients are counted by the caller).
    pub(crate) fn attach(
        self: &Arc<Self>,
        lan: &Arc<Lan>,
        transport: Transport,
    ) -> (Port, PortReceiver) {
        self.attach_shaped(lan, transport, None)
    }

    /// The bandwidth limits of LAN `name`.
    fn rates(&self, name: &LanName) -> Rates {
        self.limits
            .rates
            .get(name.as_str())
            .copied()
            .unwrap_or(self.limits.default_rates)
    }

    /// As [`attach`](Self::attach), shaping the port's switched frames each way to `rate`.
    fn attach_shaped(
        self: &Arc<Self>,
        lan: &Arc<Lan>,
        transport: Transport,
        rate: Option<u64>,
    ) -> (Port, PortReceiver) {
        let now = Instant::now();
        let id = PortId(self.next_port.fetch_add(1, Relaxed));
        let (tx, rx) = queue::port_queue(self.limits.queue_frames);
        let counters = Arc::new(PortCounters::default());
        let mut state = lock(&lan.state);
        // Ids are fresh, so the switch cannot already know this one.
        let _ = state.switch.add_port(id);
        state.ports.insert(
            id,
            PortOutput {
                queue: tx,
                shaper: Arc::new(shaping::Shaper::new(rate, now)),
                transport,
                counters: counters.clone(),
            },
        );
        drop(state);
        let shaper = shaping::Shaper::new(rate, now);
        (
            Port::new(id, lan.clone(), self.clone(), transport, counters, shaper),
            rx,
        )
    }

    /// Removes `lan` if no client is on it; its services stop. Returns whether it went.
    pub(crate) fn remove_if_idle(&self, lan: &Arc<Lan>) -> bool {
        let mut lans = lock(&self.lans);
        if lock(&lan.state).clients > 0 {
            return false;
        }
        if lans.get(&lan.name).is_some_and(|l| Arc::ptr_eq(l, lan)) {
            lans.remove(&lan.name);
            tracing::info!(lan = %lan.name, "LAN removed: no machines and no leases left");
        }
        lan.retire();
        true
    }

    fn leave(&self, port: &Port) {
        let mut lans = lock(&self.lans);
        let mut state = lock(&port.lan().state);
        state.switch.remove_port(port.id());
        state.ports.remove(&port.id());
        if let Some(uplink) = &state.uplink
            && port.transport().is_client()
        {
            uplink.left(port.id());
        }
        self.totals.retire(port.transport(), port.counters());
        if !port.transport().is_client() {
            return;
        }
        state.clients -= 1;
        self.connections.fetch_sub(1, Relaxed);
        let now_idle = state.clients == 0;
        drop(state);
        if !now_idle {
            return;
        }
        let lan = port.lan();
        if lan.kept_by_service.load(Relaxed) {
            lan.idle.notify_one();
        } else if lans.get(&lan.name).is_some_and(|l| Arc::ptr_eq(l, lan)) {
            // Only remove the LAN this port belonged to, not a newer one of the same name.
            lans.remove(&lan.name);
            lan.retire();
            tracing::info!(lan = %lan.name, "LAN removed: its last machine left");
        }
    }

    /// Every LAN now, in no particular order.
    pub(crate) fn lan_list(&self) -> Vec<Arc<Lan>> {
        lock(&self.lans).values().cloned().collect()
    }

    /// Ages MAC tables; the relay calls this about once a second.
    pub(crate) fn handle_timeouts(&self, now: Instant) {
        for lan in self.lan_list() {
            let mut state = lock(&lan.state);
            if state.switch.poll_timeout().is_some_and(|at| at <= now) {
                state.switch.handle_timeout(now);
            }
        }
    }
}

impl Lan {
    pub(crate) fn name(&self) -> &LanName {
        &self.name
    }

    /// Out of the registry: its services stop and its creator's permit is released.
    fn retire(&self) {
        self.removed.cancel();
        lock(&self.creator_permit).take();
    }

    /// Resolves when the LAN has been removed.
    pub(crate) async fn removed(&self) {
        self.removed.cancelled().await
    }

    /// Resolves when the last client may have left.
    pub(crate) async fn idle(&self) {
        self.idle.notified().await
    }

    /// The LAN stays (without clients) until its service calls
    /// [`LanRegistry::remove_if_idle`].
    pub(crate) fn keep_until_service_releases(&self) {
        self.kept_by_service.store(true, Relaxed);
    }

    pub(crate) fn client_count(&self) -> usize {
        lock(&self.state).clients
    }

    /// Another cluster node owns this LAN from now on (`Some`): local ports' frames go to
    /// the uplink; or this node does again (`None`): the local switch takes them.
    pub(crate) fn set_uplink(&self, uplink: Option<Arc<dyn Uplink>>) {
        lock(&self.state).uplink = uplink;
    }

    pub(crate) fn has_uplink(&self) -> bool {
        lock(&self.state).uplink.is_some()
    }

    /// A frame from the owner node for local port `port` (cluster egress); false when the
    /// port is gone or its queue was full (counted as for a switched frame).
    pub(crate) fn deliver_to(
        &self,
        registry: &LanRegistry,
        port: PortId,
        frame: bytes::Bytes,
    ) -> bool {
        let state = lock(&self.state);
        let Some(output) = state.ports.get(&port) else {
            return false;
        };
        output.offer(frame, &registry.totals)
    }

    /// The ports of this node's clients on this LAN.
    pub(crate) fn client_ports(&self) -> Vec<PortId> {
        lock(&self.state)
            .ports
            .iter()
            .filter(|(_, o)| o.transport.is_client() && o.transport != Transport::Cluster)
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::DropReason;
    use bytes::Bytes;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Bytes {
        let mut f = Vec::from(dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(60, 0);
        Bytes::from(f)
    }

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn lans_are_isolated_and_vanish_when_empty() {
        let registry = LanRegistry::new(&Config::default());
        let red = LanName::new("red").unwrap();
        let blue = LanName::new("blue").unwrap();
        let (a, _rx_a) = registry.join(&red, Transport::WebSocket).unwrap();
        let (_b, mut rx_b) = registry.join(&red, Transport::WebSocket).unwrap();
        let (_c, mut rx_c) = registry.join(&blue, Transport::WebSocket).unwrap();
        a.ingress(Instant::now(), frame([0xff; 6], MAC_A));
        assert!(rx_b.try_recv().is_ok());
        assert!(rx_c.try_recv().is_err(), "frames never cross LANs");
        assert_eq!(registry.snapshot().lans, 2);
        drop(_c);
        assert_eq!(registry.snapshot().lans, 1);
    }

    #[test]
    fn full_queue_drops_for_that_port_only() {
        let mut config = Config::default();
        config.limits.port_queue_frames = 2;
        let registry = LanRegistry::new(&config);
        let lan = LanName::default_lan();
        let (a, _rx_a) = registry.join(&lan, Transport::WebSocket).unwrap();
        let (_slow, _rx_slow) = registry.join(&lan, Transport::WebSocket).unwrap();
        let (_fast, mut rx_fast) = registry.join(&lan, Transport::WebSocket).unwrap();
        for _ in 0..5 {
            a.ingress(Instant::now(), frame([0xff; 6], MAC_A));
            assert!(rx_fast.try_recv().is_ok(), "the fast port gets every frame");
        }
        assert_eq!(registry.totals().drops(DropReason::QueueFull), 3);
    }

    #[test]
    fn a_full_gateway_queue_still_takes_arp_and_broadcasts() {
        let mut config = Config::default();
        config.limits.port_queue_frames = 2;
        let registry = LanRegistry::new(&config);
        let lan = LanName::default_lan();
        let (vm, _rx_vm) = registry.join(&lan, Transport::WebSocket).unwrap();
        let (gateway, mut rx_gateway) = registry.attach(&vm.lan().clone(), Transport::Gateway);
        // The switch learns where the gateway's MAC lives.
        gateway.ingress(Instant::now(), frame(MAC_A, MAC_B));
        for _ in 0..3 {
            vm.ingress(Instant::now(), frame(MAC_B, MAC_A));
        }
        assert_eq!(registry.totals().drops(DropReason::QueueFull), 1);
        let mut arp = frame(MAC_B, MAC_A).to_vec();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        vm.ingress(Instant::now(), Bytes::from(arp));
        vm.ingress(Instant::now(), frame([0xff; 6], MAC_A));
        assert_eq!(registry.totals().drops(DropReason::QueueFull), 1);
        let mut queued = 0;
        while rx_gateway.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 4);
    }

    #[test]
    fn short_and_long_frames_are_counted() {
        let mut config = Config::default();
        config.limits.max_frame_size = 1514;
        let registry = LanRegistry::new(&config);
        let (a, _rx) = registry
            .join(&LanName::default_lan(), Transport::WebSocket)
            .unwrap();
        a.ingress(Instant::now(), Bytes::from_static(&[0; 13]));
        a.ingress(Instant::now(), Bytes::from(vec![0; 1515]));
        assert_eq!(registry.totals().drops(DropReason::TooShort), 1);
        assert_eq!(registry.totals().drops(DropReason::TooLarge), 1);
    }

    #[test]
    fn limits_refuse_joins() {
        let mut config = Config::default();
        config.limits.max_ports_per_lan = 2;
        config.limits.max_connections = 3;
        let registry = LanRegistry::new(&config);
        let lan = LanName::default_lan();
        let _a = registry.join(&lan, Transport::WebSocket).unwrap();
        let _b = registry.join(&lan, Transport::WebSocket).unwrap();
        assert_eq!(
            registry.join(&lan, Transport::WebSocket).unwrap_err(),
            JoinError::LanFull(2)
        );
        let other = LanName::new("other").unwrap();
        let _c = registry.join(&other, Transport::WebSocket).unwrap();
        assert_eq!(
            registry.join(&other, Transport::WebSocket).unwrap_err(),
            JoinError::TooManyConnections(3)
        );
    }

    #[test]
    fn unicast_after_learning() {
        let registry = LanRegistry::new(&Config::default());
        let lan = LanName::default_lan();
        let (a, mut rx_a) = registry.join(&lan, Transport::WebSocket).unwrap();
        let (b, mut rx_b) = registry.join(&lan, Transport::WebSocket).unwrap();
        let (_c, mut rx_c) = registry.join(&lan, Transport::WebSocket).unwrap();
        a.ingress(Instant::now(), frame([0xff; 6], MAC_A));
        rx_b.try_recv().unwrap();
        rx_c.try_recv().unwrap();
        b.ingress(Instant::now(), frame(MAC_A, MAC_B));
        assert!(rx_a.try_recv().is_ok());
        assert!(rx_c.try_recv().is_err(), "known unicast is not flooded");
    }
}
