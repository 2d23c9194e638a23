//! Wisp v1/v2 server sessions, sans-IO (design.md: "core crates").
//!
//! [Wisp](https://github.com/MercuryWorkshop/wisp-protocol) multiplexes TCP and UDP streams
//! over one WebSocket: `u8 type | u32 stream id (LE) | payload`, with CONNECT, DATA, CONTINUE
//! (flow control credit), CLOSE and, in v2, INFO. This crate is the server side of one such
//! WebSocket as a state machine in the style of `quinn-proto`: it never reads the clock (`now`
//! is passed in), opens no socket and spawns nothing. The relay's driver feeds it the client's
//! messages and the host sockets' events, and carries out what it asks.
//!
//! # API
//!
//! [`wire`]: zero-copy views and encoding, usable on their own
//! - `Frame::parse(&[u8])` (header only), `Packet::parse(&[u8]) -> Result<Packet<'_>, WireError>`
//! - `Packet::encode(&self, &mut impl BufMut)` (into `Vec<u8>` or `BytesMut`), `to_vec`
//! - typed values: [`StreamId`], [`StreamType`], [`CloseReason`] (unknown values kept as
//!   `Other(u8)`), [`wire::ConnectPayload`], [`wire::Info`] with [`wire::Extension`]s,
//!   [`wire::PasswordCredentials`]
//!
//! [`Session`]: one per WebSocket, created with `Session::new(SessionConfig, now)`
//! - inputs from the client: `handle_message(now, &[u8])`
//! - inputs from the driver: `handle_stream_opened(id)`, `handle_stream_failed(id, reason)`,
//!   `handle_host_data(id, &[u8]) -> Result<(), HostDataError>`,
//!   `handle_host_closed(id, reason)`, `handle_data_sent(id, packets)`,
//!   `handle_auth_result(accepted)`, `handle_timeout(now)`
//! - outputs: `poll_transmit() -> Option<Vec<u8>>` (messages for the client),
//!   `poll_event() -> Option<Event>` (work for the driver), `poll_timeout() -> Option<Instant>`
//! - pacing and state: `can_read_host(id)`, `transmit_backlog()`, `stats()`, `is_finished()`,
//!   `is_stream_open(id)`, `stream_count()`, `version()`
//!
//! # What the driver does
//!
//! 1. On upgrade, pick [`Version::V2`] if the request carries `Sec-WebSocket-Protocol` (echo
//!    one of its values back), else [`Version::V1`]; create the session; send its transmits.
//! 2. For each binary message: `handle_message`, then drain `poll_event` and `poll_transmit`.
//!    Stop reading the WebSocket while the transmit backlog cannot be sent (the session ends a
//!    client that never reads, but the driver should not get there).
//! 3. [`Event::Connect`]: apply egress policy, open the socket (under a connect timeout), and
//!    report `handle_stream_opened` or `handle_stream_failed` with the reason.
//!    [`Event::Data`]: queue for the socket (also while it connects); after each packet is
//!    written, `handle_data_sent(id, 1)` (this is what re-credits the client).
//!    [`Event::Close`]: close the socket, drop its queue.
//!    [`Event::Authenticate`]: check, then `handle_auth_result`.
//!    [`Event::Finished`]: send the remaining transmits, close the WebSocket and every socket.
//! 4. Read a host socket only while `can_read_host(id)`; pass what was read to
//!    `handle_host_data`; on EOF or error `handle_host_closed(id, reason)`.
//! 5. Call `handle_timeout` when `poll_timeout`'s instant passes.
//!
//! # Guarantees
//!
//! - After the server's CLOSE for a stream, no DATA or CONTINUE for that id is ever emitted
//!   (unless the client opens the id anew with a CONNECT). v86 throws on either.
//! - Client input cannot panic the session or grow it without bound: malformed messages and
//!   DATA for unknown streams are dropped and counted; a TCP stream more than one buffer over
//!   its credit is closed with 0x49 (throttled); UDP datagrams over a buffer are dropped.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod session;
pub mod wire;

pub use session::{
    Event, HostDataError, PasswordAuth, ProtocolError, Session, SessionConfig, Stats, Version,
};
pub use wire::{CloseReason, Packet, StreamId, StreamType, WireError};
