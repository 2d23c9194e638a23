#![forbid(unsafe_code)]
//! Sans-IO DNS proxy for one v86-relay LAN.
//!
//! One [`DnsProxy`] serves one LAN on its DNS address (e.g. 10.0.2.3), over UDP and TCP. It
//! answers lease host names itself (`HOST.LAN.lan` and bare `HOST`, A and PTR), keeps
//! reverse lookups for private addresses local, and turns everything else into upstream
//! lookups that the driver fulfils (with hickory-resolver) and hands back. Upstream answers
//! are cached by TTL. The proxy never does I/O and never reads the clock: every entry point
//! takes `now`, in the style of `quinn-proto`.
//!
//! # Driving it
//!
//! ```text
//! DnsProxy::new(DnsConfig::new("physics-101.lan")?)
//! set_local_host(host, ip) / remove_local_host(host, ip)  on DHCP lease events
//! remove_client(client)                                   when a VM's TCP connection closes
//!
//! handle_query(now, client, bytes) -> Ok(Some(answer))    send it back to `client` now
//!                                  -> Ok(None)            an upstream lookup is queued/joined
//!                                  -> Err(e)              nothing to send; count `e`
//! poll_upstream() -> UpstreamQuery { id, name, record_type }   resolve it, then
//! handle_upstream(now, id, UpstreamResult)                     (Answer / NoRecords / Failed)
//! poll_answer() -> (ClientId, Vec<u8>)                    answers to send back to VMs
//! poll_timeout() / handle_timeout(now)                    upstream timeouts, cache expiry
//! stats()
//! ```
//!
//! Query bytes are one UDP payload, or one TCP message without its 2-byte length prefix;
//! answers are the same (the driver adds the TCP prefix).
//!
//! # Behaviour
//!
//! - Answers echo the query's id, question (with its case), RD and CD, and set RA. Local
//!   answers are authoritative (AA).
//! - Local names are case-insensitive. A local name without data of the asked type (AAAA for
//!   a lease) is NOERROR with no answer. Anything else under the LAN's domain is NXDOMAIN
//!   and never goes upstream. Reverse names of private addresses (RFC 1918, link-local,
//!   100.64/10) that are not leases are NXDOMAIN locally.
//! - Upstream: identical questions in flight are coalesced into one [`UpstreamQuery`].
//!   [`UpstreamResult::Failed`] and timeouts answer SERVFAIL, never silence. A NOERROR
//!   without records (typically AAAA for an IPv4-only name) is an empty NOERROR.
//! - Cache: keyed by (lowercased name, type); TTL is the smallest record TTL clamped to
//!   `[min_ttl, max_ttl]`; NXDOMAIN/NODATA are cached with the negative TTL; TTLs handed out
//!   are decremented by the time spent in the cache. When full, the entry that expires first
//!   is evicted.
//! - Limits: over `max_inflight_per_client` (per VM IP, all ports and transports) or
//!   `max_inflight_total` queries waiting on upstream, the query is answered **REFUSED** at
//!   once and counted in [`DnsStats::dropped_over_limit`]. REFUSED rather than SERVFAIL
//!   because it is local policy, not an upstream failure: stub resolvers treat both alike
//!   (try the next server, or fail), but REFUSED keeps the two cases apart in captures and
//!   metrics, and SERVFAIL keeps meaning "upstream broke".
//! - Only QUERY with exactly one IN-class question is served: other opcodes get NOTIMP, no
//!   or several questions FORMERR, other classes and zone transfers REFUSED, EDNS versions
//!   above 0 BADVERS. A message whose header parses but whose body does not gets FORMERR.
//!   A message shorter than a header, or a response (QR=1), is dropped with an [`Err`].
//! - Size: UDP answers fit in 512 bytes, or in the query's EDNS payload size capped at
//!   [`DnsConfig::max_udp_payload`]; a larger answer is sent as header, question and OPT
//!   only, with TC set, so the client retries over TCP.
//!
//! # Bounds
//!
//! Cache entries (`cache_max_entries`), records per cached answer (`max_cached_records`),
//! client queries waiting on upstream (`max_inflight_total`, and per VM), local names
//! (`max_local_names`), and the answer queue (`max_inflight_total` answers; more are dropped
//! and counted when the driver does not drain it).

mod cache;
mod local;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordData};
use hickory_proto::serialize::binary::BinDecodable;

/// The hickory-proto this crate speaks, so the driver builds records with the same version.
pub use hickory_proto;
pub use hickory_proto::rr::{Name, Record, RecordType};

use cache::{Cache, CacheKey, Cached};
use local::{LocalAnswer, LocalNames};

/// DNS header length; anything shorter cannot even be answered.
const HEADER_LEN: usize = 12;
/// Classic DNS over UDP without EDNS (RFC 1035 4.2.1).
const MIN_UDP_PAYLOAD: u16 = 512;
/// DNS over TCP carries up to a 16-bit length.
const MAX_TCP_MESSAGE: usize = 65_535;

/// Settings of one LAN's proxy. [`DnsConfig::new`] gives defaults for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The LAN's domain, e.g. `physics-101.lan`; lease `HOST` is `HOST.physics-101.lan`.
    pub domain: String,
    /// TTL of local (lease) answers, seconds. Short, since leases change. Default 60.
    pub local_ttl: u32,
    /// Upstream answers kept. Default 4096.
    pub cache_max_entries: usize,
    /// Larger answers (in records) are passed on but not cached. Default 64.
    pub max_cached_records: usize,
    /// Queries waiting on upstream per VM (keyed by client IP). Default 32.
    pub max_inflight_per_client: usize,
    /// Queries waiting on upstream for the whole LAN. Default 1024.
    pub max_inflight_total: usize,
    /// After this, waiting clients get SERVFAIL. Default 5 s.
    pub upstream_timeout: Duration,
    /// Lower clamp on cached TTLs, seconds. Default 0 (respect upstream).
    pub min_ttl: u32,
    /// Upper clamp on cached and handed-out TTLs, seconds. Default 86400.
    pub max_ttl: u32,
    /// Negative TTL when upstream gives none (no SOA), seconds. Default 30.
    pub negative_ttl: u32,
    /// Upper clamp on negative TTLs, seconds (RFC 2308 suggests hours at most). Default 900.
    pub max_negative_ttl: u32,
    /// Largest UDP answer, whatever EDNS asks: 1232 avoids IP fragmentation (DNS flag day
    /// 2020). Default 1232; never below 512.
    pub max_udp_payload: u16,
    /// Lease names held (addresses with a name). Default 4096.
    pub max_local_names: usize,
}

impl DnsConfig {
    /// Defaults for `domain`, which must be a valid DNS name with room for a host label.
    pub fn new(domain: &str) -> Result<Self, DnsError> {
        let trimmed = domain.trim_end_matches('.');
        let valid = !trimmed.is_empty()
            && trimmed.len() <= 253 - 64
            && trimmed.split('.').all(local::is_valid_label);
        if !valid {
            return Err(DnsError::InvalidDomain(domain.to_owned()));
        }
        Ok(Self {
            domain: trimmed.to_ascii_lowercase(),
            local_ttl: 60,
            cache_max_entries: 4096,
            max_cached_records: 64,
            max_inflight_per_client: 32,
            max_inflight_total: 1024,
            upstream_timeout: Duration::from_secs(5),
            min_ttl: 0,
            max_ttl: 86_400,
            negative_ttl: 30,
            max_negative_ttl: 900,
            max_udp_payload: 1232,
            max_local_names: 4096,
        })
    }
}

/// How a query reached the DNS address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: answers are size-limited and may come back truncated (TC).
    Udp,
    /// TCP: `conn` is the driver's id for the connection, so answers go back on the
    /// connection that asked even when a VM reuses a port.
    Tcp {
        /// Driver-chosen connection id.
        conn: u64,
    },
}

/// Where a query came from and where its answer goes: the VM's socket and transport.
/// In-flight limits apply per VM IP (`addr.ip()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId {
    /// The VM's address and source port.
    pub addr: SocketAddrV4,
    /// UDP or a TCP connection.
    pub transport: Transport,
}

impl ClientId {
    /// A UDP client.
    pub fn udp(addr: SocketAddrV4) -> Self {
        Self {
            addr,
            transport: Transport::Udp,
        }
    }

    /// A client on TCP connection `conn`.
    pub fn tcp(addr: SocketAddrV4, conn: u64) -> Self {
        Self {
            addr,
            transport: Transport::Tcp { conn },
        }
    }
}

/// Identifies one upstream lookup; pass it back to [`DnsProxy::handle_upstream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId(u64);

/// A lookup for the driver to resolve upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamQuery {
    /// Answer with [`DnsProxy::handle_upstream`] and this id.
    pub id: UpstreamId,
    /// Absolute, lowercased.
    pub name: Name,
    /// The asked type.
    pub record_type: RecordType,
}

/// What the upstream resolver said.
#[derive(Debug, Clone)]
pub enum UpstreamResult {
    /// Records answering the question (a CNAME chain may precede the final records). An
    /// empty list is treated as NOERROR/NODATA.
    Answer {
        /// The answer section.
        records: Vec<Record>,
    },
    /// The name does not exist (`NXDomain`) or has no records of this type (`NoError`).
    /// Any other code is answered as SERVFAIL and not cached.
    NoRecords {
        /// NXDOMAIN or NOERROR.
        response_code: ResponseCode,
        /// From the SOA, if upstream sent one; otherwise [`DnsConfig::negative_ttl`].
        negative_ttl: Option<u32>,
    },
    /// Timeout, network error, upstream SERVFAIL: waiting clients get SERVFAIL.
    Failed,
}

/// Why a message got no answer at all. Count these; nothing is sent back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// Shorter than a DNS header: there is no id to answer to.
    #[error("message of {0} bytes is shorter than a DNS header")]
    TooShort(usize),
    /// QR=1: VMs send queries, never responses to us.
    #[error("message is a response, not a query")]
    NotAQuery,
    /// [`DnsConfig::new`] with a domain that is not a valid DNS name.
    #[error("invalid LAN domain {0:?}")]
    InvalidDomain(String),
    /// The answer could not be encoded (should not happen; counted as SERVFAIL).
    #[error("cannot encode answer: {0}")]
    Encode(#[from] ProtoError),
}

/// Counters (monotonic) and gauges (current values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsStats {
    /// Messages given to [`DnsProxy::handle_query`].
    pub queries: u64,
    /// Answered from local names (including local NXDOMAIN).
    pub local: u64,
    /// Answered from the cache (positive or negative).
    pub cache_hits: u64,
    /// Client answers built from an upstream answer (NOERROR or NXDOMAIN).
    pub upstream_ok: u64,
    /// NXDOMAIN answers, whatever their source.
    pub nxdomain: u64,
    /// SERVFAIL answers (upstream failure or timeout, encoding failure).
    pub servfail: u64,
    /// REFUSED for policy (non-IN class, zone transfer); not counting limits.
    pub refused: u64,
    /// FORMERR/BADVERS answers.
    pub formerr: u64,
    /// NOTIMP answers (opcode other than QUERY).
    pub notimp: u64,
    /// REFUSED because a VM or the LAN had too many queries in flight.
    pub dropped_over_limit: u64,
    /// Responses (QR=1) from VMs, dropped.
    pub responses_dropped: u64,
    /// Messages too short to answer, dropped.
    pub malformed: u64,
    /// Lookups handed to the driver.
    pub upstream_queries: u64,
    /// Client queries that joined a lookup already in flight.
    pub coalesced: u64,
    /// Lookups that hit `upstream_timeout`.
    pub upstream_timeouts: u64,
    /// Lookups answered [`UpstreamResult::Failed`].
    pub upstream_failures: u64,
    /// Upstream results for unknown (timed out) lookups.
    pub upstream_late: u64,
    /// UDP answers sent truncated (TC).
    pub truncated: u64,
    /// Answers dropped because the driver did not drain [`DnsProxy::poll_answer`].
    pub answers_dropped: u64,
    /// Lease names refused (invalid label or table full).
    pub local_names_rejected: u64,
    /// Gauge: client queries waiting on upstream.
    pub inflight: usize,
    /// Gauge: distinct upstream lookups in flight.
    pub upstream_inflight: usize,
    /// Gauge: cache entries.
    pub cache_entries: usize,
    /// Gauge: local names (addresses with a host name).
    pub local_names: usize,
}

/// What we need from a query to answer it later.
#[derive(Debug, Clone)]
struct Request {
    id: u16,
    op_code: OpCode,
    recursion_desired: bool,
    checking_disabled: bool,
    query: Query,
    /// The query carried EDNS, so the answer does too.
    edns: bool,
    /// Largest answer the client accepts on this transport.
    max_size: usize,
}

#[derive(Debug)]
struct Waiter {
    client: ClientId,
    request: Request,
}

#[derive(Debug)]
struct Pending {
    key: CacheKey,
    deadline: Instant,
    waiters: Vec<Waiter>,
}

/// The DNS proxy of one LAN. See the crate documentation.
#[derive(Debug)]
pub struct DnsProxy {
    config: DnsConfig,
    local: LocalNames,
    cache: Cache,
    pending: HashMap<UpstreamId, Pending>,
    /// Coalescing: the lookup in flight for each question.
    by_key: HashMap<CacheKey, UpstreamId>,
    deadlines: BTreeSet<(Instant, UpstreamId)>,
    /// Waiting queries per VM IP.
    per_client: HashMap<Ipv4Addr, usize>,
    waiting: usize,
    next_id: u64,
    upstream_queue: VecDeque<UpstreamQuery>,
    answers: VecDeque<(ClientId, Vec<u8>)>,
    stats: DnsStats,
}

impl DnsProxy {
    /// A proxy for one LAN. Build `config` with [`DnsConfig::new`] so the domain is checked.
    pub fn new(config: DnsConfig) -> Self {
        Self {
            local: LocalNames::new(&config.domain, config.max_local_names),
            cache: Cache::new(config.cache_max_entries),
            config,
            pending: HashMap::new(),
            by_key: HashMap::new(),
            deadlines: BTreeSet::new(),
            per_client: HashMap::new(),
            waiting: 0,
            next_id: 0,
            upstream_queue: VecDeque::new(),
            answers: VecDeque::new(),
            stats: DnsStats::default(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// Publishes a lease: `host` (a sanitized label, any case) resolves to `ip`, and `ip`
    /// back to `host.DOMAIN.`. An address already named by another host moves to this one.
    /// Invalid labels, or a full table, are ignored and counted.
    pub fn set_local_host(&mut self, host: &str, ip: Ipv4Addr) {
        if !self.local.set(host, ip) {
            self.stats.local_names_rejected += 1;
        }
        self.stats.local_names = self.local.len();
    }

    /// Withdraws a lease published by [`Self::set_local_host`].
    pub fn remove_local_host(&mut self, host: &str, ip: Ipv4Addr) {
        self.local.remove(host, ip);
        self.stats.local_names = self.local.len();
    }

    /// Forgets queries waiting for `client` (its TCP connection closed), freeing its
    /// in-flight budget. Lookups already asked upstream still fill the cache.
    pub fn remove_client(&mut self, client: ClientId) {
        let mut removed = 0;
        for pending in self.pending.values_mut() {
            let before = pending.waiters.len();
            pending.waiters.retain(|w| w.client != client);
            removed += before - pending.waiters.len();
        }
        for _ in 0..removed {
            self.release(client.addr.ip());
        }
        self.update_gauges();
    }

    /// One DNS message from a VM. `Ok(Some(bytes))`: send `bytes` back to `client` now;
    /// `Ok(None)`: an upstream lookup is queued or joined (see [`Self::poll_upstream`] and
    /// [`Self::poll_answer`]); `Err`: nothing to send.
    pub fn handle_query(
        &mut self,
        now: Instant,
        client: ClientId,
        query: &[u8],
    ) -> Result<Option<Vec<u8>>, DnsError> {
        self.stats.queries += 1;
        if query.len() < HEADER_LEN {
            self.stats.malformed += 1;
            return Err(DnsError::TooShort(query.len()));
        }
        let header = match Header::from_bytes(&query[..HEADER_LEN]) {
            Ok(header) => header,
            Err(_) => {
                self.stats.malformed += 1;
                return Err(DnsError::TooShort(query.len()));
            }
        };
        if header.message_type == MessageType::Response {
            self.stats.responses_dropped += 1;
            return Err(DnsError::NotAQuery);
        }
        if header.op_code != OpCode::Query {
            self.stats.notimp += 1;
            return self.header_only(&header, ResponseCode::NotImp).map(Some);
        }
        let message = match Message::from_vec(query) {
            Ok(message) if message.queries.len() == 1 => message,
            _ => {
                self.stats.formerr += 1;
                return self.header_only(&header, ResponseCode::FormErr).map(Some);
            }
        };
        let request = self.request(&message, client);
        if message.edns.as_ref().is_some_and(|e| e.version() > 0) {
            self.stats.formerr += 1;
            return self
                .encode(&request, ResponseCode::BADVERS, &[], false)
                .map(Some);
        }
        let query = &request.query;
        if query.query_class != DNSClass::IN
            || matches!(query.query_type, RecordType::AXFR | RecordType::IXFR)
        {
            self.stats.refused += 1;
            return self
                .encode(&request, ResponseCode::Refused, &[], false)
                .map(Some);
        }

        match self
            .local
            .lookup(&query.name, query.query_type, self.config.local_ttl)
        {
            LocalAnswer::Records(records) => {
                self.stats.local += 1;
                return self
                    .encode(&request, ResponseCode::NoError, &records, true)
                    .map(Some);
            }
            LocalAnswer::NxDomain => {
                self.stats.local += 1;
                self.stats.nxdomain += 1;
                return self
                    .encode(&request, ResponseCode::NXDomain, &[], true)
                    .map(Some);
            }
            LocalAnswer::NotLocal => {}
        }

        let key = CacheKey::new(&query.name, query.query_type);
        if let Some(cached) = self.cache.get(now, &key) {
            self.stats.cache_hits += 1;
            self.update_gauges();
            return match cached {
                Cached::Records(records) => {
                    self.encode(&request, ResponseCode::NoError, &records, false)
                }
                Cached::Negative(code) => {
                    if code == ResponseCode::NXDomain {
                        self.stats.nxdomain += 1;
                    }
                    self.encode(&request, code, &[], false)
                }
            }
            .map(Some);
        }

        self.enqueue(now, client, request, key)
    }

    /// The next lookup for the driver to resolve upstream.
    pub fn poll_upstream(&mut self) -> Option<UpstreamQuery> {
        self.upstream_queue.pop_front()
    }

    /// The upstream result for lookup `id`: answers every client waiting on it and caches
    /// it. Unknown ids (already timed out) are ignored and counted.
    pub fn handle_upstream(&mut self, now: Instant, id: UpstreamId, result: UpstreamResult) {
        let Some(pending) = self.take_pending(id) else {
            self.stats.upstream_late += 1;
            return;
        };
        let (code, records) = match result {
            UpstreamResult::Answer { records } => {
                let max_ttl = self.config.max_ttl;
                let records: Vec<Record> = records
                    .into_iter()
                    // Message-level records (OPT, SIG(0), TSIG) and empty update records
                    // are not answer data; hickory refuses to decode them in an answer.
                    .filter(|r| {
                        !matches!(
                            r.record_type(),
                            RecordType::OPT | RecordType::SIG | RecordType::TSIG
                        ) && !r.data.is_update()
                    })
                    .map(|mut r| {
                        r.ttl = r.ttl.min(max_ttl);
                        r
                    })
                    .collect();
                if records.is_empty() {
                    let ttl = self.negative_ttl(None);
                    let value = Cached::Negative(ResponseCode::NoError);
                    self.cache.insert(now, pending.key.clone(), value, ttl);
                } else if records.len() <= self.config.max_cached_records {
                    let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0);
                    let ttl = ttl.clamp(
                        self.config.min_ttl,
                        self.config.max_ttl.max(self.config.min_ttl),
                    );
                    self.cache.insert(
                        now,
                        pending.key.clone(),
                        Cached::Records(records.clone()),
                        ttl,
                    );
                }
                (ResponseCode::NoError, records)
            }
            UpstreamResult::NoRecords {
                response_code,
                negative_ttl,
            } if matches!(
                response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            ) =>
            {
                let ttl = self.negative_ttl(negative_ttl);
                let value = Cached::Negative(response_code);
                self.cache.insert(now, pending.key.clone(), value, ttl);
                (response_code, Vec::new())
            }
            UpstreamResult::NoRecords { .. } | UpstreamResult::Failed => {
                self.stats.upstream_failures += 1;
                (ResponseCode::ServFail, Vec::new())
            }
        };
        for waiter in pending.waiters {
            match code {
                ResponseCode::NoError => self.stats.upstream_ok += 1,
                ResponseCode::NXDomain => {
                    self.stats.upstream_ok += 1;
                    self.stats.nxdomain += 1;
                }
                _ => self.stats.servfail += 1,
            }
            self.answer_later(waiter, code, &records);
        }
        self.update_gauges();
    }

    /// The next answer to send to a VM.
    pub fn poll_answer(&mut self) -> Option<(ClientId, Vec<u8>)> {
        self.answers.pop_front()
    }

    /// Fails lookups past their deadline (SERVFAIL to their clients) and drops expired cache
    /// entries.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let Some(pending) = self.take_pending(id) else {
                continue;
            };
            self.stats.upstream_timeouts += 1;
            self.upstream_queue.retain(|q| q.id != id);
            for waiter in pending.waiters {
                self.stats.servfail += 1;
                self.answer_later(waiter, ResponseCode::ServFail, &[]);
            }
        }
        self.cache.purge(now);
        self.update_gauges();
    }

    /// When [`Self::handle_timeout`] next has work: the earliest upstream deadline or cache
    /// expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.deadlines.first().map(|(t, _)| *t);
        match (deadline, self.cache.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counters and gauges.
    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }

    fn request(&self, message: &Message, client: ClientId) -> Request {
        let max_size = match client.transport {
            Transport::Tcp { .. } => MAX_TCP_MESSAGE,
            Transport::Udp => {
                let cap = self.config.max_udp_payload.max(MIN_UDP_PAYLOAD);
                let asked = message
                    .edns
                    .as_ref()
                    .map_or(MIN_UDP_PAYLOAD, Edns::max_payload);
                usize::from(asked.clamp(MIN_UDP_PAYLOAD, cap))
            }
        };
        Request {
            id: message.id,
            op_code: message.op_code,
            recursion_desired: message.recursion_desired,
            checking_disabled: message.checking_disabled,
            query: message.queries[0].clone(),
            edns: message.edns.is_some(),
            max_size,
        }
    }

    /// Queues or joins an upstream lookup, within the in-flight limits.
    fn enqueue(
        &mut self,
        now: Instant,
        client: ClientId,
        request: Request,
        key: CacheKey,
    ) -> Result<Option<Vec<u8>>, DnsError> {
        let existing = self.by_key.get(&key).and_then(|id| self.pending.get(id));
        if existing.is_some_and(|p| {
            p.waiters
                .iter()
                .any(|w| w.client == client && w.request.id == request.id)
        }) {
            // A retransmission of a query already waiting: one answer is enough.
            return Ok(None);
        }
        let ip = *client.addr.ip();
        let client_count = self.per_client.get(&ip).copied().unwrap_or(0);
        if client_count >= self.config.max_inflight_per_client
            || self.waiting >= self.config.max_inflight_total
        {
            self.stats.dropped_over_limit += 1;
            return self
                .encode(&request, ResponseCode::Refused, &[], false)
                .map(Some);
        }
        let waiter = Waiter { client, request };
        match self
            .by_key
            .get(&key)
            .and_then(|id| self.pending.get_mut(id))
        {
            Some(pending) => {
                pending.waiters.push(waiter);
                self.stats.coalesced += 1;
            }
            None => {
                let id = UpstreamId(self.next_id);
                self.next_id += 1;
                // `checked_add` keeps an absurd timeout from panicking; such a lookup waits
                // for its upstream result only.
                let deadline = now.checked_add(self.config.upstream_timeout);
                if let Some(deadline) = deadline {
                    self.deadlines.insert((deadline, id));
                }
                self.upstream_queue.push_back(UpstreamQuery {
                    id,
                    name: key.name.clone(),
                    record_type: key.record_type,
                });
                self.by_key.insert(key.clone(), id);
                self.pending.insert(
                    id,
                    Pending {
                        key,
                        deadline: deadline.unwrap_or(now),
                        waiters: vec![waiter],
                    },
                );
                self.stats.upstream_queries += 1;
            }
        }
        *self.per_client.entry(ip).or_insert(0) += 1;
        self.waiting += 1;
        self.update_gauges();
        Ok(None)
    }

    /// Removes a lookup and releases its waiters' in-flight budget.
    fn take_pending(&mut self, id: UpstreamId) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        self.by_key.remove(&pending.key);
        self.deadlines.remove(&(pending.deadline, id));
        for waiter in &pending.waiters {
            self.release(waiter.client.addr.ip());
        }
        Some(pending)
    }

    fn release(&mut self, ip: &Ipv4Addr) {
        self.waiting = self.waiting.saturating_sub(1);
        if let Some(count) = self.per_client.get_mut(ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_client.remove(ip);
            }
        }
    }

    fn negative_ttl(&self, from_upstream: Option<u32>) -> u32 {
        from_upstream
            .unwrap_or(self.config.negative_ttl)
            .min(self.config.max_negative_ttl)
    }

    /// Queues an answer for a waiter; an encoding failure degrades to SERVFAIL.
    fn answer_later(&mut self, waiter: Waiter, code: ResponseCode, records: &[Record]) {
        let bytes = match self.encode(&waiter.request, code, records, false) {
            Ok(bytes) => bytes,
            Err(_) => {
                self.stats.servfail += 1;
                match self.encode(&waiter.request, ResponseCode::ServFail, &[], false) {
                    Ok(bytes) => bytes,
                    Err(_) => return,
                }
            }
        };
        if self.answers.len() >= self.config.max_inflight_total.max(1) {
            self.stats.answers_dropped += 1;
            return;
        }
        self.answers.push_back((waiter.client, bytes));
    }

    /// Encodes an answer to `request`, truncated (TC) when over the client's size limit.
    fn encode(
        &mut self,
        request: &Request,
        code: ResponseCode,
        records: &[Record],
        authoritative: bool,
    ) -> Result<Vec<u8>, DnsError> {
        let mut message = Message::response(request.id, request.op_code);
        message.metadata.authoritative = authoritative;
        message.metadata.recursion_desired = request.recursion_desired;
        message.metadata.recursion_available = true;
        message.metadata.checking_disabled = request.checking_disabled;
        message.metadata.response_code = code;
        message.add_query(request.query.clone());
        if request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(self.config.max_udp_payload.max(MIN_UDP_PAYLOAD));
            message.set_edns(edns);
        }
        message.answers = records.to_vec();
        let bytes = message.to_vec()?;
        if bytes.len() <= request.max_size {
            return Ok(bytes);
        }
        // Whole RRsets or nothing: the client retries over TCP for the full answer.
        self.stats.truncated += 1;
        message.answers.clear();
        message.metadata.truncation = true;
        Ok(message.to_vec()?)
    }

    /// FORMERR/NOTIMP for a message whose header is all we trust.
    fn header_only(&mut self, header: &Header, code: ResponseCode) -> Result<Vec<u8>, DnsError> {
        let mut message = Message::error_msg(header.id, header.op_code, code);
        message.metadata.recursion_desired = header.recursion_desired;
        message.metadata.recursion_available = true;
        Ok(message.to_vec()?)
    }

    fn update_gauges(&mut self) {
        self.stats.inflight = self.waiting;
        self.stats.upstream_inflight = self.pending.len();
        self.stats.cache_entries = self.cache.len();
        self.stats.local_names = self.local.len();
    }
}
