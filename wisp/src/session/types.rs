//! The session's configuration, its events, its errors and its counters.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::wire::{CloseReason, StreamId, StreamType, WireError};

/// Which protocol version the session speaks. The driver picks it from the upgrade request:
/// v2 exactly when the request carries a `Sec-WebSocket-Protocol` header (spec v2, "Establishing
/// a Websocket Connection"); v86 sends none and gets v1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Whether the v2 password extension is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordAuth {
    /// Not advertised; credentials a client sends anyway are ignored.
    Off,
    /// Advertised as optional: a client may authenticate, or not.
    Optional,
    /// Advertised as required: a client without credentials is refused with 0xc2.
    Required,
}

/// Per-session settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub version: Version,
    /// DATA packets each TCP stream may have in flight towards the host: the credit a client
    /// gets from the CONTINUE on stream 0 and from every re-credit. The reference server uses 128.
    pub buffer_packets: u32,
    /// Open streams per session; a CONNECT beyond this is refused with 0x49 (throttled).
    pub max_streams: usize,
    /// Whether UDP streams are allowed (v2: only if the client also lists the UDP extension).
    pub udp_enabled: bool,
    /// v2 only.
    pub password_auth: PasswordAuth,
    /// v2 only: the MOTD extension's text, if any.
    pub motd: Option<String>,
    /// v2 only: offer extension 0x05 (a CONTINUE confirms each TCP stream once it is open).
    pub stream_confirmation: bool,
    /// v2 only: how long the client has for its INFO, and the driver for its verdict on the
    /// credentials, before the session gives up.
    pub handshake_timeout: Duration,
    /// Bytes of queued DATA towards the client above which the session asks the driver to stop
    /// reading host sockets ([`crate::Session::can_read_host`]). Twice this is a hard limit.
    pub transmit_budget: usize,
    /// The same, per stream, so one busy stream cannot take the whole session's budget.
    pub stream_transmit_budget: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            version: Version::V1,
            buffer_packets: 128,
            max_streams: 256,
            udp_enabled: true,
            password_auth: PasswordAuth::Off,
            motd: None,
            stream_confirmation: true,
            handshake_timeout: Duration::from_secs(10),
            transmit_budget: 1 << 20,
            stream_transmit_budget: 256 << 10,
        }
    }
}

/// What the driver must act on. Drain with [`crate::Session::poll_event`] after every input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Open a host socket, then report [`crate::Session::handle_stream_opened`] or
    /// [`crate::Session::handle_stream_failed`]. Egress policy is the driver's: a refused
    /// destination is a `handle_stream_failed(id, CloseReason::Blocked)`.
    Connect {
        id: StreamId,
        stream_type: StreamType,
        host: String,
        port: u16,
    },
    /// Bytes for the stream's host socket, in order. Buffer them while the socket connects;
    /// report each packet written with [`crate::Session::handle_data_sent`] so the client is
    /// re-credited.
    Data { id: StreamId, data: Bytes },
    /// The stream is gone (the client closed it, or the session refused it after it was
    /// opened): close the host socket and drop what is buffered for it.
    Close { id: StreamId, reason: CloseReason },
    /// v2 password extension: check the credentials and answer with
    /// [`crate::Session::handle_auth_result`].
    Authenticate { user: String, password: String },
    /// The client broke the protocol; the message was dropped and counted. For logs only.
    ProtocolError(ProtocolError),
    /// The session is over: send what [`crate::Session::poll_transmit`] still returns, then
    /// close the WebSocket and every host socket of the session.
    Finished { reason: CloseReason },
}

/// A protocol violation by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed packet: {0}")]
    Malformed(#[from] WireError),
    #[error("packet type {packet_type:#04x} on stream {id} is not expected now")]
    Unexpected { packet_type: u8, id: StreamId },
    #[error("stream {0} sent more DATA than its credit allows")]
    CreditExceeded(StreamId),
    #[error("the client sent no INFO, or the credentials were not checked, in time")]
    HandshakeTimeout,
    #[error("the client does not read: the transmit queue is over its hard limit")]
    TransmitBacklog,
}

/// Why [`crate::Session::handle_host_data`] refused bytes. Either way they were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostDataError {
    /// The stream is closed (or never existed): nothing may be sent on it any more.
    #[error("stream {0} is not open")]
    NotOpen(StreamId),
    /// The driver ignored [`crate::Session::can_read_host`] and the queue hit its hard limit.
    #[error("the transmit queue is full")]
    QueueFull,
}

/// Counters of one session. Closes are counted by the reason on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub streams_opened_tcp: u64,
    pub streams_opened_udp: u64,
    /// CONNECTs answered with a CLOSE straight away (invalid, duplicate, over the limit).
    pub connects_refused: u64,
    /// CLOSE packets the server sent, by reason (stream 0 included).
    pub closes_sent: BTreeMap<CloseReason, u64>,
    /// CLOSE packets the client sent for a stream it had, by reason.
    pub closes_received: BTreeMap<CloseReason, u64>,
    /// Messages that did not parse, or that no state accepts.
    pub malformed_dropped: u64,
    /// Client DATA or CLOSE for a stream that is not open (late after a close, or bogus).
    pub unknown_stream_dropped: u64,
    /// UDP datagrams dropped because the driver had too many of the stream's unsent.
    pub udp_dropped: u64,
    /// Host bytes refused by `handle_host_data` (stream not open, or queue full).
    pub host_data_dropped: u64,
    pub continues_sent: u64,
    pub data_packets_from_client: u64,
    pub data_bytes_from_client: u64,
    pub data_packets_to_client: u64,
    pub data_bytes_to_client: u64,
}
