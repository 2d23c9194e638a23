//! LANs and their ports: the runtime around [`switch::Switch`].
//!
//! A transport joins a LAN and gets a [`Port`] (its way in) and a [`PortReceiver`] (its own
//! bounded queue of frames to send out). [`Port::ingress`] runs the switch under the LAN's
//! lock and puts the frame on the queues the switch chose; a full queue drops the frame for
//! that port only, so a slow client never slows its neighbours. LANs appear on first join
//! and vanish with their last port.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switch::translate::MacTranslation;
use switch::{DropReason as SwitchDrop, Forward, MacAddr, PortId, Switch, SwitchConfig};
use tokio::sync::mpsc;

use crate::config::Config;

/// A validated LAN name: `[A-Za-z0-9_-]{1,64}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LanName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid LAN name {0:?}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-', as in /lan/physics-101"
)]
pub struct InvalidLanName(pub String);

impl LanName {
    pub fn new(name: &str) -> Result<Self, InvalidLanName> {
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(LanName(name.to_owned()))
        } else {
            // Cut what we echo back: the name is untrusted and may be huge.
            Err(InvalidLanName(name.chars().take(80).collect()))
        }
    }

    pub fn default_lan() -> Self {
        LanName("default".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a port reaches the relay; a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    /// WebTransport (HTTP/3) datagrams, fragmented per design.md.
    WebTransport,
    /// A WebRTC DataChannel through the relay's ICE-lite peer.
    WebRtc,
    /// The LAN's own router port (ARP, DHCP, DNS); not a client connection.
    Gateway,
}

impl Transport {
    /// Client transports, as metric labels.
    pub const ALL: [Transport; 3] = [
        Transport::WebSocket,
        Transport::WebTransport,
        Transport::WebRtc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::WebTransport => "webtransport",
            Transport::WebRtc => "webrtc",
            Transport::Gateway => "gateway",
        }
    }

    fn is_client(self) -> bool {
        self != Transport::Gateway
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a frame was dropped; a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    TooShort,
    /// Longer than `limits.max_frame_size`.
    TooLarge,
    /// A text WebSocket message: v86 never sends one.
    TextMessage,
    /// The destination port's queue was full.
    QueueFull,
    /// The switch refused it (see [`switch::DropReason`]).
    Switch(SwitchDrop),
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::TooLarge => "too_large",
            DropReason::TextMessage => "text_message",
            DropReason::QueueFull => "queue_full",
            DropReason::Switch(reason) => reason.as_str(),
        }
    }

    pub fn all() -> impl Iterator<Item = DropReason> {
        [
            DropReason::TooShort,
            DropReason::TooLarge,
            DropReason::TextMessage,
            DropReason::QueueFull,
        ]
        .into_iter()
        .chain(
            SwitchDrop::ALL
                .into_iter()
                .filter(|r| *r != SwitchDrop::TooShort)
                .map(DropReason::Switch),
        )
    }

    fn index(self) -> usize {
        match self {
            DropReason::TooShort | DropReason::Switch(SwitchDrop::TooShort) => 0,
            DropReason::TooLarge => 1,
            DropReason::TextMessage => 2,
            DropReason::QueueFull => 3,
            DropReason::Switch(SwitchDrop::InvalidSource) => 4,
            DropReason::Switch(SwitchDrop::MacLimit) => 5,
            DropReason::Switch(SwitchDrop::SamePort) => 6,
            DropReason::Switch(SwitchDrop::UnknownPort) => 7,
        }
    }
}
const DROP_REASONS: usize = 8;

/// Why a join was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("the relay has reached its limit of {0} connections; try again later")]
    TooManyConnections(usize),
    #[error("LAN is full ({0} machines); use another LAN name")]
    LanFull(usize),
    #[error("the relay has reached its limit of {0} LANs; join an existing LAN")]
    TooManyLans(usize),
}

/// Traffic counters of one port. Each side is written by one task only, so the atomics are
/// uncontended; the metrics endpoint sums them when scraped.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Frames for this port dropped because its queue was full.
    pub queue_drops: AtomicU64,
    /// Set when this port's machine shares its MAC with another live port.
    pub translation: std::sync::OnceLock<MacTranslation>,
}

impl PortCounters {
    /// Undoes this port's MAC translation on a frame going to its client.
    pub fn to_client(&self, frame: Bytes) -> Bytes {
        match self.translation.get() {
            Some(translation) => {
                let mut frame = bytes::BytesMut::from(&frame[..]);
                translation.inbound(&mut frame);
                frame.freeze()
            }
            None => frame,
        }
    }

    pub fn count_out(&self, bytes: usize) {
        self.frames_out.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }
}

/// Relay-wide totals: drops by reason, connections opened, and the traffic of ports that
/// have left (so counters never go backwards when a client disconnects).
#[derive(Debug, Default)]
pub struct Totals {
    drops: [AtomicU64; DROP_REASONS],
    /// Ports given a local MAC because their machine's MAC was live on another port.
    pub mac_translations: AtomicU64,
    connections_opened: [AtomicU64; Transport::ALL.len()],
    retired: [PortTotals; Transport::ALL.len()],
}

#[derive(Debug, Default)]
struct PortTotals {
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_out: AtomicU64,
}

impl Totals {
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Relaxed)
    }

    fn retire(&self, transport: Transport, c: &PortCounters) {
        let Some(r) = self.retired.get(transport.index()) else {
            return;
        };
        r.frames_in.fetch_add(c.frames_in.load(Relaxed), Relaxed);
        r.bytes_in.fetch_add(c.bytes_in.load(Relaxed), Relaxed);
        r.frames_out.fetch_add(c.frames_out.load(Relaxed), Relaxed);
        r.bytes_out.fetch_add(c.bytes_out.load(Relaxed), Relaxed);
    }
}

/// A snapshot of traffic for one transport, for the metrics endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficSnapshot {
    pub connections: u64,
    pub connections_opened: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
}

/// A snapshot of the whole relay, for the metrics endpoint.
#[derive(Clone, Debug, Default)]
pub struct RelaySnapshot {
    pub lans: usize,
    pub ports: usize,
    pub mac_entries: usize,
    pub by_transport: Vec<(Transport, TrafficSnapshot)>,
}

/// Per-port limits and tunables taken from the config once.
#[derive(Clone, Debug)]
struct PortLimits {
    max_frame_size: usize,
    queue_frames: usize,
    max_connections: usize,
    max_ports_per_lan: usize,
    max_lans: usize,
    switch: SwitchConfig,
}

/// Called when a LAN is created, to attach its services (the gateway port).
pub trait LanHooks: Send + Sync + fmt::Debug {
    fn lan_created(&self, registry: &Arc<LanRegistry>, lan: &Arc<Lan>);
}

/// Every LAN of the relay.
#[derive(Debug)]
pub struct LanRegistry {
    hooks: Mutex<Option<Arc<dyn LanHooks>>>,
    lans: Mutex<HashMap<LanName, Arc<Lan>>>,
    next_port: AtomicU64,
    /// Live ports; changed only under the `lans` lock.
    connections: AtomicUsize,
    limits: PortLimits,
    totals: Totals,
}

/// One virtual LAN: its switch and the queues of its ports.
#[derive(Debug)]
pub struct Lan {
    name: LanName,
    state: Mutex<LanState>,
    /// Cancelled when the LAN is removed from the registry: its services stop.
    removed: tokio_util::sync::CancellationToken,
    /// Woken when the last client leaves, so services can decide whether the LAN may go.
    idle: tokio::sync::Notify,
    /// A service (the gateway) decides when this LAN goes, since leases outlive clients.
    kept_by_service: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct LanState {
    switch: Switch,
    ports: HashMap<PortId, PortOutput>,
    clients: usize,
}

#[derive(Debug)]
struct PortOutput {
    queue: mpsc::Sender<Bytes>,
    transport: Transport,
    counters: Arc<PortCounters>,
}

/// The frames waiting to be sent to one port's client.
pub type PortReceiver = mpsc::Receiver<Bytes>;

/// A transport's handle on its LAN. Dropping it leaves the LAN.
#[derive(Debug)]
pub struct Port {
    id: PortId,
    lan: Arc<Lan>,
    registry: Arc<LanRegistry>,
    transport: Transport,
    counters: Arc<PortCounters>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take every LAN down with it: the state stays usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LanRegistry {
    pub fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            hooks: Mutex::new(None),
            lans: Mutex::new(HashMap::new()),
            next_port: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            limits: PortLimits {
                max_frame_size: config.limits.max_frame_size,
                queue_frames: config.limits.port_queue_frames,
                max_connections: config.limits.max_connections,
                max_ports_per_lan: config.limits.max_ports_per_lan,
                max_lans: config.limits.max_lans,
                switch: SwitchConfig {
                    mac_aging: Duration::from_secs(config.switch.mac_aging_secs),
                    max_macs_per_port: config.switch.max_macs_per_port,
                },
            },
            totals: Totals::default(),
        })
    }

    pub fn set_hooks(&self, hooks: Arc<dyn LanHooks>) {
        *lock(&self.hooks) = Some(hooks);
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    pub fn max_frame_size(&self) -> usize {
        self.limits.max_frame_size
    }

    /// Attaches a new port to LAN `name`, creating the LAN on first join.
    pub fn join(
        self: &Arc<Self>,
        name: &LanName,
        transport: Transport,
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
                let lan = Arc::new(Lan {
                    name: name.clone(),
                    state: Mutex::new(LanState {
                        switch: Switch::new(self.limits.switch.clone()),
                        ports: HashMap::new(),
                        clients: 0,
                    }),
                    removed: tokio_util::sync::CancellationToken::new(),
                    idle: tokio::sync::Notify::new(),
                    kept_by_service: std::sync::atomic::AtomicBool::new(false),
                });
                lans.insert(name.clone(), lan.clone());
                tracing::info!(lan = %name, "LAN created");
                let hooks = lock(&self.hooks).clone();
                if let Some(hooks) = hooks {
                    hooks.lan_created(self, &lan);
                }
                lan
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
        let (port, rx) = self.attach(&lan, transport);
        if let Some(opened) = self.totals.connections_opened.get(transport.index()) {
            opened.fetch_add(1, Relaxed);
        }
        Ok((port, rx))
    }

    /// Adds a port to `lan` (clients are counted by the caller).
    pub fn attach(self: &Arc<Self>, lan: &Arc<Lan>, transport: Transport) -> (Port, PortReceiver) {
        let id = PortId(self.next_port.fetch_add(1, Relaxed));
        let (tx, rx) = mpsc::channel(self.limits.queue_frames);
        let counters = Arc::new(PortCounters::default());
        let mut state = lock(&lan.state);
        // Ids are fresh, so the switch cannot already know this one.
        let _ = state.switch.add_port(id);
        state.ports.insert(
            id,
            PortOutput {
                queue: tx,
                transport,
                counters: counters.clone(),
            },
        );
        drop(state);
        let port = Port {
            id,
            lan: lan.clone(),
            registry: self.clone(),
            transport,
            counters,
        };
        (port, rx)
    }

    /// Removes `lan` if no client is on it; its services stop. Returns whether it went.
    pub fn remove_if_idle(&self, lan: &Arc<Lan>) -> bool {
        let mut lans = lock(&self.lans);
        if lock(&lan.state).clients > 0 {
            return false;
        }
        if lans.get(&lan.name).is_some_and(|l| Arc::ptr_eq(l, lan)) {
            lans.remove(&lan.name);
            tracing::info!(lan = %lan.name, "LAN removed: no machines and no leases left");
        }
        lan.removed.cancel();
        true
    }

    fn leave(&self, port: &Port) {
        let mut lans = lock(&self.lans);
        let mut state = lock(&port.lan.state);
        state.switch.remove_port(port.id);
        state.ports.remove(&port.id);
        self.totals.retire(port.transport, &port.counters);
        if !port.transport.is_client() {
            return;
        }
        state.clients -= 1;
        self.connections.fetch_sub(1, Relaxed);
        let now_idle = state.clients == 0;
        drop(state);
        if !now_idle {
            return;
        }
        if port.lan.kept_by_service.load(Relaxed) {
            port.lan.idle.notify_one();
        } else if lans
            .get(&port.lan.name)
            .is_some_and(|lan| Arc::ptr_eq(lan, &port.lan))
        {
            // Only remove the LAN this port belonged to, not a newer one of the same name.
            lans.remove(&port.lan.name);
            port.lan.removed.cancel();
            tracing::info!(lan = %port.lan.name, "LAN removed: its last machine left");
        }
    }

    /// Every LAN now, in no particular order.
    pub fn lan_list(&self) -> Vec<Arc<Lan>> {
        lock(&self.lans).values().cloned().collect()
    }

    /// Ages MAC tables; the relay calls this about once a second.
    pub fn handle_timeouts(&self, now: Instant) {
        for lan in self.lan_list() {
            let mut state = lock(&lan.state);
            if state.switch.poll_timeout().is_some_and(|at| at <= now) {
                state.switch.handle_timeout(now);
            }
        }
    }

    pub fn snapshot(&self) -> RelaySnapshot {
        let lans = self.lan_list();
        let mut snapshot = RelaySnapshot {
            lans: lans.len(),
            ..RelaySnapshot::default()
        };
        let mut traffic = [TrafficSnapshot::default(); Transport::ALL.len()];
        for (t, retired) in traffic.iter_mut().zip(&self.totals.retired) {
            t.frames_in = retired.frames_in.load(Relaxed);
            t.bytes_in = retired.bytes_in.load(Relaxed);
            t.frames_out = retired.frames_out.load(Relaxed);
            t.bytes_out = retired.bytes_out.load(Relaxed);
        }
        for (t, opened) in traffic.iter_mut().zip(&self.totals.connections_opened) {
            t.connections_opened = opened.load(Relaxed);
        }
        for lan in lans {
            let state = lock(&lan.state);
            snapshot.ports += state.clients;
            snapshot.mac_entries += state.switch.mac_entries();
            for output in state.ports.values() {
                let Some(t) = traffic.get_mut(output.transport.index()) else {
                    continue;
                };
                let c = &output.counters;
                t.connections += 1;
                t.frames_in += c.frames_in.load(Relaxed);
                t.bytes_in += c.bytes_in.load(Relaxed);
                t.frames_out += c.frames_out.load(Relaxed);
                t.bytes_out += c.bytes_out.load(Relaxed);
            }
        }
        snapshot.by_transport = Transport::ALL.into_iter().zip(traffic).collect();
        snapshot
    }
}

/// One LAN as the demo's LAN panel shows it (see [`LanRegistry::lan_view`]).
#[derive(Clone, Debug, Default)]
pub struct LanView {
    pub ports: Vec<PortView>,
    /// For each MAC asked about, the port the switch last saw it on.
    pub mac_ports: Vec<Option<u64>>,
}

#[derive(Clone, Debug)]
pub struct PortView {
    pub id: u64,
    pub transport: Transport,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
}

impl LanRegistry {
    /// The ports of LAN `name` with their traffic, and where each of `macs` lives; None
    /// when the LAN does not exist.
    pub fn lan_view(&self, name: &LanName, macs: &[MacAddr]) -> Option<LanView> {
        let lan = lock(&self.lans).get(name).cloned()?;
        let state = lock(&lan.state);
        let mut ports: Vec<PortView> = state
            .ports
            .iter()
            .map(|(id, output)| PortView {
                id: id.0,
                transport: output.transport,
                frames_in: output.counters.frames_in.load(Relaxed),
                bytes_in: output.counters.bytes_in.load(Relaxed),
                frames_out: output.counters.frames_out.load(Relaxed),
                bytes_out: output.counters.bytes_out.load(Relaxed),
            })
            .collect();
        ports.sort_by_key(|p| p.id);
        let mac_ports = macs
            .iter()
            .map(|mac| state.switch.lookup(mac).map(|p| p.0))
            .collect();
        Some(LanView { ports, mac_ports })
    }
}

impl Lan {
    pub fn name(&self) -> &LanName {
        &self.name
    }

    /// Each port's transport and traffic, for the admin API.
    pub fn port_list(&self) -> Vec<(PortId, Transport, TrafficSnapshot)> {
        let state = lock(&self.state);
        state
            .ports
            .iter()
            .map(|(&id, output)| {
                let c = &output.counters;
                let traffic = TrafficSnapshot {
                    frames_in: c.frames_in.load(Relaxed),
                    bytes_in: c.bytes_in.load(Relaxed),
                    frames_out: c.frames_out.load(Relaxed),
                    bytes_out: c.bytes_out.load(Relaxed),
                    ..TrafficSnapshot::default()
                };
                (id, output.transport, traffic)
            })
            .collect()
    }

    /// Resolves when the LAN has been removed.
    pub async fn removed(&self) {
        self.removed.cancelled().await
    }

    /// Resolves when the last client may have left.
    pub async fn idle(&self) {
        self.idle.notified().await
    }

    /// The LAN stays (without clients) until its service calls [`LanRegistry::remove_if_idle`].
    pub fn keep_until_service_releases(&self) {
        self.kept_by_service.store(true, Relaxed);
    }

    pub fn client_count(&self) -> usize {
        lock(&self.state).clients
    }
}

impl Port {
    pub fn id(&self) -> PortId {
        self.id
    }

    pub fn lan_name(&self) -> &LanName {
        &self.lan.name
    }

    pub fn lan(&self) -> &Arc<Lan> {
        &self.lan
    }

    pub fn counters(&self) -> &PortCounters {
        &self.counters
    }

    /// The counters, for the task that drains this port's queue.
    pub fn counters_handle(&self) -> Arc<PortCounters> {
        self.counters.clone()
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.registry.totals.count_drop(reason);
    }

    /// One frame from this port's client: switch it to the other ports' queues.
    pub fn ingress(&self, now: Instant, frame: Bytes) {
        self.counters.frames_in.fetch_add(1, Relaxed);
        self.counters
            .bytes_in
            .fetch_add(frame.len() as u64, Relaxed);
        if frame.len() < 14 {
            return self.count_drop(DropReason::TooShort);
        }
        if frame.len() > self.registry.limits.max_frame_size {
            return self.count_drop(DropReason::TooLarge);
        }
        let mut state = lock(&self.lan.state);
        let frame = self.translate_from_client(&state, frame);
        match state.switch.handle_frame(now, self.id, &frame) {
            Forward::Unicast(to) => {
                if let Some(output) = state.ports.get(&to) {
                    self.deliver(output, frame);
                }
            }
            Forward::Flood => {
                for (id, output) in &state.ports {
                    if *id != self.id {
                        self.deliver(output, frame.clone());
                    }
                }
            }
            Forward::Drop(reason) => self.count_drop(DropReason::Switch(reason)),
        }
    }

    /// Tabs restored from one saved v86 state share a MAC. A second live port sending from a
    /// MAC that another live port owns must not steal its traffic: it gets a local MAC,
    /// translated both ways (see [`switch::translate`]).
    fn translate_from_client(&self, state: &LanState, frame: Bytes) -> Bytes {
        let src = MacAddr::from_bytes(&frame[6..12]);
        let translation = match self.counters.translation.get() {
            Some(t) if t.original == src => *t,
            Some(_) => return frame,
            None => {
                // The switch forgets a port's MACs when it leaves, so any owner is live.
                let taken = state
                    .switch
                    .lookup(&src)
                    .is_some_and(|owner| owner != self.id);
                if !taken || !src.is_unicast() || !self.transport.is_client() {
                    return frame;
                }
                let t = MacTranslation::for_port(src, self.id.0);
                let _ = self.counters.translation.set(t);
                self.registry.totals.mac_translations.fetch_add(1, Relaxed);
                tracing::info!(
                    lan = %self.lan.name,
                    "{} is in use on another port: {} uses {} on this LAN",
                    src,
                    self.id,
                    t.local
                );
                t
            }
        };
        let mut frame = bytes::BytesMut::from(&frame[..]);
        translation.outbound(&mut frame);
        frame.freeze()
    }

    fn deliver(&self, output: &PortOutput, frame: Bytes) {
        match output.queue.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                output.counters.queue_drops.fetch_add(1, Relaxed);
                self.count_drop(DropReason::QueueFull);
            }
            // The port is leaving; its frames no longer matter.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.registry.leave(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn lan_names() {
        assert!(LanName::new("physics-101").is_ok());
        assert!(LanName::new("A_b-9").is_ok());
        assert!(LanName::new("").is_err());
        assert!(LanName::new("a/b").is_err());
        assert!(LanName::new(&"x".repeat(65)).is_err());
        assert!(LanName::new("é").is_err());
    }

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
