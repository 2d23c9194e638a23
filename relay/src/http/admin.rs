//! The admin API, JSON over HTTP on the metrics listener: LANs with their ports, leases
//! and NAT flows; forwards listed, added and removed at runtime. A bearer token
//! (`--admin-token`) is required whenever that listener is not on loopback.
//!
//! ```text
//! GET    /admin/lans             every LAN: ports, leases, flows
//! GET    /admin/forwards         forwards in effect
//! POST   /admin/forwards         body {"forward": "tcp:0.0.0.0:8080=default/web:80"}
//! DELETE /admin/forwards/{id}
//! POST   /admin/tokens           body {"lan": "physics-*", "ttl_secs": 7200, "sub": "ada"} -> {"token": ...}
//! POST   /admin/reload           read the config file again (as SIGHUP does)
//! ```
//!
//! The per-LAN routes of a teacher (capture, internet, machines) are in `classroom.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;
use tokio::sync::oneshot;

use crate::config::PortForwardRule;
use crate::forward::PortForwards;
use crate::gateway_port::commands::{GatewayCommand, GatewayDirectory};
use crate::lan::{Lan, LanRegistry};
use crate::transport::TransportContext;

/// What `POST /admin/reload` changed: the keys that need a restart kept their values.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ReloadReport {
    pub(crate) needs_restart: Vec<&'static str>,
}

/// Reads the config again and applies it (implemented by the application layer).
pub(crate) trait Reload: Send + Sync + std::fmt::Debug {
    fn reload(&self) -> Result<ReloadReport, String>;
}

#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) ctx: Arc<TransportContext>,
    pub(crate) reload: Arc<dyn Reload>,
    pub(crate) lans: Arc<LanRegistry>,
    pub(crate) directory: Arc<GatewayDirectory>,
    pub(crate) forwards: Arc<PortForwards>,
    pub(crate) token: Option<String>,
    /// The metrics listener's address: without a token, only loopback may use the API.
    pub(crate) listen: SocketAddr,
    /// This node's part of the cluster, with `[cluster]`.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin/lans", get(list_lans))
        .route("/admin/cluster", get(cluster_view))
        .route("/admin/drain", post(drain))
        .route("/admin/forwards", get(list_forwards).post(add_forward))
        .route("/admin/forwards/{id}", delete(remove_forward))
        .route("/admin/tokens", post(mint_token))
        .route("/admin/reload", post(reload))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state.clone())
        // After the layer: these check the admin token or a teacher's token themselves.
        .merge(super::classroom::router(state))
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn authorize(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    match &state.token {
        Some(token) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(token.as_str()) {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "send the admin token as `Authorization: Bearer TOKEN` (set with --admin-token)",
                );
            }
        }
        None if !state.listen.ip().is_loopback() => {
            return error(
                StatusCode::FORBIDDEN,
                "the admin API needs --admin-token when --metrics-listen is not a loopback address",
            );
        }
        None => {}
    }
    next.run(request).await
}

async fn list_lans(State(state): State<Arc<AdminState>>) -> Response {
    let mut lans = Vec::new();
    for lan in state.lans.lan_list() {
        lans.push(describe_lan(&state, &lan).await);
    }
    lans.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(json!({ "lans": lans })).into_response()
}

/// One LAN: its ports with their traffic, and what its gateway task says of it.
async fn describe_lan(state: &AdminState, lan: &Lan) -> serde_json::Value {
    let ports: Vec<serde_json::Value> = lan
        .port_list()
        .into_iter()
        .map(|(id, transport, traffic)| {
            json!({
                "id": id.0,
                "transport": transport.as_str(),
                "frames_in": traffic.frames_in,
                "bytes_in": traffic.bytes_in,
                "frames_out": traffic.frames_out,
                "bytes_out": traffic.bytes_out,
            })
        })
        .collect();
    let mut entry = json!({
        "name": lan.name().as_str(),
        "clients": lan.client_count(),
        "ports": ports,
    });
    // The network it runs with, and a teacher's settings for its next start.
    if let (Some(entry), Some(settings)) = (
        entry.as_object_mut(),
        state.directory.settings.describe(lan.name()).as_object(),
    ) {
        entry.extend(settings.clone());
    }
    if let Some(gateway) = state.directory.get(lan.name()) {
        let (reply, answer) = oneshot::channel();
        if gateway.send(GatewayCommand::Describe(reply)).await.is_ok()
            && let Ok(Ok(described)) = tokio::time::timeout(Duration::from_secs(2), answer).await
            && let (Some(entry), Some(described)) = (entry.as_object_mut(), described.as_object())
        {
            entry.extend(described.clone());
        }
    }
    entry
}

async fn list_forwards(State(state): State<Arc<AdminState>>) -> Response {
    Json(json!({ "forwards": state.forwards.list() })).into_response()
}

#[derive(serde::Deserialize)]
struct NewForward {
    forward: String,
}

async fn add_forward(
    State(state): State<Arc<AdminState>>,
    body: Option<Json<NewForward>>,
) -> Response {
    let Some(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"send JSON {"forward": "tcp:0.0.0.0:8080=default/10.0.2.15:80"} with Content-Type: application/json"#,
        );
    };
    let forward: PortForwardRule = match body.forward.parse() {
        Ok(forward) => forward,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match state.forwards.add(forward, &state.directory).await {
        Ok(id) => (StatusCode::CREATED, Json(json!({ "id": id }))).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn remove_forward(State(state): State<Arc<AdminState>>, Path(id): Path<u64>) -> Response {
    if state.forwards.remove(id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("no forward {id}; GET /admin/forwards lists them"),
        )
    }
}

#[derive(serde::Deserialize)]
struct NewToken {
    lan: String,
    #[serde(default = "default_ttl")]
    ttl_secs: u64,
    sub: Option<String>,
    role: Option<String>,
}

fn default_ttl() -> u64 {
    7200
}

/// `POST /admin/tokens`: a join token signed with the first of `[auth] secrets`.
async fn mint_token(
    State(state): State<Arc<AdminState>>,
    body: Option<Json<NewToken>>,
) -> Response {
    let Some(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"send JSON {"lan": "physics-101", "ttl_secs": 7200, "sub": "who"} with Content-Type: application/json"#,
        );
    };
    if let Err(problem) = crate::shared::check_lan_pattern(&body.lan) {
        return error(StatusCode::BAD_REQUEST, problem);
    }
    let config = state.ctx.config();
    let Some(secret) = config.auth.minting_secret() else {
        return error(
            StatusCode::CONFLICT,
            "no [auth] secrets are configured: add one to mint tokens here (public keys only verify)",
        );
    };
    let ttl = Duration::from_secs(body.ttl_secs.clamp(1, 366 * 86_400));
    let mut claims = admission::Claims::new(body.lan, crate::admission::unix_now(), ttl);
    claims.sub = body.sub;
    claims.role = body.role;
    let token = admission::mint_hs256(secret, &claims);
    (
        StatusCode::CREATED,
        Json(json!({ "token": token, "exp": claims.exp })),
    )
        .into_response()
}

/// `POST /admin/reload`: what SIGHUP does.
async fn reload(State(state): State<Arc<AdminState>>) -> Response {
    let reload = state.reload.clone();
    match tokio::task::spawn_blocking(move || reload.reload()).await {
        Ok(Ok(report)) => Json(json!(report)).into_response(),
        Ok(Err(problem)) => error(StatusCode::UNPROCESSABLE_ENTITY, problem),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the reload task failed"),
    }
}

/// `GET /admin/cluster`: this node, the cluster's LAN claims (owner and epoch of each),
/// and this node's role in each of its LANs with its remote ports.
async fn cluster_view(State(state): State<Arc<AdminState>>) -> Response {
    let Some(cluster) = &state.cluster else {
        return (
            StatusCode::NOT_FOUND,
            "no [cluster]: this relay runs alone (docs/cluster.md)\n",
        )
            .into_response();
    };
    Json(cluster.view().await).into_response()
}

/// `POST /admin/drain`: hands this node's LANs to other nodes with their leases, then
/// closes its clients with 1001 (they reconnect through the balancer elsewhere) and stops
/// serving. Stop the process afterwards.
async fn drain(State(state): State<Arc<AdminState>>) -> Response {
    let Some(cluster) = &state.cluster else {
        return (
            StatusCode::NOT_FOUND,
            "no [cluster]: nothing to hand over; stop the relay with SIGTERM\n",
        )
            .into_response();
    };
    let started = std::time::Instant::now();
    cluster.drain(state.ctx.config().shutdown_grace()).await;
    let view = cluster.view().await;
    state.ctx.shutdown.cancel();
    Json(json!({
        "drained": true,
        "seconds": started.elapsed().as_secs_f64(),
        "cluster": view,
    }))
    .into_response()
}
