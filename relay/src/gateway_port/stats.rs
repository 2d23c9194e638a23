//! The gateways' counters for `/metrics`: each live gateway task publishes its
//! [`GatewaySums`] after every drain; a task that ends folds its counters into `retired`,
//! so sums never go backwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use gateway::Gateway;

use crate::nat::TaskGauge;
use crate::shared::metrics::Family;

labels::label_enum! {
    /// What happened to a DHCP lease.
    pub(crate) enum LeaseEventKind {
        Bound => "bound",
        Released => "released",
        Expired => "expired",
        Declined => "declined",
        PoolExhausted => "pool_exhausted",
    }
}

labels::label_enum! {
    /// DHCP messages received (discover..inform) and sent (offer, ack, nak).
    pub(crate) enum DhcpMessageType {
        Discover => "discover",
        Request => "request",
        Release => "release",
        Decline => "decline",
        Inform => "inform",
        Offer => "offer",
        Ack => "ack",
        Nak => "nak",
    }
}

labels::label_enum! {
    /// How a VM's DNS query was answered.
    pub(crate) enum DnsOutcome {
        Local => "local",
        CacheHit => "cache_hit",
        UpstreamOk => "upstream_ok",
        Nxdomain => "nxdomain",
        Servfail => "servfail",
        Refused => "refused",
        Formerr => "formerr",
    }
}

/// Relay-wide gateway counters for /metrics (summed over LANs as they happen).
#[derive(Debug, Default)]
pub(crate) struct GatewayTotals {
    pub(crate) lease_events: [AtomicU64; LeaseEventKind::COUNT],
    pub(crate) dns_upstream_queries: AtomicU64,
    /// Live NAT host tasks (connects, readers, writers).
    pub(crate) nat_tasks: Arc<TaskGauge>,
}

/// Each live gateway's stats, for /metrics.
#[derive(Debug, Default)]
pub(crate) struct GatewayStatsRegistry {
    retired: Mutex<GatewaySums>,
    live: Mutex<HashMap<u64, GatewaySums>>,
    next_id: AtomicU64,
}

/// The counters /metrics shows, per gateway or summed.
#[derive(Clone, Debug, Default)]
pub(crate) struct GatewaySums {
    arp_replies: u64,
    icmp_echo_replies: u64,
    dhcp_by_type: [u64; DhcpMessageType::COUNT],
    dns_by_outcome: [u64; DnsOutcome::COUNT],
    dns_cache_hits: u64,
    active_leases: u64,
    malformed: u64,
    not_routed: u64,
    nat_flows_active: [u64; gateway::NatProtocol::COUNT],
    nat_flows_started: [u64; gateway::NatProtocol::COUNT],
    nat_denied: gateway::DenyCounts,
    nat_bytes_out: u64,
    nat_bytes_in: u64,
    nat_connect_failed: u64,
    nat_timeouts: u64,
    dns_tcp_connections: u64,
    nat_buffer_bytes: u64,
    nat_buffer_releases: u64,
    fragments: u64,
    fragments_reassembled: u64,
    fragment_drops: gateway::FragDropCounts,
    fragment_bytes: u64,
    frag_needed: u64,
    nat_fragmented: u64,
}

fn add_all<const N: usize>(into: &mut [u64; N], from: &[u64; N]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

impl GatewaySums {
    pub(crate) fn of(gateway: &Gateway) -> GatewaySums {
        let g = gateway.stats();
        let d = gateway.dhcp().stats();
        let n = gateway.dns().stats();
        let mut sums = GatewaySums {
            arp_replies: g.arp_replies,
            icmp_echo_replies: g.icmp_echo_replies,
            // In DhcpMessageType order.
            dhcp_by_type: [
                d.received_discover,
                d.received_request,
                d.received_release,
                d.received_decline,
                d.received_inform,
                d.sent_offer,
                d.sent_ack,
                d.sent_nak,
            ],
            // In DnsOutcome order.
            dns_by_outcome: [
                n.local,
                n.cache_hits,
                n.upstream_ok,
                n.nxdomain,
                n.servfail,
                n.refused,
                n.formerr,
            ],
            dns_cache_hits: n.cache_hits,
            active_leases: d.active_leases,
            malformed: g.malformed,
            not_routed: g.not_routed,
            fragments: g.fragments,
            fragments_reassembled: g.fragments_reassembled,
            fragment_drops: g.fragment_drops.clone(),
            fragment_bytes: g.fragment_bytes as u64,
            frag_needed: g.frag_needed,
            ..GatewaySums::default()
        };
        if let Some(nat) = gateway.nat() {
            let n = nat.stats();
            sums.nat_flows_active = n.flows_active.map(|v| v as u64);
            sums.nat_flows_started = n.flows_started;
            sums.nat_denied = n.denied.clone();
            sums.nat_bytes_out = n.bytes_out;
            sums.nat_bytes_in = n.bytes_in;
            sums.nat_connect_failed = n.connect_failed;
            sums.nat_timeouts = n.timeouts;
            sums.nat_fragmented = n.fragmented;
            sums.dns_tcp_connections = n.dns_tcp_connections as u64;
            sums.nat_buffer_bytes = n.buffer_bytes as u64;
            sums.nat_buffer_releases = n.buffer_releases;
        }
        sums
    }

    /// Adds `other`'s counters, and its gauges when `with_gauges` (live gateways only).
    fn add(&mut self, other: &GatewaySums, with_gauges: bool) {
        self.arp_replies += other.arp_replies;
        self.icmp_echo_replies += other.icmp_echo_replies;
        add_all(&mut self.dhcp_by_type, &other.dhcp_by_type);
        add_all(&mut self.dns_by_outcome, &other.dns_by_outcome);
        self.dns_cache_hits += other.dns_cache_hits;
        self.malformed += other.malformed;
        self.not_routed += other.not_routed;
        add_all(&mut self.nat_flows_started, &other.nat_flows_started);
        self.nat_denied.merge(&other.nat_denied);
        self.nat_bytes_out += other.nat_bytes_out;
        self.nat_bytes_in += other.nat_bytes_in;
        self.nat_connect_failed += other.nat_connect_failed;
        self.nat_timeouts += other.nat_timeouts;
        self.nat_buffer_releases += other.nat_buffer_releases;
        self.fragments += other.fragments;
        self.fragments_reassembled += other.fragments_reassembled;
        self.fragment_drops.merge(&other.fragment_drops);
        self.frag_needed += other.frag_needed;
        self.nat_fragmented += other.nat_fragmented;
        if with_gauges {
            self.fragment_bytes += other.fragment_bytes;
            self.active_leases += other.active_leases;
            add_all(&mut self.nat_flows_active, &other.nat_flows_active);
            self.dns_tcp_connections += other.dns_tcp_connections;
            self.nat_buffer_bytes += other.nat_buffer_bytes;
        }
    }
}

impl GatewayStatsRegistry {
    /// A fresh id under which one gateway task publishes.
    pub(crate) fn register(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    pub(crate) fn publish(&self, id: u64, sums: GatewaySums) {
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, sums);
        }
    }

    /// A gateway task ended: its counters stay in the sums, its gauges go.
    pub(crate) fn retire(&self, id: u64) {
        let sums = self.live.lock().ok().and_then(|mut live| live.remove(&id));
        if let (Some(sums), Ok(mut retired)) = (sums, self.retired.lock()) {
            retired.add(&sums, false);
        }
    }

    /// Counters over every gateway that ever ran; gauges over live ones.
    pub(crate) fn sum(&self) -> GatewaySums {
        let mut total = self.retired.lock().map(|r| r.clone()).unwrap_or_default();
        if let Ok(live) = self.live.lock() {
            for sums in live.values() {
                total.add(sums, true);
            }
        }
        total
    }

    /// The gateways' `/metrics` families.
    pub(crate) fn families(&self, totals: &GatewayTotals) -> Vec<Family> {
        let g = self.sum();
        let mut families = vec![
            Family::gauge(
                "dhcp_active_leases",
                "DHCP leases currently held",
                g.active_leases as i64,
            ),
            Family::counters_by(
                "dhcp_messages",
                "DHCP messages received (discover..inform) and sent (offer, ack, nak), by type",
                "type",
                DhcpMessageType::ALL.map(|t| (t.as_str(), g.dhcp_by_type[t.index()])),
            ),
            Family::counters_by(
                "dhcp_lease_events",
                "DHCP lease events, by kind",
                "event",
                LeaseEventKind::ALL
                    .map(|e| (e.as_str(), totals.lease_events[e.index()].load(Relaxed))),
            ),
            Family::counters_by(
                "dns_queries",
                "DNS queries from VMs, by outcome",
                "outcome",
                DnsOutcome::ALL.map(|o| (o.as_str(), g.dns_by_outcome[o.index()])),
            ),
            Family::counter(
                "dns_cache_hits",
                "DNS answers served from the cache",
                g.dns_cache_hits,
            ),
            Family::counter(
                "dns_upstream_queries",
                "DNS queries sent upstream",
                totals.dns_upstream_queries.load(Relaxed),
            ),
            Family::counter(
                "arp_replies",
                "ARP requests for gateway or DNS answered",
                g.arp_replies,
            ),
            Family::counter(
                "icmp_echo_replies",
                "Pings to gateway or DNS answered",
                g.icmp_echo_replies,
            ),
            Family::counters_by(
                "gateway_frames_dropped",
                "Frames to the gateway dropped, by reason",
                "reason",
                [("malformed", g.malformed), ("not_routed", g.not_routed)],
            ),
        ];
        families.extend(g.nat_families(totals));
        families.extend(g.fragment_families());
        families
    }

    /// The gateway task whose id `register` gave.
    #[cfg(test)]
    fn live_count(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }
}

impl GatewaySums {
    fn fragment_families(&self) -> Vec<Family> {
        vec![
            Family::counter(
                "ip_fragments_received",
                "IPv4 fragments from VMs (to the gateway or through NAT)",
                self.fragments,
            ),
            Family::counter(
                "ip_fragments_reassembled",
                "IPv4 datagrams reassembled from VMs' fragments",
                self.fragments_reassembled,
            ),
            Family::counters_by(
                "ip_fragment_drops",
                "IPv4 datagrams under reassembly discarded (or lone fragments refused), by reason",
                "reason",
                gateway::FragDrop::ALL.map(|r| (r.as_str(), self.fragment_drops.get(r))),
            ),
            Family::gauge(
                "ip_fragment_bytes",
                "Bytes held by IPv4 datagrams under reassembly",
                self.fragment_bytes as i64,
            ),
            Family::counter(
                "ip_datagrams_fragmented",
                "IPv4 datagrams to VMs sent in fragments (larger than the LAN MTU)",
                self.nat_fragmented,
            ),
            Family::counter(
                "icmp_frag_needed",
                "ICMP fragmentation-needed sent to VMs for DF packets over the LAN MTU",
                self.frag_needed,
            ),
        ]
    }

    fn nat_families(&self, totals: &GatewayTotals) -> Vec<Family> {
        let protocols = gateway::NatProtocol::ALL;
        vec![
            Family::gauges_by(
                "nat_flows_active",
                "NAT flows open now, by protocol",
                "protocol",
                protocols.map(|p| (p.as_str(), self.nat_flows_active[p.index()] as i64)),
            ),
            Family::counters_by(
                "nat_flows",
                "NAT flows started, by protocol",
                "protocol",
                protocols.map(|p| (p.as_str(), self.nat_flows_started[p.index()])),
            ),
            Family::counters_by(
                "nat_denied",
                "NAT connections refused by the egress policy or a limit, by reason",
                "reason",
                gateway::DenyReason::ALL.map(|r| (r.as_str(), self.nat_denied.get(r))),
            ),
            Family::counters_by(
                "nat_bytes",
                "Payload bytes through NAT, by direction (out: VM to host)",
                "direction",
                [("out", self.nat_bytes_out), ("in", self.nat_bytes_in)],
            ),
            Family::counter(
                "nat_connect_failures",
                "Host connects for VMs that were refused, unreachable or timed out",
                self.nat_connect_failed,
            ),
            Family::counter(
                "nat_timeouts",
                "NAT flows ended by an idle or handshake timeout",
                self.nat_timeouts,
            ),
            Family::gauge(
                "nat_buffer_bytes",
                "Bytes of TCP flow buffers (both ways) NAT flows hold from nat.buffer_budget_bytes",
                self.nat_buffer_bytes as i64,
            ),
            Family::counter(
                "nat_buffer_releases",
                "Times a quiet TCP flow gave its buffers' pages back to the system",
                self.nat_buffer_releases,
            ),
            Family::gauge(
                "nat_host_tasks",
                "Live NAT host tasks (connects, readers, writers)",
                totals.nat_tasks.get().max(0),
            ),
            Family::gauge(
                "dns_tcp_connections",
                "DNS over TCP connections open now",
                self.dns_tcp_connections as i64,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_gateways_keep_counters_and_drop_gauges() {
        let registry = GatewayStatsRegistry::default();
        let id = registry.register();
        let sums = GatewaySums {
            arp_replies: 3,
            active_leases: 2,
            ..GatewaySums::default()
        };
        registry.publish(id, sums);
        assert_eq!(registry.sum().active_leases, 2);
        registry.retire(id);
        assert_eq!(registry.live_count(), 0);
        let total = registry.sum();
        assert_eq!((total.arp_replies, total.active_leases), (3, 0));
    }
}
