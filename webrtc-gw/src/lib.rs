//! The relay's WebRTC peer: an ICE-lite endpoint that serves every browser on one UDP port
//! and carries Ethernet frames over one DataChannel per browser (label `v86-relay`,
//! unordered, `maxRetransmits: 0`; one message is one frame).
//!
//! [`Gateway`] is sans-IO: it never reads the clock or touches a socket. The caller feeds it
//! offers ([`Gateway::accept_offer`]), UDP datagrams ([`Gateway::handle_receive`]), frames
//! to send ([`Gateway::send_frame`]) and timeouts ([`Gateway::handle_timeout`]), then drains
//! [`Gateway::poll_transmit`] and [`Gateway::poll_event`]. Each browser has its own
//! [`str0m::Rtc`]; the gateway demultiplexes datagrams to them: STUN by the ICE username
//! fragment the relay handed out in its answer, everything else by the sender's address,
//! which a valid STUN check has vouched for.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::ice::StunMessage;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, IceCreds, Input, Output, Rtc};

/// The DataChannel label browsers must use.
pub const CHANNEL_LABEL: &str = "v86-relay";

/// Most remote addresses remembered per peer: a browser checks a few candidate pairs.
const MAX_ADDRS_PER_PEER: usize = 8;

/// Tunables, taken from the relay config once.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Peers that have not opened their DataChannel within this time are removed.
    pub connect_timeout: Duration,
    /// Peers still connecting at once; further offers are refused.
    pub max_pending: usize,
    /// SCTP send buffer per peer. The default (128 KiB) lost half of a 1000-frame burst.
    pub sctp_send_buffer: usize,
    /// Bytes written to a peer's DataChannel and not yet acknowledged; further frames wait
    /// in the gateway (within `sctp_send_buffer`) until acknowledgements make room. SCTP has
    /// no pacing: it sends its whole congestion window at once, and a browser's UDP socket
    /// (Chromium's holds 128 KiB) drops what does not fit.
    pub send_window: usize,
    /// Largest message accepted from a browser (the relay's frame limit).
    pub max_message_size: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(20),
            max_pending: 256,
            sctp_send_buffer: 4 << 20,
            send_window: 48 << 10,
            max_message_size: 65535 + 14,
        }
    }
}

/// A browser peer, as the caller refers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rtc-{}", self.0)
    }
}

/// What the caller must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer's DataChannel is open: frames can flow.
    Open(PeerId),
    /// One Ethernet frame from the peer.
    Frame(PeerId, Vec<u8>),
    /// The peer went away with this many frames still waiting for its send window: they
    /// are lost (comes just before [`Event::Closed`]).
    Unsent(PeerId, usize),
    /// The peer is gone; it is forgotten and its id never comes back.
    Closed(PeerId, CloseReason),
}

/// Why a peer went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// It never opened its DataChannel within the connect timeout.
    ConnectTimeout,
    /// ICE lost it (no consent checks) or DTLS/SCTP ended.
    Disconnected,
    /// It closed the DataChannel.
    ChannelClosed,
    /// The caller asked ([`Gateway::close`]).
    Local,
    /// The WebRTC stack failed on its input; the peer is dropped, the gateway goes on.
    Failed,
}

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// Why an offer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("the body is not an SDP offer ({0}); POST the browser's offer SDP as the body")]
    BadSdp(String),
    #[error(
        "the SDP offer was refused ({0}); create it with one DataChannel and no media, wait for ICE gathering, then POST it"
    )]
    Refused(String),
    #[error("{0} peers are connecting already; try again in a few seconds")]
    TooManyPending(usize),
    #[error("the announced address {0} is not usable for ICE; set --webrtc-public-addr")]
    BadCandidate(SocketAddr),
}

/// What [`Gateway::send_frame`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    Sent,
    /// The DataChannel's send buffer is full: the frame is dropped (like a full queue).
    BufferFull,
    /// The DataChannel is not open yet, or the peer is unknown: the frame is dropped.
    NotOpen,
}

/// Counters the relay exports as metrics. Atomics, so a scraper may read them while the
/// gateway runs on another thread.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames dropped because a DataChannel send buffer was full.
    pub buffer_drops: AtomicU64,
    /// Frames dropped because the DataChannel was not open yet.
    pub not_open_drops: AtomicU64,
    /// Datagrams no peer claimed (unknown sender or ufrag, or not STUN/DTLS at all).
    pub unclaimed_datagrams: AtomicU64,
    /// Messages dropped: text, or on a channel other than `v86-relay`.
    pub foreign_messages: AtomicU64,
    /// Peers removed because they never connected.
    pub connect_timeouts: AtomicU64,
    /// Peers dropped because the WebRTC stack failed on their input.
    pub failures: AtomicU64,
}

struct Peer {
    rtc: Rtc,
    /// Our candidate, which is also the destination address datagrams arrive at.
    local: SocketAddr,
    ufrag: String,
    /// Remote addresses seen in STUN checks, oldest first.
    addrs: VecDeque<SocketAddr>,
    channel: Option<ChannelId>,
    /// Set while connecting: the peer is removed if its channel is not open by then.
    connect_deadline: Option<Instant>,
    /// When str0m wants `handle_timeout` next.
    next_timeout: Option<Instant>,
    closed: Option<CloseReason>,
    /// Frames waiting for the send window, oldest first, and their bytes.
    held: VecDeque<Vec<u8>>,
    held_bytes: usize,
}

/// Every browser peer of the relay, on one UDP socket.
pub struct Gateway {
    config: GatewayConfig,
    crypto: Arc<CryptoProvider>,
    /// One certificate for every peer: generating an ECDSA key per offer is wasted work.
    cert: DtlsCert,
    peers: HashMap<PeerId, Peer>,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the WebRTC DTLS certificate (aws-lc-rs)")]
pub struct CertificateError;

impl Gateway {
    pub fn new(config: GatewayConfig) -> Result<Self, CertificateError> {
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or(CertificateError)?;
        Ok(Self {
            config,
            crypto,
            cert,
            peers: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            next_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Arc::new(Stats::default()),
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Peers known (connecting or open).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Answers a browser's offer. The peer is registered before this returns, so the
    /// browser's first connectivity check, which may race the HTTP answer, is not dropped.
    /// `candidate` is the address announced to the browser: where it must send datagrams.
    pub fn accept_offer(
        &mut self,
        now: Instant,
        offer: &str,
        candidate: SocketAddr,
    ) -> Result<(PeerId, String), OfferError> {
        let pending = self
            .peers
            .values()
            .filter(|p| p.connect_deadline.is_some())
            .count();
        if pending >= self.config.max_pending {
            return Err(OfferError::TooManyPending(pending));
        }
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| OfferError::BadSdp(short(e)))?;
        let host =
            Candidate::host(candidate, "udp").map_err(|_| OfferError::BadCandidate(candidate))?;
        let creds = IceCreds::new();
        let ufrag = creds.ufrag.clone();
        let builder = Rtc::builder()
            .set_ice_lite(true)
            .set_local_ice_credentials(creds)
            .set_crypto_provider(self.crypto.clone())
            .set_dtls_cert(self.cert.clone())
            .set_sctp_max_buffered_amount(self.config.sctp_send_buffer)
            .set_sctp_max_message_size(self.config.max_message_size);
        // str0m parses untrusted SDP; a panic in there must cost this offer, not the relay.
        let answered = catch_unwind(AssertUnwindSafe(|| {
            let mut rtc = builder.build(now);
            rtc.add_local_candidate(host);
            let answer = rtc.sdp_api().accept_offer(offer);
            answer.map(|answer| (rtc, answer.to_sdp_string()))
        }));
        let (rtc, answer) = match answered {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(OfferError::Refused(short(e))),
            Err(_) => return Err(OfferError::Refused("the WebRTC stack failed".into())),
        };
        let id = PeerId(self.next_id);
        self.next_id += 1;
        self.by_ufrag.insert(ufrag.clone(), id);
        self.peers.insert(
            id,
            Peer {
                rtc,
                local: candidate,
                ufrag,
                addrs: VecDeque::new(),
                channel: None,
                connect_deadline: Some(now + self.config.connect_timeout),
                next_timeout: None,
                closed: None,
                held: VecDeque::new(),
                held_bytes: 0,
            },
        );
        self.drain(id);
        Ok((id, answer))
    }

    /// One UDP datagram from `source`.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        let Some(id) = self.claim(source, datagram) else {
            self.stats.unclaimed_datagrams.fetch_add(1, Relaxed);
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Ok(receive) = Receive::new(Protocol::Udp, source, peer.local, datagram) else {
            self.stats.unclaimed_datagrams.fetch_add(1, Relaxed);
            return;
        };
        let input = Input::Receive(now, receive);
        if !peer.rtc.accepts(&input) {
            self.stats.unclaimed_datagrams.fetch_add(1, Relaxed);
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| peer.rtc.handle_input(input)));
        if !matches!(result, Ok(Ok(()))) {
            self.fail(id);
        }
        self.drain(id);
    }

    /// Which peer a datagram belongs to: STUN by our ufrag (remembering the sender), the
    /// rest by a sender address a STUN check came from.
    fn claim(&mut self, source: SocketAddr, datagram: &[u8]) -> Option<PeerId> {
        // STUN's first two bits are zero (RFC 7983); DTLS starts at 20.
        if datagram.first().is_some_and(|b| *b < 4) {
            let stun = StunMessage::parse(datagram).ok()?;
            let (ours, _theirs) = stun.split_username()?;
            let id = *self.by_ufrag.get(ours)?;
            let peer = self.peers.get_mut(&id)?;
            if !peer.addrs.contains(&source) {
                if peer.addrs.len() >= MAX_ADDRS_PER_PEER
                    && let Some(old) = peer.addrs.pop_front()
                {
                    self.by_addr.remove(&old);
                }
                peer.addrs.push_back(source);
                // A sender now checking for another peer (a reloaded tab reusing its port)
                // moves to it.
                if let Some(previous) = self.by_addr.insert(source, id)
                    && previous != id
                    && let Some(p) = self.peers.get_mut(&previous)
                {
                    p.addrs.retain(|a| *a != source);
                }
            }
            return Some(id);
        }
        self.by_addr.get(&source).copied()
    }

    /// Sends one frame to a peer's DataChannel.
    pub fn send_frame(&mut self, peer: PeerId, frame: &[u8]) -> SendOutcome {
        let Some(p) = self.peers.get_mut(&peer) else {
            self.stats.not_open_drops.fetch_add(1, Relaxed);
            return SendOutcome::NotOpen;
        };
        if p.channel.and_then(|id| p.rtc.channel(id)).is_none() {
            self.stats.not_open_drops.fetch_add(1, Relaxed);
            return SendOutcome::NotOpen;
        }
        // Behind the send window (or behind frames already waiting for it), a frame waits
        // here, bounded like the SCTP buffer it would otherwise fill.
        if !p.held.is_empty() || buffered(p) >= self.config.send_window {
            if p.held_bytes + frame.len() > self.config.sctp_send_buffer {
                self.stats.buffer_drops.fetch_add(1, Relaxed);
                return SendOutcome::BufferFull;
            }
            p.held_bytes += frame.len();
            p.held.push_back(frame.to_vec());
            return SendOutcome::Sent;
        }
        let outcome = match write(p, frame) {
            Some(true) => SendOutcome::Sent,
            Some(false) => {
                self.stats.buffer_drops.fetch_add(1, Relaxed);
                SendOutcome::BufferFull
            }
            None => {
                self.fail(peer);
                SendOutcome::NotOpen
            }
        };
        self.drain(peer);
        outcome
    }

    /// Closes a peer (the relay is shutting down, or its port is gone).
    pub fn close(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            let _ = catch_unwind(AssertUnwindSafe(|| p.rtc.close()));
            p.closed.get_or_insert(CloseReason::Local);
            self.drain(peer);
        }
    }

    /// Drives every peer whose timer is due, and removes peers that never connected.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.next_timeout.is_some_and(|t| t <= now)
                    || p.connect_deadline.is_some_and(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if peer.connect_deadline.is_some_and(|t| t <= now) {
                self.stats.connect_timeouts.fetch_add(1, Relaxed);
                peer.closed.get_or_insert(CloseReason::ConnectTimeout);
                peer.rtc.disconnect();
            } else {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    peer.rtc.handle_input(Input::Timeout(now))
                }));
                if !matches!(result, Ok(Ok(()))) {
                    self.fail(id);
                }
            }
            self.drain(id);
        }
    }

    /// When [`Gateway::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| [p.next_timeout, p.connect_deadline])
            .flatten()
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn fail(&mut self, id: PeerId) {
        if let Some(p) = self.peers.get_mut(&id) {
            self.stats.failures.fetch_add(1, Relaxed);
            p.closed.get_or_insert(CloseReason::Failed);
            p.rtc.disconnect();
        }
    }

    /// Takes everything str0m has for this peer after a mutation (str0m requires a full
    /// drain after each), and forgets the peer once it is dead.
    fn drain(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        // Acknowledgements arrive as input, and every input ends here: frames waiting for
        // the send window go now if it has room.
        while !peer.held.is_empty() && buffered(peer) < self.config.send_window {
            let Some(frame) = peer.held.pop_front() else {
                break;
            };
            peer.held_bytes -= frame.len();
            match write(peer, &frame) {
                Some(true) => {}
                Some(false) => {
                    self.stats.buffer_drops.fetch_add(1, Relaxed);
                }
                None => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    peer.closed.get_or_insert(CloseReason::Failed);
                    peer.rtc.disconnect();
                    break;
                }
            }
        }
        loop {
            if !peer.rtc.is_alive() {
                peer.closed.get_or_insert(CloseReason::Disconnected);
                break;
            }
            let output = match catch_unwind(AssertUnwindSafe(|| peer.rtc.poll_output())) {
                Ok(Ok(output)) => output,
                _ => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    peer.closed.get_or_insert(CloseReason::Failed);
                    peer.rtc.disconnect();
                    break;
                }
            };
            match output {
                Output::Timeout(at) => {
                    peer.next_timeout = Some(at);
                    break;
                }
                Output::Transmit(t) => self.transmits.push_back(Transmit {
                    destination: t.destination,
                    contents: t.contents.into(),
                }),
                Output::Event(event) => match event {
                    RtcEvent::ChannelOpen(channel, label)
                        if label == CHANNEL_LABEL && peer.channel.is_none() =>
                    {
                        peer.channel = Some(channel);
                        peer.connect_deadline = None;
                        self.events.push_back(Event::Open(id));
                    }
                    RtcEvent::ChannelData(data) => {
                        if data.binary && Some(data.id) == peer.channel {
                            self.events.push_back(Event::Frame(id, data.data));
                        } else {
                            self.stats.foreign_messages.fetch_add(1, Relaxed);
                        }
                    }
                    RtcEvent::ChannelClose(channel) if Some(channel) == peer.channel => {
                        peer.closed.get_or_insert(CloseReason::ChannelClosed);
                        let _ = catch_unwind(AssertUnwindSafe(|| peer.rtc.close()));
                    }
                    RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        peer.closed.get_or_insert(CloseReason::Disconnected);
                        peer.rtc.disconnect();
                    }
                    _ => {}
                },
            }
        }
        if !peer.rtc.is_alive() {
            let reason = peer.closed.unwrap_or(CloseReason::Disconnected);
            self.remove(id, reason);
        }
    }

    fn remove(&mut self, id: PeerId, reason: CloseReason) {
        let Some(peer) = self.peers.remove(&id) else {
            return;
        };
        self.by_ufrag.remove(&peer.ufrag);
        for addr in &peer.addrs {
            if self.by_addr.get(addr) == Some(&id) {
                self.by_addr.remove(addr);
            }
        }
        if !peer.held.is_empty() {
            self.events.push_back(Event::Unsent(id, peer.held.len()));
        }
        self.events.push_back(Event::Closed(id, reason));
    }
}

/// Writes one frame to the peer's DataChannel: `Some(false)` when its SCTP buffer is full,
/// `None` when the WebRTC stack failed.
fn write(peer: &mut Peer, frame: &[u8]) -> Option<bool> {
    let id = peer.channel?;
    let written = catch_unwind(AssertUnwindSafe(|| {
        peer.rtc.channel(id).map(|mut c| c.write(true, frame))
    }));
    match written {
        Ok(Some(Ok(sent))) => Some(sent),
        _ => None,
    }
}

/// Bytes written to the peer's DataChannel and not yet acknowledged.
fn buffered(peer: &mut Peer) -> usize {
    let Some(id) = peer.channel else {
        return 0;
    };
    catch_unwind(AssertUnwindSafe(|| {
        peer.rtc.channel(id).map_or(0, |mut c| c.buffered_amount())
    }))
    .unwrap_or(0)
}

/// An error's text, cut: it may echo untrusted input.
fn short(e: impl std::fmt::Display) -> String {
    e.to_string().chars().take(200).collect()
}

#[cfg(test)]
mod tests;
