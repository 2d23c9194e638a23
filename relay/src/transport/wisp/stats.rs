//! The Wisp server's counters, read by `/metrics` through [`WispStats::families`]. Session
//! tasks bump uncontended atomics; labels are bounded sets (stream type, direction, close
//! reason, denial reason), never an address or a host name.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use gateway::DenyReason;
use wisp::{CloseReason, StreamType};

use crate::shared::metrics::Family;

labels::label_enum! {
    /// A stream's type, as a metric label.
    pub(crate) enum StreamKind {
        Tcp => "tcp",
        Udp => "udp",
    }
}

impl StreamKind {
    pub(crate) fn of(stream_type: StreamType) -> Self {
        match stream_type {
            StreamType::Udp => StreamKind::Udp,
            _ => StreamKind::Tcp,
        }
    }
}

labels::label_enum! {
    /// A CLOSE reason (Wisp v2 draft 6), as a metric label.
    pub(crate) enum CloseLabel {
        Unknown => "unknown",
        Voluntary => "voluntary",
        NetworkError => "network_error",
        IncompatibleExtensions => "incompatible_extensions",
        Invalid => "invalid",
        Unreachable => "unreachable",
        Timeout => "timeout",
        Refused => "refused",
        TcpTimeout => "tcp_timeout",
        Blocked => "blocked",
        Throttled => "throttled",
        ClientError => "client_error",
        AuthBadPassword => "auth_bad_password",
        AuthBadSignature => "auth_bad_signature",
        AuthMissingCredentials => "auth_missing_credentials",
        /// A reason code the spec does not define.
        Other => "other",
    }
}

impl CloseLabel {
    pub(crate) fn of(reason: CloseReason) -> Self {
        match reason {
            CloseReason::Unknown => CloseLabel::Unknown,
            CloseReason::Voluntary => CloseLabel::Voluntary,
            CloseReason::NetworkError => CloseLabel::NetworkError,
            CloseReason::IncompatibleExtensions => CloseLabel::IncompatibleExtensions,
            CloseReason::Invalid => CloseLabel::Invalid,
            CloseReason::Unreachable => CloseLabel::Unreachable,
            CloseReason::Timeout => CloseLabel::Timeout,
            CloseReason::Refused => CloseLabel::Refused,
            CloseReason::TcpTimeout => CloseLabel::TcpTimeout,
            CloseReason::Blocked => CloseLabel::Blocked,
            CloseReason::Throttled => CloseLabel::Throttled,
            CloseReason::ClientError => CloseLabel::ClientError,
            CloseReason::AuthBadPassword => CloseLabel::AuthBadPassword,
            CloseReason::AuthBadSignature => CloseLabel::AuthBadSignature,
            CloseReason::AuthMissingCredentials => CloseLabel::AuthMissingCredentials,
            CloseReason::Other(_) => CloseLabel::Other,
        }
    }
}

/// Counters of every Wisp session together.
#[derive(Debug, Default)]
pub(crate) struct WispStats {
    pub(crate) sessions_open: AtomicI64,
    pub(crate) sessions_opened: AtomicU64,
    pub(crate) streams_open: [AtomicI64; StreamKind::COUNT],
    pub(crate) streams_opened: [AtomicU64; StreamKind::COUNT],
    /// DATA payload bytes from clients, written to host sockets' queues.
    pub(crate) bytes_to_host: AtomicU64,
    /// DATA payload bytes read from host sockets, queued for clients.
    pub(crate) bytes_to_client: AtomicU64,
    pub(crate) closes_sent: [AtomicU64; CloseLabel::COUNT],
    pub(crate) closes_received: [AtomicU64; CloseLabel::COUNT],
    pub(crate) denied: [AtomicU64; DenyReason::COUNT],
}

impl WispStats {
    pub(crate) fn stream_opened(&self, kind: StreamKind) {
        self.streams_open[kind.index()].fetch_add(1, Relaxed);
        self.streams_opened[kind.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_gone(&self, kind: StreamKind) {
        self.streams_open[kind.index()].fetch_sub(1, Relaxed);
    }

    /// `/metrics` families, prefixed `v86_relay_wisp_`.
    pub(crate) fn families(&self) -> Vec<Family> {
        let kinds = |a: &[AtomicU64; StreamKind::COUNT]| {
            StreamKind::ALL.map(|k| (k.as_str(), a[k.index()].load(Relaxed)))
        };
        let closes = |a: &[AtomicU64; CloseLabel::COUNT]| {
            CloseLabel::ALL.map(|r| (r.as_str(), a[r.index()].load(Relaxed)))
        };
        vec![
            Family::gauge(
                "wisp_sessions",
                "Open Wisp sessions (WebSockets at /wisp/)",
                self.sessions_open.load(Relaxed),
            ),
            Family::counter(
                "wisp_sessions_opened",
                "Wisp sessions accepted",
                self.sessions_opened.load(Relaxed),
            ),
            Family::gauges_by(
                "wisp_streams",
                "Open Wisp streams (connecting or connected), by type",
                "type",
                StreamKind::ALL.map(|k| (k.as_str(), self.streams_open[k.index()].load(Relaxed))),
            ),
            Family::counters_by(
                "wisp_streams_opened",
                "Wisp streams a client asked for and the session accepted, by type",
                "type",
                kinds(&self.streams_opened),
            ),
            Family::counters_by(
                "wisp_bytes",
                "Wisp DATA payload bytes, by direction",
                "direction",
                [
                    ("to_host", self.bytes_to_host.load(Relaxed)),
                    ("to_client", self.bytes_to_client.load(Relaxed)),
                ],
            ),
            Family::counters_by(
                "wisp_closes_sent",
                "CLOSE packets the server sent, by reason",
                "reason",
                closes(&self.closes_sent),
            ),
            Family::counters_by(
                "wisp_closes_received",
                "CLOSE packets clients sent for open streams, by reason",
                "reason",
                closes(&self.closes_received),
            ),
            Family::counters_by(
                "wisp_streams_denied",
                "Wisp streams refused by the egress policy (0x48), by reason",
                "reason",
                DenyReason::ALL.map(|r| (r.as_str(), self.denied[r.index()].load(Relaxed))),
            ),
        ]
    }
}
