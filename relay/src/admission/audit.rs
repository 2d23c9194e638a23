//! The audit trail: one `join` record when a port joins and one `leave` record, with what
//! it moved, when it leaves; refusals are written where they happen. Records are tracing
//! events with target `audit` and flat fields, so `--log-format json` writes one JSON
//! object per line. A token never appears in them, only its `sub`.

use std::sync::Arc;

use super::Admitted;
use crate::lan::{Port, PortCounters};
use crate::shared::{LanName, Transport};

/// A joined port's admission and the counters its leave record reports.
#[derive(Debug)]
pub(crate) struct Session {
    admitted: Admitted,
    lan: LanName,
    port: u64,
    counters: Arc<PortCounters>,
}

impl Session {
    /// Writes the join record; the leave record follows when the session is dropped.
    pub(crate) fn joined(admitted: Admitted, port: &Port) -> Self {
        tracing::info!(
            target: "audit",
            event = "join",
            client_ip = %admitted.client_ip,
            transport = admitted.transport.as_str(),
            lan = %port.lan_name(),
            port = port.id().0,
            sub = admitted.subject().unwrap_or(""),
            "join"
        );
        Session {
            lan: port.lan_name().clone(),
            port: port.id().0,
            counters: port.counters_handle(),
            admitted,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let traffic = self.counters.traffic.snapshot();
        tracing::info!(
            target: "audit",
            event = "leave",
            client_ip = %self.admitted.client_ip,
            transport = self.admitted.transport.as_str(),
            lan = %self.lan,
            port = self.port,
            sub = self.admitted.subject().unwrap_or(""),
            frames_in = traffic.frames_in,
            bytes_in = traffic.bytes_in,
            frames_out = traffic.frames_out,
            bytes_out = traffic.bytes_out,
            "leave"
        );
    }
}

/// Writes the record of a refused join.
pub(crate) fn refused(
    client_ip: std::net::IpAddr,
    transport: Transport,
    lan: &LanName,
    reason: &str,
) {
    tracing::info!(
        target: "audit",
        event = "refuse",
        client_ip = %client_ip,
        transport = transport.as_str(),
        lan = %lan,
        reason,
        "refuse"
    );
}
