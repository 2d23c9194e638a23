//! The plain sections of the config file: `[server]`, `[limits]`, `[switch]`,
//! `[websocket]`, `[dns]`, `[dhcp]`, `[capture]`, with their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::shared::MAX_FRAME_SIZE_LIMIT;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// Upstream DNS servers (`IP:PORT`); empty means the system's resolv.conf.
    pub upstream: Vec<SocketAddr>,
    /// DNS over HTTPS (RFC 8484) at `/dns-query` on `server.listen`, through `upstream`.
    pub doh: bool,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            upstream: Vec::new(),
            doh: true,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DhcpSection {
    /// Keeps leases across relay restarts, so a live VM's address is never handed out again.
    pub state_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Prometheus `/metrics`; on its own listener so a public relay does not publish it.
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_grace_secs: u64,
    /// Bearer token for the admin API on the metrics listener; required when that
    /// listener is not on loopback.
    pub admin_token: Option<String>,
    /// Checkout holding web-demo/ and vendor/v86/ for the bundled demo; found by itself
    /// when unset (see relay/src/demo.rs).
    pub web_root: Option<PathBuf>,
    /// Page origins allowed to open sessions; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies (CIDRs) whose `X-Forwarded-For` names the client; anyone else's
    /// header is ignored.
    pub trusted_proxies: Vec<String>,
    /// Where a plain `ws://HOST/` join lands: `shared` (LAN `default`) or `private` (a LAN
    /// of its own per client address and MAC).
    pub default_lan: DefaultLan,
}

/// `server.default_lan`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DefaultLan {
    /// Every `/` join lands on LAN `default`, as in v86's own relays.
    #[default]
    Shared,
    /// Each machine gets a LAN of its own; strangers never share a segment by accident.
    Private,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_frame_size: usize,
    pub port_queue_frames: usize,
    pub max_connections: usize,
    pub max_ports_per_lan: usize,
    pub max_lans: usize,
    /// Open connections from one client address, over every transport together. A whole
    /// school often sits behind one address, hence the generous default.
    pub max_connections_per_ip: u32,
    /// New connections per second from one address (a token bucket) ...
    pub new_connections_per_ip_per_sec: u32,
    /// ... with bursts of this many.
    pub new_connections_per_ip_burst: u32,
    /// LANs one address has created that still exist.
    pub max_lans_per_ip: u32,
    /// A LAN whose last client left keeps its gateway and NAT flows this long (v86
    /// reconnects after 10 s), then only its lease snapshot.
    pub empty_lan_grace_secs: u64,
    /// Bandwidth of each port (VM session), each direction: `"10Mbit"`, `"2MB"` (per
    /// second). Off when absent. NAT traffic is paced; switched frames over it are dropped.
    pub port_rate: Option<String>,
    /// Bandwidth of each LAN's switched traffic together.
    pub lan_rate: Option<String>,
    /// A request head (the WebSocket upgrade included) must arrive within this long, or
    /// the connection is closed (slowloris).
    pub request_head_timeout_secs: u64,
    /// Largest request head; larger ones get 431. At least 8192.
    pub max_request_head_bytes: usize,
    /// Connections on `--listen` that have not sent a whole request head yet; more are
    /// closed at once.
    pub max_pending_http_connections: usize,
}

/// `[capture]`: packet captures of a LAN through the admin API
/// (`GET /admin/lans/NAME/capture`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureSection {
    /// Captures running at once, relay-wide; 0 switches captures off. Each holds a
    /// bounded queue of frames, so this bounds their memory.
    pub max_captures: usize,
}

impl Default for CaptureSection {
    fn default() -> Self {
        Self { max_captures: 4 }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SwitchSection {
    pub mac_aging_secs: u64,
    pub max_macs_per_port: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    pub ping_interval_secs: u64,
    pub idle_timeout_secs: u64,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8086)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9186))),
            shutdown_grace_secs: 5,
            admin_token: None,
            web_root: None,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            default_lan: DefaultLan::Shared,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_size: MAX_FRAME_SIZE_LIMIT,
            port_queue_frames: 256,
            max_connections: 20_000,
            max_ports_per_lan: 1024,
            max_lans: 10_000,
            max_connections_per_ip: 256,
            new_connections_per_ip_per_sec: 50,
            new_connections_per_ip_burst: 200,
            max_lans_per_ip: 64,
            empty_lan_grace_secs: 60,
            port_rate: None,
            lan_rate: None,
            request_head_timeout_secs: 10,
            max_request_head_bytes: 16 * 1024,
            max_pending_http_connections: 4096,
        }
    }
}

impl Default for SwitchSection {
    fn default() -> Self {
        Self {
            mac_aging_secs: 300,
            max_macs_per_port: 64,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            ping_interval_secs: 30,
            idle_timeout_secs: 90,
            // Small on purpose: tungstenite zero-fills its whole read buffer, so this is
            // most of an idle client's memory. Reads still take many small frames at once.
            read_buffer_bytes: 4096,
            write_buffer_bytes: 16 * 1024,
        }
    }
}
