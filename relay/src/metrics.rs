//! Prometheus metrics, computed from the LAN registry when scraped, so the hot path only
//! bumps uncontended per-port atomics. Labels are bounded: transport and drop reason only,
//! never a MAC, an IP or a LAN name.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::forward::Forwards;
use crate::gateway_port::{
    DHCP_TYPE_NAMES, DNS_OUTCOME_NAMES, GatewayStatsRegistry, GatewayTotals, LEASE_EVENT_NAMES,
};
use crate::lan::{DropReason, LanRegistry, TrafficSnapshot};
use std::sync::atomic::Ordering::Relaxed;

#[derive(Debug)]
struct RelayCollector {
    lans: Arc<LanRegistry>,
    gateways: Arc<GatewayStatsRegistry>,
    gateway_totals: Arc<GatewayTotals>,
    forwards: Arc<Forwards>,
}

/// The registry behind `/metrics`.
pub fn registry(
    lans: Arc<LanRegistry>,
    gateways: Arc<GatewayStatsRegistry>,
    gateway_totals: Arc<GatewayTotals>,
    forwards: Arc<Forwards>,
) -> Registry {
    let mut registry = Registry::with_prefix("v86_relay");
    registry.register_collector(Box::new(RelayCollector {
        lans,
        gateways,
        gateway_totals,
        forwards,
    }));
    registry
}

fn labeled_counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in rows {
        let labels = [(label, value)];
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: usize,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value as i64);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn per_transport(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    rows: &[(&'static str, TrafficSnapshot)],
    value: impl Fn(&TrafficSnapshot) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (transport, snapshot) in rows {
        let labels = [("transport", *transport)];
        let encoder = family.encode_family(&labels)?;
        match metric_type {
            MetricType::Gauge => ConstGauge::new(value(snapshot) as i64).encode(encoder)?,
            _ => ConstCounter::new(value(snapshot)).encode(encoder)?,
        }
    }
    Ok(())
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.lans.snapshot();
        gauge(
            &mut encoder,
            "lans",
            "Virtual LANs with at least one machine",
            snapshot.lans,
        )?;
        gauge(
            &mut encoder,
            "ports",
            "Switch ports (connected machines)",
            snapshot.ports,
        )?;
        gauge(
            &mut encoder,
            "mac_table_entries",
            "Learned MAC addresses over all LANs",
            snapshot.mac_entries,
        )?;
        let rows: Vec<_> = snapshot
            .by_transport
            .iter()
            .map(|(t, s)| (t.as_str(), *s))
            .collect();
        use MetricType::{Counter, Gauge};
        per_transport(
            &mut encoder,
            "connections",
            "Open client connections",
            Gauge,
            &rows,
            |s| s.connections,
        )?;
        per_transport(
            &mut encoder,
            "connections_opened",
            "Client connections accepted",
            Counter,
            &rows,
            |s| s.connections_opened,
        )?;
        per_transport(
            &mut encoder,
            "frames_received",
            "Frames received from clients",
            Counter,
            &rows,
            |s| s.frames_in,
        )?;
        per_transport(
            &mut encoder,
            "bytes_received",
            "Frame bytes received from clients",
            Counter,
            &rows,
            |s| s.bytes_in,
        )?;
        per_transport(
            &mut encoder,
            "frames_sent",
            "Frames sent to clients",
            Counter,
            &rows,
            |s| s.frames_out,
        )?;
        per_transport(
            &mut encoder,
            "bytes_sent",
            "Frame bytes sent to clients",
            Counter,
            &rows,
            |s| s.bytes_out,
        )?;
        let mut drops = encoder.encode_descriptor(
            "frames_dropped",
            "Frames dropped, by reason",
            None,
            Counter,
        )?;
        for reason in DropReason::all() {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(self.lans.totals().drops(reason))
                .encode(drops.encode_family(&labels)?)?;
        }

        counter(
            &mut encoder,
            "duplicate_mac_translations",
            "Ports given a local MAC because their machine's MAC was live on another port",
            self.lans.totals().mac_translations.load(Relaxed),
        )?;
        let g = self.gateways.sum();
        gauge(
            &mut encoder,
            "dhcp_active_leases",
            "DHCP leases currently held",
            g.active_leases as usize,
        )?;
        labeled_counters(
            &mut encoder,
            "dhcp_messages",
            "DHCP messages received (discover..inform) and sent (offer, ack, nak), by type",
            "type",
            DHCP_TYPE_NAMES.iter().copied().zip(g.dhcp_by_type),
        )?;
        labeled_counters(
            &mut encoder,
            "dhcp_lease_events",
            "DHCP lease events, by kind",
            "event",
            LEASE_EVENT_NAMES.iter().copied().zip(
                self.gateway_totals
                    .dhcp_events
                    .iter()
                    .map(|c| c.load(Relaxed)),
            ),
        )?;
        labeled_counters(
            &mut encoder,
            "dns_queries",
            "DNS queries from VMs, by outcome",
            "outcome",
            DNS_OUTCOME_NAMES.iter().copied().zip(g.dns_by_outcome),
        )?;
        counter(
            &mut encoder,
            "dns_cache_hits",
            "DNS answers served from the cache",
            g.dns_cache_hits,
        )?;
        counter(
            &mut encoder,
            "dns_upstream_queries",
            "DNS queries sent upstream",
            self.gateway_totals.dns_upstream_queries.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "arp_replies",
            "ARP requests for gateway or DNS answered",
            g.arp_replies,
        )?;
        counter(
            &mut encoder,
            "icmp_echo_replies",
            "Pings to gateway or DNS answered",
            g.icmp_echo_replies,
        )?;
        labeled_counters(
            &mut encoder,
            "gateway_frames_dropped",
            "Frames to the gateway dropped, by reason",
            "reason",
            [("malformed", g.malformed), ("not_routed", g.not_routed)],
        )?;
        let protocols = gateway::NatProtocol::ALL.map(|p| p.as_str());
        let mut family = encoder.encode_descriptor(
            "nat_flows_active",
            "NAT flows open now, by protocol",
            None,
            MetricType::Gauge,
        )?;
        for (protocol, count) in protocols.iter().zip(g.nat_flows_active) {
            ConstGauge::new(count as i64)
                .encode(family.encode_family(&[("protocol", *protocol)])?)?;
        }
        labeled_counters(
            &mut encoder,
            "nat_flows",
            "NAT flows started, by protocol",
            "protocol",
            protocols.iter().copied().zip(g.nat_flows_started),
        )?;
        labeled_counters(
            &mut encoder,
            "nat_denied",
            "NAT connections refused by the egress policy or a limit, by reason",
            "reason",
            gateway::DenyReason::ALL
                .iter()
                .map(|r| (r.as_str(), g.nat_denied.get(*r))),
        )?;
        labeled_counters(
            &mut encoder,
            "nat_bytes",
            "Payload bytes through NAT, by direction (out: VM to host)",
            "direction",
            [("out", g.nat_bytes_out), ("in", g.nat_bytes_in)],
        )?;
        counter(
            &mut encoder,
            "nat_connect_failures",
            "Host connects for VMs that were refused, unreachable or timed out",
            g.nat_connect_failed,
        )?;
        counter(
            &mut encoder,
            "nat_timeouts",
            "NAT flows ended by an idle or handshake timeout",
            g.nat_timeouts,
        )?;
        gauge(
            &mut encoder,
            "nat_host_tasks",
            "Live NAT host tasks (connects, readers, writers)",
            self.gateway_totals.nat_tasks.get().max(0) as usize,
        )?;
        gauge(
            &mut encoder,
            "forwards_active",
            "Inbound port forwards in effect",
            self.forwards.count(),
        )?;
        counter(
            &mut encoder,
            "forward_connections",
            "Connections accepted by TCP port forwards",
            self.forwards.connections.load(Relaxed),
        )?;
        gauge(
            &mut encoder,
            "dns_tcp_connections",
            "DNS over TCP connections open now",
            g.dns_tcp_connections as usize,
        )?;
        Ok(())
    }
}
