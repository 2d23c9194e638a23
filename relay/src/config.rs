//! Configuration: built-in defaults, then the TOML file (`--config`), then flags and
//! `V86_RELAY_*` variables. Every mistake is reported at start-up with the key and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::ServeArgs;

/// Largest Ethernet frame v86 can produce: virtio allows a 65535-byte MTU plus the header.
pub const MAX_FRAME_SIZE_LIMIT: usize = 65535 + 14;
/// Smallest useful frame limit: a full standard frame must always fit.
pub const MIN_FRAME_SIZE_LIMIT: usize = 1514;

/// The whole relay configuration, as the file spells it. See `config.example.toml`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub switch: SwitchSection,
    pub websocket: WebSocketConfig,
    /// Defaults for every LAN's addresses and services (see [`crate::network`]).
    pub network: toml::Table,
    /// Per-LAN overrides of `[network]` keys: `[lans.physics-101]`.
    pub lans: std::collections::BTreeMap<String, toml::Table>,
    pub dns: DnsSection,
    pub dhcp: DhcpSection,
    pub webrtc: WebRtcSection,
    pub webtransport: crate::transport::webtransport::WebTransportConfig,
    pub tls: crate::tls::TlsConfig,
    /// Internet access for the VMs (see [`crate::nat`]).
    pub nat: NatSection,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatSection {
    /// Route VM traffic to outside addresses through the relay's own sockets.
    pub enabled: bool,
    /// TCP/UDP to the gateway address reach the relay host's 127.0.0.1 (QEMU's 10.0.2.2).
    pub host_loopback: bool,
    /// Let VMs reach RFC 1918 and CGNAT addresses.
    pub allow_private: bool,
    /// `CIDR` or `CIDR:PORT` or `CIDR:LOW-HIGH`; checked after `deny`, before the defaults.
    pub allow: Vec<String>,
    /// Same syntax; checked first.
    pub deny: Vec<String>,
    pub denied_tcp_ports: Vec<u16>,
    /// Each way, per TCP flow.
    pub tcp_buffer_bytes: usize,
    pub max_tcp_flows_per_vm: usize,
    pub max_udp_flows_per_vm: usize,
    pub new_flows_per_sec: u32,
    pub connect_timeout_secs: u64,
    pub tcp_idle_timeout_secs: u64,
    /// A VM that stops answering loses its TCP connections after this long.
    pub vm_timeout_secs: u64,
    pub udp_idle_timeout_secs: u64,
    /// Inbound forwards, as `--forward` spells them.
    pub forwards: Vec<String>,
}

impl Default for NatSection {
    fn default() -> Self {
        let core = gateway::NatConfig::default();
        Self {
            enabled: true,
            host_loopback: false,
            allow_private: false,
            allow: Vec::new(),
            deny: Vec::new(),
            denied_tcp_ports: core.policy.denied_tcp_ports.clone(),
            tcp_buffer_bytes: core.tcp_rx_buffer,
            max_tcp_flows_per_vm: core.max_tcp_flows_per_vm,
            max_udp_flows_per_vm: core.max_udp_flows_per_vm,
            new_flows_per_sec: core.new_flows_per_sec,
            connect_timeout_secs: 10,
            tcp_idle_timeout_secs: core.tcp_idle_timeout.as_secs(),
            vm_timeout_secs: core.tcp_vm_timeout.as_secs(),
            udp_idle_timeout_secs: core.udp_idle_timeout.as_secs(),
            forwards: Vec::new(),
        }
    }
}

/// The WebRTC peer (see `transport::webrtc`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebRtcSection {
    /// UDP `IP:PORT`, or `"off"`; absent means the IP and port number of `server.listen`.
    pub listen: Option<String>,
    /// Announced candidate, `IP` or `IP:PORT`.
    pub public_addr: Option<String>,
    pub connect_timeout_secs: u64,
    pub max_pending: usize,
    pub sctp_send_buffer_bytes: usize,
    pub socket_buffer_bytes: usize,
}

impl Default for WebRtcSection {
    fn default() -> Self {
        Self {
            listen: None,
            public_addr: None,
            connect_timeout_secs: 20,
            max_pending: 256,
            // Measured: at 128 KiB (str0m's default) half of a 1000-frame burst was lost.
            sctp_send_buffer_bytes: 4 << 20,
            socket_buffer_bytes: 4 << 20,
        }
    }
}

/// Where the WebRTC peer listens and what it announces, as [`Config::webrtc`] resolves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebRtcAddrs {
    pub listen: SocketAddr,
    /// The IP to announce; `None` means "the address the browser reached us at".
    pub public_ip: Option<std::net::IpAddr>,
    /// The port to announce; `None` means the bound port.
    pub public_port: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// Upstream DNS servers (`IP:PORT`); empty means the system's resolv.conf.
    pub upstream: Vec<SocketAddr>,
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
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_frame_size: usize,
    pub port_queue_frames: usize,
    pub max_connections: usize,
    pub max_ports_per_lan: usize,
    pub max_lans: usize,
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

/// A configuration mistake, worded for the person who made it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}. Check the path given with --config.")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "config file {path} is not valid: {message}See config.example.toml for every key and its meaning."
    )]
    Parse { path: PathBuf, message: String },
    #[error("config {section}: {problem}. See config.example.toml, section [network].")]
    Network { section: String, problem: String },
    #[error("config [nat]: {0}")]
    Nat(String),
    #[error("config key `{key}` = {value}: {problem}; {fix}")]
    Invalid {
        key: &'static str,
        value: String,
        problem: &'static str,
        fix: String,
    },
}

impl Config {
    /// Defaults, then the file, then the flags; then checks the result.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_flags(args);
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn apply_flags(&mut self, args: &ServeArgs) {
        if let Some(listen) = args.listen {
            self.server.listen = listen;
        }
        if let Some(metrics) = &args.metrics_listen {
            self.server.metrics_listen = metrics.0;
        }
        if let Some(v) = args.max_frame_size {
            self.limits.max_frame_size = v;
        }
        if let Some(v) = args.port_queue_frames {
            self.limits.port_queue_frames = v;
        }
        if let Some(v) = args.max_connections {
            self.limits.max_connections = v;
        }
        if let Some(v) = args.mac_aging_secs {
            self.switch.mac_aging_secs = v;
        }
        if !args.dns_upstream.is_empty() {
            self.dns.upstream = args.dns_upstream.clone();
        }
        if let Some(path) = &args.dhcp_state_file {
            self.dhcp.state_file = Some(path.clone());
        }
        if let Some(token) = &args.admin_token {
            self.server.admin_token = Some(token.clone());
        }
        if args.host_loopback {
            self.nat.host_loopback = true;
        }
        if args.allow_private {
            self.nat.allow_private = true;
        }
        self.nat.forwards.extend(args.forward.iter().cloned());
        if let Some(dir) = &args.web_root {
            self.server.web_root = Some(dir.clone());
        }
        if let Some(listen) = args.webtransport_listen {
            self.webtransport.listen = listen;
        }
        if let Some(path) = &args.tls_cert {
            self.tls.cert = Some(path.clone());
        }
        if let Some(path) = &args.tls_key {
            self.tls.key = Some(path.clone());
        }
        if let Some(listen) = &args.webrtc_listen {
            self.webrtc.listen = Some(listen.clone());
        }
        if let Some(addr) = &args.webrtc_public_addr {
            self.webrtc.public_addr = Some(addr.clone());
        }
        if !args.allowed_origins.is_empty() {
            self.server.allowed_origins = args.allowed_origins.clone();
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(
            key: &'static str,
            value: impl ToString,
            problem: &'static str,
            fix: impl Into<String>,
        ) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                value: value.to_string(),
                problem,
                fix: fix.into(),
            })
        }
        let l = &self.limits;
        if !(MIN_FRAME_SIZE_LIMIT..=MAX_FRAME_SIZE_LIMIT).contains(&l.max_frame_size) {
            return invalid(
                "limits.max_frame_size",
                l.max_frame_size,
                "out of range",
                format!(
                    "use a value from {MIN_FRAME_SIZE_LIMIT} (MTU 1500) to {MAX_FRAME_SIZE_LIMIT} (virtio's largest MTU)"
                ),
            );
        }
        if !(1..=65536).contains(&l.port_queue_frames) {
            return invalid(
                "limits.port_queue_frames",
                l.port_queue_frames,
                "a port needs a queue of 1 to 65536 frames",
                "256 suits v86, which itself queues up to 128 frames",
            );
        }
        if l.max_connections == 0 {
            return invalid(
                "limits.max_connections",
                0,
                "no client could connect",
                "set at least 1 (the default is 20000)",
            );
        }
        if l.max_ports_per_lan < 2 {
            return invalid(
                "limits.max_ports_per_lan",
                l.max_ports_per_lan,
                "a LAN needs at least two machines to be useful",
                "set at least 2 (the default is 1024)",
            );
        }
        if l.max_lans == 0 {
            return invalid(
                "limits.max_lans",
                0,
                "no LAN could be created",
                "set at least 1",
            );
        }
        if self.switch.mac_aging_secs == 0 {
            return invalid(
                "switch.mac_aging_secs",
                0,
                "addresses would be forgotten at once and every frame would flood",
                "use 300 (the usual bridge default) or at least 10",
            );
        }
        if self.switch.max_macs_per_port == 0 {
            return invalid(
                "switch.max_macs_per_port",
                0,
                "no machine could send",
                "set at least 1 (the default is 64)",
            );
        }
        let ws = &self.websocket;
        if ws.ping_interval_secs == 0 || ws.idle_timeout_secs <= ws.ping_interval_secs {
            return invalid(
                "websocket.idle_timeout_secs",
                ws.idle_timeout_secs,
                "must be longer than websocket.ping_interval_secs (which must be over 0)",
                "keep the defaults 30 and 90, or e.g. 10 and 30",
            );
        }
        if !(256..=1 << 20).contains(&ws.read_buffer_bytes) {
            return invalid(
                "websocket.read_buffer_bytes",
                ws.read_buffer_bytes,
                "out of range",
                "use 256 to 1048576; 4096 keeps idle clients small",
            );
        }
        if !(256..=1 << 20).contains(&ws.write_buffer_bytes) {
            return invalid(
                "websocket.write_buffer_bytes",
                ws.write_buffer_bytes,
                "out of range",
                "use 256 to 1048576",
            );
        }
        if let Err(problem) = crate::nat::core_config(&self.nat) {
            return Err(ConfigError::Nat(problem));
        }
        for forward in &self.nat.forwards {
            if let Err(problem) = forward.parse::<crate::nat::Forward>() {
                return Err(ConfigError::Nat(problem));
            }
        }
        if let Err((key, value, problem, fix)) = self.webtransport.validate() {
            return invalid(key, value, problem, fix);
        }
        if let Err(fix) = self.tls.paths() {
            return invalid("tls.cert / tls.key", "one of them", "incomplete", fix);
        }
        self.webrtc_addrs()?;
        if self.webrtc.connect_timeout_secs == 0 || self.webrtc.max_pending == 0 {
            return invalid(
                "webrtc.connect_timeout_secs",
                self.webrtc.connect_timeout_secs,
                "no browser could connect (webrtc.max_pending must be over 0 too)",
                "keep the defaults 20 and 256",
            );
        }
        if !(64 * 1024..=64 << 20).contains(&self.webrtc.sctp_send_buffer_bytes) {
            return invalid(
                "webrtc.sctp_send_buffer_bytes",
                self.webrtc.sctp_send_buffer_bytes,
                "out of range",
                "use 65536 to 67108864; 4194304 carries bursts of 1000 frames",
            );
        }
        if !(64 * 1024..=64 << 20).contains(&self.webrtc.socket_buffer_bytes) {
            return invalid(
                "webrtc.socket_buffer_bytes",
                self.webrtc.socket_buffer_bytes,
                "out of range",
                "use 65536 to 67108864; 4194304 carries bursts of 1000 frames",
            );
        }
        for origin in &self.server.allowed_origins {
            if origin.is_empty()
                || origin.ends_with('/')
                || !origin.contains("://") && origin != "null"
            {
                return Err(ConfigError::Invalid {
                    key: "server.allowed_origins",
                    value: format!("{origin:?}"),
                    problem: "not a web origin",
                    fix: "write origins as a browser sends them, e.g. https://class.example.org or http://localhost:8080 (no path, no trailing slash)".to_owned(),
                });
            }
        }
        let tables = self.network_tables();
        let check = |lan: &str| -> Result<(), ConfigError> {
            let section = if self.lans.contains_key(lan) {
                format!("[lans.{lan}]")
            } else {
                "[network]".to_owned()
            };
            tables
                .for_lan(lan)
                .and_then(|n| n.services(lan).map(|_| ()))
                .map_err(|problem| ConfigError::Network { section, problem })
        };
        check("default")?;
        for lan in self.lans.keys() {
            if crate::lan::LanName::new(lan).is_err() {
                return Err(ConfigError::Network {
                    section: format!("[lans.{lan}]"),
                    problem: "a LAN name uses 1 to 64 of A-Z a-z 0-9 _ -".to_owned(),
                });
            }
            check(lan)?;
        }
        Ok(())
    }

    pub fn network_tables(&self) -> crate::network::NetworkTables {
        crate::network::NetworkTables {
            defaults: self.network.clone(),
            lans: self.lans.clone(),
        }
    }

    /// The WebRTC peer's addresses, or `None` when it is off.
    pub fn webrtc_addrs(&self) -> Result<Option<WebRtcAddrs>, ConfigError> {
        let listen = match self.webrtc.listen.as_deref() {
            Some(off) if off.eq_ignore_ascii_case("off") => return Ok(None),
            Some(text) => text.parse().map_err(|_| ConfigError::Invalid {
                key: "webrtc.listen",
                value: format!("{text:?}"),
                problem: "not an address",
                fix: "use IP:PORT for UDP such as 0.0.0.0:8086, or \"off\"".to_owned(),
            })?,
            // WebTransport takes --listen's port number on UDP; WebRTC the next one. The
            // port travels inside the SDP answer, so nobody types it.
            None => {
                let mut addr = self.server.listen;
                if addr.port() != 0 {
                    addr.set_port(addr.port().checked_add(1).unwrap_or(0));
                }
                addr
            }
        };
        let (public_ip, public_port) = match self.webrtc.public_addr.as_deref() {
            None => (None, None),
            Some(text) => {
                let bad = || {
                    ConfigError::Invalid {
                    key: "webrtc.public_addr",
                    value: format!("{text:?}"),
                    problem: "not a usable IP or IP:PORT",
                    fix: "give the relay's address as browsers reach it, e.g. 203.0.113.7 or 203.0.113.7:8086 (no host names: ICE needs an IP)".to_owned(),
                }
                };
                let (ip, port) = match text.parse::<SocketAddr>() {
                    Ok(addr) => (addr.ip(), Some(addr.port())),
                    Err(_) => (text.parse().map_err(|_| bad())?, None),
                };
                if ip.is_unspecified() || ip.is_multicast() {
                    return Err(bad());
                }
                (Some(ip), port)
            }
        };
        Ok(Some(WebRtcAddrs {
            listen,
            public_ip,
            public_port,
        }))
    }

    /// Whether a page from `origin` may open a session (WebSocket, WebTransport, WebRTC).
    /// No Origin means a program, not a page: allowed, as is everything when the list is
    /// empty.
    pub fn origin_allowed(&self, origin: Option<&[u8]>) -> bool {
        let allowed = &self.server.allowed_origins;
        match origin {
            None => true,
            Some(origin) => allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin),
        }
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.websocket.ping_interval_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.websocket.idle_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_the_default() {
        let text = include_str!("../../config.example.toml");
        let mut parsed = Config::from_toml(text).expect("example parses");
        assert_eq!(
            parsed.network_tables().for_lan("any").unwrap(),
            crate::network::NetworkConfig::default()
        );
        parsed.network = toml::Table::new();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[limits]\nmax_frame_sise = 2000\n").unwrap_err();
        assert!(err.contains("max_frame_sise"), "{err}");
    }

    #[test]
    fn webrtc_addresses() {
        let mut config = Config::default();
        let addrs = config.webrtc_addrs().unwrap().unwrap();
        // The port after --listen's: WebTransport has --listen's own on UDP.
        assert_eq!(addrs.listen, SocketAddr::from(([0, 0, 0, 0], 8087)));
        assert_eq!((addrs.public_ip, addrs.public_port), (None, None));
        config.webrtc.listen = Some("OFF".into());
        assert_eq!(config.webrtc_addrs().unwrap(), None);
        config.webrtc.listen = Some("127.0.0.1:9000".into());
        config.webrtc.public_addr = Some("203.0.113.7".into());
        let addrs = config.webrtc_addrs().unwrap().unwrap();
        assert_eq!(addrs.listen.port(), 9000);
        assert_eq!(addrs.public_ip, Some([203, 0, 113, 7].into()));
        config.webrtc.public_addr = Some("203.0.113.7:443".into());
        assert_eq!(
            config.webrtc_addrs().unwrap().unwrap().public_port,
            Some(443)
        );
        for bad in ["relay.example.org", "0.0.0.0", "224.0.0.1:9"] {
            config.webrtc.public_addr = Some(bad.into());
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("webrtc.public_addr"), "{err}");
        }
        config.webrtc.public_addr = None;
        config.webrtc.listen = Some("8086".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("webrtc.listen") && err.contains("off"),
            "{err}"
        );
    }

    #[test]
    fn allowed_origins_must_be_origins() {
        let mut config = Config::default();
        config.server.allowed_origins = vec!["https://class.example.org".into(), "null".into()];
        config.validate().unwrap();
        for bad in ["class.example.org", "https://class.example.org/", ""] {
            config.server.allowed_origins = vec![bad.into()];
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("server.allowed_origins"), "{err}");
        }
    }

    #[test]
    fn bad_value_names_key_and_fix() {
        let mut config = Config::default();
        config.limits.port_queue_frames = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("limits.port_queue_frames"), "{err}");
        assert!(err.contains("256"), "{err}");
    }
}
