//! The Wisp server at `/wisp/` (and `/wisp`): TCP and UDP streams over one WebSocket, v1
//! and v2, for v86's "wisp" network backend and every other Wisp client. The protocol is the
//! sans-IO `wisp` crate's; this module is its tokio driver (see `wisp/src/lib.rs`, "What the
//! driver does"):
//!
//! - [`router`]: the upgrade, the version (v2 exactly when the request names a
//!   subprotocol, which is echoed), admission (`?token=`, or in v2 the password extension's
//!   password when no token came with the URL).
//! - `driver.rs`: one task per session owning the `wisp::Session`, pacing host reads and
//!   the client's WebSocket against its budgets.
//! - `stream.rs`: one task per stream owning its host socket.
//! - `egress.rs`: name resolution and `[nat]`'s egress policy for every resolved address.
//! - `stats.rs`: the `/metrics` families.
//!
//! A Wisp session is no LAN's port: admission sees it as LAN `wisp` (so a token needs
//! `lan: "wisp"` or a pattern matching it), and join and leave are audit log records.
//!
//! `/wisp/lan/NAME/` is a session whose TCP streams go into LAN NAME instead of the
//! internet: a CONNECT names a machine there by address, MAC or DHCP host name (`vm1`, or
//! `vm1.NAME.lan`), and the LAN's gateway opens the connection from the gateway address,
//! as it does for an inbound port forward ([`LanDoor`]). Admission sees it as LAN NAME.

mod driver;
mod egress;
mod lan;
mod stats;
mod stream;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpStream;
use wisp::{PasswordAuth, Version};

pub(crate) use egress::{Resolver, allowed};
pub(crate) use stats::WispStats;

use super::{
    ClientAddr, PRIVATE_LAN_PREFIX, TransportContext, bad_request, forbidden_origin, header_str,
    query_param, refused_response,
};
use crate::admission::{JoinRequest, Refused};
use crate::config::ForwardTarget;
use crate::shared::{LanName, Transport};

/// The LAN name admission and audit records use for Wisp sessions.
pub(crate) const WISP_LAN: &str = "wisp";

/// State every Wisp session shares.
#[derive(Debug)]
pub(crate) struct WispShared {
    pub(crate) stats: Arc<WispStats>,
    streams_by_ip: Arc<IpStreams>,
    resolver: Resolver,
    /// This host's own addresses, which the egress policy denies.
    host_addresses: Vec<Ipv4Addr>,
    /// The way into LANs for `/wisp/lan/NAME/` streams.
    lan_door: Arc<dyn LanDoor>,
}

/// How a stream of `/wisp/lan/NAME/` reaches a machine: the LAN's gateway takes one end of
/// a socket pair for `target:port`, as it takes an inbound port forward's connection
/// (implemented in `gateway_port`, a later layer).
pub(crate) trait LanDoor: Send + Sync + std::fmt::Debug {
    /// False when the LAN has no gateway now or cannot take more.
    fn open(&self, lan: &LanName, target: ForwardTarget, port: u16, stream: TcpStream) -> bool;
}

impl WispShared {
    pub(crate) fn new(
        resolver: Resolver,
        host_addresses: Vec<Ipv4Addr>,
        lan_door: Arc<dyn LanDoor>,
    ) -> Arc<Self> {
        Arc::new(WispShared {
            stats: Arc::default(),
            streams_by_ip: Arc::default(),
            resolver,
            host_addresses,
            lan_door,
        })
    }

    /// `[nat]`'s egress policy in `config`, with this host's own addresses denied: what
    /// Wisp streams and the CORS proxy may reach.
    pub(crate) fn egress_policy(&self, config: &crate::config::Config) -> gateway::EgressPolicy {
        let mut policy = crate::config::core_config(&config.nat)
            .map(|c| c.policy)
            .unwrap_or_default();
        policy.host_addresses = self.host_addresses.clone();
        policy
    }

    /// The resolver Wisp streams and the CORS proxy use.
    pub(crate) fn resolver(&self) -> &Resolver {
        &self.resolver
    }
}

/// Open streams per client address, over all its sessions.
#[derive(Debug, Default)]
struct IpStreams(Mutex<HashMap<IpAddr, usize>>);

/// One stream's share of its address's limit, given back on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    table: Arc<IpStreams>,
    ip: IpAddr,
}

impl IpStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut table = self.lock();
        let count = table.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if let Some(count) = table.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

#[derive(Debug)]
struct RouteState {
    ctx: Arc<TransportContext>,
    shared: Arc<WispShared>,
}

/// `/wisp/` and `/wisp` on the client listener. The routes are always there; `[wisp]
/// enabled` is read per request, so a reload can switch the server on or off.
pub(crate) fn router(ctx: Arc<TransportContext>, shared: Arc<WispShared>) -> Router {
    let state = Arc::new(RouteState { ctx, shared });
    Router::new()
        .route("/wisp", get(upgrade))
        .route("/wisp/", get(upgrade))
        .route("/wisp/lan/{name}", get(upgrade_lan))
        .route("/wisp/lan/{name}/", get(upgrade_lan))
        .with_state(state)
}

/// The check of an HTTP service that rides on Wisp's tokens (DNS over HTTPS, the CORS
/// proxy): with `[auth]` on, the request needs a token good for the Wisp LAN.
pub(crate) fn authorize_http(
    ctx: &TransportContext,
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    token: Option<&str>,
) -> Result<(), Refused> {
    if !ctx.admission.auth_enabled() {
        return Ok(());
    }
    let lan = LanName::new(WISP_LAN).unwrap_or_else(|_| LanName::default_lan());
    ctx.admit(&Requester::from_http(peer, headers).join_request(&lan, token))
        .map(drop)
}

/// Who asked, as admission needs it again when a v2 client authenticates later.
#[derive(Clone, Debug)]
pub(crate) struct Requester {
    pub(crate) peer: IpAddr,
    pub(crate) x_forwarded_for: Option<String>,
    pub(crate) forwarded: Option<String>,
}

impl Requester {
    pub(crate) fn from_http(peer: IpAddr, headers: &axum::http::HeaderMap) -> Self {
        Requester {
            peer,
            x_forwarded_for: header_str(headers, "x-forwarded-for").map(str::to_owned),
            forwarded: header_str(headers, "forwarded").map(str::to_owned),
        }
    }

    pub(crate) fn join_request<'a>(
        &'a self,
        lan: &'a LanName,
        token: Option<&'a str>,
    ) -> JoinRequest<'a> {
        JoinRequest {
            peer: self.peer,
            x_forwarded_for: self.x_forwarded_for.as_deref(),
            forwarded: self.forwarded.as_deref(),
            lan,
            token,
            transport: Transport::Wisp,
        }
    }
}

async fn upgrade(
    State(state): State<Arc<RouteState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let request = Upgrade { peer, uri, headers };
    upgrade_into(&state, request, ws, None)
}

/// `/wisp/lan/NAME/`: streams into LAN NAME.
async fn upgrade_lan(
    State(state): State<Arc<RouteState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let lan = match LanName::new(&name) {
        Ok(lan) if lan.as_str().starts_with(PRIVATE_LAN_PREFIX) => {
            return bad_request("the relay's private LANs cannot be entered by name");
        }
        Ok(lan) => lan,
        Err(invalid) => return bad_request(invalid),
    };
    let request = Upgrade { peer, uri, headers };
    upgrade_into(&state, request, ws, Some(lan))
}

/// The parts of an upgrade request both routes read.
struct Upgrade {
    peer: std::net::SocketAddr,
    uri: Uri,
    headers: HeaderMap,
}

/// The upgrade itself; `into_lan` is the LAN whose machines the streams reach, `None` for
/// the internet.
fn upgrade_into(
    state: &RouteState,
    Upgrade { peer, uri, headers }: Upgrade,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    into_lan: Option<LanName>,
) -> Response {
    let config = state.ctx.config();
    if !config.wisp.enabled {
        return (
            StatusCode::NOT_FOUND,
            "the Wisp server is off ([wisp] enabled = false)\n",
        )
            .into_response();
    }
    let origin = headers.get(header::ORIGIN).map(|o| o.as_bytes());
    if let Err(refused) = config.check_origin(origin) {
        return forbidden_origin(&refused);
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return bad_request(format!(
                "{rejection}: /wisp/ is a Wisp (WebSocket) endpoint; connect with ws://"
            ));
        }
    };
    // Wisp v2 draft: a client that speaks v2 sends a subprotocol; v1 clients (v86) none.
    let protocol = header_str(&headers, "sec-websocket-protocol")
        .and_then(|list| list.split(',').map(str::trim).find(|p| !p.is_empty()))
        .map(str::to_owned);
    let version = if protocol.is_some() {
        Version::V2
    } else {
        Version::V1
    };
    let requester = Requester::from_http(peer.ip(), &headers);
    let token = query_param(uri.query(), "token");
    let setup = match admit(&state.ctx, requester, version, token.as_deref(), into_lan) {
        Ok(setup) => setup,
        Err(refused) => return refused_response(&refused),
    };
    let ws = match protocol {
        Some(p) => ws.protocols([p]),
        None => ws,
    };
    let tracker = state.ctx.tasks.clone();
    let (ctx, shared) = (state.ctx.clone(), state.shared.clone());
    ws.read_buffer_size(config.websocket.read_buffer_bytes)
        .write_buffer_size(config.websocket.write_buffer_bytes)
        .max_message_size(driver::MAX_MESSAGE)
        .max_frame_size(driver::MAX_MESSAGE)
        .on_upgrade(move |socket| tracker.track_future(driver::serve(ctx, shared, socket, setup)))
        .into_response()
}

/// Admission before the upgrade; a v2 client without `?token=` may bring its token as the
/// password extension's password instead, and then admission waits for the handshake (which
/// has its own timeout).
fn admit(
    ctx: &TransportContext,
    requester: Requester,
    version: Version,
    token: Option<&str>,
    into_lan: Option<LanName>,
) -> Result<driver::Setup, Refused> {
    let lan_streams = into_lan.is_some();
    let lan = into_lan
        .unwrap_or_else(|| LanName::new(WISP_LAN).unwrap_or_else(|_| LanName::default_lan()));
    let deferred = version == Version::V2 && token.is_none() && ctx.admission.auth_enabled();
    let admitted = if deferred {
        None
    } else {
        Some(ctx.admit(&requester.join_request(&lan, token))?)
    };
    Ok(driver::Setup {
        version,
        password_auth: if deferred {
            PasswordAuth::Required
        } else {
            PasswordAuth::Off
        },
        admitted,
        requester,
        lan,
        lan_streams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_slots_are_counted_and_given_back() {
        let table = Arc::new(IpStreams::default());
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let a = table.try_take(ip, 2).unwrap();
        let b = table.try_take(ip, 2).unwrap();
        assert!(table.try_take(ip, 2).is_none());
        let other = table.try_take("198.51.100.8".parse().unwrap(), 2);
        assert!(other.is_some());
        drop(a);
        assert!(table.try_take(ip, 2).is_some());
        drop((b, other));
        assert!(table.lock().is_empty());
    }
}
