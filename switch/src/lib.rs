//! A sans-IO learning Ethernet switch: one [`Switch`] per virtual LAN.
//!
//! The switch decides where a frame goes; it never moves bytes itself. The driver (the relay)
//! calls [`Switch::handle_frame`] with the ingress port and the frame, gets a [`Forward`]
//! decision, and puts the frame on the chosen ports' own bounded queues. Time is passed in as
//! `now`; [`Switch::poll_timeout`] and [`Switch::handle_timeout`] age the MAC table, in the
//! style of `quinn-proto`.
//!
//! Behaviour, as a hardware learning bridge:
//! - the source MAC of every valid frame is learned on its ingress port (a MAC seen on a new
//!   port moves there);
//! - known unicast goes to its port only; broadcast, multicast and unknown unicast flood to
//!   every other port; nothing is ever sent back to the ingress port;
//! - every EtherType passes (IPv4, ARP, IPv6, IPX, NetBIOS ...): the switch reads only the
//!   Ethernet addresses;
//! - each port may own at most [`SwitchConfig::max_macs_per_port`] addresses; frames from
//!   further source addresses are dropped (port security), so one hostile client cannot fill
//!   the table or turn every frame into a flood.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::time::{Duration, Instant};

pub mod translate;

pub use smoltcp::wire::EthernetAddress as MacAddr;
use smoltcp::wire::EthernetFrame;

/// Identifies one port of a LAN. The driver allocates ids; they only need to be unique
/// within one switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u64);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {}", self.0)
    }
}

/// Tunables of one switch.
#[derive(Clone, Debug)]
pub struct SwitchConfig {
    /// A learned address is forgotten after this long without a frame from it.
    pub mac_aging: Duration,
    /// Most source addresses one port may own at a time.
    pub max_macs_per_port: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            mac_aging: Duration::from_secs(300),
            max_macs_per_port: 64,
        }
    }
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// To exactly this port.
    Unicast(PortId),
    /// To every port of the LAN except the ingress port.
    Flood,
    /// Nowhere, for this reason.
    Drop(DropReason),
}

labels::label_enum! {
    /// Why the switch refused a frame. Each is counted by the driver.
    pub enum DropReason {
        /// Shorter than an Ethernet header (14 bytes).
        TooShort => "too_short",
        /// The source address is a group (multicast/broadcast) address, which no NIC sends from.
        InvalidSource => "invalid_source",
        /// The ingress port already owns its maximum number of source addresses.
        MacLimit => "mac_limit",
        /// The destination was learned on the ingress port itself: the frame has nowhere to go.
        SamePort => "same_port",
        /// The ingress port is not attached to this switch.
        UnknownPort => "unknown_port",
    }
}

/// Errors of port management (never of frame handling: bad frames are [`Forward::Drop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchError {
    PortExists(PortId),
}

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchError::PortExists(p) => write!(f, "{p} is already attached to this switch"),
        }
    }
}

impl std::error::Error for SwitchError {}

/// Per-port counters kept by the switch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub frames_in: u64,
    pub unicast: u64,
    pub flooded: u64,
    pub dropped: u64,
    /// Source addresses currently learned on this port.
    pub macs: usize,
}

#[derive(Clone, Copy, Debug)]
struct MacEntry {
    port: PortId,
    last_seen: Instant,
}

/// One LAN's learning switch.
#[derive(Debug)]
pub struct Switch {
    config: SwitchConfig,
    ports: HashMap<PortId, PortStats>,
    table: HashMap<MacAddr, MacEntry>,
    next_sweep: Option<Instant>,
}

impl Switch {
    pub fn new(config: SwitchConfig) -> Self {
        Self {
            config,
            ports: HashMap::new(),
            table: HashMap::new(),
            next_sweep: None,
        }
    }

    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    pub fn add_port(&mut self, port: PortId) -> Result<(), SwitchError> {
        match self.ports.entry(port) {
            Entry::Occupied(_) => Err(SwitchError::PortExists(port)),
            Entry::Vacant(v) => {
                v.insert(PortStats::default());
                Ok(())
            }
        }
    }

    /// Detaches a port and forgets every address learned on it, so frames to them flood
    /// again (and reach the machine if it reconnects on a new port).
    pub fn remove_port(&mut self, port: PortId) -> Option<PortStats> {
        let stats = self.ports.remove(&port)?;
        if stats.macs > 0 {
            self.table.retain(|_, entry| entry.port != port);
        }
        Some(stats)
    }

    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    pub fn ports(&self) -> impl Iterator<Item = PortId> + '_ {
        self.ports.keys().copied()
    }

    pub fn port_stats(&self, port: PortId) -> Option<&PortStats> {
        self.ports.get(&port)
    }

    /// Learned addresses in the whole table.
    pub fn mac_entries(&self) -> usize {
        self.table.len()
    }

    /// The port an address was learned on, if any.
    pub fn lookup(&self, mac: &MacAddr) -> Option<PortId> {
        self.table.get(mac).map(|entry| entry.port)
    }

    /// Learns the frame's source on `ingress` and decides where the frame goes.
    pub fn handle_frame(&mut self, now: Instant, ingress: PortId, frame: &[u8]) -> Forward {
        let decision = self.decide(now, ingress, frame);
        if let Some(stats) = self.ports.get_mut(&ingress) {
            stats.frames_in += 1;
            match decision {
                Forward::Unicast(_) => stats.unicast += 1,
                Forward::Flood => stats.flooded += 1,
                Forward::Drop(_) => stats.dropped += 1,
            }
        }
        decision
    }

    fn decide(&mut self, now: Instant, ingress: PortId, frame: &[u8]) -> Forward {
        let Ok(frame) = EthernetFrame::new_checked(frame) else {
            return Forward::Drop(DropReason::TooShort);
        };
        if !self.ports.contains_key(&ingress) {
            return Forward::Drop(DropReason::UnknownPort);
        }
        let src = frame.src_addr();
        if src.is_multicast() {
            return Forward::Drop(DropReason::InvalidSource);
        }
        if let Err(reason) = self.learn(now, ingress, src) {
            return Forward::Drop(reason);
        }
        let dst = frame.dst_addr();
        if dst.is_multicast() {
            return Forward::Flood;
        }
        match self.table.get(&dst) {
            Some(entry) if entry.port == ingress => Forward::Drop(DropReason::SamePort),
            Some(entry) => Forward::Unicast(entry.port),
            None => Forward::Flood,
        }
    }

    fn learn(&mut self, now: Instant, ingress: PortId, src: MacAddr) -> Result<(), DropReason> {
        match self.table.entry(src) {
            Entry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                entry.last_seen = now;
                if entry.port != ingress {
                    // The machine moved (or reconnected on a new socket): follow it, within
                    // the new port's budget.
                    let old = entry.port;
                    let new_port = self
                        .ports
                        .get_mut(&ingress)
                        .ok_or(DropReason::UnknownPort)?;
                    if new_port.macs >= self.config.max_macs_per_port {
                        return Err(DropReason::MacLimit);
                    }
                    new_port.macs += 1;
                    entry.port = ingress;
                    if let Some(old) = self.ports.get_mut(&old) {
                        old.macs = old.macs.saturating_sub(1);
                    }
                }
            }
            Entry::Vacant(vacant) => {
                let port = self
                    .ports
                    .get_mut(&ingress)
                    .ok_or(DropReason::UnknownPort)?;
                if port.macs >= self.config.max_macs_per_port {
                    return Err(DropReason::MacLimit);
                }
                port.macs += 1;
                vacant.insert(MacEntry {
                    port: ingress,
                    last_seen: now,
                });
                if self.next_sweep.is_none() {
                    self.next_sweep = Some(now + self.sweep_interval());
                }
            }
        }
        Ok(())
    }

    /// Sweeping a quarter of the aging time apart keeps the sweep cost low; an address then
    /// lives between 1 and 1.25 times the aging time after its last frame.
    fn sweep_interval(&self) -> Duration {
        (self.config.mac_aging / 4).max(Duration::from_secs(1))
    }

    /// When [`Switch::handle_timeout`] next has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Forgets addresses not seen for the aging time.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.next_sweep {
            Some(at) if at <= now => {}
            _ => return,
        }
        let aging = self.config.mac_aging;
        let ports = &mut self.ports;
        self.table.retain(|_, entry| {
            let alive = now.saturating_duration_since(entry.last_seen) < aging;
            if !alive && let Some(stats) = ports.get_mut(&entry.port) {
                stats.macs = stats.macs.saturating_sub(1);
            }
            alive
        });
        self.next_sweep = if self.table.is_empty() {
            None
        } else {
            Some(now + self.sweep_interval())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PortId = PortId(1);
    const B: PortId = PortId(2);
    const C: PortId = PortId(3);

    const MAC_A: [u8; 6] = [0x00, 0x22, 0x15, 0x00, 0x00, 0x0a];
    const MAC_B: [u8; 6] = [0x00, 0x22, 0x15, 0x00, 0x00, 0x0b];

    /// An ARP request from MAC_A as ne2k sends it: 42 bytes padded to 60.
    const ARP_REQUEST_FROM_A: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst: broadcast
        0x00, 0x22, 0x15, 0x00, 0x00, 0x0a, // src: MAC_A
        0x08, 0x06, // ARP
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // ethernet/ipv4 request
        0x00, 0x22, 0x15, 0x00, 0x00, 0x0a, 10, 0, 2, 15, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 2, 16, // target
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ne2k padding
    ];

    /// An IPX frame (EtherType 0x8137) from MAC_B to MAC_A: old games must pass.
    const IPX_B_TO_A: [u8; 60] = {
        let mut f = [0u8; 60];
        let mut i = 0;
        while i < 6 {
            f[i] = MAC_A[i];
            f[6 + i] = MAC_B[i];
            i += 1;
        }
        f[12] = 0x81;
        f[13] = 0x37;
        f[14] = 0xff; // IPX checksum
        f[15] = 0xff;
        f
    };

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = Vec::with_capacity(60);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x86, 0xdd]); // IPv6
        f.resize(60, 0);
        f
    }

    fn switch_with_ports(ports: &[PortId]) -> Switch {
        let mut sw = Switch::new(SwitchConfig::default());
        for &p in ports {
            sw.add_port(p).unwrap();
        }
        sw
    }

    #[test]
    fn broadcast_floods_and_learns_source() {
        let now = Instant::now();
        let mut sw = switch_with_ports(&[A, B, C]);
        assert_eq!(sw.handle_frame(now, A, &ARP_REQUEST_FROM_A), Forward::Flood);
        assert_eq!(sw.lookup(&MacAddr(MAC_A)), Some(A));
        assert_eq!(sw.port_stats(A).unwrap().macs, 1);
    }

    #[test]
    fn known_unicast_goes_to_its_port_for_any_ethertype() {
        let now = Instant::now();
        let mut sw = switch_with_ports(&[A, B, C]);
        sw.handle_frame(now, A, &ARP_REQUEST_FROM_A);
        assert_eq!(sw.handle_frame(now, B, &IPX_B_TO_A), Forward::Unicast(A));
        // And back: B is now learned too.
        assert_eq!(
            sw.handle_frame(now, A, &frame(MAC_B, MAC_A)),
            Forward::Unicast(B)
        );
    }

    #[test]
    fn unknown_unicast_and_multicast_flood() {
        let now = Instant::now();
        let mut sw = switch_with_ports(&[A, B]);
        assert_eq!(
            sw.handle_frame(now, A, &frame(MAC_B, MAC_A)),
            Forward::Flood
        );
        let ipv6_all_nodes = [0x33, 0x33, 0, 0, 0, 1];
        assert_eq!(
            sw.handle_frame(now, A, &frame(ipv6_all_nodes, MAC_A)),
            Forward::Flood
        );
    }

    #[test]
    fn never_back_to_sender() {
        let now = Instant::now();
        let mut sw = switch_with_ports(&[A, B]);
        sw.handle_frame(now, A, &frame(MAC_B, MAC_A));
        // A second MAC on port A, then a frame from port A to it.
        let mac_a2 = [0x02, 0, 0, 0, 0, 0xa2];
        sw.handle_frame(now, A, &frame(MAC_B, mac_a2));
        assert_eq!(
            sw.handle_frame(now, A, &frame(mac_a2, MAC_A)),
            Forward::Drop(DropReason::SamePort)
        );
    }

    #[test]
    fn mac_moves_to_new_port() {
        let now = Instant::now();
        let mut sw = switch_with_ports(&[A, B, C]);
        sw.handle_frame(now, A, &frame(MAC_B, MAC_A));
        sw.handle_frame(now, C, &frame(MAC_B, MAC_A));
        assert_eq!(sw.lookup(&MacAddr(MAC_A)), Some(C));
        assert_eq!(sw.port_stats(A).unwrap().macs, 0);
        assert_eq!(sw.port_stats(C).unwrap().macs, 1);
        assert_eq!(
            sw.handle_frame(now, B, &frame(MAC_A, MAC_B)),
            Forward::Unicast(C)
        );
    }

    #[test]
    fn removing_a_port_forgets_its_macs() {
        let now = Instant::now();
        let mut sw = switch_with_ports(&[A, B]);
        sw.handle_frame(now, A, &frame(MAC_B, MAC_A));
        assert_eq!(sw.mac_entries(), 1);
        sw.remove_port(A);
        assert_eq!(sw.mac_entries(), 0);
        assert_eq!(
            sw.handle_frame(now, B, &frame(MAC_A, MAC_B)),
            Forward::Flood
        );
        assert_eq!(sw.port_count(), 1);
    }

    #[test]
    fn aging_forgets_silent_macs() {
        let t0 = Instant::now();
        let mut sw = Switch::new(SwitchConfig {
            mac_aging: Duration::from_secs(8),
            ..SwitchConfig::default()
        });
        sw.add_port(A).unwrap();
        sw.add_port(B).unwrap();
        sw.handle_frame(t0, A, &frame(MAC_B, MAC_A));
        sw.handle_frame(t0 + Duration::from_secs(6), B, &frame(MAC_A, MAC_B));
        let mut now = t0;
        while let Some(at) = sw.poll_timeout() {
            if at > t0 + Duration::from_secs(11) {
                break;
            }
            now = at;
            sw.handle_timeout(now);
        }
        assert!(now >= t0 + Duration::from_secs(8));
        assert_eq!(sw.lookup(&MacAddr(MAC_A)), None, "A was silent for 8 s");
        assert_eq!(sw.lookup(&MacAddr(MAC_B)), Some(B), "B spoke 6 s in");
        assert_eq!(sw.port_stats(A).unwrap().macs, 0);
    }

    #[test]
    fn bad_frames_are_dropped_with_a_reason() {
        let now = Instant::now();
        let mut sw = switch_with_ports(&[A, B]);
        assert_eq!(
            sw.handle_frame(now, A, &[0xff; 13]),
            Forward::Drop(DropReason::TooShort)
        );
        assert_eq!(
            sw.handle_frame(now, A, &frame(MAC_B, [0xff; 6])),
            Forward::Drop(DropReason::InvalidSource)
        );
        assert_eq!(
            sw.handle_frame(now, PortId(99), &frame(MAC_B, MAC_A)),
            Forward::Drop(DropReason::UnknownPort)
        );
        assert_eq!(sw.mac_entries(), 0);
        assert_eq!(sw.port_stats(A).unwrap().dropped, 2);
    }

    #[test]
    fn per_port_mac_limit() {
        let now = Instant::now();
        let mut sw = Switch::new(SwitchConfig {
            max_macs_per_port: 2,
            ..SwitchConfig::default()
        });
        sw.add_port(A).unwrap();
        sw.add_port(B).unwrap();
        for i in 0..2u8 {
            let src = [0x02, 0, 0, 0, 0, i];
            assert_eq!(sw.handle_frame(now, A, &frame(MAC_B, src)), Forward::Flood);
        }
        let third = [0x02, 0, 0, 0, 0, 9];
        assert_eq!(
            sw.handle_frame(now, A, &frame(MAC_B, third)),
            Forward::Drop(DropReason::MacLimit)
        );
        assert_eq!(sw.mac_entries(), 2);
        // A known address still works.
        assert_eq!(
            sw.handle_frame(now, A, &frame(MAC_B, [0x02, 0, 0, 0, 0, 1])),
            Forward::Flood
        );
    }

    #[test]
    fn duplicate_port_is_an_error() {
        let mut sw = switch_with_ports(&[A]);
        assert_eq!(sw.add_port(A), Err(SwitchError::PortExists(A)));
    }

    #[test]
    fn random_frames_never_panic_and_table_stays_bounded() {
        let now = Instant::now();
        let mut sw = Switch::new(SwitchConfig {
            max_macs_per_port: 8,
            ..SwitchConfig::default()
        });
        for p in 0..4 {
            sw.add_port(PortId(p)).unwrap();
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let port = PortId(next() % 5);
            sw.handle_frame(now, port, &bytes);
        }
        assert!(sw.mac_entries() <= 4 * 8);
    }
}
