//! `/cors/<percent-encoded absolute URL>`: the CORS proxy for v86's "fetch" network backend,
//! which turns the guest's HTTP requests into the page's `fetch(cors_proxy +
//! encodeURIComponent(url))`. Off unless `[cors] enabled` (`--cors-proxy`).
//!
//! - Any method; the request body is read whole (at most `cors.max_body_bytes`), the
//!   response body streams back (cut off past the same size or `cors.timeout_secs`).
//! - `http://` targets only. Every address and every redirect hop (at most 5, followed
//!   here) is judged by `[nat]`'s egress policy, as Wisp streams are (`fetch.rs`): a denied
//!   one is 403.
//! - Cookies and hop-by-hop headers are dropped both ways; the answer carries CORS headers
//!   for `server.allowed_origins` (any origin when empty), and preflights are answered here.
//! - With `[auth]` on, a token for LAN "wisp" (one token for both in-page backends): in
//!   the path, `/cors/token/TOKEN/<URL>`, because v86 appends the URL to the prefix and
//!   a `?token=` there would become part of it; `?token=` works for other clients.

mod fetch;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;

use super::AppState;
use crate::transport::wisp::authorize_http;
use crate::transport::{ClientAddr, forbidden_origin, query_param, refused_response};
use fetch::{FetchError, Limits, Outgoing};

/// The route's prefix.
const PREFIX: &str = "/cors/";
/// Methods a preflight is told the proxy takes.
const METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Every request under `/cors/`.
pub(crate) async fn handle(
    State(app): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    request: Request,
) -> Response {
    let config = app.ctx.config();
    if !config.cors.enabled {
        let off = "the CORS proxy is off ([cors] enabled = false; flag --cors-proxy)\n";
        return (StatusCode::NOT_FOUND, off).into_response();
    }
    let origin = request.headers().get(header::ORIGIN).cloned();
    if let Err(refused) = config.check_origin(origin.as_ref().map(HeaderValue::as_bytes)) {
        return forbidden_origin(&refused);
    }
    let allow_origin = match (&origin, config.server.allowed_origins.is_empty()) {
        (Some(origin), false) => origin.clone(),
        _ => HeaderValue::from_static("*"),
    };
    if is_preflight(&request) {
        return with_cors(preflight(request.headers()), &allow_origin);
    }
    let response = match proxy(&app, peer.ip(), request).await {
        Ok(response) => response,
        Err(response) => response,
    };
    with_cors(response, &allow_origin)
}

/// Admission, the target and the body; then the fetch.
async fn proxy(
    app: &AppState,
    peer: std::net::IpAddr,
    request: Request,
) -> Result<Response, Response> {
    let config = app.ctx.config();
    let (path_token, url) = split_path(request.uri()).map_err(|e| e.into_response())?;
    let token =
        path_token.or_else(|| query_param(request.uri().query(), "token").map(|t| t.into_owned()));
    authorize_http(&app.ctx, peer, request.headers(), token.as_deref())
        .map_err(|refused| refused_response(&refused))?;
    let (parts, body) = request.into_parts();
    let limit = usize::try_from(config.cors.max_body_bytes).unwrap_or(usize::MAX);
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        let text = "the request body is larger than cors.max_body_bytes\n";
        (StatusCode::PAYLOAD_TOO_LARGE, text).into_response()
    })?;
    let mut headers = parts.headers;
    fetch::strip(&mut headers, true);
    let outgoing = Outgoing {
        method: parts.method,
        url,
        headers,
        body,
    };
    let policy = app.wisp.egress_policy(&config);
    let limits = Limits {
        shared: &app.wisp,
        policy: &policy,
        max_body: config.cors.max_body_bytes,
        deadline: tokio::time::Instant::now()
            + std::time::Duration::from_secs(config.cors.timeout_secs),
    };
    match fetch::fetch(outgoing, &limits).await {
        Ok(response) => Ok(response),
        Err(error) => {
            tracing::debug!("cors: {error:?}");
            Err(error.into_response())
        }
    }
}

/// `/cors/[token/TOKEN/]<URL>` as (token, target URL); both percent-decoded.
fn split_path(uri: &Uri) -> Result<(Option<String>, Uri), FetchError> {
    let rest = uri.path().strip_prefix(PREFIX).unwrap_or_default();
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let (token, encoded) = match rest.strip_prefix("token/") {
        Some(after) => match after.split_once('/') {
            Some((token, url)) => (Some(decode(token)), url),
            None => (Some(decode(after)), ""),
        },
        None => (None, rest),
    };
    let text = decode(encoded);
    if text.is_empty() {
        return Err(FetchError::BadUrl(
            "append the percent-encoded URL: /cors/http%3A%2F%2Fexample.org%2F".to_owned(),
        ));
    }
    let url: Uri = text
        .parse()
        .map_err(|_| FetchError::BadUrl(format!("{text:?} is not a URL")))?;
    if url.scheme().is_none() || url.authority().is_none() {
        return Err(FetchError::BadUrl(format!(
            "{text:?} is not an absolute URL"
        )));
    }
    Ok((token, url))
}

/// A browser's CORS preflight (not an OPTIONS request the page wants proxied).
fn is_preflight(request: &Request) -> bool {
    request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn preflight(headers: &HeaderMap) -> Response {
    let asked = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(METHODS),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(600));
    response
}

/// Adds the CORS headers that let the page read every answer, errors included.
fn with_cors(mut response: Response<Body>, allow_origin: &HeaderValue) -> Response {
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin.clone());
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("*"),
    );
    if allow_origin != "*" {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_target_and_maybe_a_token() {
        let uri: Uri = "/cors/http%3A%2F%2F198.18.0.2%2Fa%3Fb%3D1".parse().unwrap();
        let (token, url) = split_path(&uri).unwrap();
        assert_eq!(
            (token, url.to_string()),
            (None, "http://198.18.0.2/a?b=1".to_owned())
        );
        let uri: Uri = "/cors/token/t.k%2B/http%3A%2F%2Fh%2F".parse().unwrap();
        let (token, url) = split_path(&uri).unwrap();
        assert_eq!(token.as_deref(), Some("t.k+"));
        assert_eq!(url.to_string(), "http://h/");
        for bad in ["/cors/", "/cors/relative%2Fpath", "/cors/token/abc"] {
            assert!(split_path(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
