//! `POST /net/rtc/offer?lan=NAME`: the HTTP side of WebRTC. The offer is checked (origin,
//! LAN name, body) here and answered by the driver task.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes as BodyBytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::oneshot;

use super::{Command, MAX_OFFER_BYTES, OFFER_PATH, WebRtc};
use crate::config::{Config, OriginRefused};
use crate::shared::{LanName, Transport};
use crate::transport::{ClientAddr, TransportContext, forbidden_origin, http_join};

/// What the offer routes share.
#[derive(Debug)]
struct OfferState {
    app: Arc<TransportContext>,
    /// The peer, once started; `None` when `webrtc.listen` is off.
    rtc: Option<Arc<WebRtc>>,
}

/// The offer endpoint's routes, to merge into the client router.
pub(crate) fn router(app: Arc<TransportContext>, rtc: Option<Arc<WebRtc>>) -> Router {
    Router::new()
        .route(OFFER_PATH, post(offer).options(preflight))
        .layer(DefaultBodyLimit::max(MAX_OFFER_BYTES))
        .with_state(Arc::new(OfferState { app, rtc }))
}

#[derive(Debug, serde::Deserialize)]
struct OfferQuery {
    lan: Option<String>,
    token: Option<String>,
}

/// Checks the page's origin against `--allowed-origins`. Requests without an Origin come
/// from programs, not pages, and pass. Returns the CORS header value to answer with.
fn check_origin(config: &Config, headers: &HeaderMap) -> Result<HeaderValue, OriginRefused> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(HeaderValue::from_static("*"));
    };
    config.check_origin(Some(origin.as_bytes()))?;
    Ok(origin.clone())
}

fn with_cors(mut response: Response, origin: HeaderValue) -> Response {
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

async fn preflight(State(state): State<Arc<OfferState>>, headers: HeaderMap) -> Response {
    let origin = match check_origin(&state.app.config(), &headers) {
        Ok(origin) => origin,
        Err(refused) => return forbidden_origin(&refused),
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    with_cors(response, origin)
}

async fn offer(
    State(state): State<Arc<OfferState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    Query(query): Query<OfferQuery>,
    headers: HeaderMap,
    body: BodyBytes,
) -> Response {
    let origin = match check_origin(&state.app.config(), &headers) {
        Ok(origin) => origin,
        Err(refused) => return forbidden_origin(&refused),
    };
    let answer = answer_offer(&state, peer, query, &headers, body).await;
    let response = match answer {
        Ok(sdp) => ([(header::CONTENT_TYPE, "application/sdp")], sdp).into_response(),
        Err((status, reason)) => (status, format!("{reason}\n")).into_response(),
    };
    with_cors(response, origin)
}

async fn answer_offer(
    state: &OfferState,
    peer: SocketAddr,
    query: OfferQuery,
    headers: &HeaderMap,
    body: BodyBytes,
) -> Result<String, (StatusCode, String)> {
    let Some(rtc) = &state.rtc else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "WebRTC is off on this relay; use the WebSocket URL".into(),
        ));
    };
    let lan = match query.lan.as_deref() {
        None => LanName::default_lan(),
        Some(name) => LanName::new(name).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?,
    };
    let sdp = String::from_utf8(body.to_vec()).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            "the body is not text: POST the offer's SDP (pc.localDescription.sdp)".into(),
        )
    })?;
    let join = http_join(
        peer.ip(),
        headers,
        &lan,
        query.token.as_deref(),
        Transport::WebRtc,
    );
    let admitted = state.app.admit(&join).map_err(|refused| {
        let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::FORBIDDEN);
        (status, refused.message)
    })?;
    let (reply, answer) = oneshot::channel();
    let command = Command::Offer {
        lan,
        sdp,
        admitted,
        candidate: rtc.candidate(host_ip(headers)),
        reply,
    };
    let unavailable = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the relay is shutting down; try again later".to_owned(),
        )
    };
    rtc.commands
        .send(command)
        .await
        .map_err(|_| unavailable())?;
    answer.await.map_err(|_| unavailable())?
}

/// The IP in the Host header, if it is one: the address the browser reached us at.
pub(super) fn host_ip(headers: &HeaderMap) -> Option<IpAddr> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}
