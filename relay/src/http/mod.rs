//! Layer 6: the HTTP side (docs/architecture.md, "Layers"). The client router on
//! `--listen` (WebSocket joins, Wisp, DNS over HTTPS, the CORS proxy, `/net/info`, the demo, WebRTC offers), the admin API and
//! `/metrics` on `--metrics-listen`, and TLS for the client listener.

pub(crate) mod admin;
mod classroom;
pub(crate) mod cors;
pub(crate) mod demo;
pub(crate) mod doh;
pub(crate) mod metrics;
pub(crate) mod net_info;
mod packets;
mod pcap;
pub(crate) mod serve;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::config::DefaultLan;
use crate::gateway_port::commands::GatewayDirectory;
use crate::gateway_port::leases::LeaseStore;
use crate::gateway_port::upstream::Upstream;
use crate::shared::{Transport, lan_from_path};
use crate::transport::webrtc::WebRtc;
use crate::transport::webtransport::WebTransportShared;
use crate::transport::wisp::WispShared;
use crate::transport::{
    ClientAddr, PRIVATE_LAN_PREFIX, TransportContext, bad_request, forbidden_origin, http_join,
    query_param, refused_response, websocket,
};

/// What the client router's handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) ctx: Arc<TransportContext>,
    pub(crate) leases: Arc<LeaseStore>,
    /// The bundled demo's files (web-demo/, vendor/v86/).
    pub(crate) demo: demo::DemoFiles,
    /// WebTransport listener state: certificate hashes for /net/info.
    pub(crate) webtransport: Arc<WebTransportShared>,
    /// The WebRTC peer; absent when `webrtc.listen` is off.
    pub(crate) webrtc: Option<Arc<WebRtc>>,
    /// The bound client listener, for /net/info when a request names no port.
    pub(crate) listen_addr: SocketAddr,
    /// The Wisp server's shared state (its routes read `[wisp] enabled` per request).
    pub(crate) wisp: Arc<WispShared>,
    /// The upstream resolver, for DNS over HTTPS.
    pub(crate) upstream: Upstream,
    /// The gateways' directory: a first join's `?mtu=` goes to its LAN settings.
    pub(crate) directory: Arc<GatewayDirectory>,
    /// This node's part of the cluster, with `[cluster]` (`/healthz` reports NATS).
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Everything on `--listen`.
pub(crate) fn client_router(app: Arc<AppState>) -> Router {
    let offers = crate::transport::webrtc::router(app.ctx.clone(), app.webrtc.clone());
    let wisp = crate::transport::wisp::router(app.ctx.clone(), app.wisp.clone());
    Router::new()
        .route("/", get(join))
        .route("/lan/{name}", get(join))
        .route("/healthz", get(healthz))
        .merge(demo::router(&app))
        .route("/net/info", get(net_info::handler))
        .route("/net/packets", get(packets::handler))
        .route("/dns-query", get(doh::get).post(doh::post))
        .route("/cors/{*target}", any(cors::handle))
        .with_state(app)
        .merge(offers)
        .merge(wisp)
}

/// `GET /healthz`: ok; with `[cluster]`, 503 while NATS is unreachable, so a balancer
/// sends clients to a node that can reach the LANs' owners.
async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    match &app.cluster {
        None => "ok\n".into_response(),
        Some(cluster) if cluster.connected() => {
            format!("ok\nnats: connected\nnode: {}\n", cluster.node).into_response()
        }
        Some(cluster) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("nats: disconnected\nnode: {}\n", cluster.node),
        )
            .into_response(),
    }
}

/// `GET /` and `GET /lan/NAME`: a WebSocket upgrade joins that LAN; a plain `GET /` is the
/// demo page.
async fn join(
    State(app): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<websocket::Handshake, websocket::HandshakeRefused>,
) -> Response {
    let lan = match lan_from_path(uri.path()) {
        Some(Ok(lan)) if lan.as_str().starts_with(PRIVATE_LAN_PREFIX) => {
            return bad_request(format!(
                "LAN names starting with {PRIVATE_LAN_PREFIX:?} are the relay's private LANs; pick another name"
            ));
        }
        Some(Ok(lan)) => lan,
        Some(Err(invalid)) => return bad_request(invalid),
        None => return StatusCode::NOT_FOUND.into_response(),
    };
    let is_root = uri.path() == "/";
    if ws.is_err() && is_root {
        // A browser: the demo page, or how to build it.
        return demo::landing(&app).await;
    }
    let origin = headers.get(header::ORIGIN).map(|o| o.as_bytes());
    if let Err(refused) = app.ctx.config().check_origin(origin) {
        return forbidden_origin(&refused);
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return bad_request(format!(
                "{rejection}: /lan/{lan} is a WebSocket endpoint; connect with ws://"
            ));
        }
    };
    let token = query_param(uri.query(), "token");
    let request = http_join(
        peer.ip(),
        &headers,
        &lan,
        token.as_deref(),
        Transport::WebSocket,
    );
    let private = is_root && app.ctx.config().server.default_lan == DefaultLan::Private;
    // `?mtu=65520`: the MTU of a LAN this join creates (virtio guests; ne2k takes 1500).
    if let Some(mtu) = query_param(uri.query(), "mtu") {
        let Ok(mtu) = mtu.parse::<u16>() else {
            return bad_request(format!("?mtu={mtu} is not a number; use 1500 or 65520"));
        };
        let config = app.ctx.config();
        let settings = &app.directory.settings;
        match settings.check_mtu(&config, mtu) {
            Err(problem) => return bad_request(problem),
            // Only a join that creates the LAN chooses; later ones take what it has.
            Ok(()) if !private && !app.ctx.lans.exists(&lan) => settings.offer_join_mtu(&lan, mtu),
            Ok(()) => {}
        }
    }
    let target = match private {
        true => websocket::Target::Private,
        false => websocket::Target::Lan(lan.clone()),
    };
    match app.ctx.admit(&request) {
        Ok(admitted) => websocket::upgrade(app.ctx.clone(), target, ws, admitted),
        Err(refused) => refused_response(&refused),
    }
}
