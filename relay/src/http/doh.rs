//! `/dns-query`: DNS over HTTPS (RFC 8484) on `--listen`, answered through the relay's
//! upstream resolver (`[dns] upstream`, else the system's), so Wisp clients such as v86's
//! wisp backend, which resolve names themselves over DoH, need no third-party resolver.
//! `GET ?dns=` (base64url, no padding) and `POST` with `application/dns-message`. One
//! question per query, as every DoH client sends; the answer echoes the query's id.
//! With `[auth]` on, a `?token=` for LAN "wisp" is needed, as for `/wisp/`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};

use super::AppState;
use crate::gateway_port::upstream::Upstream;
use crate::transport::wisp::authorize_http;
use crate::transport::{ClientAddr, header_str, query_param, refused_response};

/// The DoH media type (RFC 8484, section 6).
const DNS_MESSAGE: &str = "application/dns-message";
/// Largest DNS message (RFC 8484, section 6: the 16-bit length of DNS over TCP).
const MAX_MESSAGE: usize = 65_535;

/// `GET /dns-query?dns=BASE64URL`.
pub(crate) async fn get(
    State(app): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(encoded) = query_param(uri.query(), "dns") else {
        return problem(StatusCode::BAD_REQUEST, "missing ?dns= (RFC 8484)");
    };
    // RFC 8484 omits the padding; tolerate it anyway.
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Ok(query) = engine.decode(encoded.trim_end_matches('=')) else {
        return problem(StatusCode::BAD_REQUEST, "?dns= is not base64url");
    };
    serve(&app, peer.ip(), &uri, &headers, &query).await
}

/// `POST /dns-query` with an `application/dns-message` body.
pub(crate) async fn post(
    State(app): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if header_str(&headers, "content-type") != Some(DNS_MESSAGE) {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/dns-message",
        );
    }
    serve(&app, peer.ip(), &uri, &headers, &body).await
}

async fn serve(
    app: &AppState,
    peer: std::net::IpAddr,
    uri: &Uri,
    headers: &HeaderMap,
    query: &[u8],
) -> Response {
    if !app.ctx.config().dns.doh {
        return problem(StatusCode::NOT_FOUND, "DNS over HTTPS is off ([dns] doh)");
    }
    let token = query_param(uri.query(), "token");
    if let Err(refused) = authorize_http(&app.ctx, peer, headers, token.as_deref()) {
        return refused_response(&refused);
    }
    if query.len() > MAX_MESSAGE {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a DNS message is at most 65535 bytes",
        );
    }
    let Ok(request) = Message::from_vec(query) else {
        return problem(StatusCode::BAD_REQUEST, "not a DNS message");
    };
    let (answer, ttl) = answer(&app.upstream, &request).await;
    match answer.to_vec() {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, DNS_MESSAGE.to_owned()),
                // RFC 8484, section 5.1: fresh no longer than the smallest TTL.
                (header::CACHE_CONTROL, format!("max-age={ttl}")),
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".to_owned()),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the answer",
        ),
    }
}

/// The response to `request` and how long it may be cached (seconds). Anything but one
/// standard query is FORMERR (NOTIMP for other op codes), as a DNS server would answer.
pub(crate) async fn answer(upstream: &Upstream, request: &Message) -> (Message, u32) {
    let meta = &request.metadata;
    let mut response = Message::response(meta.id, meta.op_code);
    response.metadata.recursion_desired = meta.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.checking_disabled = meta.checking_disabled;
    let question = match (meta.message_type, meta.op_code, request.queries.as_slice()) {
        (MessageType::Query, OpCode::Query, [question]) => question.clone(),
        (MessageType::Query, OpCode::Query, _) | (MessageType::Response, ..) => {
            response.metadata.response_code = ResponseCode::FormErr;
            return (response, 0);
        }
        _ => {
            response.metadata.response_code = ResponseCode::NotImp;
            return (response, 0);
        }
    };
    response.add_query(question.clone());
    let result = upstream
        .lookup(question.name().clone(), question.query_type())
        .await;
    let ttl = match result {
        dns::UpstreamResult::Answer { records } => {
            let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0);
            response.add_answers(records);
            ttl
        }
        dns::UpstreamResult::NoRecords {
            response_code,
            negative_ttl,
        } => {
            response.metadata.response_code = response_code;
            negative_ttl.unwrap_or(0)
        }
        dns::UpstreamResult::Failed => {
            response.metadata.response_code = ResponseCode::ServFail;
            0
        }
    };
    (response, ttl)
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}
