//! Layer 7: the application (docs/architecture.md, "Layers"). [`Relay::start`] builds every
//! layer in order, binds the listeners and returns at once, so tests and the binary share
//! one code path; [`Relay::shutdown`] closes clients with 1001 and waits for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
pub use crate::admission::unix_now;
use crate::cluster::{Cluster, ClusterError, ClusterHooks};
use crate::config::Config;
use crate::forward::{ForwardError, PortForwards};
use crate::gateway_port::GatewayHooks;
use crate::gateway_port::commands::GatewayDirectory;
use crate::gateway_port::leases::{LeaseFileError, LeaseStore};
use crate::gateway_port::stats::{GatewayStatsRegistry, GatewayTotals};
use crate::gateway_port::upstream::Upstream;
use crate::http::{AppState, admin, demo, metrics, serve, tls};
use crate::lan::LanRegistry;
use crate::nat::{NatShared, PingMode, host_addresses};
use crate::reload::{ConfigSource, Reloader};
use crate::transport::TransportContext;
use crate::transport::webrtc::{self, WebRtc, WebRtcStartError};
use crate::transport::webtransport::{
    self, WebTransportShared, WebTransportStartError, WebTransportStats,
};
use crate::transport::wisp::{Resolver, WispShared, WispStats};

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    pub listen_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// The WebTransport (UDP) listener, unless switched off.
    pub webtransport_addr: Option<SocketAddr>,
    /// The WebRTC peer's UDP socket, unless switched off.
    pub webrtc_addr: Option<SocketAddr>,
    app: Arc<AppState>,
    /// Inbound port forwards; they stop with the relay.
    _forwards: Arc<PortForwards>,
    reloader: Arc<Reloader>,
    servers: TaskTracker,
}

/// Why the relay could not start; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Leases(String),
    #[error("{0}")]
    Dns(String),
    #[error("config [nat]: {0}")]
    Nat(String),
    #[error("{0}")]
    Forward(String),
    #[error("{0}")]
    WebRoot(String),
    #[error("{0}")]
    Tls(String),
    #[error("config [auth]: {0}")]
    Auth(String),
    #[error("{0}")]
    WebTransport(String),
    #[error("{0}")]
    WebRtc(String),
    #[error("config [cluster]: {0}")]
    Cluster(String),
    #[error(
        "cannot listen on {addr} ({key}): {error}. Pick a free address with --{flag} or stop the program using it."
    )]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        flag: &'static str,
        // Not `source`: the message says it already, and `{:#}` would say it twice.
        error: std::io::Error,
    },
}

// The components' own errors are crate-private; the message is what a user needs.
macro_rules! start_error_from {
    ($($error:ty => $variant:ident),+ $(,)?) => {$(
        impl From<$error> for StartError {
            fn from(error: $error) -> Self {
                StartError::$variant(error.to_string())
            }
        }
    )+};
}

start_error_from! {
    LeaseFileError => Leases,
    ForwardError => Forward,
    WebTransportStartError => WebTransport,
    WebRtcStartError => WebRtc,
    ClusterError => Cluster,
}

/// NAT settings for every LAN, with this host's addresses and how pings can be sent.
fn nat_shared(
    config: &Config,
    totals: &GatewayTotals,
) -> Result<Option<Arc<NatShared>>, StartError> {
    if !config.nat.enabled {
        tracing::info!("NAT is off ([nat] enabled = false): VMs reach only their LAN");
        return Ok(None);
    }
    let mut core = crate::config::core_config(&config.nat).map_err(StartError::Nat)?;
    core.policy.host_addresses = host_addresses();
    // Quiet flows give their buffers' pages back (gateway `nat/quiet.rs`).
    core.buffer_budget = core
        .buffer_budget
        .with_release(Arc::new(crate::nat::release_pages));
    let ping_mode = PingMode::detect();
    if ping_mode == PingMode::Unavailable {
        tracing::warn!(
            "ping to outside addresses is unavailable: allow ICMP sockets with `sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"` or run with CAP_NET_RAW; TCP and UDP are not affected"
        );
    }
    if core.host_loopback {
        tracing::warn!(
            "--host-loopback is on: VMs reach this host's 127.0.0.1 through the gateway address"
        );
    }
    Ok(Some(Arc::new(NatShared {
        config: std::sync::RwLock::new(core),
        connect_timeout: Duration::from_secs(config.nat.connect_timeout_secs),
        ping_mode,
        tasks: totals.nat_tasks.clone(),
    })))
}

/// The gateway layer's shared parts, built once.
struct Gateways {
    stats: Arc<GatewayStatsRegistry>,
    totals: Arc<GatewayTotals>,
    directory: Arc<GatewayDirectory>,
    forwards: Arc<PortForwards>,
    nat: Option<Arc<NatShared>>,
    /// Also answers DNS over HTTPS.
    upstream: Upstream,
    /// This node's part of the cluster, with `[cluster]`.
    cluster: Option<Arc<Cluster>>,
}

/// The transports' own counters, for `/metrics`.
struct TransportStats {
    webtransport: Arc<WebTransportStats>,
    webrtc: Option<Arc<WebRtc>>,
    wisp: Arc<WispStats>,
}

/// What `/metrics` reads and what the admin API on the same listener acts on.
fn metrics_and_admin(
    ctx: &Arc<TransportContext>,
    gateways: &Gateways,
    transports: TransportStats,
    reloader: &Arc<Reloader>,
    listen: SocketAddr,
) -> (metrics::Sources, admin::AdminState) {
    let sources = metrics::Sources {
        admission: ctx.admission.clone(),
        lans: ctx.lans.clone(),
        gateways: gateways.stats.clone(),
        gateway_totals: gateways.totals.clone(),
        forwards: gateways.forwards.clone(),
        webtransport: transports.webtransport,
        webrtc: transports.webrtc,
        wisp: transports.wisp,
        cluster: gateways.cluster.clone(),
    };
    let admin = admin::AdminState {
        ctx: ctx.clone(),
        reload: reloader.clone(),
        lans: ctx.lans.clone(),
        directory: gateways.directory.clone(),
        forwards: gateways.forwards.clone(),
        token: ctx.config().server.admin_token.clone(),
        listen,
        cluster: gateways.cluster.clone(),
    };
    (sources, admin)
}

async fn start_gateways(
    config: &Config,
    lans: &Arc<LanRegistry>,
    leases: &Arc<LeaseStore>,
) -> Result<Gateways, StartError> {
    let upstream =
        Upstream::new(&config.dns.upstream).map_err(|e| StartError::Dns(e.to_string()))?;
    let gateways = Gateways {
        stats: Arc::default(),
        totals: Arc::default(),
        directory: Arc::default(),
        forwards: Arc::default(),
        nat: None,
        upstream: upstream.clone(),
        cluster: None,
    };
    let nat = nat_shared(config, &gateways.totals)?;
    let hooks = Arc::new(GatewayHooks {
        config: Arc::new(config.clone()),
        upstream,
        leases: leases.clone(),
        totals: gateways.totals.clone(),
        gateways: gateways.stats.clone(),
        nat: nat.clone(),
        directory: gateways.directory.clone(),
    });
    // Without [cluster] every LAN's gateway starts with the LAN; with it, only on the
    // node that owns the LAN (docs/cluster.md).
    let cluster = if config.cluster.enabled() {
        let cluster = Cluster::connect(&config.cluster, lans.clone(), hooks).await?;
        lans.set_hooks(Arc::new(ClusterHooks(cluster.clone())));
        Some(cluster)
    } else {
        lans.set_hooks(hooks);
        None
    };
    for text in &config.nat.forwards {
        let forward = text.parse().map_err(StartError::Nat)?;
        gateways.forwards.add(forward, &gateways.directory).await?;
    }
    Ok(Gateways {
        nat,
        cluster,
        ..gateways
    })
}

/// The `--listen` certificate, when TLS is on.
fn load_tls(config: &Config) -> Result<Option<tls::TlsCell>, StartError> {
    match config.tls.paths() {
        Ok(Some((cert, key))) => Ok(Some(tls::TlsCell::new(
            tls::load(cert, key).map_err(StartError::Tls)?,
        ))),
        Ok(None) => Ok(None),
        Err(problem) => Err(StartError::Tls(problem)),
    }
}

fn start_admission(config: &Config) -> Result<Arc<Admission>, StartError> {
    let admission = Admission::new(config).map_err(StartError::Auth)?;
    if !admission.auth_enabled() && !config.server.listen.ip().is_loopback() {
        tracing::warn!(
            "auth is off and --listen {} is not loopback: anyone who reaches it can join any LAN; set [auth] secrets (see docs/operations.md)",
            config.server.listen
        );
    }
    Ok(admission)
}

async fn bind(
    addr: SocketAddr,
    key: &'static str,
    flag: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind {
            addr,
            key,
            flag,
            error,
        })
}

impl Relay {
    /// Binds the listeners and starts serving in the background.
    pub async fn start(config: Config) -> Result<Relay, StartError> {
        Self::start_with_source(config, None).await
    }

    /// As [`Relay::start`], with where a reload reads the config again (SIGHUP,
    /// `POST /admin/reload`).
    pub async fn start_with_source(
        config: Config,
        source: Option<ConfigSource>,
    ) -> Result<Relay, StartError> {
        let lans = LanRegistry::new(&config);
        let leases = Arc::new(LeaseStore::open(config.dhcp.state_file.as_deref())?);
        let gateways = start_gateways(&config, &lans, &leases).await?;
        let demo = demo::DemoFiles::locate(config.server.web_root.as_deref())
            .map_err(StartError::WebRoot)?;
        let tls = load_tls(&config)?;
        let admission = start_admission(&config)?;
        let ctx = Arc::new(TransportContext::new(config, lans.clone(), admission));
        let servers = TaskTracker::new();
        let listener = bind(ctx.config().server.listen, "server.listen", "listen").await?;
        let listen_addr = listener.local_addr().unwrap_or(ctx.config().server.listen);
        let webtransport_shared = Arc::new(WebTransportShared::default());
        let webtransport_addr =
            webtransport::start(&ctx, &webtransport_shared, listen_addr, &servers).await?;
        let webrtc = webrtc::start(&ctx).await?;
        // Built even when [wisp] is off, so a reload can switch it on.
        let resolver = Resolver::new(&ctx.config().dns.upstream).map_err(StartError::Dns)?;
        let wisp = WispShared::new(resolver, host_addresses(), gateways.directory.clone());
        let app = Arc::new(AppState {
            ctx: ctx.clone(),
            leases: leases.clone(),
            demo,
            webtransport: webtransport_shared.clone(),
            webrtc: webrtc.clone(),
            listen_addr,
            wisp: wisp.clone(),
            upstream: gateways.upstream.clone(),
            directory: gateways.directory.clone(),
            cluster: gateways.cluster.clone(),
        });
        serve_clients(&servers, listener, tls.clone(), app.clone());
        let reloader = Arc::new(Reloader {
            ctx: ctx.clone(),
            tls,
            webtransport: webtransport_shared.clone(),
            nat: gateways.nat.clone(),
            directory: gateways.directory.clone(),
            source,
        });
        let metrics_addr = match ctx.config().server.metrics_listen {
            Some(addr) => {
                let transports = TransportStats {
                    webtransport: webtransport_shared.stats.clone(),
                    webrtc: webrtc.clone(),
                    wisp: wisp.stats.clone(),
                };
                let (sources, admin) =
                    metrics_and_admin(&ctx, &gateways, transports, &reloader, addr);
                Some(serve_metrics(&servers, &ctx, addr, sources, admin).await?)
            }
            None => None,
        };
        spawn_housekeeping(&servers, &ctx, &leases);
        servers.close();
        Ok(Relay {
            listen_addr,
            metrics_addr,
            webtransport_addr,
            webrtc_addr: webrtc.map(|rtc| rtc.local_addr),
            app,
            _forwards: gateways.forwards,
            reloader,
            servers,
        })
    }

    /// Reads the config again and applies what can change while sessions live; returns
    /// the keys that need a restart (kept as they were). An invalid file changes nothing.
    pub async fn reload(&self) -> Result<Vec<&'static str>, String> {
        // Reading files blocks; a reload never holds up the runtime's workers.
        let reloader = self.reloader.clone();
        match tokio::task::spawn_blocking(move || crate::http::admin::Reload::reload(&*reloader))
            .await
        {
            Ok(report) => report.map(|r| r.needs_restart),
            Err(_) => Err("the reload task failed".into()),
        }
    }

    /// Stops accepting, closes every client with 1001 and waits for them, at most the
    /// configured grace period. Returns false when clients were still open at the deadline.
    pub async fn shutdown(self) -> bool {
        let ctx = &self.app.ctx;
        if let Some(cluster) = &self.app.cluster
            && ctx.config().cluster.drain_on_stop
        {
            cluster.drain(ctx.config().shutdown_grace()).await;
        }
        ctx.shutdown.cancel();
        ctx.tasks.close();
        let grace = ctx.config().shutdown_grace();
        let done = async {
            ctx.tasks.wait().await;
            self.servers.wait().await;
        };
        let closed = tokio::time::timeout(grace, done).await.is_ok();
        if let Err(e) = self.app.leases.save() {
            tracing::error!("cannot write the DHCP state file: {e}");
        }
        closed
    }
}

/// Serves the client router on `--listen`, over TLS when configured.
fn serve_clients(
    servers: &TaskTracker,
    listener: TcpListener,
    tls: Option<tls::TlsCell>,
    app: Arc<AppState>,
) {
    let stop = app.ctx.shutdown.clone();
    let admission = app.ctx.admission.clone();
    let l = &app.ctx.config().limits;
    let limits = serve::HeadLimits {
        head_timeout: Duration::from_secs(l.request_head_timeout_secs),
        max_head_bytes: l.max_request_head_bytes,
        max_pending: l.max_pending_http_connections,
    };
    let router = crate::http::client_router(app);
    match tls {
        Some(cell) => {
            let listener = tls::TlsListener::new(listener, cell, stop.clone());
            servers.spawn(serve::serve(listener, router, limits, admission, stop));
        }
        None => {
            let listener = tls::PlainListener(listener);
            servers.spawn(serve::serve(listener, router, limits, admission, stop));
        }
    }
}

/// Serves `/metrics` and the admin API on `--metrics-listen`; returns the bound address.
async fn serve_metrics(
    servers: &TaskTracker,
    ctx: &TransportContext,
    addr: SocketAddr,
    sources: metrics::Sources,
    admin: admin::AdminState,
) -> Result<SocketAddr, StartError> {
    let listener = bind(addr, "server.metrics_listen", "metrics-listen").await?;
    let bound = listener.local_addr().unwrap_or(addr);
    if !addr.ip().is_loopback() && admin.token.is_none() {
        tracing::warn!(
            "the admin API on {addr} is refused until --admin-token is set (the listener is not loopback)"
        );
    }
    let router =
        metrics::router(Arc::new(metrics::registry(sources))).merge(admin::router(Arc::new(admin)));
    let shutdown = ctx.shutdown.clone();
    servers.spawn(async move {
        let serve = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(error) = serve.await {
            tracing::error!("metrics listener failed: {error}");
        }
    });
    Ok(bound)
}

/// MAC aging (on wall time, even when no frame arrives) and the lease file's writer.
fn spawn_housekeeping(
    servers: &TaskTracker,
    ctx: &Arc<TransportContext>,
    leases: &Arc<LeaseStore>,
) {
    let sweeper = ctx.clone();
    let pruned = leases.clone();
    servers.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = sweeper.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let now = Instant::now();
                    sweeper.lans.handle_timeouts(now);
                    sweeper.admission.handle_timeout(now);
                    ticks += 1;
                    if ticks.is_multiple_of(60) {
                        pruned.prune(unix_now());
                    }
                }
            }
        }
    });
    let leases = leases.clone();
    let stop = ctx.shutdown.clone();
    servers.spawn(async move { leases.run_writer(stop).await });
}
