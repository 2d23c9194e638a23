//! The CORS proxy's HTTP/1.1 client: hyper's connection API over a `TcpStream` this module
//! opens itself, so the egress policy judges every address a name resolves to before any
//! connect, and every redirect hop is a new request judged again (never hyper's or a
//! resolver's choice). Bodies stream back under `[cors]`'s size and time limits.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use gateway::EgressPolicy;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use wisp::StreamType;

use crate::transport::wisp::{WispShared, allowed};

/// Redirects followed for one request; the browser sees only the last answer.
pub(super) const MAX_REDIRECTS: usize = 5;

/// Hop-by-hop headers (RFC 9110, section 7.6.1) and the ones a shared proxy must not pass:
/// cookies (the relay's origin would collect every site's), and `Host`/`Content-Length`,
/// which are set for each hop.
const DROPPED_REQUEST: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "cookie",
    "origin",
];
const DROPPED_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
    "set-cookie2",
];

/// One request as it goes out: an absolute `http://` URL.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    pub(super) method: Method,
    pub(super) url: Uri,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

/// Why a request got no upstream answer, each with its status.
#[derive(Debug, PartialEq)]
pub(super) enum FetchError {
    BadUrl(String),
    Denied(String),
    Unreachable(String),
    Timeout,
    TooManyRedirects,
    TooLarge,
    Upstream(String),
}

impl FetchError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            FetchError::BadUrl(_) => StatusCode::BAD_REQUEST,
            FetchError::Denied(_) => StatusCode::FORBIDDEN,
            FetchError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            FetchError::TooManyRedirects | FetchError::TooLarge => StatusCode::BAD_GATEWAY,
            FetchError::Unreachable(_) | FetchError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub(super) fn into_response(self) -> Response {
        let text = match &self {
            FetchError::BadUrl(why) => format!("bad target URL: {why}"),
            FetchError::Denied(why) => format!("the relay's egress policy denies {why}"),
            FetchError::Unreachable(why) => format!("cannot reach {why}"),
            FetchError::Timeout => "no answer within cors.timeout_secs".to_owned(),
            FetchError::TooManyRedirects => format!("more than {MAX_REDIRECTS} redirects"),
            FetchError::TooLarge => "the response is larger than cors.max_body_bytes".to_owned(),
            FetchError::Upstream(why) => format!("upstream HTTP error: {why}"),
        };
        (self.status(), format!("{text}\n")).into_response()
    }
}

/// What one fetch may use: the policy, the resolver, and its limits.
pub(super) struct Limits<'a> {
    pub(super) shared: &'a WispShared,
    pub(super) policy: &'a EgressPolicy,
    pub(super) max_body: u64,
    pub(super) deadline: Instant,
}

/// Sends `request`, following up to [`MAX_REDIRECTS`] redirects, and streams the final
/// answer's body under the limits.
pub(super) async fn fetch(
    mut request: Outgoing,
    limits: &Limits<'_>,
) -> Result<Response, FetchError> {
    for _hop in 0..=MAX_REDIRECTS {
        let response = tokio::time::timeout_at(limits.deadline, send(&request, limits))
            .await
            .map_err(|_| FetchError::Timeout)??;
        match redirect(&request, &response)? {
            Some(next) => request = next,
            None => return stream_back(response, limits),
        }
    }
    Err(FetchError::TooManyRedirects)
}

/// Checks `url` and splits it into host, port and the request target.
fn target(url: &Uri) -> Result<(String, u16, String), FetchError> {
    match url.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(FetchError::BadUrl(
                "https:// targets are not supported by this relay's CORS proxy".to_owned(),
            ));
        }
        _ => return Err(FetchError::BadUrl(format!("{url} is not an http:// URL"))),
    }
    let host = url
        .host()
        .ok_or_else(|| FetchError::BadUrl(format!("{url} has no host")))?;
    let path = url.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok((host.to_owned(), url.port_u16().unwrap_or(80), path))
}

/// One hop: resolve, judge every address, connect to the first allowed one that answers,
/// and read the response head.
async fn send(
    request: &Outgoing,
    limits: &Limits<'_>,
) -> Result<hyper::Response<Incoming>, FetchError> {
    let (host, port, path) = target(&request.url)?;
    let addrs = limits
        .shared
        .resolver()
        .resolve(&host, port)
        .await
        .map_err(|_| FetchError::Unreachable(format!("{host}: the name does not resolve")))?;
    let targets = allowed(limits.policy, StreamType::Tcp, &addrs, port)
        .map_err(|reason| FetchError::Denied(format!("{host}:{port} ({})", reason.as_str())))?;
    let tcp = connect(&targets, &host).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| FetchError::Upstream(e.to_string()))?;
    // The connection ends with the response body (or its drop); the deadline bounds a peer
    // that never finishes.
    let deadline = limits.deadline;
    tokio::spawn(async move {
        let _ = tokio::time::timeout_at(deadline, conn).await;
    });
    let mut out = hyper::Request::builder()
        .method(request.method.clone())
        .uri(path)
        .body(Body::from(request.body.clone()))
        .map_err(|e| FetchError::BadUrl(e.to_string()))?;
    *out.headers_mut() = request.headers.clone();
    let authority = request
        .url
        .authority()
        .map_or(host.as_str(), |a| a.as_str());
    if let Ok(value) = HeaderValue::from_str(authority) {
        out.headers_mut().insert(header::HOST, value);
    }
    if !request.body.is_empty() || !matches!(request.method, Method::GET | Method::HEAD) {
        out.headers_mut().insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(request.body.len()),
        );
    }
    sender
        .send_request(out)
        .await
        .map_err(|e| FetchError::Upstream(e.to_string()))
}

async fn connect(targets: &[SocketAddr], host: &str) -> Result<TcpStream, FetchError> {
    let mut last = format!("{host}: no address");
    for target in targets {
        match TcpStream::connect(target).await {
            Ok(tcp) => return Ok(tcp),
            Err(error) => last = format!("{target}: {error}"),
        }
    }
    Err(FetchError::Unreachable(last))
}

/// The next hop when `response` is a redirect, as a browser's fetch would make it.
fn redirect(
    request: &Outgoing,
    response: &hyper::Response<Incoming>,
) -> Result<Option<Outgoing>, FetchError> {
    let status = response.status().as_u16();
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return Ok(None);
    }
    let Some(location) = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    let url = join(&request.url, location)?;
    let mut next = request.clone();
    // 303 always, and 301/302 after a POST, turn into a GET without a body (Fetch standard).
    let to_get = status == 303 && request.method != Method::HEAD
        || matches!(status, 301 | 302) && request.method == Method::POST;
    if to_get {
        next.method = Method::GET;
        next.body = Bytes::new();
        next.headers.remove(header::CONTENT_TYPE);
    }
    if url.authority() != request.url.authority() {
        next.headers.remove(header::AUTHORIZATION);
    }
    next.url = url;
    Ok(Some(next))
}

/// `location` resolved against `base` (absolute, scheme-relative, absolute-path or relative).
fn join(base: &Uri, location: &str) -> Result<Uri, FetchError> {
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map_or("", |a| a.as_str());
    let text = if location.contains("://") {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    text.parse()
        .map_err(|_| FetchError::BadUrl(format!("redirect to {location:?}")))
}

/// Removes `names` and whatever the `Connection` header lists.
pub(super) fn strip(headers: &mut HeaderMap, request: bool) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .collect();
    for name in listed {
        headers.remove(name.as_str());
    }
    let names = if request {
        DROPPED_REQUEST
    } else {
        DROPPED_RESPONSE
    };
    for name in names {
        headers.remove(*name);
    }
    if !request {
        // The proxy answers CORS itself; the target's own headers are for other origins.
        let cors: Vec<_> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in cors {
            headers.remove(name);
        }
    }
}

/// The final answer, its body cut off (an aborted transfer, not a short success) when it
/// grows over `max_body` or outlives the deadline.
fn stream_back(
    response: hyper::Response<Incoming>,
    limits: &Limits<'_>,
) -> Result<Response, FetchError> {
    let (mut parts, incoming) = response.into_parts();
    strip(&mut parts.headers, false);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body) {
        return Err(FetchError::TooLarge);
    }
    let (max, deadline) = (limits.max_body, limits.deadline);
    let data = Body::new(incoming).into_data_stream();
    let body = futures_util::stream::unfold(Some((data, 0u64)), move |state| async move {
        let (mut data, sent) = state?;
        let cut = |why: &str| std::io::Error::other(format!("CORS proxy: {why}"));
        let next = match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(next) => next?,
            Err(_) => return Some((Err(cut("cors.timeout_secs passed")), None)),
        };
        match next {
            Ok(chunk) if sent + chunk.len() as u64 > max => {
                Some((Err(cut("over cors.max_body_bytes")), None))
            }
            Ok(chunk) => {
                let sent = sent + chunk.len() as u64;
                Some((Ok(chunk), Some((data, sent))))
            }
            Err(error) => Some((Err(std::io::Error::other(error)), None)),
        }
    });
    Ok(Response::from_parts(parts, Body::from_stream(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations_resolve_like_a_browser() {
        let base: Uri = "http://a.example:8080/dir/page?q=1".parse().unwrap();
        for (location, want) in [
            ("http://b.example/x", "http://b.example/x"),
            ("//c.example/y", "http://c.example/y"),
            ("/z?k=v", "http://a.example:8080/z?k=v"),
            ("other", "http://a.example:8080/dir/other"),
        ] {
            assert_eq!(join(&base, location).unwrap().to_string(), want);
        }
    }

    #[test]
    fn hop_by_hop_and_cookies_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("cookie", "a=b"),
            ("accept", "*/*"),
            ("host", "relay"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip(&mut h, true);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("set-cookie", "a=b"),
            ("access-control-allow-origin", "https://x"),
            ("content-type", "text/plain"),
            ("transfer-encoding", "chunked"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn only_http_targets() {
        assert!(target(&"http://h/p?q".parse().unwrap()).is_ok());
        assert_eq!(
            target(&"http://h:81".parse().unwrap()).unwrap(),
            ("h".to_owned(), 81, "/".to_owned())
        );
        for bad in ["https://h/", "ftp://h/", "/relative"] {
            assert!(target(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
