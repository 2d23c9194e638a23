//! Layer 3: transports turn client connections into ports of a LAN
//! (docs/architecture.md, "Layers"). Each gets a small [`TransportContext`], never the
//! whole application, and shares the pieces below instead of writing them again.
//!
//! - [`websocket`]: v86's own protocol, one binary message per frame.
//! - [`webtransport`]: HTTP/3 datagrams, frames fragmented by the `webtransport` crate.
//! - [`webrtc`]: a DataChannel through the ICE-lite peer of the `webrtc-gw` crate.
//! - [`wisp`]: the Wisp server at `/wisp/`: TCP and UDP streams, no LAN.

pub(crate) mod webrtc;
pub(crate) mod websocket;
pub(crate) mod webtransport;
pub(crate) mod wisp;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Admitted, JoinRequest, Refused, audit_refused};
use crate::config::{Config, OriginRefused};
use crate::lan::LanRegistry;
use crate::shared::{LanName, Transport};

/// What a transport needs from the application: the config, the LANs to join, the
/// shutdown signal and the tracker that shutdown waits on.
#[derive(Debug)]
pub(crate) struct TransportContext {
    /// The running config; a reload swaps it, and new sessions see the new one.
    config: std::sync::RwLock<Arc<Config>>,
    pub(crate) lans: Arc<LanRegistry>,
    /// Cancelled once on SIGTERM/SIGINT: connections close with 1001.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Tokens and per-address limits, checked before every join.
    pub(crate) admission: Arc<Admission>,
    /// A key of this process for private LAN names: unguessable from outside.
    private_key: std::hash::RandomState,
}

impl TransportContext {
    pub(crate) fn new(config: Config, lans: Arc<LanRegistry>, admission: Arc<Admission>) -> Self {
        TransportContext {
            config: std::sync::RwLock::new(Arc::new(config)),
            lans,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            admission,
            private_key: std::hash::RandomState::new(),
        }
    }

    /// The private LAN of the machine that sends `frame` from `client`: one per client
    /// address and source MAC, so v86's reconnect (a new socket from the same tab, same MAC)
    /// finds its LAN, its lease and its NAT flows again, and nobody else lands on it.
    pub(crate) fn private_lan(&self, client: std::net::IpAddr, frame: &[u8]) -> LanName {
        use std::hash::BuildHasher;
        let mac = &frame[6..12];
        let key = self.private_key.hash_one((client, mac));
        LanName::new(&format!("{PRIVATE_LAN_PREFIX}{key:016x}"))
            .unwrap_or_else(|_| LanName::default_lan())
    }

    /// The config now (a reload may replace it at any time).
    pub(crate) fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(config) => config.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts a validated config in effect for what reads it from now on.
    pub(crate) fn set_config(&self, config: Config) {
        if let Ok(mut current) = self.config.write() {
            *current = Arc::new(config);
        }
    }

    /// Admission for one join; a refusal is written to the audit log here, once for every
    /// transport.
    pub(crate) fn admit(&self, request: &JoinRequest<'_>) -> Result<Admitted, Refused> {
        let admitted = self
            .admission
            .admit(request, Instant::now())
            .and_then(|admitted| {
                // A join that will create its LAN takes its address's LAN permit now.
                if !self.lans.exists(request.lan) {
                    admitted.reserve_lan()?;
                }
                Ok(admitted)
            });
        admitted.inspect_err(|refused| {
            let client = self.admission.client_ip(request);
            audit_refused(
                client,
                request.transport,
                request.lan,
                refused.reason.as_str(),
            );
        })
    }
}

/// Names of private LANs start with this; nobody may join one by name.
pub(crate) const PRIVATE_LAN_PREFIX: &str = "private-";

/// 401 or 429 (before any upgrade) with the reason on one line.
pub(crate) fn refused_response(refused: &Refused) -> Response {
    let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::FORBIDDEN);
    (status, format!("{}\n", refused.message)).into_response()
}

/// A join over HTTP: the peer, its proxy headers (believed only from trusted proxies) and
/// the URL's token.
pub(crate) fn http_join<'a>(
    peer: std::net::IpAddr,
    headers: &'a axum::http::HeaderMap,
    lan: &'a LanName,
    token: Option<&'a str>,
    transport: Transport,
) -> JoinRequest<'a> {
    JoinRequest {
        peer,
        x_forwarded_for: header_str(headers, "x-forwarded-for"),
        forwarded: header_str(headers, "forwarded"),
        lan,
        token,
        transport,
    }
}

/// A header's value as text, when it is present and text.
pub(crate) fn header_str<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The value of `name` in a URL query (`a=1&token=xyz`), percent-decoded.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// The TCP peer of an HTTP request, as `ConnectInfo<ClientAddr>`, on plain and TLS
/// listeners alike (axum provides `ConnectInfo<SocketAddr>` for its own listener only).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientAddr(pub(crate) std::net::SocketAddr);

/// 400 with the reason on one line.
pub(crate) fn bad_request(reason: impl ToString) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", reason.to_string())).into_response()
}

/// 403 for a page whose origin `server.allowed_origins` does not list.
pub(crate) fn forbidden_origin(refused: &OriginRefused) -> Response {
    (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response()
}

/// A non-blocking UDP socket with `buffer` bytes of send and receive buffer, for WebRTC and
/// WebTransport: the kernel's default (208 KiB) dropped bursts of frames, and a datagram
/// lost there is a whole frame lost.
pub(crate) fn bind_udp(
    addr: std::net::SocketAddr,
    buffer: usize,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: Linux caps these at net.core.[rw]mem_max for unprivileged processes.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tracing::debug!(
        %addr,
        recv = ?socket.recv_buffer_size(),
        send = ?socket.send_buffer_size(),
        "UDP socket buffers"
    );
    Ok(socket.into())
}
