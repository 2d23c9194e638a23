//! `GET /metrics`: one registry whose collectors each build a table of families when
//! scraped (see `shared/metrics.rs`). This file adds the relay-wide families (LANs, ports,
//! traffic by transport, drops by reason) and assembles the rest from their owners.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::forward::PortForwards;
use crate::gateway_port::stats::{GatewayStatsRegistry, GatewayTotals};
use crate::lan::{LanRegistry, TransportSnapshot};
use crate::shared::metrics::{Family, TableCollector};
use crate::shared::{DropReason, Transport};
use crate::transport::webrtc::WebRtc;
use crate::transport::webtransport::WebTransportStats;
use crate::transport::wisp::WispStats;

/// Everything `/metrics` reads from.
#[derive(Debug)]
pub(crate) struct Sources {
    pub(crate) admission: Arc<crate::admission::Admission>,
    pub(crate) lans: Arc<LanRegistry>,
    pub(crate) gateways: Arc<GatewayStatsRegistry>,
    pub(crate) gateway_totals: Arc<GatewayTotals>,
    pub(crate) forwards: Arc<PortForwards>,
    pub(crate) webtransport: Arc<WebTransportStats>,
    pub(crate) webrtc: Option<Arc<WebRtc>>,
    pub(crate) wisp: Arc<WispStats>,
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The registry behind `/metrics`.
pub(crate) fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::with_prefix("v86_relay");
    let Sources {
        admission,
        lans,
        gateways,
        gateway_totals,
        forwards,
        webtransport,
        webrtc,
        wisp,
        cluster,
    } = sources;
    if let Some(cluster) = cluster {
        registry.register_collector(Box::new(TableCollector(move || cluster.families())));
    }
    registry.register_collector(Box::new(TableCollector(move || {
        let mut families = relay_families(&lans);
        families.extend(gateways.families(&gateway_totals));
        families.extend(forwards.families());
        families.extend(admission.families());
        families
    })));
    registry.register_collector(Box::new(TableCollector(move || webtransport.families())));
    registry.register_collector(Box::new(TableCollector(move || wisp.families())));
    if let Some(rtc) = webrtc {
        registry.register_collector(Box::new(TableCollector(move || rtc.families())));
    }
    registry
}

/// The `/metrics` route.
pub(crate) fn router(registry: Arc<Registry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(&registry),
                )
            }
        }),
    )
}

/// Renders the registry in the Prometheus text format.
fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// LANs, ports, connections and traffic by transport, drops by reason.
fn relay_families(lans: &LanRegistry) -> Vec<Family> {
    let snapshot = lans.snapshot();
    let rows = &snapshot.by_transport;
    let by_transport = |value: fn(&TransportSnapshot) -> u64| {
        rows.iter()
            .map(move |(t, s)| (t.as_str(), value(s)))
            .collect::<Vec<_>>()
    };
    let totals = lans.totals();
    let mut families = vec![
        Family::gauge(
            "lans",
            "Virtual LANs with at least one machine",
            snapshot.lans as i64,
        ),
        Family::gauge(
            "ports",
            "Switch ports (connected machines)",
            snapshot.ports as i64,
        ),
        Family::gauge(
            "mac_table_entries",
            "Learned MAC addresses over all LANs",
            snapshot.mac_entries as i64,
        ),
        Family::gauges_by(
            "connections",
            "Open client connections",
            "transport",
            by_transport(|s| s.connections)
                .into_iter()
                .map(|(t, v)| (t, v as i64)),
        ),
        Family::counters_by(
            "frames_dropped",
            "Frames dropped, by reason",
            "reason",
            DropReason::ALL.map(|r| (r.as_str(), totals.drops(r))),
        ),
        Family::counters_by2(
            "frames_lost",
            "Frames for a client lost on the way to it (its port's queue, then its transport), by transport and reason; each is also in frames_dropped",
            ["transport", "reason"],
            Transport::CLIENTS.iter().flat_map(|t| {
                DropReason::LOSSES.map(|r| ([t.as_str(), r.as_str()], totals.losses(*t, r)))
            }),
        ),
        Family::counter(
            "duplicate_mac_translations",
            "Ports given a local MAC because their machine's MAC was live on another port",
            totals.mac_translations.load(Relaxed),
        ),
    ];
    families.extend(TRANSPORT_COUNTERS.into_iter().map(|(name, help, value)| {
        Family::counters_by(name, help, "transport", by_transport(value))
    }));
    families
}

/// Per-transport counters: name, help, and the value of a transport's snapshot.
type TransportCounter = (&'static str, &'static str, fn(&TransportSnapshot) -> u64);

const TRANSPORT_COUNTERS: [TransportCounter; 5] = [
    ("connections_opened", "Client connections accepted", |s| {
        s.connections_opened
    }),
    ("frames_received", "Frames received from clients", |s| {
        s.traffic.frames_in
    }),
    ("bytes_received", "Frame bytes received from clients", |s| {
        s.traffic.bytes_in
    }),
    ("frames_sent", "Frames sent to clients", |s| {
        s.traffic.frames_out
    }),
    ("bytes_sent", "Frame bytes sent to clients", |s| {
        s.traffic.bytes_out
    }),
];
