//! Layer 4: the gateway port of each LAN (docs/architecture.md, "Layers"). A task drives
//! the sans-IO [`gateway::Gateway`] (ARP, ping, DHCP, DNS, NAT) as one more port on the
//! LAN's switch, resolves its upstream DNS queries ([`upstream`]), carries out its NAT
//! actions with host sockets (`crate::nat`), takes commands from forwards and the admin API
//! ([`commands`]), and keeps its leases in the [`leases::LeaseStore`]. A LAN with a gateway
//! stays after its last client leaves while it still holds dynamic leases: v86 reconnects
//! with its old address.

pub(crate) mod commands;
pub(crate) mod leases;
pub(crate) mod settings;
pub(crate) mod stats;
pub(crate) mod upstream;

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use gateway::Gateway;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, NetworkConfig};
use crate::lan::{Lan, LanHooks, LanRegistry, Port, PortReceiver};
use crate::nat::{EVENT_QUEUE, HostEvent, NatHost, NatShared};
use crate::shared::{LanName, Transport};
use commands::{GatewayCommand, GatewayDirectory, resolve_target};
use leases::LeaseStore;
use stats::{GatewayStatsRegistry, GatewaySums, GatewayTotals, LeaseEventKind};
use upstream::Upstream;

/// Starts a gateway on every new LAN whose network has one.
#[derive(Debug)]
pub(crate) struct GatewayHooks {
    pub(crate) config: Arc<Config>,
    pub(crate) upstream: Upstream,
    pub(crate) leases: Arc<LeaseStore>,
    pub(crate) totals: Arc<GatewayTotals>,
    pub(crate) gateways: Arc<GatewayStatsRegistry>,
    /// NAT settings; `None` when `[nat] enabled = false`.
    pub(crate) nat: Option<Arc<NatShared>>,
    /// Where forwards and the admin API find each LAN's gateway task.
    pub(crate) directory: Arc<GatewayDirectory>,
}

impl LanHooks for GatewayHooks {
    fn lan_created(&self, registry: &Arc<LanRegistry>, lan: &Arc<Lan>) {
        self.start(registry, lan, None);
    }

    fn neighbor_probes(&self, lan: &LanName, max: usize) -> BoxFuture<'static, Vec<Bytes>> {
        let gateway = self.directory.get(lan);
        Box::pin(async move {
            let Some(gateway) = gateway else {
                return Vec::new();
            };
            let (reply, answer) = oneshot::channel();
            // Never wait for room: a gateway this busy is skipped.
            if gateway
                .try_send(GatewayCommand::NeighborProbes(max, reply))
                .is_err()
            {
                return Vec::new();
            }
            answer.await.unwrap_or_default()
        })
    }
}

/// How a cluster node runs the gateway of a LAN it owns (docs/cluster.md): it stops the
/// gateway when the claim is lost, restores the leases the cluster kept, and hears of
/// every lease change to store it in the cluster.
#[derive(Debug)]
pub(crate) struct ClusterRun {
    pub(crate) stop: tokio_util::sync::CancellationToken,
    /// The LAN's leases as the cluster has them (not this node's state file).
    pub(crate) leases: Option<dhcp::LeaseSnapshot>,
    pub(crate) published: tokio::sync::watch::Sender<Option<dhcp::LeaseSnapshot>>,
}

/// What a stopped gateway leaves behind.
#[derive(Debug, Default)]
pub(crate) struct GatewayExit {
    /// NAT flows that were open (their host sockets close with the gateway).
    pub(crate) flows_open: usize,
}

impl GatewayHooks {
    /// Starts LAN `lan`'s gateway; `None` when its network has none.
    pub(crate) fn start(
        &self,
        registry: &Arc<LanRegistry>,
        lan: &Arc<Lan>,
        cluster: Option<ClusterRun>,
    ) -> Option<tokio::task::JoinHandle<GatewayExit>> {
        let name = lan.name().as_str();
        let (mut gateway, network) = match self.new_gateway(lan.name()) {
            Ok(Some(built)) => built,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(lan = %name, "no gateway: {e}");
                return None;
            }
        };
        let (host_events_tx, host_events) = mpsc::channel(EVENT_QUEUE);
        let nat_host = self.nat.as_ref().map(|shared| {
            gateway.enable_nat(shared.config(), Instant::now());
            if let Some(nat) = gateway.nat_mut() {
                nat.set_internet(self.directory.internet(lan.name()));
            }
            NatHost::new(
                shared.clone(),
                host_events_tx,
                name,
                self.config.rates_for(name).unwrap_or_default().port,
            )
        });
        let (stop, published, snapshot) = match cluster {
            Some(run) => (Some(run.stop), Some(run.published), run.leases),
            None => (None, None, self.leases.get(name)),
        };
        if let Some(snapshot) = snapshot {
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
            stats_id: self.gateways.register(),
            totals: self.totals.clone(),
            nat_host,
            directory: self.directory.clone(),
            empty_grace: Duration::from_secs(self.config.limits.empty_lan_grace_secs),
            empty_since: None,
            stop: stop.unwrap_or_default(),
            published,
        };
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        self.directory.register(lan.name(), commands_tx);
        self.directory.settings.started(lan.name(), &network);
        Some(tokio::spawn(driver.run(queue, host_events, commands)))
    }

    /// The sans-IO gateway of a new LAN and the settings it runs with; `None` when the
    /// LAN's network has no gateway.
    fn new_gateway(&self, lan: &LanName) -> Result<Option<(Gateway, NetworkConfig)>, String> {
        // The config's settings, a first join's MTU and a teacher's (gateway_port/settings.rs).
        let network = self.directory.settings.for_new_lan(&self.config, lan)?;
        if !network.gateway_enabled {
            return Ok(None);
        }
        // The config was checked at start-up for every named LAN and for the defaults.
        let services = network.services(lan.as_str()).map_err(|e| e.to_string())?;
        let dhcp = dhcp::DhcpServer::new(services.dhcp).map_err(|e| e.to_string())?;
        let gateway = Gateway::new(services.gateway, dhcp, dns::DnsProxy::new(services.dns));
        Ok(Some((gateway, network)))
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
    /// How long a LAN without clients keeps its gateway (and NAT flows) for a reconnect
    /// before it is retired to its lease snapshot (`limits.empty_lan_grace_secs`).
    empty_grace: Duration,
    /// When the last client left.
    empty_since: Option<Instant>,
    /// Cancelled when this node no longer owns the LAN (cluster); never otherwise.
    stop: tokio_util::sync::CancellationToken,
    /// Where a cluster node hears of lease changes.
    published: Option<tokio::sync::watch::Sender<Option<dhcp::LeaseSnapshot>>>,
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
    ) -> GatewayExit {
        let lan = self.port.lan().clone();
        let (answers_tx, mut answers) = mpsc::channel(UPSTREAM_CHANNEL);
        let check_every = self
            .empty_grace
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut idle_check = tokio::time::interval(check_every);
        loop {
            let deadline = self
                .gateway
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = lan.removed() => break,
                _ = self.stop.cancelled() => break,
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
        self.stats.retire(self.stats_id);
        GatewayExit {
            flows_open: self.gateway.nat().map_or(0, |nat| nat.flows().count()),
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
            self.log_lease_event(&event);
        }
        if leases_changed {
            self.publish_leases();
        }
        self.stats
            .publish(self.stats_id, GatewaySums::of(&self.gateway));
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
            GatewayCommand::SetEgressPolicy(policy) => {
                if let Some(nat) = self.gateway.nat_mut() {
                    nat.set_policy(policy);
                }
            }
            GatewayCommand::SetInternet(enabled, reply) => {
                let nat = self.gateway.nat_mut();
                let has_nat = nat.is_some();
                if let Some(nat) = nat {
                    nat.set_internet(enabled);
                }
                let _ = reply.send(has_nat);
            }
            GatewayCommand::ReleaseMac(mac, reply) => {
                let freed = self.gateway.dhcp_mut().release_mac(mac);
                let _ = reply.send(freed);
            }
            GatewayCommand::NeighborProbes(max, reply) => {
                let probes = self.gateway.neighbor_probes(max);
                let _ = reply.send(probes.into_iter().map(Bytes::from).collect());
            }
            GatewayCommand::Describe(reply) => {
                let _ = reply.send(commands::describe(&self.gateway, Instant::now()));
            }
        }
    }

    fn log_lease_event(&self, event: &dhcp::LeaseEvent) {
        let (kind, what) = match event {
            dhcp::LeaseEvent::Bound { .. } => (LeaseEventKind::Bound, "lease bound"),
            dhcp::LeaseEvent::Released { .. } => (LeaseEventKind::Released, "lease released"),
            dhcp::LeaseEvent::Expired { .. } => (LeaseEventKind::Expired, "lease expired"),
            dhcp::LeaseEvent::Declined { .. } => (LeaseEventKind::Declined, "address declined"),
            dhcp::LeaseEvent::PoolExhausted { .. } => {
                (LeaseEventKind::PoolExhausted, "address pool exhausted")
            }
        };
        self.totals.lease_events[kind.index()].fetch_add(1, Relaxed);
        let lan = self.port.lan_name();
        if kind == LeaseEventKind::PoolExhausted {
            tracing::warn!(%lan, "{what}: {event:?}; widen pool_start..pool_end or shorten lease_time_secs");
        } else {
            tracing::info!(%lan, "{what}: {event:?}");
        }
    }

    fn publish_leases(&self) {
        let snapshot = self.gateway.dhcp().snapshot(Instant::now(), unix_now());
        if let Some(published) = &self.published {
            published.send_replace(Some(snapshot.clone()));
        }
        self.leases.put(self.port.lan_name().as_str(), snapshot);
    }

    /// Lets the LAN go once no client is on it and either no dynamic lease is left, or the
    /// grace for a reconnect has passed with no NAT flow open. Its leases then live on as a
    /// snapshot in the [`LeaseStore`] (a few hundred bytes, not a whole gateway), and a
    /// later join restores them: a VM that comes back keeps its address.
    fn release_if_unused(&mut self, lan: &Arc<Lan>) {
        if lan.client_count() > 0 {
            self.empty_since = None;
            return;
        }
        let now = Instant::now();
        let empty_for = now.duration_since(*self.empty_since.get_or_insert(now));
        let holds_leases = self.gateway.dhcp().leases().any(|lease| !lease.is_static);
        let flows_open = self
            .gateway
            .nat()
            .is_some_and(|nat| nat.flows().next().is_some());
        if !holds_leases || (empty_for >= self.empty_grace && !flows_open) {
            self.registry.remove_if_idle(lan);
        }
    }
}
