//! [`Config::validate`]: every mistake is found at start-up (and at reload), and the error
//! names the key, what is wrong with its value and how to fix it.

use super::{Config, ConfigError};
use crate::shared::{LanName, MAX_FRAME_SIZE_LIMIT, MIN_FRAME_SIZE_LIMIT};

/// Most captures `capture.max_captures` may allow at once.
const MAX_CAPTURES: usize = 64;

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

impl Config {
    /// Checks every section; the first mistake is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_limits()?;
        self.check_switch_and_websocket()?;
        self.check_nat()?;
        self.check_transports()?;
        self.check_origins()?;
        self.check_admission()?;
        self.check_networks()
    }

    fn check_admission(&self) -> Result<(), ConfigError> {
        self.auth.verifier().map_err(ConfigError::Auth)?;
        if let Err(e) = admission::TrustedProxies::parse(&self.server.trusted_proxies) {
            return invalid(
                "server.trusted_proxies",
                format!("{:?}", self.server.trusted_proxies),
                "not a list of CIDRs",
                format!("{e}; write e.g. [\"127.0.0.1/32\", \"10.0.0.0/8\"]"),
            );
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            (
                "limits.new_connections_per_ip_per_sec",
                l.new_connections_per_ip_per_sec,
            ),
            (
                "limits.new_connections_per_ip_burst",
                l.new_connections_per_ip_burst,
            ),
            ("limits.max_lans_per_ip", l.max_lans_per_ip),
        ] {
            if value == 0 {
                return invalid(
                    key,
                    0,
                    "nobody could join",
                    "set at least 1 (see config.example.toml for the defaults)",
                );
            }
        }
        if l.request_head_timeout_secs == 0 || l.max_pending_http_connections == 0 {
            return invalid(
                "limits.request_head_timeout_secs",
                l.request_head_timeout_secs,
                "no request could arrive (limits.max_pending_http_connections must be over 0 too)",
                "keep the defaults 10 and 4096",
            );
        }
        if !(8192..=1 << 20).contains(&l.max_request_head_bytes) {
            return invalid(
                "limits.max_request_head_bytes",
                l.max_request_head_bytes,
                "out of range",
                "use 8192 to 1048576; 16384 fits any browser's upgrade request",
            );
        }
        Ok(())
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    fn check_switch_and_websocket(&self) -> Result<(), ConfigError> {
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
        if self.capture.max_captures > MAX_CAPTURES {
            return invalid(
                "capture.max_captures",
                self.capture.max_captures,
                "each capture holds a queue of frames, so this bounds their memory",
                format!("use 0 (captures off) to {MAX_CAPTURES}; the default is 4"),
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
        for (key, value, fix) in [
            (
                "websocket.read_buffer_bytes",
                ws.read_buffer_bytes,
                "use 256 to 1048576; 4096 keeps idle clients small",
            ),
            (
                "websocket.write_buffer_bytes",
                ws.write_buffer_bytes,
                "use 256 to 1048576",
            ),
        ] {
            if !(256..=1 << 20).contains(&value) {
                return invalid(key, value, "out of range", fix);
            }
        }
        Ok(())
    }

    fn check_nat(&self) -> Result<(), ConfigError> {
        if let Err(problem) = super::nat::core_config(&self.nat) {
            return Err(ConfigError::Nat(problem));
        }
        for forward in &self.nat.forwards {
            if let Err(problem) = forward.parse::<super::PortForwardRule>() {
                return Err(ConfigError::Nat(problem));
            }
        }
        Ok(())
    }

    fn check_transports(&self) -> Result<(), ConfigError> {
        if let Err((key, value, problem, fix)) = self.webtransport.validate() {
            return invalid(key, value, problem, fix);
        }
        if let Err((key, value, problem, fix)) = self.wisp.validate() {
            return invalid(key, value, problem, fix);
        }
        if let Err((key, value, problem, fix)) = self.cors.validate() {
            return invalid(key, value, problem, fix);
        }
        if let Err((key, value, problem, fix)) = self.cluster.validate() {
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
        for (key, value) in [
            (
                "webrtc.sctp_send_buffer_bytes",
                self.webrtc.sctp_send_buffer_bytes,
            ),
            (
                "webrtc.socket_buffer_bytes",
                self.webrtc.socket_buffer_bytes,
            ),
        ] {
            if !(64 * 1024..=64 << 20).contains(&value) {
                return invalid(
                    key,
                    value,
                    "out of range",
                    "use 65536 to 67108864; 4194304 carries bursts of 1000 frames",
                );
            }
        }
        if !(16 * 1024..=64 << 20).contains(&self.webrtc.send_window_bytes) {
            return invalid(
                "webrtc.send_window_bytes",
                self.webrtc.send_window_bytes,
                "out of range",
                "use 16384 to 67108864; 65536 keeps bursts under a browser's UDP receive buffer",
            );
        }
        Ok(())
    }

    fn check_origins(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// `[network]` and every `[lans.NAME]` must give a working LAN.
    fn check_networks(&self) -> Result<(), ConfigError> {
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
            if LanName::new(lan).is_err() {
                return Err(ConfigError::Network {
                    section: format!("[lans.{lan}]"),
                    problem: "a LAN name uses 1 to 64 of A-Z a-z 0-9 _ -".to_owned(),
                });
            }
            check(lan)?;
        }
        for lan in std::iter::once("default").chain(self.lans.keys().map(String::as_str)) {
            if let Err(problem) = self.rates_for(lan) {
                return Err(ConfigError::Network {
                    section: if lan == "default" {
                        "[limits] / [network]".to_owned()
                    } else {
                        format!("[lans.{lan}]")
                    },
                    problem: format!(
                        "{problem}; write e.g. \"10Mbit\" or \"2MB\" (per second), or \"off\""
                    ),
                });
            }
        }
        Ok(())
    }
}
