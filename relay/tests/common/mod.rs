//! Shared helpers for the relay's integration tests: a relay on loopback, clients that
//! behave like v86, frame builders, and a /metrics scraper.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use relay::{Config, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Whether something listens on `addr`. A connect to a loopback port nobody listens on can
/// still succeed when the kernel picks that same port as the source (a TCP self-connect:
/// free ports come from the ephemeral range); such a connection does not count.
pub fn accepts(addr: impl std::net::ToSocketAddrs) -> bool {
    std::net::TcpStream::connect(addr).is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
}

pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.server.shutdown_grace_secs = 3;
    config
}

pub async fn start(config: Config) -> Relay {
    Relay::start(config).await.expect("relay starts")
}

pub fn url(relay: &Relay, path: &str) -> String {
    format!("ws://{}{}", relay.listen_addr, path)
}

pub async fn connect(relay: &Relay, path: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url(relay, path))
        .await
        .expect("websocket connects");
    ws
}

pub fn mac(last: u8) -> [u8; 6] {
    [0x00, 0x22, 0x15, 0x00, 0x00, last]
}

pub const BROADCAST: [u8; 6] = [0xff; 6];

/// An Ethernet frame as ne2k sends it: padded to at least 60 bytes. `tag` marks the
/// payload so a receiver can tell frames apart.
pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize, tag: u32) -> Bytes {
    let mut f = Vec::with_capacity(len.max(60));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&tag.to_be_bytes());
    f.resize(len.max(60), 0);
    Bytes::from(f)
}

pub fn tag_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[14..18].try_into().unwrap())
}

pub async fn send(ws: &mut Ws, frame: Bytes) {
    ws.send(Message::Binary(frame)).await.expect("send");
}

/// The next binary message, or None after `wait`.
pub async fn recv(ws: &mut Ws, wait: Duration) -> Option<Bytes> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg.ok()? {
            Message::Binary(b) => return Some(b),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Asserts nothing arrives within `wait`.
pub async fn expect_silence(ws: &mut Ws, wait: Duration) {
    if let Some(f) = recv(ws, wait).await {
        panic!("expected no frame, got {} bytes", f.len());
    }
}

/// Plain HTTP GET over loopback; returns (status line, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.expect("http connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The value of one sample in the Prometheus text, e.g.
/// `metric(&text, "v86_relay_frames_dropped_total{reason=\"too_short\"}")`.
pub fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(sample)?;
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}")) as u64
}

pub async fn scrape(relay: &Relay) -> String {
    http_get(relay.metrics_addr.expect("metrics on"), "/metrics")
        .await
        .1
}

/// Polls `check` until it holds or 5 s pass.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}
pub mod binary;
pub mod internet;
pub mod netns;
pub mod vm;
