//! The gateway port of each LAN: a task that drives the sans-IO [`gateway::Gateway`] (ARP,
//! ping, DHCP, DNS) as one more port on the LAN's switch, resolves its upstream DNS queries,
//! and keeps its leases in the [`LeaseStore`]. A LAN with a gateway stays after its last
//! client leaves while it still holds dynamic leases: v86 reconnects with its old address.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gateway::Gateway;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::forward::{GatewayCommand, GatewayDirectory, resolve_target};
use crate::lan::{Lan, LanHooks, LanRegistry, Port, PortReceiver, Transport};
use crate::leases::LeaseStore;
use crate::nat::{HostEvent, NatHost, NatShared};
use crate::upstream::Upstream;

/// Relay-wide gateway counters for /metrics (summed over LANs as they happen).
#[derive(Debug, Default)]
pub struct GatewayTotals {
    pub dhcp_events: [AtomicU64; 5],
    pub dns_upstream_queries: AtomicU64,
    /// Live NAT host tasks (connects, readers, writers).
    pub nat_tasks: Arc<crate::nat::TaskGauge>,
}

pub const LEASE_EVENT_NAMES: [&str; 5] =
    ["bound", "released", "expired", "declined", "pool_exhausted"];

/// Starts a gateway on every new LAN whose network has one.
#[derive(Debug)]
pub struct GatewayHooks {
    pub config: Arc<Config>,
    pub upstream: Upstream,
    pub leases: Arc<LeaseStore>,
    pub totals: Arc<GatewayTotals>,
    pub gateways: Arc<GatewayStatsRegistry>,
    /// NAT settings; `None` when `[nat] enabled = false`.
    pub nat: Option<Arc<NatShared>>,
    /// Where forwards and the admin API find each LAN's gateway task.
    pub directory: Arc<GatewayDirectory>,
}

/// Each live gateway's stats, for /metrics.
#[derive(Debug, Default)]
pub struct GatewayStatsRegistry {
    pub retired: std::sync::Mutex<GatewaySums>,
    pub live: std::sync::Mutex<std::collections::HashMap<u64, GatewaySums>>,
    next_id: AtomicU64,
}

/// The counters /metrics shows, per gateway or summed.
#[derive(Clone, Debug, Default)]
pub struct GatewaySums {
    pub arp_replies: u64,
    pub icmp_echo_replies: u64,
    pub dhcp_by_type: [u64; 8],
    pub dns_by_outcome: [u64; 7],
    pub dns_cache_hits: u64,
    pub active_leases: u64,
    pub malformed: u64,
    pub not_routed: u64,
    pub nat_flows_active: [u64; 3],
    pub nat_flows_started: [u64; 3],
    pub nat_denied: gateway::DenyCounts,
    pub nat_bytes_out: u64,
    pub nat_bytes_in: u64,
    pub nat_connect_failed: u64,
    pub nat_timeouts: u64,
    pub dns_tcp_connections: u64,
}

pub const DHCP_TYPE_NAMES: [&str; 8] = [
    "discover", "request", "release", "decline", "inform", "offer", "ack", "nak",
];
pub const DNS_OUTCOME_NAMES: [&str; 7] = [
    "local",
    "cache_hit",
    "upstream_ok",
    "nxdomain",
    "servfail",
    "refused",
    "formerr",
];

impl GatewaySums {
    fn of(gateway: &Gateway) -> GatewaySums {
        let g = gateway.stats();
        let d = gateway.dhcp().stats();
        let n = gateway.dns().stats();
        let mut sums = GatewaySums {
            arp_replies: g.arp_replies,
            icmp_echo_replies: g.icmp_echo_replies,
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
            sums.dns_tcp_connections = n.dns_tcp_connections as u64;
        }
        sums
    }

    pub fn add(&mut self, other: &GatewaySums, with_gauges: bool) {
        self.arp_replies += other.arp_replies;
        self.icmp_echo_replies += other.icmp_echo_replies;
        for (a, b) in self.dhcp_by_type.iter_mut().zip(other.dhcp_by_type) {
            *a += b;
        }
        for (a, b) in self.dns_by_outcome.iter_mut().zip(other.dns_by_outcome) {
            *a += b;
        }
        self.dns_cache_hits += other.dns_cache_hits;
        self.malformed += other.malformed;
        self.not_routed += other.not_routed;
        for (a, b) in self
            .nat_flows_started
            .iter_mut()
            .zip(other.nat_flows_started)
        {
            *a += b;
        }
        self.nat_denied.merge(&other.nat_denied);
        self.nat_bytes_out += other.nat_bytes_out;
        self.nat_bytes_in += other.nat_bytes_in;
        self.nat_connect_failed += other.nat_connect_failed;
        self.nat_timeouts += other.nat_timeouts;
        if with_gauges {
            self.active_leases += other.active_leases;
            for (a, b) in self.nat_flows_active.iter_mut().zip(other.nat_flows_active) {
                *a += b;
            }
            self.dns_tcp_connections += other.dns_tcp_connections;
        }
    }
}

impl GatewayStatsRegistry {
    /// Counters over every gateway that ever ran; gauges over live ones.
    pub fn sum(&self) -> GatewaySums {
        let mut total = self.retired.lock().map(|r| r.clone()).unwrap_or_default();
        if let Ok(live) = self.live.lock() {
            for sums in live.values() {
                total.add(sums, true);
            }
        }
        total
    }
}

impl LanHooks for GatewayHooks {
    fn lan_created(&self, registry: &Arc<LanRegistry>, lan: &Arc<Lan>) {
        let name = lan.name().as_str();
        let network = match self.config.network_tables().for_lan(name) {
            Ok(network) => network,
            Err(e) => return tracing::error!(lan = %name, "no gateway: {e}"),
        };
        if !network.gateway_enabled {
            return;
        }
        // The config was checked at start-up for every named LAN and for the defaults.
        let services = match network.services(name) {
            Ok(services) => services,
            Err(e) => return tracing::error!(lan = %name, "no gateway: {e}"),
        };
        let dhcp = match dhcp::DhcpServer::new(services.dhcp) {
            Ok(dhcp) => dhcp,
            Err(e) => return tracing::error!(lan = %name, "no gateway: {e}"),
        };
        let mut gateway = Gateway::new(services.gateway, dhcp, dns::DnsProxy::new(services.dns));
        let (host_events_tx, host_events) = mpsc::channel(crate::nat::EVENT_QUEUE);
        let nat_host = self.nat.as_ref().map(|shared| {
            gateway.enable_nat(shared.config.clone(), Instant::now());
            NatHost::new(shared.clone(), host_events_tx, name)
        });
        if let Some(snapshot) = self.leases.get(name) {
            let report = gateway.restore_leases(&snapshot, Instant::now(), unix_now());
            tracing::info!(lan = %name, "restored leases: {report:?}");
        }
        lan.keep_until_service_releases();
        let (port, queue) = registry.attach(lan, Transport::Gateway);
        let driver = GatewayDriver {
            gateway,
            port,
            registry: registry.clone(),
            upstream: self.upstream.clone(),
            leases: self.leases.clone(),
            stats: self.gateways.clone(),
            stats_id: self.gateways.next_id.fetch_add(1, Relaxed),
            totals: self.totals.clone(),
            nat_host,
            directory: self.directory.clone(),
        };
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        self.directory.register(lan.name(), commands_tx);
        tokio::spawn(driver.run(queue, host_events, commands));
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct GatewayDriver {
    gateway: Gateway,
    port: Port,
    registry: Arc<LanRegistry>,
    upstream: Upstream,
    leases: Arc<LeaseStore>,
    stats: Arc<GatewayStatsRegistry>,
    stats_id: u64,
    totals: Arc<GatewayTotals>,
    nat_host: Option<NatHost>,
    directory: Arc<GatewayDirectory>,
}

/// Frames handled before the gateway's output is drained.
const FRAME_BATCH: usize = 32;

/// Commands (forwarded connections, admin queries) waiting for a gateway task.
const COMMAND_QUEUE: usize = 256;

/// Upstream answers waiting to be handed back to the gateway; bounded by the dns core's
/// in-flight limits, so the channel size is only a backstop.
const UPSTREAM_CHANNEL: usize = 1024;

impl GatewayDriver {
    async fn run(
        mut self,
        mut queue: PortReceiver,
        mut host_events: mpsc::Receiver<HostEvent>,
        mut commands: mpsc::Receiver<GatewayCommand>,
    ) {
        let lan = self.port.lan().clone();
        let (answers_tx, mut answers) = mpsc::channel(UPSTREAM_CHANNEL);
        let mut idle_check = tokio::time::interval(Duration::from_secs(5));
        loop {
            let deadline = self
                .gateway
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = lan.removed() => break,
                frame = queue.recv() => match frame {
                    Some(frame) => {
                        let now = Instant::now();
                        self.gateway.handle_frame(now, &frame);
                        // Whatever else is queued goes in before one drain: under load
                        // that spreads the drain's work over a batch.
                        for _ in 1..FRAME_BATCH {
                            let Ok(frame) = queue.try_recv() else { break };
                            self.gateway.handle_frame(now, &frame);
                        }
                    }
                    None => break,
                },
                Some((id, result)) = answers.recv() => {
                    self.gateway.handle_dns_upstream(Instant::now(), id, result);
                }
                Some(event) = host_events.recv() => {
                    if let Some(nat_host) = self.nat_host.as_mut() {
                        nat_host.handle_event(&mut self.gateway, event);
                    }
                }
                Some(command) = commands.recv() => self.handle_command(command),
                _ = tokio::time::sleep_until(deadline) => self.gateway.handle_timeout(Instant::now()),
                _ = lan.idle() => self.release_if_unused(&lan),
                _ = idle_check.tick() => self.release_if_unused(&lan),
            }
            self.drain(&answers_tx);
        }
        self.directory.unregister(self.port.lan_name());
        self.publish_leases();
        let sums = self
            .stats
            .live
            .lock()
            .ok()
            .and_then(|mut live| live.remove(&self.stats_id));
        if let (Some(sums), Ok(mut retired)) = (sums, self.stats.retired.lock()) {
            retired.add(&sums, false);
        }
    }

    /// Sends what the gateway produced and starts its upstream lookups.
    fn drain(&mut self, answers_tx: &mpsc::Sender<(dns::UpstreamId, dns::UpstreamResult)>) {
        if let Some(nat_host) = self.nat_host.as_mut() {
            nat_host.drain(&mut self.gateway);
        }
        let now = Instant::now();
        while let Some(frame) = self.gateway.poll_frame() {
            self.port.ingress(now, Bytes::from(frame));
        }
        while let Some(query) = self.gateway.poll_dns_upstream() {
            self.totals.dns_upstream_queries.fetch_add(1, Relaxed);
            let upstream = self.upstream.clone();
            let answers_tx = answers_tx.clone();
            tokio::spawn(async move {
                let result = upstream.resolve(&query).await;
                let _ = answers_tx.send((query.id, result)).await;
            });
        }
        let mut leases_changed = false;
        while let Some(event) = self.gateway.poll_lease_event() {
            leases_changed = true;
            let (index, what) = match &event {
                dhcp::LeaseEvent::Bound { .. } => (0, "lease bound"),
                dhcp::LeaseEvent::Released { .. } => (1, "lease released"),
                dhcp::LeaseEvent::Expired { .. } => (2, "lease expired"),
                dhcp::LeaseEvent::Declined { .. } => (3, "address declined"),
                dhcp::LeaseEvent::PoolExhausted { .. } => (4, "address pool exhausted"),
            };
            self.totals.dhcp_events[index].fetch_add(1, Relaxed);
            if index == 4 {
                tracing::warn!(lan = %self.port.lan_name(), "{what}: {event:?}; widen pool_start..pool_end or shorten lease_time_secs");
            } else {
                tracing::info!(lan = %self.port.lan_name(), "{what}: {event:?}");
            }
        }
        if leases_changed {
            self.publish_leases();
        }
        if let Ok(mut live) = self.stats.live.lock() {
            live.insert(self.stats_id, GatewaySums::of(&self.gateway));
        }
    }

    fn handle_command(&mut self, command: GatewayCommand) {
        match command {
            GatewayCommand::InboundTcp {
                target,
                port,
                stream,
            } => {
                let (Some(ip), Some(nat_host)) = (
                    resolve_target(&self.gateway, &target),
                    self.nat_host.as_mut(),
                ) else {
                    tracing::debug!(lan = %self.port.lan_name(), "forward: no machine {target} now; closing");
                    return;
                };
                nat_host.inbound_tcp(&mut self.gateway, SocketAddrV4::new(ip, port), stream);
            }
            GatewayCommand::InboundUdp {
                target,
                port,
                client,
                payload,
                socket,
            } => {
                if let (Some(ip), Some(nat_host)) = (
                    resolve_target(&self.gateway, &target),
                    self.nat_host.as_mut(),
                ) {
                    let to = SocketAddrV4::new(ip, port);
                    nat_host.inbound_udp(&mut self.gateway, client, to, &payload, socket);
                }
            }
            GatewayCommand::Describe(reply) => {
                let _ = reply.send(self.describe());
            }
        }
    }

    /// Leases and flows of this LAN, as the admin API shows them.
    fn describe(&self) -> serde_json::Value {
        let now = Instant::now();
        let leases: Vec<serde_json::Value> = self
            .gateway
            .dhcp()
            .leases()
            .map(|lease| {
                serde_json::json!({
                    "ip": lease.ip.to_string(),
                    "mac": lease.mac.to_string(),
                    "host_name": lease.host_name,
                    "static": lease.is_static,
                    "expires_in_secs": lease.expires.saturating_duration_since(now).as_secs(),
                })
            })
            .collect();
        let flows: Vec<serde_json::Value> = self
            .gateway
            .nat()
            .map(|nat| {
                nat.flows()
                    .map(|flow| {
                        serde_json::json!({
                            "id": flow.id.0,
                            "protocol": flow.protocol.as_str(),
                            "vm": flow.vm.to_string(),
                            "remote": flow.remote.map(|r| r.to_string()),
                            "idle_secs": flow.idle.as_secs(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({ "leases": leases, "flows": flows })
    }

    fn publish_leases(&self) {
        let snapshot = self.gateway.dhcp().snapshot(Instant::now(), unix_now());
        self.leases.put(self.port.lan_name().as_str(), snapshot);
    }

    /// Lets the LAN go once no client is on it and no dynamic lease is left.
    fn release_if_unused(&self, lan: &Arc<Lan>) {
        if lan.client_count() > 0 {
            return;
        }
        let holds_leases = self.gateway.dhcp().leases().any(|lease| !lease.is_static);
        if !holds_leases {
            self.registry.remove_if_idle(lan);
        }
    }
}
