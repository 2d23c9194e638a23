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

/// Reads the config again (the binary's file and flags); `None` for a relay started from
/// code without one.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// What a reload changes.
pub(crate) struct Reloader {
    pub(crate) ctx: Arc<TransportContext>,
    pub(crate) tls: Option<TlsCell>,
    pub(crate) nat: Option<Arc<NatShared>>,
    pub(crate) directory: Arc<GatewayDirectory>,
    pub(crate) source: Option<ConfigSource>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// Puts `old` back into `new` where they differ, and notes the key.
fn keep<T: PartialEq + Clone>(
    new: &mut T,
    old: &T,
    key: &'static str,
    kept: &mut Vec<&'static str>,
) {
    if new != old {
        *new = old.clone();
        kept.push(key);
    }
}

/// Keys read once at start-up: a changed value is reported and the running one kept.
fn keep_restart_only(new: &mut Config, old: &Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let k = &mut kept;
    keep(
        &mut new.server.listen,
        &old.server.listen,
        "server.listen",
        k,
    );
    keep(
        &mut new.server.metrics_listen,
        &old.server.metrics_listen,
        "server.metrics_listen",
        k,
    );
    keep(
        &mut new.server.admin_token,
        &old.server.admin_token,
        "server.admin_token",
        k,
    );
    keep(
        &mut new.server.web_root,
        &old.server.web_root,
        "server.web_root",
        k,
    );
    keep(
        &mut new.server.shutdown_grace_secs,
        &old.server.shutdown_grace_secs,
        "server.shutdown_grace_secs",
        k,
    );
    keep(
        &mut new.limits.max_frame_size,
        &old.limits.max_frame_size,
        "limits.max_frame_size",
        k,
    );
    keep(
        &mut new.limits.port_queue_frames,
        &old.limits.port_queue_frames,
        "limits.port_queue_frames",
        k,
    );
    keep(
        &mut new.limits.max_connections,
        &old.limits.max_connections,
        "limits.max_connections",
        k,
    );
    keep(
        &mut new.limits.max_ports_per_lan,
        &old.limits.max_ports_per_lan,
        "limits.max_ports_per_lan",
        k,
    );
    keep(
        &mut new.limits.max_lans,
        &old.limits.max_lans,
        "limits.max_lans",
        k,
    );
    keep(&mut new.switch, &old.switch, "[switch]", k);
    keep(&mut new.network, &old.network, "[network]", k);
    keep(&mut new.lans, &old.lans, "[lans]", k);
    keep(&mut new.dns, &old.dns, "[dns]", k);
    keep(&mut new.dhcp, &old.dhcp, "[dhcp]", k);
    keep(&mut new.webrtc, &old.webrtc, "[webrtc]", k);
    keep(
        &mut new.webtransport,
        &old.webtransport,
        "[webtransport]",
        k,
    );
    // TLS on or off changes what --listen speaks; a new pair of files is reloaded.
    if new.tls.enabled() != old.tls.enabled() {
        keep(
            &mut new.tls,
            &old.tls,
            "tls.cert / tls.key (turning TLS on or off)",
            k,
        );
    }
    let nat_restart = (
        new.nat.enabled,
        new.nat.host_loopback,
        new.nat.tcp_buffer_bytes,
    ) != (
        old.nat.enabled,
        old.nat.host_loopback,
        old.nat.tcp_buffer_bytes,
    );
    if nat_restart || new.nat.forwards != old.nat.forwards {
        // Egress rules still reload; the rest of [nat] waits for a restart.
        let (allow, deny, private, ports) = (
            new.nat.allow.clone(),
            new.nat.deny.clone(),
            new.nat.allow_private,
            new.nat.denied_tcp_ports.clone(),
        );
        new.nat = old.nat.clone();
        (
            new.nat.allow,
            new.nat.deny,
            new.nat.allow_private,
            new.nat.denied_tcp_ports,
        ) = (allow, deny, private, ports);
        kept.push("[nat] (all but allow, deny, allow_private, denied_tcp_ports)");
    }
    kept
}

impl Reloader {
    /// Applies `new` (already read); the running config stays when it is invalid.
    pub(crate) fn apply(&self, mut new: Config) -> Result<ReloadReport, String> {
        new.validate().map_err(|e| e.to_string())?;
        let old = self.ctx.config();
        let needs_restart = keep_restart_only(&mut new, &old);
        self.ctx.admission.reload(&new)?;
        if let (Some(cell), Ok(Some((cert, key)))) = (&self.tls, new.tls.paths()) {
            cell.reload(cert, key)?;
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
