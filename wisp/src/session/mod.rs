//! The server side of one Wisp connection (one WebSocket), as a state machine.
//!
//! See the crate docs for the API and what the driver must do. The rules that shape this file:
//! - Nothing is ever sent for a stream after the server's CLOSE for it: v86 throws on DATA or
//!   CONTINUE for a stream it does not know. A stream leaves the table at the moment its CLOSE
//!   is queued, and every sending path looks the stream up first.
//! - Nothing the client sends can make the session panic or grow without bound: bad messages
//!   are dropped and counted, DATA beyond the credit closes the stream, and a client that does
//!   not read its WebSocket ends the session.
//! - No CLOSE is ever sent on stream 0 once the session is open: to a v2 client it means "the
//!   connection is refused", and v86 would drop stream 0's credit and fail every later CONNECT.

mod handshake;
mod types;

pub use types::{Event, HostDataError, PasswordAuth, ProtocolError, SessionConfig, Stats, Version};

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use crate::wire::{
    CloseReason, ConnectPayload, Frame, Packet, PacketType, Payload, StreamId, StreamType,
    WireError,
};

/// At most this many [`Event::ProtocolError`]s wait in the event queue; more are only counted,
/// so a flood of garbage cannot grow the queue of a driver that polls late.
const MAX_QUEUED_DIAGNOSTICS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// v2: our INFO is sent; waiting for the client's.
    AwaitInfo {
        deadline: Instant,
    },
    /// v2: the client's credentials went to the driver in an [`Event::Authenticate`].
    AwaitAuth {
        deadline: Instant,
    },
    Open,
    Finished,
}

#[derive(Debug)]
struct Stream {
    stream_type: StreamType,
    /// Tells this stream apart from an earlier one that used the same id, so bytes the earlier
    /// one left in the transmit queue are not charged to it.
    serial: u64,
    /// The driver reported the host socket connected.
    opened: bool,
    /// DATA packets handed to the driver and not yet reported written to the host.
    unconsumed: u32,
    /// Packets written to the host since the last CONTINUE; re-credit at half a buffer.
    consumed_since_credit: u32,
    /// Bytes of this stream's DATA waiting in the transmit queue.
    queued_bytes: usize,
}

#[derive(Debug)]
struct Outgoing {
    message: Vec<u8>,
    /// The stream (and its serial) whose DATA this is, for per-stream transmit accounting.
    data_of: Option<(StreamId, u64)>,
}

/// One Wisp session, server side. Create one per accepted WebSocket.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    phase: Phase,
    streams: HashMap<StreamId, Stream>,
    next_serial: u64,
    transmit: VecDeque<Outgoing>,
    transmit_bytes: usize,
    events: VecDeque<Event>,
    /// How many of `events` are [`Event::ProtocolError`]s.
    queued_diagnostics: usize,
    /// UDP streams allowed: the config in v1; the config and the client's INFO in v2.
    udp_allowed: bool,
    /// v2 extension 0x05 negotiated: confirm each opened TCP stream with a CONTINUE.
    confirm_streams: bool,
    stats: Stats,
}

impl Session {
    /// Starts a session whose WebSocket just opened. The first transmit is the handshake: a
    /// CONTINUE on stream 0 with the buffer size (v1), or the server's INFO (v2).
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let mut session = Self {
            phase: Phase::Open,
            streams: HashMap::new(),
            next_serial: 0,
            transmit: VecDeque::new(),
            transmit_bytes: 0,
            events: VecDeque::new(),
            queued_diagnostics: 0,
            udp_allowed: config.udp_enabled,
            confirm_streams: false,
            stats: Stats::default(),
            config,
        };
        match session.config.version {
            Version::V1 => session.send_initial_continue(),
            Version::V2 => {
                let info = handshake::server_info(&session.config);
                session.queue(info, None);
                session.phase = Phase::AwaitInfo {
                    deadline: now + session.config.handshake_timeout,
                };
            }
        }
        session
    }

    // ----- inputs from the client -----

    /// One binary WebSocket message from the client. (Text messages are not Wisp: the driver
    /// drops them.)
    pub fn handle_message(&mut self, now: Instant, message: &[u8]) {
        self.handle_timeout(now);
        if self.phase == Phase::Finished {
            // The driver is closing the WebSocket; what is still in flight means nothing.
            return;
        }
        let frame = match Frame::parse(message) {
            Ok(frame) => frame,
            Err(e) => return self.malformed(e),
        };
        let packet_type = match PacketType::from_u8(frame.packet_type) {
            Ok(t) => t,
            Err(e) => return self.malformed(e),
        };
        match self.phase {
            Phase::AwaitInfo { .. } => self.handle_client_info(frame, packet_type),
            Phase::AwaitAuth { .. } => self.unexpected(frame),
            Phase::Open => self.handle_packet(frame, packet_type),
            Phase::Finished => {}
        }
        // Every client message can queue a reply; a client that sends without reading would
        // grow the queue forever, so it loses the session instead.
        if self.transmit_bytes > self.hard_transmit_limit() && self.phase != Phase::Finished {
            self.transmit.clear();
            self.transmit_bytes = 0;
            self.diagnostic(ProtocolError::TransmitBacklog);
            self.finish(CloseReason::Throttled, false);
        }
    }

    fn handle_packet(&mut self, frame: Frame<'_>, packet_type: PacketType) {
        let id = frame.stream_id;
        if id == StreamId::HANDSHAKE {
            // Stream 0 carries only the server's handshake; anything the client sends on it
            // now is dropped unanswered (see the module docs for why no CLOSE).
            return self.unexpected(frame);
        }
        match packet_type {
            PacketType::Connect => self.handle_connect(id, frame.payload),
            PacketType::Data => self.handle_client_data(id, frame.payload),
            PacketType::Close => match Payload::parse(packet_type, frame.payload) {
                Ok(Payload::Close(reason)) => self.handle_client_close(id, reason),
                Ok(_) => self.unexpected(frame),
                Err(e) => self.malformed(e),
            },
            PacketType::Continue | PacketType::Info => self.unexpected(frame),
        }
    }

    fn handle_connect(&mut self, id: StreamId, payload: &[u8]) {
        if self.streams.contains_key(&id) {
            // A second CONNECT for a live id is a client bug; the CLOSE we answer with ends the
            // existing stream too, so the driver must drop its socket.
            self.close_stream(id, CloseReason::Invalid);
            self.events.push_back(Event::Close {
                id,
                reason: CloseReason::Invalid,
            });
            self.stats.connects_refused += 1;
            return;
        }
        let connect = match ConnectPayload::parse(payload) {
            Ok(c) => c,
            Err(e) => {
                self.diagnostic(e.into());
                return self.refuse(id, CloseReason::Invalid);
            }
        };
        let refusal = match connect.stream_type {
            StreamType::Other(_) => Some(CloseReason::Invalid),
            StreamType::Udp if !self.udp_allowed => Some(CloseReason::Blocked),
            _ if connect.port == 0 => Some(CloseReason::Invalid),
            _ if self.streams.len() >= self.config.max_streams => Some(CloseReason::Throttled),
            _ => None,
        };
        if let Some(reason) = refusal {
            return self.refuse(id, reason);
        }
        match connect.stream_type {
            StreamType::Udp => self.stats.streams_opened_udp += 1,
            _ => self.stats.streams_opened_tcp += 1,
        }
        self.next_serial += 1;
        let stream = Stream {
            stream_type: connect.stream_type,
            serial: self.next_serial,
            opened: false,
            unconsumed: 0,
            consumed_since_credit: 0,
            queued_bytes: 0,
        };
        self.streams.insert(id, stream);
        self.events.push_back(Event::Connect {
            id,
            stream_type: connect.stream_type,
            host: connect.host.to_owned(),
            port: connect.port,
        });
    }

    fn handle_client_data(&mut self, id: StreamId, data: &[u8]) {
        let buffer = self.config.buffer_packets;
        let Some(stream) = self.streams.get_mut(&id) else {
            // Normal after we closed a stream while the client's DATA was in flight.
            self.stats.unknown_stream_dropped += 1;
            return;
        };
        self.stats.data_packets_from_client += 1;
        self.stats.data_bytes_from_client += data.len() as u64;
        if stream.stream_type == StreamType::Udp {
            // UDP has no credit; datagrams beyond a buffer's worth are dropped, as a full
            // socket buffer would.
            if stream.unconsumed >= buffer {
                self.stats.udp_dropped += 1;
                return;
            }
        } else if stream.unconsumed >= buffer.saturating_mul(2) {
            // CONTINUE replaces the client's count rather than adding to it, so a conforming
            // client can exceed its credit by what was in flight when a CONTINUE crossed. One
            // extra buffer covers that; beyond it the client ignores flow control.
            self.diagnostic(ProtocolError::CreditExceeded(id));
            self.close_stream(id, CloseReason::Throttled);
            self.events.push_back(Event::Close {
                id,
                reason: CloseReason::Throttled,
            });
            return;
        }
        stream.unconsumed += 1;
        self.events.push_back(Event::Data {
            id,
            data: Bytes::copy_from_slice(data),
        });
    }

    fn handle_client_close(&mut self, id: StreamId, reason: CloseReason) {
        // No CLOSE is echoed: the spec does not ask for one and the client has forgotten the
        // stream already (it may even reuse the id at once).
        if self.streams.remove(&id).is_none() {
            self.stats.unknown_stream_dropped += 1;
            return;
        }
        *self.stats.closes_received.entry(reason).or_default() += 1;
        self.events.push_back(Event::Close { id, reason });
    }

    // ----- inputs from the driver -----

    /// The host socket of stream `id` is connected. With the v2 stream-confirmation extension
    /// this sends the stream's CONTINUE.
    pub fn handle_stream_opened(&mut self, id: StreamId) {
        let confirm = self.confirm_streams;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.opened {
            return;
        }
        stream.opened = true;
        if confirm && stream.stream_type == StreamType::Tcp {
            let credit = self.config.buffer_packets.saturating_sub(stream.unconsumed);
            stream.consumed_since_credit = 0;
            self.send_continue(id, credit);
        }
    }

    /// Opening the host socket failed (or policy refused it): the client gets a CLOSE with
    /// `reason` (e.g. [`CloseReason::Refused`], [`CloseReason::Blocked`]).
    pub fn handle_stream_failed(&mut self, id: StreamId, reason: CloseReason) {
        if self.streams.contains_key(&id) {
            self.close_stream(id, reason);
        }
    }

    /// The host closed the stream (EOF, reset, idle timeout): the client gets a CLOSE with
    /// `reason`, typically [`CloseReason::Voluntary`] or [`CloseReason::NetworkError`]. Queue
    /// the host's last bytes with [`Session::handle_host_data`] first.
    pub fn handle_host_closed(&mut self, id: StreamId, reason: CloseReason) {
        if self.streams.contains_key(&id) {
            self.close_stream(id, reason);
        }
    }

    /// Bytes read from the host socket of stream `id`, to be sent as one DATA packet. Read only
    /// while [`Session::can_read_host`] says so. Refused bytes are dropped and counted.
    pub fn handle_host_data(&mut self, id: StreamId, data: &[u8]) -> Result<(), HostDataError> {
        let hard_limit = self.hard_transmit_limit();
        let Some(stream) = self.streams.get_mut(&id) else {
            self.stats.host_data_dropped += 1;
            return Err(HostDataError::NotOpen(id));
        };
        if data.is_empty() {
            return Ok(());
        }
        let message = Packet::new(id, Payload::Data(data)).to_vec();
        if self.transmit_bytes + message.len() > hard_limit {
            self.stats.host_data_dropped += 1;
            return Err(HostDataError::QueueFull);
        }
        stream.queued_bytes += message.len();
        let tag = Some((id, stream.serial));
        self.stats.data_packets_to_client += 1;
        self.stats.data_bytes_to_client += data.len() as u64;
        self.queue(message, tag);
        Ok(())
    }

    /// `packets` DATA packets of stream `id` (from [`Event::Data`]) were written to the host.
    /// This is what re-credits the client: once half a buffer was written since the last
    /// CONTINUE, the stream gets a CONTINUE with the room left.
    pub fn handle_data_sent(&mut self, id: StreamId, packets: u32) {
        let half = (self.config.buffer_packets / 2).max(1);
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.unconsumed = stream.unconsumed.saturating_sub(packets);
        if stream.stream_type != StreamType::Tcp {
            return;
        }
        stream.consumed_since_credit = stream.consumed_since_credit.saturating_add(packets);
        let credit = self.config.buffer_packets.saturating_sub(stream.unconsumed);
        // A CONTINUE of 0 would only stall the client; the next write re-credits instead.
        if stream.consumed_since_credit >= half && credit > 0 {
            stream.consumed_since_credit = 0;
            self.send_continue(id, credit);
        }
    }

    /// v2 password extension: the driver's verdict on [`Event::Authenticate`]. Accepted opens
    /// the session; refused sends CLOSE 0xc0 on stream 0 and finishes it.
    pub fn handle_auth_result(&mut self, accepted: bool) {
        if !matches!(self.phase, Phase::AwaitAuth { .. }) {
            return;
        }
        if accepted {
            self.open();
        } else {
            self.finish(CloseReason::AuthBadPassword, true);
        }
    }

    /// Call when [`Session::poll_timeout`]'s instant has passed: a v2 handshake that has not
    /// completed by then finishes the session.
    pub fn handle_timeout(&mut self, now: Instant) {
        let deadline = match self.phase {
            Phase::AwaitInfo { deadline } | Phase::AwaitAuth { deadline } => deadline,
            Phase::Open | Phase::Finished => return,
        };
        if now >= deadline {
            self.diagnostic(ProtocolError::HandshakeTimeout);
            self.finish(CloseReason::Timeout, false);
        }
    }

    // ----- outputs -----

    /// The next message for the client, in order. Send each as one binary WebSocket message.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let out = self.transmit.pop_front()?;
        self.transmit_bytes -= out.message.len();
        if let Some((id, serial)) = out.data_of
            && let Some(stream) = self.streams.get_mut(&id)
            && stream.serial == serial
        {
            stream.queued_bytes -= out.message.len();
        }
        Some(out.message)
    }

    /// The next thing the driver must do. Drain after every `handle_*` call, so events about
    /// one stream id are seen in order with the driver's own calls about it.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        if matches!(event, Event::ProtocolError(_)) {
            self.queued_diagnostics -= 1;
        }
        Some(event)
    }

    /// When [`Session::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitInfo { deadline } | Phase::AwaitAuth { deadline } => Some(deadline),
            Phase::Open | Phase::Finished => None,
        }
    }

    /// Whether the driver may read more from the host socket of stream `id`: the stream is
    /// open and neither its own nor the session's queue towards the client is over budget.
    /// The driver pauses that socket while this is false and asks again after sending.
    pub fn can_read_host(&self, id: StreamId) -> bool {
        self.phase == Phase::Open
            && self.transmit_bytes < self.config.transmit_budget
            && self
                .streams
                .get(&id)
                .is_some_and(|s| s.queued_bytes < self.config.stream_transmit_budget)
    }

    // ----- state -----

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn version(&self) -> Version {
        self.config.version
    }

    /// The session ended ([`Event::Finished`] was queued); it takes no more input.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Whether the stream is in the table (connecting or open).
    pub fn is_stream_open(&self, id: StreamId) -> bool {
        self.streams.contains_key(&id)
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Bytes waiting in the transmit queue.
    pub fn transmit_backlog(&self) -> usize {
        self.transmit_bytes
    }

    // ----- helpers -----

    fn hard_transmit_limit(&self) -> usize {
        self.config.transmit_budget.saturating_mul(2)
    }

    fn queue(&mut self, message: Vec<u8>, data_of: Option<(StreamId, u64)>) {
        self.transmit_bytes += message.len();
        self.transmit.push_back(Outgoing { message, data_of });
    }

    fn send_initial_continue(&mut self) {
        let credit = self.config.buffer_packets;
        self.send_continue(StreamId::HANDSHAKE, credit);
    }

    fn send_continue(&mut self, id: StreamId, credit: u32) {
        self.stats.continues_sent += 1;
        let message = Packet::new(id, Payload::Continue(credit)).to_vec();
        self.queue(message, None);
    }

    fn send_close(&mut self, id: StreamId, reason: CloseReason) {
        *self.stats.closes_sent.entry(reason).or_default() += 1;
        let message = Packet::new(id, Payload::Close(reason)).to_vec();
        self.queue(message, None);
    }

    /// Removes the stream and queues its CLOSE: from here on no path finds it to send on.
    fn close_stream(&mut self, id: StreamId, reason: CloseReason) {
        self.streams.remove(&id);
        self.send_close(id, reason);
    }

    /// Answers a CONNECT that never became a stream.
    fn refuse(&mut self, id: StreamId, reason: CloseReason) {
        self.stats.connects_refused += 1;
        self.send_close(id, reason);
    }

    fn open(&mut self) {
        self.phase = Phase::Open;
        self.send_initial_continue();
    }

    /// Ends the session; with `close_frame`, tells a v2 client why with a CLOSE on stream 0.
    fn finish(&mut self, reason: CloseReason, close_frame: bool) {
        if close_frame {
            self.send_close(StreamId::HANDSHAKE, reason);
        }
        self.phase = Phase::Finished;
        self.streams.clear();
        self.events.push_back(Event::Finished { reason });
    }

    fn malformed(&mut self, error: WireError) {
        self.stats.malformed_dropped += 1;
        self.diagnostic(error.into());
    }

    fn unexpected(&mut self, frame: Frame<'_>) {
        self.stats.malformed_dropped += 1;
        self.diagnostic(ProtocolError::Unexpected {
            packet_type: frame.packet_type,
            id: frame.stream_id,
        });
    }

    fn diagnostic(&mut self, error: ProtocolError) {
        if self.queued_diagnostics < MAX_QUEUED_DIAGNOSTICS {
            self.queued_diagnostics += 1;
            self.events.push_back(Event::ProtocolError(error));
        }
    }
}

#[cfg(test)]
mod tests;
