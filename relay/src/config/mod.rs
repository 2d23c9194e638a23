//! Layer 1: the configuration (docs/architecture.md, "Layers"). Built-in defaults, then
//! the TOML file (`--config`); the command line applies its flags on top (`crate::cli`).
//! Every section's types and checks live here and import only the shared types and the
//! sans-IO crates, so every later layer can read a `Config` and none is needed to build one.

mod auth;
mod cluster;
mod cors;
mod nat;
mod network;
mod port_forward;
mod sections;
mod transports;
mod validate;
mod wisp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use auth::AuthSection;
pub use cluster::ClusterSection;
pub use cors::CorsSection;
pub use nat::NatSection;
pub(crate) use nat::core_config;
pub(crate) use network::{NetworkConfig, NetworkTables};
pub(crate) use port_forward::{ForwardProtocol, ForwardTarget, PortForwardRule};
pub use sections::{
    CaptureSection, DefaultLan, DhcpSection, DnsSection, LimitsConfig, ServerConfig, SwitchSection,
    WebSocketConfig,
};
pub use transports::{
    TlsConfig, WebRtcAddrs, WebRtcSection, WebTransportConfig, WebTransportListen,
};
pub use wisp::WispSection;

/// The whole relay configuration, as the file spells it. See `config.example.toml`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub switch: SwitchSection,
    pub websocket: WebSocketConfig,
    /// Defaults for every LAN's addresses and services (see `config/network.rs`).
    pub network: toml::Table,
    /// Per-LAN overrides of `[network]` keys: `[lans.physics-101]`.
    pub lans: std::collections::BTreeMap<String, toml::Table>,
    pub dns: DnsSection,
    pub dhcp: DhcpSection,
    pub webrtc: WebRtcSection,
    pub webtransport: WebTransportConfig,
    pub tls: TlsConfig,
    /// Internet access for the VMs (see `crate::nat`).
    pub nat: NatSection,
    /// Join tokens; off unless keys are given.
    pub auth: AuthSection,
    /// The Wisp server at `/wisp/` (see `crate::transport::wisp`).
    pub wisp: WispSection,
    /// LAN captures through the admin API.
    pub capture: CaptureSection,
    /// The CORS proxy at `/cors/` for v86's fetch backend (see `crate::http::cors`).
    pub cors: CorsSection,
    /// Relay nodes sharing LANs over NATS; off unless `nats_urls` is given (docs/cluster.md).
    pub cluster: ClusterSection,
}

/// Bandwidth limits in bytes per second; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rates {
    pub(crate) port: Option<u64>,
    pub(crate) lan: Option<u64>,
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
    #[error("config [auth]: {0}")]
    Auth(String),
    #[error("config key `{key}` = {value}: {problem}; {fix}")]
    Invalid {
        key: &'static str,
        value: String,
        problem: &'static str,
        fix: String,
    },
}

/// A page whose origin `server.allowed_origins` does not list; the one Origin check of
/// every transport (WebSocket, WebTransport, WebRTC offers).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "this page's origin {0:?} may not use this relay: add it to --allowed-origins (server.allowed_origins)"
)]
pub(crate) struct OriginRefused(String);

impl Config {
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

    /// The bandwidth limits of LAN `lan` in bytes per second (`None`: unlimited): its
    /// `[lans.NAME]` keys over `[network]` over `[limits]`. Checked at start-up.
    pub(crate) fn rates_for(&self, lan: &str) -> Result<Rates, String> {
        let network = self.network_tables().for_lan(lan)?;
        let parse = |key: &str, text: &Option<String>| -> Result<Option<u64>, String> {
            match text.as_deref() {
                None | Some("off") => Ok(None),
                Some(text) => text
                    .parse::<admission::Rate>()
                    .map(|rate| Some(rate.bytes_per_sec()))
                    .map_err(|e| format!("{key} = {text:?}: {e}")),
            }
        };
        Ok(Rates {
            port: parse(
                "port_rate",
                if network.port_rate.is_some() {
                    &network.port_rate
                } else {
                    &self.limits.port_rate
                },
            )?,
            lan: parse(
                "lan_rate",
                if network.lan_rate.is_some() {
                    &network.lan_rate
                } else {
                    &self.limits.lan_rate
                },
            )?,
        })
    }

    pub(crate) fn network_tables(&self) -> NetworkTables {
        NetworkTables {
            defaults: self.network.clone(),
            lans: self.lans.clone(),
        }
    }

    /// Whether a page from `origin` may open a session. No Origin means a program, not a
    /// page: allowed, as is everything when the list is empty.
    pub(crate) fn check_origin(&self, origin: Option<&[u8]>) -> Result<(), OriginRefused> {
        let allowed = &self.server.allowed_origins;
        match origin {
            None => Ok(()),
            Some(_) if allowed.is_empty() => Ok(()),
            Some(origin) if allowed.iter().any(|a| a.as_bytes() == origin) => Ok(()),
            Some(origin) => Err(OriginRefused(
                String::from_utf8_lossy(origin).chars().take(100).collect(),
            )),
        }
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.websocket.ping_interval_secs)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.websocket.idle_timeout_secs)
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn example_file_is_the_default() {
        let text = include_str!("../../../config.example.toml");
        let mut parsed = Config::from_toml(text).expect("example parses");
        assert_eq!(
            parsed.network_tables().for_lan("any").unwrap(),
            super::network::NetworkConfig::default()
        );
        parsed.network = toml::Table::new();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn max_captures_is_bounded() {
        let mut config = Config::default();
        config.capture.max_captures = 0;
        config.validate().unwrap();
        config.capture.max_captures = 65;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("capture.max_captures"), "{error}");
    }

    #[test]
    fn origins_are_checked_in_one_place() {
        let mut config = Config::default();
        assert!(config.check_origin(Some(b"https://any.example")).is_ok());
        config.server.allowed_origins = vec!["https://class.example.org".into()];
        assert!(config.check_origin(None).is_ok());
        assert!(
            config
                .check_origin(Some(b"https://class.example.org"))
                .is_ok()
        );
        let refused = config
            .check_origin(Some(b"https://evil.example"))
            .unwrap_err();
        assert!(
            refused.to_string().contains("--allowed-origins"),
            "{refused}"
        );
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
