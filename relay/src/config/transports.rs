//! The transports' sections: `[webtransport]`, `[webrtc]` and `[tls]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use super::{Config, ConfigError};

/// Longest rotation period: a certificate is published one period before it is served and
/// served for one period, so two periods must fit in its validity.
pub(crate) const MAX_ROTATION_SECS: u64 = 6 * 24 * 3600;

/// `[webtransport] listen`: absent = the same IP and port number as `server.listen`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum WebTransportListen {
    #[default]
    SameAsListen,
    Off,
    Addr(SocketAddr),
}

impl FromStr for WebTransportListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(WebTransportListen::Off);
        }
        s.parse().map(WebTransportListen::Addr).map_err(|_| {
            format!("`{s}` is not a UDP address: use IP:PORT such as 0.0.0.0:8086, or `off`")
        })
    }
}

impl TryFrom<String> for WebTransportListen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The `[webtransport]` section of the config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebTransportConfig {
    pub listen: WebTransportListen,
    /// How often the self-signed certificate is replaced (advanced; tests shorten it).
    pub cert_rotation_secs: u64,
    /// Most bytes one session may hold in incomplete fragmented frames.
    pub max_reassembly_bytes: usize,
    /// UDP socket send and receive buffers.
    pub socket_buffer_bytes: usize,
}

impl Default for WebTransportConfig {
    fn default() -> Self {
        Self {
            listen: WebTransportListen::SameAsListen,
            cert_rotation_secs: 5 * 24 * 3600,
            max_reassembly_bytes: 256 * 1024,
            // Measured (docs/benchmarks.md, issue 16): the default 208 KiB dropped a guest's
            // upload bursts, every lost datagram costing a whole frame.
            socket_buffer_bytes: 4 << 20,
        }
    }
}

impl WebTransportConfig {
    /// Checks the section; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str, String)> {
        if !(1..=MAX_ROTATION_SECS).contains(&self.cert_rotation_secs) {
            return Err((
                "webtransport.cert_rotation_secs",
                self.cert_rotation_secs.to_string(),
                "out of range",
                format!(
                    "use 1 to {MAX_ROTATION_SECS} (6 days): self-signed certificates are valid 13 days and each is published one period before use"
                ),
            ));
        }
        if !(4096..=64 << 20).contains(&self.max_reassembly_bytes) {
            return Err((
                "webtransport.max_reassembly_bytes",
                self.max_reassembly_bytes.to_string(),
                "out of range",
                "use 4096 to 67108864; 262144 holds several full-size jumbo frames".to_owned(),
            ));
        }
        if !(64 * 1024..=64 << 20).contains(&self.socket_buffer_bytes) {
            return Err((
                "webtransport.socket_buffer_bytes",
                self.socket_buffer_bytes.to_string(),
                "out of range",
                "use 65536 to 67108864; 4194304 holds a guest's bursts".to_owned(),
            ));
        }
        Ok(())
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
    /// Unacknowledged bytes per browser before the relay holds its frames in the port queue.
    pub send_window_bytes: usize,
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
            // Measured (docs/benchmarks.md, "Transports as a guest sees them"): under
            // Chromium's 128 KiB UDP receive buffer, so a burst never overflows it.
            send_window_bytes: 48 << 10,
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

/// The `[tls]` section: both files, or neither.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// The two paths, or a message saying which one is missing.
    pub fn paths(&self) -> Result<Option<(&Path, &Path)>, String> {
        match (&self.cert, &self.key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (Some(_), None) => Err("--tls-cert is set but --tls-key is not: give both".into()),
            (None, Some(_)) => Err("--tls-key is set but --tls-cert is not: give both".into()),
        }
    }
}

impl Config {
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
}
