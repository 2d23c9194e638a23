//! Relay-wide WebTransport state: counters for `/metrics`, certificate hashes for
//! `/net/info`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use webtransport::DropReason as FragmentDrop;

use crate::shared::metrics::Family;

/// Relay-wide WebTransport counters, shared by every session and read by `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct WebTransportStats {
    pub(crate) fragments_received: AtomicU64,
    pub(crate) fragments_sent: AtomicU64,
    /// Outgoing frames that even 64 datagrams of the peer's size could not carry, or sent
    /// while the peer refused datagrams.
    pub(crate) send_failures: AtomicU64,
    pub(crate) reassembly_drops: [AtomicU64; FragmentDrop::ALL.len()],
    /// Bytes held in incomplete frames over all sessions; back to 0 when they complete,
    /// time out, or their session ends.
    pub(crate) reassembly_bytes: AtomicI64,
}

/// What `/net/info` and `/metrics` need from the WebTransport listener.
#[derive(Debug, Default)]
pub(crate) struct WebTransportShared {
    pub(crate) stats: Arc<WebTransportStats>,
    /// Set once the listener runs.
    pub(crate) info: std::sync::OnceLock<WebTransportInfo>,
    /// Set when the listener serves the configured certificate (`--tls-cert`), which a
    /// reload swaps; a self-signed one rotates on its own.
    pub(crate) configured: std::sync::OnceLock<ConfiguredEndpoint>,
}

/// The listener a reload gives a new configured certificate to.
pub(crate) struct ConfiguredEndpoint {
    pub(crate) endpoint: Arc<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Server>>,
    pub(crate) addr: SocketAddr,
}

impl std::fmt::Debug for ConfiguredEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredEndpoint")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) struct WebTransportInfo {
    pub(crate) addr: SocketAddr,
    /// Hex SHA-256 of the served and the next certificate; empty for a configured one.
    pub(crate) hashes: RwLock<Vec<String>>,
}

impl WebTransportShared {
    pub(crate) fn certificate_hashes(&self) -> Vec<String> {
        self.info
            .get()
            .map(|i| i.hashes.read().map(|h| h.clone()).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl WebTransportStats {
    /// The `/metrics` families for WebTransport.
    pub(crate) fn families(&self) -> Vec<Family> {
        vec![
            Family::counter(
                "webtransport_fragments_received",
                "WebTransport datagrams received that carried a fragment of a frame",
                self.fragments_received.load(Relaxed),
            ),
            Family::counter(
                "webtransport_fragments_sent",
                "WebTransport datagrams sent that carried a fragment of a frame",
                self.fragments_sent.load(Relaxed),
            ),
            Family::counter(
                "webtransport_send_failures",
                "Frames not sent to a WebTransport client (too large for its datagram limit, or datagrams refused)",
                self.send_failures.load(Relaxed),
            ),
            Family::counters_by(
                "webtransport_reassembly_drops",
                "WebTransport datagrams or incomplete frames dropped during reassembly, by reason",
                "reason",
                FragmentDrop::ALL
                    .map(|r| (r.as_str(), self.reassembly_drops[r.index()].load(Relaxed))),
            ),
            Family::gauge(
                "webtransport_reassembly_bytes",
                "Bytes held in incomplete fragmented frames over all WebTransport sessions",
                self.reassembly_bytes.load(Relaxed),
            ),
        ]
    }
}
