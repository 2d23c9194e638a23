//! The admin API's per-LAN routes for a teacher: a capture of the LAN (`capture.rs`), its
//! internet switch, removing one machine, closing the LAN. Each takes the admin token, or a
//! join token with `role: "teacher"` whose `lan` claim covers that LAN (as
//! `Authorization: Bearer TOKEN`, or `?token=` for a download link). Every action is written
//! to the audit log (tracing target `audit`).
//!
//! ```text
//! GET    /admin/lans/{name}/capture?secs=&frames=&snaplen=&filter=   pcapng stream
//! POST   /admin/lans/{name}/internet         body {"enabled": false}
//! DELETE /admin/lans/{name}/machines/{mac}   close its ports, release its leases
//! DELETE /admin/lans/{name}                  close every port; the LAN goes
//! PUT    /admin/lans/{name}/settings         body {"mtu": 65520, "subnet": ...}: for its next start
//! GET    /admin/lans/{name}/settings         the teacher's settings and the effective ones
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;
use switch::MacAddr;
use tokio::sync::oneshot;

use super::admin::{AdminState, error};
use crate::gateway_port::commands::GatewayCommand;
use crate::shared::LanName;
use crate::transport::query_param;

/// Who called a per-LAN route, for the audit log.
#[derive(Debug, Clone)]
pub(super) enum Caller {
    Admin,
    Teacher(Option<String>),
}

impl Caller {
    pub(super) fn role(&self) -> &'static str {
        match self {
            Caller::Admin => "admin",
            Caller::Teacher(_) => "teacher",
        }
    }

    pub(super) fn sub(&self) -> &str {
        match self {
            Caller::Admin => "",
            Caller::Teacher(sub) => sub.as_deref().unwrap_or(""),
        }
    }
}

/// The per-LAN routes; they check their caller themselves ([`authorize_lan`]), since a
/// teacher's token is good for one LAN only.
pub(super) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin/lans/{name}", delete(close_lan))
        .route("/admin/lans/{name}/capture", get(super::pcap::handler))
        .route("/admin/lans/{name}/internet", post(set_internet))
        .route("/admin/lans/{name}/machines/{mac}", delete(remove_machine))
        .route(
            "/admin/lans/{name}/settings",
            get(get_settings).put(set_settings),
        )
        .with_state(state)
}

/// Why a per-LAN call was refused: the status and a one-line reason.
pub(super) type Refusal = (StatusCode, String);

/// The LAN named in the path and who asks for it, or why not (see [`authorize_lan`]).
/// The LAN named in the path and who may act on it (the admin, or a teacher with a join
/// token for that LAN); refused with the status and a one-line reason.
pub(super) struct LanAccess {
    pub(super) lan: LanName,
    pub(super) caller: Caller,
}

impl FromRequestParts<Arc<AdminState>> for LanAccess {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, Response> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let name = params.get("name").map_or("", String::as_str);
        let (lan, caller) = lan_caller(state, name, &parts.headers, &parts.uri)
            .map_err(|(status, message)| error(status, message))?;
        Ok(LanAccess { lan, caller })
    }
}

fn lan_caller(
    state: &AdminState,
    name: &str,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(LanName, Caller), Refusal> {
    let lan =
        LanName::new(name).map_err(|invalid| (StatusCode::BAD_REQUEST, invalid.to_string()))?;
    let caller = authorize_lan(state, headers, uri, &lan)?;
    Ok((lan, caller))
}

/// The admin token, or a teacher's join token for `lan`. Without `--admin-token` on a
/// loopback listener, as for the other admin routes, no token is needed.
fn authorize_lan(
    state: &AdminState,
    headers: &HeaderMap,
    uri: &Uri,
    lan: &LanName,
) -> Result<Caller, Refusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let given = bearer.or_else(|| query_param(uri.query(), "token").map(|t| t.into_owned()));
    match (&state.token, given) {
        (Some(admin), Some(given)) if *admin == given => Ok(Caller::Admin),
        (None, None) if state.listen.ip().is_loopback() => Ok(Caller::Admin),
        (_, Some(given)) => match state.ctx.admission.verify_role(&given, lan, "teacher") {
            Ok(claims) => Ok(Caller::Teacher(claims.sub)),
            Err(problem) => Err((StatusCode::UNAUTHORIZED, problem)),
        },
        (_, None) => Err((
            StatusCode::UNAUTHORIZED,
            "send the admin token, or a join token with role \"teacher\" for this LAN, as `Authorization: Bearer TOKEN`".into(),
        )),
    }
}

#[derive(serde::Deserialize)]
struct InternetSwitch {
    enabled: bool,
}

/// `POST /admin/lans/{name}/internet`: NAT on or off for the LAN, now and when it comes
/// back after going idle. Off: every new connection is refused at once (a RST); flows
/// already open stay.
async fn set_internet(
    State(state): State<Arc<AdminState>>,
    access: LanAccess,
    body: Option<Json<InternetSwitch>>,
) -> Response {
    let LanAccess { lan, caller } = access;
    let Some(Json(InternetSwitch { enabled })) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"send JSON {"enabled": false} with Content-Type: application/json"#,
        );
    };
    if !state.ctx.config().nat.enabled {
        return error(
            StatusCode::CONFLICT,
            "NAT is off on this relay ([nat] enabled = false): there is no internet to switch",
        );
    }
    if !state.directory.set_internet(&lan, enabled) {
        return error(
            StatusCode::INSUFFICIENT_STORAGE,
            "too many LANs have their internet switched off; switch some back on",
        );
    }
    if let Some(gateway) = state.directory.get(&lan) {
        let (reply, answer) = oneshot::channel();
        if gateway
            .send(GatewayCommand::SetInternet(enabled, reply))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
        }
    }
    tracing::info!(
        target: "audit",
        event = "internet",
        lan = %lan,
        enabled,
        by = caller.role(),
        sub = caller.sub(),
        "internet"
    );
    Json(json!({ "lan": lan.as_str(), "internet": enabled })).into_response()
}

/// `DELETE /admin/lans/{name}/machines/{mac}`: closes the machine's ports and releases
/// its DHCP leases, so its address is free for the next machine.
async fn remove_machine(
    State(state): State<Arc<AdminState>>,
    Path((_, mac)): Path<(String, String)>,
    access: LanAccess,
) -> Response {
    let LanAccess { lan, caller } = access;
    let Some(mac) = parse_mac(&mac) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{mac:?} is not a MAC address; write e.g. 02:00:00:00:00:0a"),
        );
    };
    let Some(ports) = state.lans.close_machine(&lan, mac) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no LAN {lan} now; GET /admin/lans lists them"),
        );
    };
    let mut released = Vec::new();
    if let Some(gateway) = state.directory.get(&lan) {
        let (reply, answer) = oneshot::channel();
        if gateway
            .send(GatewayCommand::ReleaseMac(mac, reply))
            .await
            .is_ok()
            && let Ok(Ok(freed)) = tokio::time::timeout(Duration::from_secs(2), answer).await
        {
            released = freed;
        }
    }
    let ports: Vec<u64> = ports.iter().map(|p| p.0).collect();
    let released: Vec<String> = released.iter().map(ToString::to_string).collect();
    tracing::info!(
        target: "audit",
        event = "remove_machine",
        lan = %lan,
        %mac,
        ports = ?ports,
        released = ?released,
        by = caller.role(),
        sub = caller.sub(),
        "remove_machine"
    );
    if ports.is_empty() && released.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("no port and no lease of {mac} on LAN {lan}"),
        );
    }
    Json(json!({ "closed_ports": ports, "released": released })).into_response()
}

/// `DELETE /admin/lans/{name}`: closes every client port; the LAN and its services go
/// (its leases stay as a snapshot, as for any LAN that goes idle).
async fn close_lan(State(state): State<Arc<AdminState>>, access: LanAccess) -> Response {
    let LanAccess { lan, caller } = access;
    let Some(closed) = state.lans.close_lan(&lan) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no LAN {lan} now; GET /admin/lans lists them"),
        );
    };
    tracing::info!(
        target: "audit",
        event = "close_lan",
        lan = %lan,
        closed_ports = closed,
        by = caller.role(),
        sub = caller.sub(),
        "close_lan"
    );
    Json(json!({ "lan": lan.as_str(), "closed_ports": closed })).into_response()
}

/// The settings a LAN runs with, and those that apply at its next start.
fn settings_answer(
    state: &AdminState,
    lan: &LanName,
    next: &crate::config::NetworkConfig,
) -> serde_json::Value {
    let mut answer = state.directory.settings.describe(lan);
    answer["lan"] = lan.as_str().into();
    answer["next_start"] = json!({
        "subnet": next.subnet,
        "gateway": next.gateway.to_string(),
        "dns": next.dns.to_string(),
        "mtu": next.mtu,
        "domain_suffix": next.domain_suffix,
        "pool_start": next.pool_start.to_string(),
        "pool_end": next.pool_end.to_string(),
    });
    answer["live"] = state.lans.exists(lan).into();
    answer
}

/// `PUT /admin/lans/{name}/settings`: any keys of `[lans.NAME]` (subnet, gateway, dns,
/// pool_start, pool_end, mtu, domain_suffix, lease_time_secs, static_leases) for the LAN's
/// next start; they replace the teacher's earlier settings (`{}` forgets them). A live LAN
/// keeps its settings until it is closed (`DELETE /admin/lans/{name}`) or goes idle.
async fn set_settings(
    State(state): State<Arc<AdminState>>,
    access: LanAccess,
    body: Option<Json<serde_json::Map<String, serde_json::Value>>>,
) -> Response {
    let LanAccess { lan, caller } = access;
    let Some(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"send a JSON object of [lans.NAME] keys, e.g. {"mtu": 65520}, with Content-Type: application/json"#,
        );
    };
    let table = match toml::Table::try_from(&body) {
        Ok(table) => table,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("settings: {e}")),
    };
    let config = state.ctx.config();
    let next = match state.directory.settings.set(&config, &lan, table) {
        Ok(next) => next,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    tracing::info!(
        target: "audit",
        event = "lan_settings",
        lan = %lan,
        settings = %serde_json::Value::Object(body),
        by = caller.role(),
        sub = caller.sub(),
        "lan_settings"
    );
    Json(settings_answer(&state, &lan, &next)).into_response()
}

/// `GET /admin/lans/{name}/settings`.
async fn get_settings(State(state): State<Arc<AdminState>>, access: LanAccess) -> Response {
    let LanAccess { lan, .. } = access;
    let config = state.ctx.config();
    match state.directory.settings.next_start(&config, &lan) {
        Ok(next) => Json(settings_answer(&state, &lan, &next)).into_response(),
        Err(problem) => error(StatusCode::INTERNAL_SERVER_ERROR, problem),
    }
}

/// `02:00:00:00:00:0a` or `02-00-00-00-00-0a`.
pub(super) fn parse_mac(text: &str) -> Option<MacAddr> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(MacAddr(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_with_colons_or_dashes() {
        assert_eq!(
            parse_mac("02:00:00:00:00:0a"),
            Some(MacAddr([2, 0, 0, 0, 0, 10]))
        );
        assert_eq!(
            parse_mac("02-00-00-00-00-0A"),
            parse_mac("02:00:00:00:00:0a")
        );
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:0a:01"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:0a"), None);
    }
}
