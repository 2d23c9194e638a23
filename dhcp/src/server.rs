//! The DHCP server state machine.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Instant;

use dhcproto::v4::{self, DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable, Encoder};
use serde::Serialize;
use smoltcp::wire::EthernetAddress;

use crate::config::{ConfigError, DhcpConfig, StaticLease};
use crate::hostname;
use crate::lease::{
    ClientKey, LastAddressRecord, Lease, LeaseEvent, LeaseRecord, LeaseSnapshot, MAX_CLIENT_ID_LEN,
    RestoreReport,
};

/// Events kept for [`DhcpServer::poll_event`]; older ones are dropped (and counted) beyond.
pub const MAX_PENDING_EVENTS: usize = 1024;

/// Fixed BOOTP header (236 bytes) plus the magic cookie.
const MIN_MESSAGE_LEN: usize = 240;

/// Replies are padded to this size: BOOTP relays and some old clients drop shorter ones
/// (RFC 1542 2.1; dnsmasq does the same).
const MIN_REPLY_LEN: usize = v4::MIN_PACKET_SIZE;

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

/// What occupies an address.
#[derive(Debug, Clone)]
enum Slot {
    /// Reserved by an OFFER until the client requests it or the offer times out.
    Offered {
        key: ClientKey,
        expires: Instant,
    },
    Bound(Lease),
    /// Declined by a client (someone else uses it); kept out of the pool for a while.
    Quarantined {
        until: Instant,
    },
}

impl Slot {
    fn deadline(&self) -> Instant {
        match self {
            Slot::Offered { expires, .. } => *expires,
            Slot::Bound(lease) => lease.expires,
            Slot::Quarantined { until } => *until,
        }
    }

    fn key(&self) -> Option<ClientKey> {
        match self {
            Slot::Offered { key, .. } => Some(key.clone()),
            Slot::Bound(lease) => Some(lease.key()),
            Slot::Quarantined { .. } => None,
        }
    }

    fn is_owned_by(&self, key: &ClientKey) -> bool {
        match self {
            Slot::Offered { key: owner, .. } => owner == key,
            Slot::Bound(lease) => match (key, &lease.client_id) {
                (ClientKey::ClientId(id), Some(lease_id)) => id == lease_id,
                (ClientKey::Mac(mac), None) => *mac == lease.chaddr,
                _ => false,
            },
            Slot::Quarantined { .. } => false,
        }
    }

    fn lease(&self) -> Option<&Lease> {
        match self {
            Slot::Bound(lease) => Some(lease),
            _ => None,
        }
    }
}

/// Whether an address can go to a given client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Availability {
    /// Offered or leased to this client, or its static address.
    Mine,
    /// In the pool and unused.
    Free,
    /// Reserved, outside the pool, quarantined or someone else's.
    Unavailable,
}

/// The sender of a message, validated.
#[derive(Debug)]
struct Client {
    chaddr: EthernetAddress,
    /// Where unicast replies go and what the lease records: the frame's source MAC, which
    /// is what the gateway sees on the wire even if the driver rewrote MACs.
    mac: EthernetAddress,
    client_id: Option<Vec<u8>>,
    key: ClientKey,
    /// Option 12, sanitized.
    host_name: Option<String>,
}

/// What to answer.
enum Answer {
    Offer {
        ip: Ipv4Addr,
        host_name: Option<String>,
    },
    Ack {
        ip: Ipv4Addr,
        host_name: Option<String>,
    },
    InformAck,
    Nak(&'static str),
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

    /// The lowest-addressed lease with this host name (case-insensitive).
    pub fn lease_by_host_name(&self, name: &str) -> Option<&Lease> {
        self.leases().find(|lease| {
            lease
                .host_name
                .as_deref()
                .is_some_and(|own| own.eq_ignore_ascii_case(name))
        })
    }

    /// Leases and remembered addresses with absolute unix expiry times, for a state file.
    pub fn snapshot(&self, now: Instant, unix_now_secs: u64) -> LeaseSnapshot {
        let leases = self
            .leases()
            .map(|lease| LeaseRecord {
                ip: lease.ip,
                mac: lease.mac,
                chaddr: lease.chaddr,
                client_id: lease.client_id.clone(),
                host_name: lease.host_name.clone(),
                expires_unix_secs: unix_now_secs.saturating_add(whole_secs_rounded_up(
                    lease.expires.saturating_duration_since(now),
                )),
            })
            .collect();
        // Oldest first, so restoring replays the same forgetting order.
        let last_addresses = self
            .remembered_order
            .values()
            .filter_map(|key| {
                let &(ip, _) = self.remembered.get(key)?;
                Some(LastAddressRecord {
                    key: key.clone(),
                    ip,
                })
            })
            .collect();
        LeaseSnapshot {
            leases,
            last_addresses,
        }
    }

    /// Load a [`LeaseSnapshot`] taken by [`Self::snapshot`], usually right after `new`.
    ///
    /// Expired leases are skipped; leases that the current config would not hand out, or
    /// that clash with leases already held, are rejected. Each restored lease emits
    /// [`LeaseEvent::Bound`] so DNS names come back too.
    pub fn restore(
        &mut self,
        snapshot: &LeaseSnapshot,
        now: Instant,
        unix_now_secs: u64,
    ) -> RestoreReport {
        self.handle_timeout(now);
        let mut report = RestoreReport::default();
        for record in &snapshot.last_addresses {
            if self.config.in_pool(record.ip) && !self.config.is_reserved(record.ip) {
                self.remember(record.key.clone(), record.ip);
            }
        }
        for record in &snapshot.leases {
            let Some(remaining) = record.expires_unix_secs.checked_sub(unix_now_secs) else {
                report.expired += 1;
                continue;
            };
            if remaining == 0 {
                report.expired += 1;
                continue;
            }
            // A lease never has more left than one lease time (the config may have shrunk).
            let remaining = std::time::Duration::from_secs(remaining).min(self.config.lease_time);
            let client_id = record
                .client_id
                .clone()
                .filter(|id| !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN);
            let key = match &client_id {
                Some(id) => ClientKey::ClientId(id.clone()),
                None => ClientKey::Mac(record.chaddr),
            };
            let static_ip = self.statics_by_mac.get(&record.chaddr).map(|s| s.ip);
            let allowed = match static_ip {
                Some(ip) => ip == record.ip,
                None => self.availability(record.ip, &key, record.chaddr) == Availability::Free,
            };
            if !allowed
                || self.slots.contains_key(&record.ip)
                || self.by_key.contains_key(&key)
                || !record.mac.is_unicast()
            {
                report.rejected += 1;
                continue;
            }
            let host_name = self
                .static_host_name(record.chaddr)
                .or_else(|| record.host_name.as_deref().and_then(hostname::sanitize));
            let lease = Lease {
                ip: record.ip,
                mac: record.mac,
                client_id,
                host_name,
                expires: now + remaining,
                is_static: static_ip.is_some(),
                chaddr: record.chaddr,
            };
            self.push_event(LeaseEvent::Bound {
                mac: lease.mac,
                ip: lease.ip,
                host_name: lease.host_name.clone(),
            });
            self.insert_slot(record.ip, Slot::Bound(lease));
            self.remember(key, record.ip);
            report.restored += 1;
        }
        report
    }

    // ---- message handling ----

    fn dispatch(
        &mut self,
        now: Instant,
        frame_src: EthernetAddress,
        payload: &[u8],
    ) -> Result<Option<Reply>, DhcpError> {
        let message = parse(payload)?;
        let message_type = message
            .opts()
            .msg_type()
            .ok_or(DhcpError::MissingMessageType)?;
        let client = client_of(&message, frame_src)?;
        match message_type {
            MessageType::Discover => {
                self.stats.received_discover += 1;
                self.handle_discover(now, &message, &client)
            }
            MessageType::Request => {
                self.stats.received_request += 1;
                self.handle_request(now, &message, &client)
            }
            MessageType::Release => {
                self.stats.received_release += 1;
                self.handle_release(&message, &client);
                Ok(None)
            }
            MessageType::Decline => {
                self.stats.received_decline += 1;
                self.handle_decline(now, &message, &client)
            }
            MessageType::Inform => {
                self.stats.received_inform += 1;
                self.answer(&message, &client, Answer::InformAck).map(Some)
            }
            _ => {
                self.stats.received_other += 1;
                Ok(None)
            }
        }
    }

    fn handle_discover(
        &mut self,
        now: Instant,
        message: &Message,
        client: &Client,
    ) -> Result<Option<Reply>, DhcpError> {
        let Some(ip) = self.choose_offer(client, requested_ip(message)) else {
            self.stats.pool_exhausted += 1;
            self.push_event(LeaseEvent::PoolExhausted { mac: client.mac });
            return Ok(None);
        };
        let current = self.slots.get(&ip);
        let host_name = self
            .static_host_name(client.chaddr)
            .or_else(|| client.host_name.clone())
            .or_else(|| {
                current
                    .and_then(Slot::lease)
                    .and_then(|l| l.host_name.clone())
            });
        // A bound lease or a static address needs no reservation; anything else is held
        // for the client until it requests it (a repeated DISCOVER extends the hold).
        let needs_reservation =
            !matches!(current, Some(Slot::Bound(_))) && !self.statics_by_ip.contains_key(&ip);
        if needs_reservation {
            let expires = now + self.config.offer_timeout;
            self.insert_slot(
                ip,
                Slot::Offered {
                    key: client.key.clone(),
                    expires,
                },
            );
        }
        self.answer(message, client, Answer::Offer { ip, host_name })
            .map(Some)
    }

    /// Static address, else the client's current offer or lease, else the address it asks
    /// for, else the one it had last, else a fresh one.
    fn choose_offer(&self, client: &Client, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(lease) = self.statics_by_mac.get(&client.chaddr) {
            return Some(lease.ip);
        }
        if let Some(&ip) = self.by_key.get(&client.key) {
            return Some(ip);
        }
        let is_free = |ip| self.availability(ip, &client.key, client.chaddr) == Availability::Free;
        if let Some(ip) = requested.filter(|&ip| is_free(ip)) {
            return Some(ip);
        }
        if let Some(&(ip, _)) = self.remembered.get(&client.key)
            && is_free(ip)
        {
            return Some(ip);
        }
        self.allocate()
    }

    /// Lowest free pool address that no other client remembers, else the lowest free one.
    fn allocate(&self) -> Option<Ipv4Addr> {
        let mut fallback = None;
        for raw in u32::from(self.config.pool_start)..=u32::from(self.config.pool_end) {
            let ip = Ipv4Addr::from(raw);
            if self.config.is_reserved(ip)
                || self.statics_by_ip.contains_key(&ip)
                || self.slots.contains_key(&ip)
            {
                continue;
            }
            if !self.remembered_by_ip.contains_key(&ip) {
                return Some(ip);
            }
            fallback.get_or_insert(ip);
        }
        fallback
    }

    /// RFC 2131 4.3.2. The state is told apart by option 54 (SELECTING), then ciaddr
    /// (RENEWING/REBINDING; which of the two makes no difference to a single server), else
    /// option 50 (INIT-REBOOT).
    ///
    /// An address that is in the pool but that we hold no record of is ACKed in every state,
    /// not ignored as RFC 2131 suggests for INIT-REBOOT: we are the only server on the LAN,
    /// and after a relay restart without a state file clients must keep their addresses.
    /// Addresses outside the pool, reserved, quarantined or held by another client get a NAK
    /// so the client restarts with DISCOVER instead of waiting.
    fn handle_request(
        &mut self,
        now: Instant,
        message: &Message,
        client: &Client,
    ) -> Result<Option<Reply>, DhcpError> {
        let server_id = server_identifier(message);
        if let Some(chosen) = server_id
            && chosen != self.server_id
        {
            // The client took another server's offer: release ours, say nothing.
            if let Some(&ip) = self.by_key.get(&client.key)
                && matches!(self.slots.get(&ip), Some(Slot::Offered { .. }))
            {
                self.remove_slot(ip);
            }
            return Ok(None);
        }
        let ciaddr = Some(message.ciaddr()).filter(|ip| !ip.is_unspecified());
        let requested = requested_ip(message);
        let wanted = if server_id.is_some() {
            requested.or(ciaddr)
        } else {
            ciaddr.or(requested)
        };
        let ip = wanted.ok_or(DhcpError::NoAddress(MessageType::Request))?;

        if let Some(lease) = self.statics_by_mac.get(&client.chaddr)
            && lease.ip != ip
        {
            return self
                .answer(
                    message,
                    client,
                    Answer::Nak("address is reserved for another"),
                )
                .map(Some);
        }
        match self.availability(ip, &client.key, client.chaddr) {
            Availability::Unavailable => self
                .answer(
                    message,
                    client,
                    Answer::Nak("requested address not available"),
                )
                .map(Some),
            Availability::Mine | Availability::Free => {
                let host_name = self.bind(now, client, ip);
                self.answer(message, client, Answer::Ack { ip, host_name })
                    .map(Some)
            }
        }
    }

    fn handle_release(&mut self, message: &Message, client: &Client) {
        if server_identifier(message).is_some_and(|id| id != self.server_id) {
            return;
        }
        let ip = message.ciaddr();
        let owned = self
            .slots
            .get(&ip)
            .is_some_and(|slot| matches!(slot, Slot::Bound(_)) && slot.is_owned_by(&client.key));
        if owned && let Some(Slot::Bound(lease)) = self.remove_slot(ip) {
            // The address stays remembered, so the client gets it back if it returns.
            self.push_event(LeaseEvent::Released {
                mac: lease.mac,
                ip,
                host_name: lease.host_name,
            });
        }
    }

    fn handle_decline(
        &mut self,
        now: Instant,
        message: &Message,
        client: &Client,
    ) -> Result<Option<Reply>, DhcpError> {
        if server_identifier(message).is_some_and(|id| id != self.server_id) {
            return Ok(None);
        }
        let ip = requested_ip(message).ok_or(DhcpError::NoAddress(MessageType::Decline))?;
        let owned = self
            .slots
            .get(&ip)
            .is_some_and(|slot| slot.is_owned_by(&client.key));
        if !owned {
            return Ok(None);
        }
        self.remove_slot(ip);
        self.forget(&client.key);
        // A static address belongs to its MAC whatever happens; anything else sits out
        // the quarantine so the next client does not hit the same conflict.
        if !self.statics_by_ip.contains_key(&ip) && !self.config.decline_quarantine.is_zero() {
            let until = now + self.config.decline_quarantine;
            self.insert_slot(ip, Slot::Quarantined { until });
        }
        self.push_event(LeaseEvent::Declined {
            mac: client.mac,
            ip,
        });
        Ok(None)
    }

    /// Bind `ip` to the client (new lease or renewal); returns the lease's host name.
    fn bind(&mut self, now: Instant, client: &Client, ip: Ipv4Addr) -> Option<String> {
        let previous = self
            .slots
            .get(&ip)
            .filter(|slot| slot.is_owned_by(&client.key))
            .and_then(Slot::lease);
        let host_name = self
            .static_host_name(client.chaddr)
            .or_else(|| client.host_name.clone())
            .or_else(|| previous.and_then(|l| l.host_name.clone()));
        let changed = previous.is_none_or(|p| p.mac != client.mac || p.host_name != host_name);
        let lease = Lease {
            ip,
            mac: client.mac,
            client_id: client.client_id.clone(),
            host_name: host_name.clone(),
            expires: now + self.config.lease_time,
            is_static: self.statics_by_ip.contains_key(&ip),
            chaddr: client.chaddr,
        };
        self.insert_slot(ip, Slot::Bound(lease));
        self.remember(client.key.clone(), ip);
        if changed {
            self.push_event(LeaseEvent::Bound {
                mac: client.mac,
                ip,
                host_name: host_name.clone(),
            });
        }
        host_name
    }

    fn availability(&self, ip: Ipv4Addr, key: &ClientKey, chaddr: EthernetAddress) -> Availability {
        if self.config.is_reserved(ip) {
            return Availability::Unavailable;
        }
        if let Some(&owner) = self.statics_by_ip.get(&ip) {
            return if owner == chaddr {
                Availability::Mine
            } else {
                Availability::Unavailable
            };
        }
        match self.slots.get(&ip) {
            Some(slot) if slot.is_owned_by(key) => Availability::Mine,
            Some(_) => Availability::Unavailable,
            None if self.config.in_pool(ip) => Availability::Free,
            None => Availability::Unavailable,
        }
    }

    fn static_host_name(&self, chaddr: EthernetAddress) -> Option<String> {
        self.statics_by_mac
            .get(&chaddr)
            .and_then(|lease| lease.host_name.clone())
    }

    // ---- replies ----

    fn answer(
        &mut self,
        request: &Message,
        client: &Client,
        answer: Answer,
    ) -> Result<Reply, DhcpError> {
        let (kind, message_type, yiaddr) = match &answer {
            Answer::Offer { ip, .. } => (ReplyKind::Offer, MessageType::Offer, *ip),
            Answer::Ack { ip, .. } => (ReplyKind::Ack, MessageType::Ack, *ip),
            Answer::InformAck => (ReplyKind::Ack, MessageType::Ack, Ipv4Addr::UNSPECIFIED),
            Answer::Nak(_) => (ReplyKind::Nak, MessageType::Nak, Ipv4Addr::UNSPECIFIED),
        };
        // RFC 2131 table 3: ciaddr is echoed only in ACKs.
        let ciaddr = match kind {
            ReplyKind::Ack => request.ciaddr(),
            ReplyKind::Offer | ReplyKind::Nak => Ipv4Addr::UNSPECIFIED,
        };
        let mut reply = Message::new_with_id(
            request.xid(),
            ciaddr,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            request.giaddr(),
            &client.chaddr.0,
        );
        reply
            .set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_flags(request.flags());

        let opts = reply.opts_mut();
        opts.insert(DhcpOption::MessageType(message_type));
        opts.insert(DhcpOption::ServerIdentifier(self.server_id));
        // RFC 6842: echo the client identifier.
        if let Some(id) = &client.client_id {
            opts.insert(DhcpOption::ClientIdentifier(id.clone()));
        }
        match answer {
            Answer::Nak(text) => {
                opts.insert(DhcpOption::Message(text.to_owned()));
            }
            Answer::InformAck => self.insert_network_options(opts),
            Answer::Offer { host_name, .. } | Answer::Ack { host_name, .. } => {
                // The parameter request list is honoured loosely: the core set always goes
                // out, which is everything we have.
                self.insert_network_options(opts);
                let lease_secs = self.config.lease_time.as_secs();
                let as_u32 = |secs: u64| u32::try_from(secs).unwrap_or(u32::MAX);
                opts.insert(DhcpOption::AddressLeaseTime(as_u32(lease_secs)));
                opts.insert(DhcpOption::Renewal(as_u32(lease_secs / 2)));
                opts.insert(DhcpOption::Rebinding(as_u32(lease_secs / 8 * 7)));
                if let Some(name) = host_name {
                    opts.insert(DhcpOption::Hostname(name));
                }
            }
        }

        let mut payload = Vec::with_capacity(MIN_REPLY_LEN);
        reply.encode(&mut Encoder::new(&mut payload))?;
        if payload.len() < MIN_REPLY_LEN {
            payload.resize(MIN_REPLY_LEN, 0);
        }

        let request_ciaddr = request.ciaddr();
        let to = if kind == ReplyKind::Nak {
            ReplyTarget::Broadcast
        } else if !request_ciaddr.is_unspecified() {
            ReplyTarget::Unicast {
                mac: client.mac,
                ip: request_ciaddr,
            }
        } else if request.flags().broadcast() || yiaddr.is_unspecified() {
            ReplyTarget::Broadcast
        } else {
            ReplyTarget::Unicast {
                mac: client.mac,
                ip: yiaddr,
            }
        };
        match kind {
            ReplyKind::Offer => self.stats.sent_offer += 1,
            ReplyKind::Ack => self.stats.sent_ack += 1,
            ReplyKind::Nak => self.stats.sent_nak += 1,
        }
        Ok(Reply { payload, to, kind })
    }

    fn insert_network_options(&self, opts: &mut v4::DhcpOptions) {
        opts.insert(DhcpOption::SubnetMask(self.config.subnet_mask()));
        opts.insert(DhcpOption::Router(vec![self.config.router]));
        if !self.config.dns_servers.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(
                self.config.dns_servers.clone(),
            ));
        }
        if !self.config.domain_name.is_empty() {
            opts.insert(DhcpOption::DomainName(self.config.domain_name.clone()));
        }
        opts.insert(DhcpOption::InterfaceMtu(self.config.mtu));
        opts.insert(DhcpOption::BroadcastAddr(self.config.broadcast_address()));
    }

    // ---- tables ----

    /// Put `slot` at `ip`, keeping `by_key`, `deadlines` and the gauge in step. A client
    /// holds one slot: its other one goes, and a lease displaced by this one is released.
    fn insert_slot(&mut self, ip: Ipv4Addr, slot: Slot) {
        let key = slot.key();
        if let Some(Slot::Bound(old)) = self.remove_slot(ip)
            && Some(old.key()) != key
        {
            self.push_released(old);
        }
        if let Some(key) = key {
            if let Some(&old_ip) = self.by_key.get(&key)
                && let Some(Slot::Bound(old)) = self.remove_slot(old_ip)
            {
                self.push_released(old);
            }
            self.by_key.insert(key, ip);
        }
        if matches!(slot, Slot::Bound(_)) {
            self.stats.active_leases += 1;
        }
        self.deadlines.insert((slot.deadline(), ip));
        self.slots.insert(ip, slot);
    }

    fn remove_slot(&mut self, ip: Ipv4Addr) -> Option<Slot> {
        let slot = self.slots.remove(&ip)?;
        self.deadlines.remove(&(slot.deadline(), ip));
        if let Some(key) = slot.key()
            && self.by_key.get(&key) == Some(&ip)
        {
            self.by_key.remove(&key);
        }
        if matches!(slot, Slot::Bound(_)) {
            self.stats.active_leases = self.stats.active_leases.saturating_sub(1);
        }
        Some(slot)
    }

    fn push_released(&mut self, lease: Lease) {
        self.push_event(LeaseEvent::Released {
            mac: lease.mac,
            ip: lease.ip,
            host_name: lease.host_name,
        });
    }

    fn push_event(&mut self, event: LeaseEvent) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Record `ip` as the client's last address; an address is remembered for one client.
    fn remember(&mut self, key: ClientKey, ip: Ipv4Addr) {
        if self.config.max_remembered_clients == 0 {
            return;
        }
        if let Some(previous_owner) = self.remembered_by_ip.get(&ip).cloned()
            && previous_owner != key
        {
            self.forget(&previous_owner);
        }
        self.forget(&key);
        self.remember_clock += 1;
        let stamp = self.remember_clock;
        self.remembered.insert(key.clone(), (ip, stamp));
        self.remembered_by_ip.insert(ip, key.clone());
        self.remembered_order.insert(stamp, key);
        while self.remembered.len() > self.config.max_remembered_clients {
            let Some((_, oldest)) = self.remembered_order.pop_first() else {
                break;
            };
            self.forget(&oldest);
        }
    }

    fn forget(&mut self, key: &ClientKey) {
        if let Some((ip, stamp)) = self.remembered.remove(key) {
            self.remembered_order.remove(&stamp);
            if self.remembered_by_ip.get(&ip) == Some(key) {
                self.remembered_by_ip.remove(&ip);
            }
        }
    }
}

/// Rounded up so a lease with 0.4 s left is not saved as already expired.
fn whole_secs_rounded_up(duration: std::time::Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Decode and sanity-check the fixed part; dhcproto checks neither the cookie nor hlen.
fn parse(payload: &[u8]) -> Result<Message, DhcpError> {
    if payload.len() < MIN_MESSAGE_LEN {
        return Err(DhcpError::Truncated(payload.len()));
    }
    if payload.get(236..240) != Some(&v4::MAGIC[..]) {
        return Err(DhcpError::BadMagicCookie);
    }
    let message = Message::from_bytes(&keep_used_options(payload))?;
    if message.opcode() != Opcode::BootRequest {
        return Err(DhcpError::NotRequest);
    }
    Ok(message)
}

/// Options the server reads; everything else is dropped before decoding.
const USED_OPTIONS: [u8; 5] = [
    12, // host name
    50, // requested IP address
    53, // message type
    54, // server identifier
    61, // client identifier
];

/// Copy of `payload` whose options region holds only [`USED_OPTIONS`].
///
/// dhcproto 0.15 panics on some malformed options in debug builds (`debug_assert!` on the
/// length of options 80, 81, 94, 152-155 and `len - 1` underflow in option 151), which
/// cargo-fuzz and our random test found. Feeding it only the options we use removes those
/// paths and skips decoding what we would ignore anyway. This walks the TLV framing only;
/// values are still decoded by dhcproto. Like dhcproto, a truncated option ends the list.
fn keep_used_options(payload: &[u8]) -> Vec<u8> {
    let (fixed, mut rest) = payload.split_at(payload.len().min(MIN_MESSAGE_LEN));
    let mut kept = Vec::with_capacity(payload.len());
    kept.extend_from_slice(fixed);
    while let Some((&code, after_code)) = rest.split_first() {
        match code {
            0 => rest = after_code,
            255 => break,
            _ => {
                let Some((&len, after_len)) = after_code.split_first() else {
                    break;
                };
                let Some((value, after_value)) = after_len.split_at_checked(usize::from(len))
                else {
                    break;
                };
                if USED_OPTIONS.contains(&code) {
                    kept.extend_from_slice(&[code, len]);
                    kept.extend_from_slice(value);
                }
                rest = after_value;
            }
        }
    }
    kept.push(255);
    kept
}

fn client_of(message: &Message, frame_src: EthernetAddress) -> Result<Client, DhcpError> {
    // Check hlen before `chaddr()`, which slices by it.
    let hlen = message.hlen();
    let bad_hardware = || DhcpError::HardwareAddress {
        htype: message.htype().into(),
        hlen,
    };
    if message.htype() != HType::Eth || hlen != 6 {
        return Err(bad_hardware());
    }
    let chaddr = <[u8; 6]>::try_from(message.chaddr())
        .map(EthernetAddress)
        .map_err(|_| bad_hardware())?;
    if !chaddr.is_unicast() {
        return Err(bad_hardware());
    }
    let client_id = match message.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) if id.len() > MAX_CLIENT_ID_LEN => {
            return Err(DhcpError::ClientIdTooLong);
        }
        Some(DhcpOption::ClientIdentifier(id)) if !id.is_empty() => Some(id.clone()),
        _ => None,
    };
    let key = match &client_id {
        Some(id) => ClientKey::ClientId(id.clone()),
        None => ClientKey::Mac(chaddr),
    };
    let host_name = match message.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(name)) => hostname::sanitize(name),
        _ => None,
    };
    Ok(Client {
        chaddr,
        mac: if frame_src.is_unicast() {
            frame_src
        } else {
            chaddr
        },
        client_id,
        key,
        host_name,
    })
}

fn requested_ip(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_identifier(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}
