//! Command line: `v86-relay [serve flags]` runs the relay; `v86-relay tap ...` attaches a
//! host TAP device to a LAN. Every flag can also come from its `V86_RELAY_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, WebTransportListen};

#[derive(Debug, Parser)]
#[command(
    name = "v86-relay",
    version,
    about = "Network relay and virtual LANs for v86 browser VMs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log filter (tracing syntax), e.g. `info` or `relay=debug`.
    #[arg(long, env = "V86_RELAY_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log lines as `text`, or `json` (one object per line; join, refusal and leave
    /// records carry their fields, for an audit trail).
    #[arg(
        long,
        env = "V86_RELAY_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach a host TAP device to a LAN of a running relay.
    Tap(TapArgs),
    /// Print a join token signed with the first of `[auth] secrets`.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The LAN it joins: a name, or a prefix ending in `*` (`physics-*`).
    #[arg(long)]
    pub lan: String,
    /// How long it is valid, e.g. `2h`, `30m`, `90s`, `7d`.
    #[arg(long, default_value = "2h", value_parser = parse_ttl)]
    pub ttl: std::time::Duration,
    /// Who it is for; shown in logs and the admin API.
    #[arg(long)]
    pub sub: Option<String>,
    /// `teacher`: what the admin token allows, for this LAN only.
    #[arg(long)]
    pub role: Option<String>,
    /// TOML config file holding `[auth] secrets`.
    #[arg(long, env = "V86_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `90s`, `30m`, `2h`, `7d`, or plain seconds.
fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write e.g. 90s, 30m, 2h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

impl TokenArgs {
    /// The token, or what is missing to make one.
    pub fn mint(&self, now_unix: u64) -> Result<String, String> {
        let config = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        config.validate().map_err(|e| e.to_string())?;
        crate::shared::check_lan_pattern(&self.lan)?;
        let secret = config.auth.minting_secret().ok_or(
            "no [auth] secrets in the config: add one (openssl rand -base64 48) and pass --config",
        )?;
        let mut claims = admission::Claims::new(self.lan.clone(), now_unix, self.ttl);
        claims.sub = self.sub.clone();
        claims.role = self.role.clone();
        Ok(admission::mint_hs256(secret, &claims))
    }
}

/// Flags of the relay itself. Each overrides the same key of the config file.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML config file; see config.example.toml for every key.
    #[arg(long, env = "V86_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address for WebSocket clients (and /healthz). [default: 0.0.0.0:8086]
    #[arg(long, env = "V86_RELAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address for Prometheus /metrics, or `off`. [default: 127.0.0.1:9186]
    #[arg(long, env = "V86_RELAY_METRICS_LISTEN")]
    pub metrics_listen: Option<MetricsListen>,
    /// Largest Ethernet frame accepted, in bytes (header included). [default: 65549]
    #[arg(long, env = "V86_RELAY_MAX_FRAME_SIZE")]
    pub max_frame_size: Option<usize>,
    /// Frames each port may have queued before further frames to it are dropped. [default: 256]
    #[arg(long, env = "V86_RELAY_PORT_QUEUE_FRAMES")]
    pub port_queue_frames: Option<usize>,
    /// Most concurrent client connections. [default: 20000]
    #[arg(long, env = "V86_RELAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a learned MAC address lives without traffic. [default: 300]
    #[arg(long, env = "V86_RELAY_MAC_AGING_SECS")]
    pub mac_aging_secs: Option<u64>,
    /// Upstream DNS server(s) for the VMs' queries, IP:PORT, comma-separated.
    /// [default: the system's resolv.conf]
    #[arg(long, env = "V86_RELAY_DNS_UPSTREAM", value_delimiter = ',')]
    pub dns_upstream: Vec<SocketAddr>,
    /// File that keeps DHCP leases across restarts. [default: none]
    #[arg(long, env = "V86_RELAY_DHCP_STATE_FILE")]
    pub dhcp_state_file: Option<PathBuf>,
    /// Connections from a VM to the gateway address reach this host's 127.0.0.1 on the
    /// same port (for a dev server on the host). Off by default: a hosted relay must not.
    #[arg(long, env = "V86_RELAY_HOST_LOOPBACK")]
    pub host_loopback: bool,
    /// Let VMs reach private (RFC 1918) and CGNAT addresses through NAT.
    #[arg(long, env = "V86_RELAY_ALLOW_PRIVATE")]
    pub allow_private: bool,
    /// Inbound port forward, repeatable: `tcp:0.0.0.0:8080=default/10.0.2.15:80`. The
    /// target may be a DHCP host name or a MAC instead of the IP (`default/web:80`).
    #[arg(long, env = "V86_RELAY_FORWARD", value_delimiter = ',')]
    pub forward: Vec<String>,
    /// Bearer token for the admin API (/admin/* on the metrics listener). Required when
    /// --metrics-listen is not a loopback address.
    #[arg(long, env = "V86_RELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Checkout of v86-relay whose web-demo/ and vendor/v86/ the demo page serves.
    /// [default: found from the working directory or the binary's location]
    #[arg(long, env = "V86_RELAY_WEB_ROOT")]
    pub web_root: Option<PathBuf>,
    /// UDP address for WebTransport (HTTP/3) clients, or `off`.
    /// [default: the same IP and port number as --listen]
    #[arg(long, env = "V86_RELAY_WEBTRANSPORT_LISTEN")]
    pub webtransport_listen: Option<WebTransportListen>,
    /// PEM certificate chain: --listen then serves https:// and wss://, and WebTransport
    /// uses it instead of a self-signed certificate. Needs --tls-key.
    #[arg(long, env = "V86_RELAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "V86_RELAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// UDP address of the WebRTC peer (ICE-lite, one port for all browsers), or `off`.
    /// [default: the IP of --listen and the next port number (8087 with the defaults)]
    #[arg(long, env = "V86_RELAY_WEBRTC_LISTEN")]
    pub webrtc_listen: Option<String>,
    /// Address browsers are told to send WebRTC traffic to (IP, or IP:PORT), when the relay
    /// is behind NAT or listens on 0.0.0.0. [default: the listen address, else the address
    /// the browser reached the relay at]
    #[arg(long, env = "V86_RELAY_WEBRTC_PUBLIC_ADDR")]
    pub webrtc_public_addr: Option<String>,
    /// Web page origins allowed to open sessions, comma-separated, e.g.
    /// `https://class.example.org`. [default: any]
    #[arg(long, env = "V86_RELAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Serve the CORS proxy for v86's fetch backend at /cors/ (`[cors] enabled`).
    #[arg(long, env = "V86_RELAY_CORS_PROXY")]
    pub cors_proxy: bool,
    /// Join a relay cluster through these NATS servers, comma-separated
    /// (`[cluster] nats_urls`, docs/cluster.md). [default: no cluster]
    #[arg(long, env = "V86_RELAY_CLUSTER_NATS", value_delimiter = ',')]
    pub cluster_nats: Vec<String>,
    /// This node's name in the cluster (`[cluster] node_name`). [default: the host name]
    #[arg(long, env = "V86_RELAY_NODE_NAME")]
    pub node_name: Option<String>,
}

impl ServeArgs {
    /// Defaults, then the file, then the flags; then checks the result.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.apply_to(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Writes every flag that was given over the same key of `config`.
    pub fn apply_to(&self, config: &mut Config) {
        let args = self;
        if let Some(listen) = args.listen {
            config.server.listen = listen;
        }
        if let Some(metrics) = &args.metrics_listen {
            config.server.metrics_listen = metrics.0;
        }
        if let Some(v) = args.max_frame_size {
            config.limits.max_frame_size = v;
        }
        if let Some(v) = args.port_queue_frames {
            config.limits.port_queue_frames = v;
        }
        if let Some(v) = args.max_connections {
            config.limits.max_connections = v;
        }
        if let Some(v) = args.mac_aging_secs {
            config.switch.mac_aging_secs = v;
        }
        if !args.dns_upstream.is_empty() {
            config.dns.upstream = args.dns_upstream.clone();
        }
        if let Some(path) = &args.dhcp_state_file {
            config.dhcp.state_file = Some(path.clone());
        }
        if let Some(token) = &args.admin_token {
            config.server.admin_token = Some(token.clone());
        }
        if args.host_loopback {
            config.nat.host_loopback = true;
        }
        if args.allow_private {
            config.nat.allow_private = true;
        }
        config.nat.forwards.extend(args.forward.iter().cloned());
        if let Some(dir) = &args.web_root {
            config.server.web_root = Some(dir.clone());
        }
        if let Some(listen) = args.webtransport_listen {
            config.webtransport.listen = listen;
        }
        if let Some(path) = &args.tls_cert {
            config.tls.cert = Some(path.clone());
        }
        if let Some(path) = &args.tls_key {
            config.tls.key = Some(path.clone());
        }
        if let Some(listen) = &args.webrtc_listen {
            config.webrtc.listen = Some(listen.clone());
        }
        if let Some(addr) = &args.webrtc_public_addr {
            config.webrtc.public_addr = Some(addr.clone());
        }
        if !args.allowed_origins.is_empty() {
            config.server.allowed_origins = args.allowed_origins.clone();
        }
        if args.cors_proxy {
            config.cors.enabled = true;
        }
        if !args.cluster_nats.is_empty() {
            config.cluster.nats_urls = args.cluster_nats.clone();
        }
        if let Some(name) = &args.node_name {
            config.cluster.node_name = Some(name.clone());
        }
    }
}

/// `--metrics-listen ADDR` or `--metrics-listen off`.
#[derive(Debug, Clone, Copy)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl FromStr for MetricsListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(MetricsListen(None));
        }
        s.parse().map(|a| MetricsListen(Some(a))).map_err(|_| {
            format!("`{s}` is not an address: use IP:PORT such as 127.0.0.1:9186, or `off`")
        })
    }
}

#[derive(Debug, Args)]
pub struct TapArgs {
    /// The relay LAN to join, e.g. ws://127.0.0.1:8086/lan/NAME.
    #[arg(long, env = "V86_RELAY_TAP_URL")]
    pub url: String,
    /// TAP device name; attached if it exists, created otherwise.
    #[arg(long, env = "V86_RELAY_TAP_DEV", default_value = "tap0")]
    pub dev: String,
    /// Network namespace (a name under /run/netns) the TAP device lives in. The WebSocket
    /// still connects from the namespace this command runs in.
    #[arg(long, env = "V86_RELAY_TAP_NETNS")]
    pub netns: Option<String>,
}
