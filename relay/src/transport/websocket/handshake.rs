//! The WebSocket handshake of a LAN join, answered here rather than by axum's
//! `WebSocketUpgrade`, so the socket under tungstenite is ours to wrap: [`BatchedWrites`]
//! batches the writes and gives the buffer back between batches.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::batch::BatchedWrites;

/// A LAN client's open WebSocket.
pub(crate) type Socket = WebSocketStream<BatchedWrites<TokioIo<Upgraded>>>;

/// A client's request to open a WebSocket (RFC 6455, section 4.2.1), checked, not yet
/// answered.
#[derive(Debug)]
pub(crate) struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket handshake this relay can accept.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeRefused {
    #[error(
        "not a WebSocket handshake (a GET with `Connection: upgrade` and `Upgrade: websocket`)"
    )]
    NotAnUpgrade,
    #[error("the handshake has no Sec-WebSocket-Key header")]
    NoKey,
    #[error("WebSocket version 13 is the only one spoken (Sec-WebSocket-Version: 13)")]
    Version,
    #[error("this connection cannot be upgraded (WebSockets need HTTP/1.1)")]
    NotUpgradable,
}

impl IntoResponse for HandshakeRefused {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = HandshakeRefused;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        if parts.method != Method::GET
            || !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(HandshakeRefused::NotAnUpgrade);
        }
        if !has_token(headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(HandshakeRefused::Version);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(HandshakeRefused::NoKey)?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(HandshakeRefused::NotUpgradable)?;
        Ok(Handshake { key, on_upgrade })
    }
}

impl Handshake {
    /// Answers 101 and runs `serve` on the socket once hyper hands the connection over.
    /// `config.write_buffer_size` is the batch: tungstenite itself buffers nothing.
    pub(crate) fn accept<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let batch = config.write_buffer_size;
        let config = config.write_buffer_size(0);
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => return tracing::debug!("websocket upgrade failed: {error}"),
            };
            let io = BatchedWrites::new(TokioIo::new(upgraded), batch);
            serve(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await).await;
        });
        let accept = derive_accept_key(self.key.as_bytes());
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, "upgrade".to_string()),
                (header::UPGRADE, "websocket".to_string()),
                (header::SEC_WEBSOCKET_ACCEPT, accept),
            ],
        )
            .into_response()
    }
}

/// Whether header `name` lists `token` (comma-separated, any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}
