//! Layer 3: transports turn client connections into ports of a LAN
//! (docs/architecture.md, "Layers"). Each gets a small [`TransportContext`], never the
//! whole application, and shares the pieces below instead of writing them again.
//!
//! - [`websocket`]: v86's own protocol, one binary message per frame.
//! - [`webtransport`]: HTTP/3 datagrams, frames fragmented by the `webtransport` crate.
//! - [`webrtc`]: a DataChannel through the ICE-lite peer of the `webrtc-gw` crate.

pub(crate) mod webrtc;
pub(crate) mod websocket;
pub(crate) mod webtransport;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, OriginRefused};
use crate::lan::LanRegistry;

/// What a transport needs from the application: the config, the LANs to join, the
/// shutdown signal and the tracker that shutdown waits on.
#[derive(Debug)]
pub(crate) struct TransportContext {
    pub(crate) config: Config,
    pub(crate) lans: Arc<LanRegistry>,
    /// Cancelled once on SIGTERM/SIGINT: connections close with 1001.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
}

/// 400 with the reason on one line.
pub(crate) fn bad_request(reason: impl ToString) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", reason.to_string())).into_response()
}

/// 403 for a page whose origin `server.allowed_origins` does not list.
pub(crate) fn forbidden_origin(refused: &OriginRefused) -> Response {
    (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response()
}
