//! The DHCP server state machine.
//!
//! One type, [`DhcpServer`], split by concern: the public driving API lives here;
//! `handle` answers each message type, `pool` picks and binds addresses, `reply` encodes
//! answers, `tables` keeps the slot and remembered-address maps consistent, `snapshot`
//! saves and restores leases, `message` decodes requests and `slot` is what holds an address.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Instant;

use dhcproto::v4::{self, MessageType};
use serde::Serialize;
use smoltcp::wire::EthernetAddress;

use crate::config::{ConfigError, DhcpConfig, StaticLease};
use crate::lease::{ClientKey, Lease, LeaseEvent};

mod handle;
mod message;
mod pool;
mod reply;
mod slot;
mod snapshot;
mod tables;

use slot::Slot;

/// Events kept for [`DhcpServer::poll_event`]; older ones are dropped (and counted) beyond.
pub const MAX_PENDING_EVENTS: usize = 1024;

/// A reply for the driver to send from UDP port 67 to port 68, IPv4 source = the server id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The encoded DHCP message (the UDP payload).
    pub payload: Vec<u8>,
    pub to: ReplyTarget,
    pub kind: ReplyKind,
}

/// Where a reply goes, following RFC 2131 4.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTarget {
    /// Ethernet ff:ff:ff:ff:ff:ff, IPv4 255.255.255.255: NAKs, requests with the broadcast
    /// flag, and INFORMs without ciaddr.
    Broadcast,
    /// To the client's MAC and IP: its ciaddr when set, else the address being offered.
    Unicast { mac: EthernetAddress, ip: Ipv4Addr },
}

/// The DHCP message type of a [`Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

/// Why a message was rejected. Every `Err` also increments [`DhcpStats::malformed`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DhcpError {
    #[error("message is {0} bytes, a DHCP message has at least 240")]
    Truncated(usize),
    #[error("no DHCP magic cookie (plain BOOTP or not DHCP at all)")]
    BadMagicCookie,
    #[error("undecodable DHCP message: {0}")]
    Decode(#[from] v4::DecodeError),
    #[error("op is not BOOTREQUEST")]
    NotRequest,
    #[error("unsupported hardware address (htype {htype}, hlen {hlen}); only Ethernet is served")]
    HardwareAddress { htype: u8, hlen: u8 },
    #[error("no DHCP message type (option 53)")]
    MissingMessageType,
    #[error("client identifier (option 61) is longer than 255 bytes")]
    ClientIdTooLong,
    #[error("{0:?} names no address (no option 50 and ciaddr 0.0.0.0)")]
    NoAddress(MessageType),
    #[error("encoding the reply failed: {0}")]
    Encode(#[from] v4::EncodeError),
}

/// Counters for metrics. `active_leases` is a gauge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DhcpStats {
    pub received_discover: u64,
    pub received_request: u64,
    pub received_release: u64,
    pub received_decline: u64,
    pub received_inform: u64,
    /// Well-formed messages of any other type (they are ignored).
    pub received_other: u64,
    pub sent_offer: u64,
    pub sent_ack: u64,
    pub sent_nak: u64,
    /// DISCOVERs that found no free address.
    pub pool_exhausted: u64,
    /// Messages rejected with an error.
    pub malformed: u64,
    /// Events dropped because nobody polled them (more than [`MAX_PENDING_EVENTS`]).
    pub events_dropped: u64,
    pub active_leases: u64,
}

/// A DHCPv4 server for one LAN. See the crate documentation for the driving loop.
#[derive(Debug)]
pub struct DhcpServer {
    config: DhcpConfig,
    server_id: Ipv4Addr,
    statics_by_mac: HashMap<EthernetAddress, StaticLease>,
    statics_by_ip: HashMap<Ipv4Addr, EthernetAddress>,
    /// Every offered, leased or quarantined address. Bounded by the pool plus static leases.
    slots: BTreeMap<Ipv4Addr, Slot>,
    /// `(slot.deadline(), ip)` for every slot, so timeouts are cheap.
    deadlines: BTreeSet<(Instant, Ipv4Addr)>,
    /// The one slot (offer or lease) each client holds.
    by_key: HashMap<ClientKey, Ipv4Addr>,
    /// Last address per client (bounded, oldest forgotten first), with its age stamp.
    remembered: HashMap<ClientKey, (Ipv4Addr, u64)>,
    remembered_by_ip: HashMap<Ipv4Addr, ClientKey>,
    remembered_order: BTreeMap<u64, ClientKey>,
    remember_clock: u64,
    events: VecDeque<LeaseEvent>,
    stats: DhcpStats,
}

impl DhcpServer {
    /// Create a server; fails if [`DhcpConfig::validate`] does.
    pub fn new(config: DhcpConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let statics_by_mac = config
            .static_leases
            .iter()
            .map(|lease| (lease.mac, lease.clone()))
            .collect();
        let statics_by_ip = config
            .static_leases
            .iter()
            .map(|lease| (lease.ip, lease.mac))
            .collect();
        Ok(Self {
            server_id: config.effective_server_id(),
            config,
            statics_by_mac,
            statics_by_ip,
            slots: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            by_key: HashMap::new(),
            remembered: HashMap::new(),
            remembered_by_ip: HashMap::new(),
            remembered_order: BTreeMap::new(),
            remember_clock: 0,
            events: VecDeque::new(),
            stats: DhcpStats::default(),
        })
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    /// Source IPv4 address for replies (option 54).
    pub fn server_id(&self) -> Ipv4Addr {
        self.server_id
    }

    pub fn stats(&self) -> &DhcpStats {
        &self.stats
    }

    /// Process one UDP payload received on port 67.
    ///
    /// `frame_src` is the Ethernet source MAC of the frame (after any translation the driver
    /// did); unicast replies go there and leases record it. Leases are keyed by option 61,
    /// else by chaddr. `Ok(None)` means no reply is due (RELEASE, DECLINE, a REQUEST for
    /// another server, an exhausted pool, an ignored type).
    pub fn handle_message(
        &mut self,
        now: Instant,
        frame_src: EthernetAddress,
        payload: &[u8],
    ) -> Result<Option<Reply>, DhcpError> {
        self.handle_timeout(now);
        let result = self.dispatch(now, frame_src, payload);
        if result.is_err() {
            self.stats.malformed += 1;
        }
        result
    }

    /// Expire offers, leases and quarantines due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, ip)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.remove(&(deadline, ip));
            if self.slots.get(&ip).map(Slot::deadline) != Some(deadline) {
                continue;
            }
            if let Some(Slot::Bound(lease)) = self.remove_slot(ip) {
                self.push_event(LeaseEvent::Expired {
                    mac: lease.mac,
                    ip,
                    host_name: lease.host_name,
                });
            }
        }
    }

    /// When [`Self::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// The next lease event, oldest first.
    pub fn poll_event(&mut self) -> Option<LeaseEvent> {
        self.events.pop_front()
    }

    /// All bound leases, by address.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.slots.values().filter_map(Slot::lease)
    }

    pub fn lease_by_ip(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.slots.get(&ip).and_then(Slot::lease)
    }

    /// The lowest-addressed lease of `mac` (VMs sharing a MAC may hold several).
    pub fn lease_by_mac(&self, mac: EthernetAddress) -> Option<&Lease> {
        self.leases().find(|lease| lease.mac == mac)
    }

    /// Ends every dynamic lease of `mac` now (an administrator removed the machine), as a
    /// DHCPRELEASE would: each is reported as [`LeaseEvent::Released`] and its address is
    /// free for the next client. Returns the addresses released.
    pub fn release_mac(&mut self, mac: EthernetAddress) -> Vec<Ipv4Addr> {
        let ips: Vec<Ipv4Addr> = self
            .leases()
            .filter(|lease| lease.mac == mac && !lease.is_static)
            .map(|lease| lease.ip)
            .collect();
        for &ip in &ips {
            if let Some(Slot::Bound(lease)) = self.remove_slot(ip) {
                self.push_event(LeaseEvent::Released {
                    mac: lease.mac,
                    ip,
                    host_name: lease.host_name,
                });
            }
        }
        ips
    }

    /// The lowest-addressed lease with this host name (case-insensitive).
    pub fn lease_by_host_name(&self, name: &str) -> Option<&Lease> {
        self.leases().find(|lease| {
            lease
                .host_name
                .as_deref()
                .is_some_and(|own| own.eq_ignore_ascii_case(name))
        })
    }
}
