//! The relay's listeners: clients (WebSocket, /healthz) on `--listen`, Prometheus on
//! `--metrics-listen`. [`Relay::start`] binds both and returns at once, so tests and the
//! binary share one code path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::header;
use axum::response::Response;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::forward::{Forwards, GatewayDirectory};
use crate::gateway_port::{GatewayHooks, GatewayStatsRegistry, GatewayTotals};
use crate::lan::{LanName, LanRegistry};
use crate::leases::LeaseStore;
use crate::metrics;
use crate::transport::websocket;
use crate::upstream::Upstream;

/// What every request handler and connection task shares.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub lans: Arc<LanRegistry>,
    /// Cancelled once on SIGTERM/SIGINT: connections close with 1001.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub leases: Arc<LeaseStore>,
    /// The bundled demo's files (web-demo/, vendor/v86/).
    pub demo: crate::demo::DemoFiles,
    /// WebTransport listener state: certificate hashes for /net/info, counters for /metrics.
    pub webtransport: Arc<crate::transport::webtransport::WebTransportShared>,
    /// Set by the WebRTC gateway once it listens; /net/info then offers `webrtc`.
    pub webrtc_available: std::sync::atomic::AtomicBool,
    /// The bound client listener, for /net/info when a request names no port.
    pub listen_addr: std::sync::OnceLock<SocketAddr>,
    /// The WebRTC peer, once started (absent when `webrtc.listen` is off).
    pub webrtc: std::sync::OnceLock<Arc<crate::transport::webrtc::WebRtc>>,
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    pub app: Arc<AppState>,
    pub listen_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Inbound port forwards; they stop with the relay.
    pub forwards: Arc<Forwards>,
    /// The WebTransport (UDP) listener, unless switched off.
    pub webtransport_addr: Option<SocketAddr>,
    servers: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Leases(#[from] crate::leases::LeaseFileError),
    #[error("{0}")]
    Dns(String),
    #[error("config [nat]: {0}")]
    Nat(String),
    #[error("{0}")]
    Forward(#[from] crate::forward::ForwardError),
    #[error("{0}")]
    WebRoot(String),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    WebRtc(#[from] crate::transport::webrtc::WebRtcStartError),
    #[error(
        "cannot listen on {addr} ({key}): {source}. Pick a free address with --{flag} or stop the program using it."
    )]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        flag: &'static str,
        source: std::io::Error,
    },
}

/// NAT settings for every LAN, with this host's addresses and how pings can be sent.
fn nat_shared(
    config: &Config,
    totals: &GatewayTotals,
) -> Result<Option<Arc<crate::nat::NatShared>>, StartError> {
    if !config.nat.enabled {
        tracing::info!("NAT is off ([nat] enabled = false): VMs reach only their LAN");
        return Ok(None);
    }
    let mut core = crate::nat::core_config(&config.nat).map_err(StartError::Nat)?;
    core.policy.host_addresses = crate::nat::host_addresses();
    let ping_mode = crate::nat::PingMode::detect();
    if ping_mode == crate::nat::PingMode::Unavailable {
        tracing::warn!(
            "ping to outside addresses is unavailable: allow ICMP sockets with `sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"` or run with CAP_NET_RAW; TCP and UDP are not affected"
        );
    }
    if core.host_loopback {
        tracing::warn!(
            "--host-loopback is on: VMs reach this host's 127.0.0.1 through the gateway address"
        );
    }
    Ok(Some(Arc::new(crate::nat::NatShared {
        config: core,
        connect_timeout: Duration::from_secs(config.nat.connect_timeout_secs),
        ping_mode,
        tasks: totals.nat_tasks.clone(),
    })))
}

impl Relay {
    /// Binds the listeners and starts serving in the background.
    pub async fn start(config: Config) -> Result<Relay, StartError> {
        let lans = LanRegistry::new(&config);
        let leases = Arc::new(LeaseStore::open(config.dhcp.state_file.as_deref())?);
        let upstream =
            Upstream::new(&config.dns.upstream).map_err(|e| StartError::Dns(e.to_string()))?;
        let gateways = Arc::new(GatewayStatsRegistry::default());
        let gateway_totals = Arc::new(GatewayTotals::default());
        let nat = nat_shared(&config, &gateway_totals)?;
        let directory = Arc::new(GatewayDirectory::default());
        let forwards = Arc::new(Forwards::default());
        lans.set_hooks(Arc::new(GatewayHooks {
            config: Arc::new(config.clone()),
            upstream,
            leases: leases.clone(),
            totals: gateway_totals.clone(),
            gateways: gateways.clone(),
            nat,
            directory: directory.clone(),
        }));
        for text in &config.nat.forwards {
            let forward = text.parse().map_err(StartError::Nat)?;
            forwards.add(forward, &directory).await?;
        }
        let demo = crate::demo::DemoFiles::locate(config.server.web_root.as_deref())
            .map_err(StartError::WebRoot)?;
        let app = Arc::new(AppState {
            demo,
            leases: leases.clone(),
            config,
            lans: lans.clone(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            webtransport: Default::default(),
            webrtc_available: Default::default(),
            listen_addr: Default::default(),
            webrtc: std::sync::OnceLock::new(),
        });
        let servers = TaskTracker::new();
        let tls = match app.config.tls.paths() {
            Ok(Some((cert, key))) => Some(crate::tls::load(cert, key).map_err(StartError::Tls)?),
            Ok(None) => None,
            Err(problem) => return Err(StartError::Tls(problem)),
        };

        let listen = app.config.server.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen,
                key: "server.listen",
                flag: "listen",
                source,
            })?;
        let listen_addr = listener.local_addr().unwrap_or(listen);
        let _ = app.listen_addr.set(listen_addr);
        let webtransport_addr =
            crate::transport::webtransport::start(&app, listen_addr, &servers).await?;
        if let Some(rtc) = crate::transport::webrtc::start(&app).await? {
            let _ = app.webrtc.set(rtc);
            app.webrtc_available
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let shutdown = app.shutdown.clone();
        let router =
            client_router(app.clone()).merge(crate::transport::webrtc::router(app.clone()));
        servers.spawn(async move {
            let stop = shutdown.clone();
            let serve = match tls {
                Some(acceptor) => {
                    let listener = crate::tls::TlsListener::new(listener, acceptor, stop.clone());
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await
                }
                None => {
                    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move { shutdown.cancelled().await })
                        .await
                }
            };
            if let Err(error) = serve {
                tracing::error!("client listener failed: {error}");
            }
        });

        let mut metrics_addr = None;
        if let Some(addr) = app.config.server.metrics_listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr,
                    key: "server.metrics_listen",
                    flag: "metrics-listen",
                    source,
                })?;
            metrics_addr = Some(listener.local_addr().unwrap_or(addr));
            let mut registry = metrics::registry(
                lans.clone(),
                gateways.clone(),
                gateway_totals.clone(),
                forwards.clone(),
            );
            registry.register_collector(Box::new(
                crate::transport::webtransport::WebTransportCollector(
                    app.webtransport.stats.clone(),
                ),
            ));
            if let Some(rtc) = app.webrtc.get() {
                registry.register_collector(Box::new(crate::transport::webrtc::WebRtcCollector(
                    rtc.clone(),
                )));
            }
            let router = metrics_router(Arc::new(registry)).merge(crate::admin::router(Arc::new(
                crate::admin::AdminState {
                    lans: lans.clone(),
                    directory: directory.clone(),
                    forwards: forwards.clone(),
                    token: app.config.server.admin_token.clone(),
                    listen: addr,
                },
            )));
            if !addr.ip().is_loopback() && app.config.server.admin_token.is_none() {
                tracing::warn!(
                    "the admin API on {addr} is refused until --admin-token is set (the listener is not loopback)"
                );
            }
            let shutdown = app.shutdown.clone();
            servers.spawn(async move {
                let serve = axum::serve(listener, router)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await });
                if let Err(error) = serve.await {
                    tracing::error!("metrics listener failed: {error}");
                }
            });
        }

        // MAC aging runs on wall time even when no frame arrives.
        let sweeper_app = app.clone();
        servers.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = sweeper_app.shutdown.cancelled() => break,
                    _ = tick.tick() => sweeper_app.lans.handle_timeouts(Instant::now()),
                }
            }
        });
        let writer_app = app.clone();
        servers.spawn(async move {
            writer_app
                .leases
                .run_writer(writer_app.shutdown.clone())
                .await
        });
        servers.close();

        Ok(Relay {
            app,
            listen_addr,
            metrics_addr,
            forwards,
            webtransport_addr,
            servers,
        })
    }

    /// Stops accepting, closes every client with 1001 and waits for them, at most the
    /// configured grace period. Returns false when clients were still open at the deadline.
    pub async fn shutdown(self) -> bool {
        self.app.shutdown.cancel();
        self.app.tasks.close();
        let grace = self.app.config.shutdown_grace();
        let done = async {
            self.app.tasks.wait().await;
            self.servers.wait().await;
        };
        let closed = tokio::time::timeout(grace, done).await.is_ok();
        if let Err(e) = self.app.leases.save() {
            tracing::error!("cannot write the DHCP state file: {e}");
        }
        closed
    }
}

fn client_router(app: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(join_default))
        .route("/lan/{name}", get(join_named))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::demo::router(&app))
        .route("/net/info", get(crate::net_info::handler))
        .with_state(app)
}

fn metrics_router(registry: Arc<Registry>) -> Router {
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
                    metrics::render(&registry),
                )
            }
        }),
    )
}

/// 403 for a page whose origin `--allowed-origins` does not list.
fn origin_refused(app: &AppState, headers: &axum::http::HeaderMap) -> Option<Response> {
    let origin = headers
        .get(axum::http::header::ORIGIN)
        .map(|o| o.as_bytes());
    if app.config.origin_allowed(origin) {
        return None;
    }
    Some(axum::response::IntoResponse::into_response((
        axum::http::StatusCode::FORBIDDEN,
        "this page's origin may not use this relay: add it to --allowed-origins (server.allowed_origins)\n",
    )))
}

async fn join_default(
    State(app): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => match origin_refused(&app, &headers) {
            Some(refused) => refused,
            None => websocket::upgrade(app, LanName::default_lan(), ws),
        },
        // A browser: the demo page, or how to build it.
        Err(_) => crate::demo::landing(&app).await,
    }
}

async fn join_named(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let lan = match LanName::new(&name) {
        Ok(lan) => lan,
        Err(invalid) => return websocket::bad_request(invalid),
    };
    if let Some(refused) = origin_refused(&app, &headers) {
        return refused;
    }
    match ws {
        Ok(ws) => websocket::upgrade(app, lan, ws),
        Err(rejection) => websocket::bad_request(format!(
            "{rejection}: /lan/{lan} is a WebSocket endpoint; connect with ws://"
        )),
    }
}
