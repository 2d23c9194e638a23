//! `GET /net/info?lan=NAME`: every transport's URL for one LAN (and the Wisp server's), so a
//! page needs only the relay's address (docs/architecture.md, "Wire formats"). Host names
//! come from the request's `Host`, so the answer matches whatever name the page used to reach
//! the relay.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use crate::shared::LanName;
use crate::transport::webrtc::WebRtc;

#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct NetInfo {
    pub(crate) lan: String,
    pub(crate) websocket: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) webtransport: Option<WebTransportEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) webrtc: Option<WebRtcEntry>,
    /// The Wisp server (not a LAN's: the same for every `lan`), when `[wisp]` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wisp: Option<String>,
    /// The CORS proxy prefix for v86's fetch backend (`cors_proxy`), when `[cors]` is on;
    /// a token rides in its path, as v86 appends the target URL to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cors_proxy: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct WebTransportEntry {
    pub(crate) url: String,
    pub(crate) certificate_hashes: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct WebRtcEntry {
    pub(crate) offer_url: String,
}

/// The host part of a `Host` header value (`name`, `1.2.3.4`, `[::1]`), port removed.
fn host_only(authority: &str) -> Option<String> {
    let authority: axum::http::uri::Authority = authority.parse().ok()?;
    let host = authority.host();
    // `Authority::host` keeps IPv6 brackets, which a URL needs anyway.
    Some(host.to_owned())
}

/// Builds the answer for `lan`, reached as `host` (no port). A `token` the page was given
/// is passed through on every URL, so one link carries a class's join token everywhere.
pub(crate) fn build(
    app: &AppState,
    lan: &LanName,
    host: &str,
    http_port: u16,
    token: Option<&str>,
) -> NetInfo {
    let config = app.ctx.config();
    let tls = config.tls.enabled();
    let (ws, http) = if tls {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let token_query = token.map(|t| {
        format!(
            "token={}",
            form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
        )
    });
    let query = token_query
        .as_ref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let path = format!("/lan/{lan}{query}");
    let webtransport = app.webtransport.info.get().map(|info| WebTransportEntry {
        url: format!("https://{host}:{}{path}", info.addr.port()),
        certificate_hashes: app.webtransport.certificate_hashes(),
    });
    let webrtc = app.webrtc.as_ref().map(|_| WebRtcEntry {
        offer_url: WebRtc::offer_url(&format!("{http}://{host}:{http_port}"), lan)
            + &token_query
                .as_ref()
                .map(|q| format!("&{q}"))
                .unwrap_or_default(),
    });
    let wisp = config
        .wisp
        .enabled
        .then(|| format!("{ws}://{host}:{http_port}/wisp/{query}"));
    let token_path = token
        .map(|t| {
            let encoded =
                percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC);
            format!("token/{encoded}/")
        })
        .unwrap_or_default();
    let cors_proxy = config
        .cors
        .enabled
        .then(|| format!("{http}://{host}:{http_port}/cors/{token_path}"));
    NetInfo {
        lan: lan.to_string(),
        websocket: format!("{ws}://{host}:{http_port}{path}"),
        webtransport,
        webrtc,
        wisp,
        cors_proxy,
    }
}

pub(crate) async fn handler(
    State(app): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let lan = match query.get("lan") {
        None => LanName::default_lan(),
        Some(name) => match LanName::new(name) {
            Ok(lan) => lan,
            Err(invalid) => {
                return (StatusCode::BAD_REQUEST, format!("{invalid}\n")).into_response();
            }
        },
    };
    let listen = app.listen_addr;
    let host_header = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(host_only);
    let (host, port) = match host_header {
        Some(host) => {
            let port = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
                .and_then(|a| a.port_u16())
                .unwrap_or(listen.port());
            (host, port)
        }
        None => (fallback_host(listen.ip()), listen.port()),
    };
    let info = build(
        &app,
        &lan,
        &host,
        port,
        query.get("token").map(String::as_str),
    );
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            // Pages on other origins (a static demo) may ask.
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::to_string(&info).unwrap_or_default(),
    )
        .into_response()
}

fn fallback_host(ip: std::net::IpAddr) -> String {
    match ip {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_without_port() {
        assert_eq!(
            host_only("relay.example:8086").as_deref(),
            Some("relay.example")
        );
        assert_eq!(host_only("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_only("[::1]:8086").as_deref(), Some("[::1]"));
        assert_eq!(host_only("bad host"), None);
    }

    #[test]
    fn json_shape_omits_absent_transports() {
        let info = NetInfo {
            lan: "t".into(),
            websocket: "ws://h:1/lan/t".into(),
            webtransport: Some(WebTransportEntry {
                url: "https://h:1/lan/t".into(),
                certificate_hashes: vec!["ab".into()],
            }),
            webrtc: None,
            wisp: Some("ws://h:1/wisp/".into()),
            cors_proxy: None,
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"lan":"t","websocket":"ws://h:1/lan/t","webtransport":{"url":"https://h:1/lan/t","certificate_hashes":["ab"]},"wisp":"ws://h:1/wisp/"}"#
        );
    }
}
