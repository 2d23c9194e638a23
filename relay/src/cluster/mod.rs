//! Layer 6: relay nodes that share LANs over NATS (docs/cluster.md, docs/architecture.md
//! "Layers"). Without `[cluster]` nothing here runs.
//!
//! - One owner per LAN: the node where a LAN's first port joins claims it in a JetStream
//!   KV bucket (`owner.rs`, timing in the sans-IO `bus::claim`); only the owner runs the
//!   LAN's switch and gateway.
//! - Any node takes ports of any LAN: on a non-owner the LAN has an uplink (`remote.rs`),
//!   so its ports' frames travel over core NATS to the owner, which gives each such remote
//!   port a normal bounded port of its own (`Transport::Cluster`).
//! - The LAN's DHCP leases live in a second KV bucket, so the next owner carries on with
//!   them.
//!
//! Subjects: `PREFIX.in.LAN` (ingress to the LAN's owner, from every node), and
//! `PREFIX.out.NODE.PORT` (egress to one remote port). Buckets: `PREFIX-owners` (claims,
//! with the TTL as max age) and `PREFIX-leases`.

mod owner;
mod remote;
pub(crate) mod stats;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bus::claim::ClaimTiming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterSection;
use crate::gateway_port::GatewayHooks;
use crate::lan::{Lan, LanHooks, LanRegistry};
use crate::shared::LanName;
pub(crate) use stats::{ClusterStats, LanRole};

/// Why the cluster could not start; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot reach NATS at {urls} ({error}). Start nats-server (with -js), check \
         [cluster] nats_urls / --cluster-nats and the credentials, or remove [cluster] to \
         run a single relay."
    )]
    Connect { urls: String, error: String },
    #[error(
        "NATS at {urls} has no JetStream ({error}). Start nats-server with -js (or \
         `jetstream {{}}` in its config): LAN ownership and leases live in its key-value store."
    )]
    NoJetStream { urls: String, error: String },
}

/// This node's part of the cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) node: String,
    prefix: String,
    timing: ClaimTiming,
    /// Frames of remote ports (core NATS).
    client: async_nats::Client,
    /// Claims and leases (JetStream KV).
    control: async_nats::Client,
    owners: kv::Store,
    leases: kv::Store,
    registry: Arc<LanRegistry>,
    gateways: Arc<GatewayHooks>,
    pub(crate) stats: Arc<ClusterStats>,
    /// Per LAN: this node's role, for `/admin/cluster`.
    pub(crate) roles: Mutex<HashMap<LanName, LanRole>>,
    /// Cancelled by a drain: LANs are handed over and none is claimed from then on.
    pub(crate) draining: CancellationToken,
    /// Set once a drain has handed every owned LAN over.
    pub(crate) drained: AtomicBool,
    tasks: TaskTracker,
}

/// Makes a new LAN a cluster LAN: remote at first, claimed by its task if nobody owns it.
#[derive(Debug)]
pub(crate) struct ClusterHooks(pub(crate) Arc<Cluster>);

impl LanHooks for ClusterHooks {
    fn lan_created(&self, _registry: &Arc<LanRegistry>, lan: &Arc<Lan>) {
        owner::spawn(&self.0, lan);
    }

    /// The gateway runs where the LAN is owned; a LAN owned elsewhere has none here.
    fn neighbor_probes(
        &self,
        lan: &LanName,
        max: usize,
    ) -> futures_util::future::BoxFuture<'static, Vec<bytes::Bytes>> {
        self.0.gateways.neighbor_probes(lan, max)
    }
}

/// One connection to NATS (`role` names it in the server's connection list).
async fn connect_nats(
    config: &ClusterSection,
    node: &str,
    role: &str,
) -> Result<async_nats::Client, ClusterError> {
    let urls = config.nats_urls.join(",");
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("v86-relay {node} {role}"))
        .connection_timeout(Duration::from_secs(config.connect_timeout_secs))
        // Reconnect forever: the claim timing, not the client, decides what a long outage
        // means for a LAN.
        .max_reconnects(None)
        .ping_interval(Duration::from_secs(5));
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> = config
        .nats_urls
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect();
    let connect = options.connect(addrs);
    tokio::time::timeout(
        Duration::from_secs(config.connect_timeout_secs + 1),
        connect,
    )
    .await
    .map_err(|_| ClusterError::Connect {
        urls: urls.clone(),
        error: "timed out".to_owned(),
    })?
    .map_err(|e| ClusterError::Connect {
        urls,
        error: e.to_string(),
    })
}

/// Opens KV bucket `name`, creating it when missing. Made as its stream directly: the
/// client's own bucket creation first reads the account's JetStream info, whose shape
/// nats-server 2.9 (Debian's) does not match.
async fn bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    max_age: Duration,
    description: &str,
) -> Result<kv::Store, async_nats::Error> {
    use async_nats::jetstream::stream;
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        description: Some(format!("v86-relay: {description}")),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await?;
    Ok(js.get_key_value(name).await?)
}

impl Cluster {
    /// Connects to NATS and opens (or creates) the two buckets; fails when NATS is
    /// unreachable or has no JetStream.
    pub(crate) async fn connect(
        config: &ClusterSection,
        registry: Arc<LanRegistry>,
        gateways: Arc<GatewayHooks>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let urls = config.nats_urls.join(",");
        let node = config.node();
        // Two connections: claims and leases on their own, so a LAN's bulk traffic queued
        // on the bus connection never delays a renewal past its fence (measured: with one
        // connection, flat-out traffic made every owner give its LANs up).
        let client = connect_nats(config, &node, "bus").await?;
        let control = connect_nats(config, &node, "control").await?;
        let ttl = Duration::from_secs(config.lease_ttl_secs);
        let mut js = async_nats::jetstream::new(control.clone());
        js.set_timeout(ttl / 3);
        let no_js = |e: &dyn std::fmt::Display| ClusterError::NoJetStream {
            urls: urls.clone(),
            error: e.to_string(),
        };
        let prefix = config.subject_prefix.clone();
        let owners = bucket(
            &js,
            &format!("{prefix}-owners"),
            ttl,
            "the node that owns each LAN",
        )
        .await
        .map_err(|e| no_js(&e))?;
        let leases = bucket(
            &js,
            &format!("{prefix}-leases"),
            Duration::ZERO,
            "each LAN's DHCP leases",
        )
        .await
        .map_err(|e| no_js(&e))?;
        tracing::info!("cluster: node {node} on NATS {urls}, LAN claims live {ttl:?}");
        let cluster = Arc::new(Cluster {
            node,
            prefix,
            timing: ClaimTiming::new(ttl),
            client,
            control,
            owners,
            leases,
            registry,
            gateways,
            stats: Arc::default(),
            roles: Mutex::default(),
            draining: CancellationToken::new(),
            drained: AtomicBool::new(false),
            tasks: TaskTracker::new(),
        });
        remote::spawn_egress(&cluster)
            .await
            .map_err(|e| ClusterError::Connect {
                urls,
                error: e.to_string(),
            })?;
        Ok(cluster)
    }

    fn ingress_subject(&self, lan: &LanName) -> String {
        format!("{}.in.{}", self.prefix, lan.as_str())
    }

    fn egress_subject(&self, node: &str, port: u64) -> String {
        format!("{}.out.{node}.{port}", self.prefix)
    }

    /// Whether the NATS connection is up now.
    pub(crate) fn connected(&self) -> bool {
        [&self.client, &self.control]
            .iter()
            .all(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// Hands every LAN this node owns to the cluster (its leases stored, its claim
    /// deleted so another node can take it at once) and stops claiming; returns when done
    /// or after `wait`.
    pub(crate) async fn drain(&self, wait: Duration) {
        self.draining.cancel();
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            let owned = self
                .roles
                .lock()
                .map_or(0, |roles| roles.values().filter(|r| r.owned).count());
            if owned == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.drained
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Cluster {
    /// The families of `/metrics`.
    pub(crate) fn families(&self) -> Vec<crate::shared::metrics::Family> {
        let lans = self.registry.lan_list();
        let remote_ports: usize = lans
            .iter()
            .filter(|lan| lan.has_uplink())
            .map(|lan| lan.client_ports().len())
            .sum();
        let owned = self
            .roles
            .lock()
            .map_or(0, |roles| roles.values().filter(|r| r.owned).count());
        self.stats.families(remote_ports, owned, self.connected())
    }

    /// What `/admin/cluster` shows.
    pub(crate) async fn view(&self) -> serde_json::Value {
        use futures_util::StreamExt;
        let mut claims = Vec::new();
        let mut nodes = std::collections::BTreeSet::from([self.node.clone()]);
        if let Ok(keys) = self.owners.keys().await {
            let keys: Vec<String> = keys
                .take(10_000)
                .filter_map(|k| async { k.ok() })
                .collect()
                .await;
            for key in keys {
                if let Ok(Some(entry)) = self.owners.entry(key.clone()).await
                    && entry.operation == kv::Operation::Put
                {
                    let (owner, epoch) = owner::parse_claim(&entry);
                    nodes.insert(owner.clone());
                    claims.push(serde_json::json!({ "lan": key, "owner": owner, "epoch": epoch }));
                }
            }
        }
        let roles = self.roles.lock().map(|r| r.clone()).unwrap_or_default();
        let mut lans: Vec<serde_json::Value> = self
            .registry
            .lan_list()
            .into_iter()
            .map(|lan| {
                let role = roles.get(lan.name()).cloned().unwrap_or_default();
                serde_json::json!({
                    "lan": lan.name().as_str(),
                    "owned": role.owned,
                    "owner": role.owner,
                    "epoch": role.epoch,
                    "local_ports": lan.client_ports().len(),
                    "remote_ports_served": role.remote_ports_served,
                })
            })
            .collect();
        lans.sort_by(|a, b| a["lan"].as_str().cmp(&b["lan"].as_str()));
        serde_json::json!({
            "node": self.node,
            "nats_connected": self.connected(),
            "draining": self.draining.is_cancelled(),
            "lease_ttl_secs": self.timing.ttl.as_secs(),
            "nodes": nodes,
            "claims": claims,
            "lans": lans,
        })
    }
}
