//! Layer 8: hot reload (SIGHUP and `POST /admin/reload`). The config file is read again;
//! what can change while sessions live (limits, auth keys, allowed origins, trusted
//! proxies, egress rules, the TLS certificate) takes effect for new joins and new flows;
//! a key that needs a restart (a listen address, a LAN's addresses ...) is reported and
//! kept as it was. An invalid file is refused whole and the running config stays.

use std::sync::Arc;

use crate::config::{Config, core_config};
use crate::gateway_port::commands::{GatewayCommand, GatewayDirectory};
use crate::http::admin::{Reload, ReloadReport};
use crate::http::tls::TlsCell;
use crate::nat::NatShared;
use crate::transport::TransportContext;
use crate::transport::webtransport::{self, WebTransportShared};

/// Reads the config again (the binary's file and flags); `None` for a relay started from
/// code without one.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// What a reload changes.
pub(crate) struct Reloader {
    pub(crate) ctx: Arc<TransportContext>,
    pub(crate) tls: Option<TlsCell>,
    pub(crate) webtransport: Arc<WebTransportShared>,
    pub(crate) nat: Option<Arc<NatShared>>,
    pub(crate) directory: Arc<GatewayDirectory>,
    pub(crate) source: Option<ConfigSource>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// Puts the running value back where the new one differs, and notes the key.
macro_rules! keep {
    ($new:ident, $old:ident, $kept:ident: $($field:ident).+ => $key:literal) => {
        if $new.$($field).+ != $old.$($field).+ {
            $new.$($field).+ = $old.$($field).+.clone();
            $kept.push($key);
        }
    };
}

/// Keys read once at start-up: a changed value is reported and the running one kept.
fn keep_restart_only(new: &mut Config, old: &Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    keep!(new, old, kept: server.listen => "server.listen");
    keep!(new, old, kept: server.metrics_listen => "server.metrics_listen");
    keep!(new, old, kept: server.admin_token => "server.admin_token");
    keep!(new, old, kept: server.web_root => "server.web_root");
    keep!(new, old, kept: server.shutdown_grace_secs => "server.shutdown_grace_secs");
    keep!(new, old, kept: limits.max_frame_size => "limits.max_frame_size");
    keep!(new, old, kept: limits.port_queue_frames => "limits.port_queue_frames");
    keep!(new, old, kept: limits.max_connections => "limits.max_connections");
    keep!(new, old, kept: limits.max_ports_per_lan => "limits.max_ports_per_lan");
    keep!(new, old, kept: limits.max_lans => "limits.max_lans");
    keep!(new, old, kept: limits.empty_lan_grace_secs => "limits.empty_lan_grace_secs");
    keep!(new, old, kept: limits.request_head_timeout_secs => "limits.request_head_timeout_secs");
    keep!(new, old, kept: limits.max_request_head_bytes => "limits.max_request_head_bytes");
    keep!(new, old, kept: limits.max_pending_http_connections => "limits.max_pending_http_connections");
    keep!(new, old, kept: switch => "[switch]");
    keep!(new, old, kept: network => "[network]");
    keep!(new, old, kept: lans => "[lans]");
    keep!(new, old, kept: dns => "[dns]");
    keep!(new, old, kept: dhcp => "[dhcp]");
    keep!(new, old, kept: webrtc => "[webrtc]");
    keep!(new, old, kept: webtransport => "[webtransport]");
    keep!(new, old, kept: cluster => "[cluster]");
    // TLS on or off changes what --listen speaks; a new pair of files is reloaded.
    if new.tls.enabled() != old.tls.enabled() {
        keep!(new, old, kept: tls => "tls.cert / tls.key (turning TLS on or off)");
    }
    keep_nat_restart_only(new, old, &mut kept);
    kept
}

/// Egress rules reload; the rest of `[nat]` waits for a restart.
fn keep_nat_restart_only(new: &mut Config, old: &Config, kept: &mut Vec<&'static str>) {
    let mut restart_part = new.nat.clone();
    (
        restart_part.allow,
        restart_part.deny,
        restart_part.allow_private,
        restart_part.denied_tcp_ports,
    ) = (
        old.nat.allow.clone(),
        old.nat.deny.clone(),
        old.nat.allow_private,
        old.nat.denied_tcp_ports.clone(),
    );
    if restart_part != old.nat {
        let rules = std::mem::replace(&mut new.nat, old.nat.clone());
        new.nat.allow = rules.allow;
        new.nat.deny = rules.deny;
        new.nat.allow_private = rules.allow_private;
        new.nat.denied_tcp_ports = rules.denied_tcp_ports;
        kept.push("[nat] (all but allow, deny, allow_private, denied_tcp_ports)");
    }
}

impl Reloader {
    /// Applies `new` (already read); the running config stays when it is invalid. Reads
    /// certificate files: call it from a blocking thread.
    pub(crate) fn apply(&self, mut new: Config) -> Result<ReloadReport, String> {
        new.validate().map_err(|e| e.to_string())?;
        let old = self.ctx.config();
        let needs_restart = keep_restart_only(&mut new, &old);
        self.ctx.admission.reload(&new)?;
        if let (Some(cell), Ok(Some((cert, key)))) = (&self.tls, new.tls.paths()) {
            cell.reload(cert, key)?;
            webtransport::reload_certificate(&self.ctx, &self.webtransport, cert, key)?;
        }
        if let Some(nat) = &self.nat {
            let mut policy = core_config(&new.nat)?.policy;
            policy.host_addresses = nat.config().policy.host_addresses;
            nat.set_policy(policy.clone());
            for gateway in self.directory.all() {
                // A full queue would delay the new rules, never lose them for new LANs.
                let _ = gateway.try_send(GatewayCommand::SetEgressPolicy(policy.clone()));
            }
        }
        self.ctx.set_config(new);
        if needs_restart.is_empty() {
            tracing::info!("config reloaded");
        } else {
            tracing::warn!(
                "config reloaded; these keys need a restart and keep their running values: {}",
                needs_restart.join(", ")
            );
        }
        Ok(ReloadReport { needs_restart })
    }
}

impl Reload for Reloader {
    fn reload(&self) -> Result<ReloadReport, String> {
        let source = self.source.as_ref().ok_or(
            "this relay was started without a config file to read again; start it with --config",
        )?;
        let config = source().inspect_err(|e| {
            tracing::error!("config reload refused, the running config stays: {e}");
        })?;
        self.apply(config).inspect_err(|e| {
            tracing::error!("config reload refused, the running config stays: {e}");
        })
    }
}
