//! WebRTC transport: the tokio driver around the sans-IO [`webrtc_gw::Gateway`].
//!
//! A browser POSTs its SDP offer to `/net/rtc/offer?lan=NAME` and gets the answer (no
//! trickle). Every browser then talks to one UDP socket; one task owns the socket and the
//! gateway, feeds it datagrams, LAN frames and timers, and sends what it produces. Each
//! browser is a LAN port from its offer on, so a full LAN is refused in the HTTP answer and
//! a browser that never connects is removed after `webrtc.connect_timeout_secs`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes as BodyBytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use futures_util::stream::{SelectAll, Stream, StreamExt};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use webrtc_gw::{Event, Gateway, GatewayConfig, OfferError, PeerId, SendOutcome, Stats};

use crate::config::{Config, WebRtcAddrs};
use crate::lan::{LanName, Port, Transport};
use crate::server::AppState;

/// Where browsers POST their offers.
pub const OFFER_PATH: &str = "/net/rtc/offer";
/// SDP offers are a few KiB; anything much larger is not one.
const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Datagrams read in one go before the other inputs get a turn.
const RECV_BATCH: usize = 64;
/// Frames sent in one go before the other inputs get a turn.
const SEND_BATCH: usize = 64;

/// The running WebRTC peer, as the HTTP side sees it.
#[derive(Debug)]
pub struct WebRtc {
    /// The bound UDP address.
    pub local_addr: SocketAddr,
    addrs: WebRtcAddrs,
    /// Used when neither a public IP nor a specific listen IP is configured and the
    /// browser reached us by host name.
    fallback_ip: IpAddr,
    commands: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    peers: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug)]
enum Command {
    Offer {
        lan: LanName,
        sdp: String,
        candidate: SocketAddr,
        reply: oneshot::Sender<Result<String, (StatusCode, String)>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WebRtcStartError {
    #[error(
        "cannot listen for WebRTC on UDP {addr} (webrtc.listen): {source}. Pick a free address with --webrtc-listen, or --webrtc-listen off."
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Certificate(#[from] webrtc_gw::CertificateError),
}

impl WebRtc {
    /// The offer URL for LAN `lan`, as seen by a client that reached the relay at `base`
    /// (e.g. `http://127.0.0.1:8086`). For `/net/info`.
    pub fn offer_url(base: &str, lan: &LanName) -> String {
        format!("{}{OFFER_PATH}?lan={lan}", base.trim_end_matches('/'))
    }

    /// Gateway counters, for metrics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Browsers connecting or connected.
    pub fn peer_count(&self) -> usize {
        self.peers.load(Relaxed)
    }

    /// The address a browser must send to, given the IP it reached the HTTP side at.
    fn candidate(&self, reached: Option<IpAddr>) -> SocketAddr {
        let port = self.addrs.public_port.unwrap_or(self.local_addr.port());
        let ip = self
            .addrs
            .public_ip
            .or_else(|| Some(self.local_addr.ip()).filter(|ip| !ip.is_unspecified()))
            .or(reached.filter(|ip| !ip.is_unspecified()))
            .unwrap_or(self.fallback_ip);
        SocketAddr::new(ip, port)
    }
}

/// Binds the UDP socket and starts the driver task. Returns `None` when WebRTC is off.
pub async fn start(app: &Arc<AppState>) -> Result<Option<Arc<WebRtc>>, WebRtcStartError> {
    // Validated at start-up already; `off` is the only other outcome.
    let Ok(Some(addrs)) = app.config.webrtc_addrs() else {
        return Ok(None);
    };
    let socket = bind(addrs.listen, app.config.webrtc.socket_buffer_bytes).map_err(|source| {
        WebRtcStartError::Bind {
            addr: addrs.listen,
            source,
        }
    })?;
    let local_addr = socket.local_addr().unwrap_or(addrs.listen);
    let gateway = Gateway::new(gateway_config(&app.config))?;
    let stats = gateway.stats();
    let (commands, command_rx) = mpsc::channel(64);
    let peers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let driver = Driver {
        app: app.clone(),
        gateway,
        socket,
        ports: HashMap::new(),
        outgoing: SelectAll::new(),
        commands: command_rx,
        peers: peers.clone(),
    };
    app.tasks.spawn(driver.run());
    tracing::info!("WebRTC peer on udp://{local_addr} (offers at {OFFER_PATH})");
    Ok(Some(Arc::new(WebRtc {
        local_addr,
        addrs,
        fallback_ip: outbound_ip(local_addr.is_ipv6()),
        commands,
        stats,
        peers,
    })))
}

fn gateway_config(config: &Config) -> GatewayConfig {
    GatewayConfig {
        connect_timeout: Duration::from_secs(config.webrtc.connect_timeout_secs),
        max_pending: config.webrtc.max_pending,
        sctp_send_buffer: config.webrtc.sctp_send_buffer_bytes,
        max_message_size: u32::try_from(config.limits.max_frame_size).unwrap_or(u32::MAX),
    }
}

/// A UDP socket with large buffers: bursts of frames overflowed the default ones.
fn bind(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: Linux caps these at net.core.[rw]mem_max for unprivileged processes.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tracing::debug!(
        recv = ?socket.recv_buffer_size(),
        send = ?socket.send_buffer_size(),
        "WebRTC UDP socket buffers"
    );
    UdpSocket::from_std(socket.into())
}

/// The IP of the interface the default route leaves by. Connecting a UDP socket only picks
/// a route; no packet is sent.
fn outbound_ip(v6: bool) -> IpAddr {
    let (bind, probe): (SocketAddr, SocketAddr) = if v6 {
        (
            "[::]:0".parse().unwrap_or(SocketAddr::from(([0u16; 8], 0))),
            SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 9)),
        )
    } else {
        (
            SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::from(([192, 0, 2, 1], 9)),
        )
    };
    std::net::UdpSocket::bind(bind)
        .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

type FrameStream = Pin<Box<dyn Stream<Item = (PeerId, Bytes)> + Send>>;

struct Driver {
    app: Arc<AppState>,
    gateway: Gateway,
    socket: UdpSocket,
    ports: HashMap<PeerId, Port>,
    /// Every peer's LAN queue, tagged with the peer; a queue ends when its port leaves.
    outgoing: SelectAll<FrameStream>,
    commands: mpsc::Receiver<Command>,
    peers: Arc<std::sync::atomic::AtomicUsize>,
}

impl Driver {
    async fn run(mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        let shutdown = self.app.shutdown.clone();
        loop {
            let timeout = self.gateway.poll_timeout();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((len, source)) = received {
                        self.gateway.handle_receive(Instant::now(), source, &buf[..len]);
                    }
                    for _ in 1..RECV_BATCH {
                        let Ok((len, source)) = self.socket.try_recv_from(&mut buf) else { break };
                        self.gateway.handle_receive(Instant::now(), source, &buf[..len]);
                    }
                }
                Some((peer, frame)) = self.outgoing.next(), if !self.outgoing.is_empty() => {
                    self.send(peer, frame);
                    for _ in 1..SEND_BATCH {
                        let Some(Some((peer, frame))) = futures_util::FutureExt::now_or_never(self.outgoing.next()) else { break };
                        self.send(peer, frame);
                    }
                }
                _ = sleep_until(timeout), if timeout.is_some() => {
                    self.gateway.handle_timeout(Instant::now());
                }
            }
            self.flush().await;
            self.peers.store(self.gateway.peer_count(), Relaxed);
        }
        let peers: Vec<PeerId> = self.ports.keys().copied().collect();
        for peer in peers {
            self.gateway.close(peer);
        }
        self.flush().await;
    }

    fn handle_command(&mut self, command: Command) {
        let Command::Offer {
            lan,
            sdp,
            candidate,
            reply,
        } = command;
        // The offer is checked before the LAN is joined, so a bad one costs no port.
        let (peer, answer) = match self.gateway.accept_offer(Instant::now(), &sdp, candidate) {
            Ok(accepted) => accepted,
            Err(refused) => {
                let status = match refused {
                    OfferError::TooManyPending(_) => StatusCode::SERVICE_UNAVAILABLE,
                    OfferError::BadCandidate(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::BAD_REQUEST,
                };
                let _ = reply.send(Err((status, refused.to_string())));
                return;
            }
        };
        let (port, mut queue) = match self.app.lans.join(&lan, Transport::WebRtc) {
            Ok(joined) => joined,
            Err(refused) => {
                self.gateway.close(peer);
                let _ = reply.send(Err((StatusCode::SERVICE_UNAVAILABLE, refused.to_string())));
                return;
            }
        };
        tracing::debug!(%lan, %peer, port = %port.id(), %candidate, "WebRTC peer offered");
        let stream = futures_util::stream::poll_fn(move |cx| queue.poll_recv(cx))
            .map(move |frame| (peer, frame));
        self.outgoing.push(Box::pin(stream));
        self.ports.insert(peer, port);
        let _ = reply.send(Ok(answer));
    }

    fn send(&mut self, peer: PeerId, frame: Bytes) {
        let Some(port) = self.ports.get(&peer) else {
            return;
        };
        let counters = port.counters();
        let frame = counters.to_client(frame);
        if self.gateway.send_frame(peer, &frame) == SendOutcome::Sent {
            counters.count_out(frame.len());
        }
    }

    /// Sends what the gateway produced and acts on its events.
    async fn flush(&mut self) {
        while let Some(t) = self.gateway.poll_transmit() {
            if let Err(error) = self.socket.send_to(&t.contents, t.destination).await {
                tracing::trace!(destination = %t.destination, "WebRTC send failed: {error}");
            }
        }
        while let Some(event) = self.gateway.poll_event() {
            match event {
                Event::Frame(peer, frame) => {
                    if let Some(port) = self.ports.get(&peer) {
                        port.ingress(Instant::now(), Bytes::from(frame));
                    }
                }
                Event::Open(peer) => tracing::debug!(%peer, "WebRTC DataChannel open"),
                Event::Closed(peer, reason) => {
                    // Dropping the port leaves the LAN; its queue then ends its stream.
                    if let Some(port) = self.ports.remove(&peer) {
                        tracing::debug!(%peer, port = %port.id(), ?reason, "WebRTC peer left");
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// The offer endpoint's routes, to merge into the client router.
pub fn router(app: Arc<AppState>) -> Router {
    Router::new()
        .route(OFFER_PATH, post(offer).options(preflight))
        .layer(DefaultBodyLimit::max(MAX_OFFER_BYTES))
        .with_state(app)
}

#[derive(Debug, serde::Deserialize)]
struct OfferQuery {
    lan: Option<String>,
}

/// Checks the page's origin against `--allowed-origins`. Requests without an Origin come
/// from programs, not pages, and pass. Returns the CORS header value to answer with.
fn check_origin(config: &Config, headers: &HeaderMap) -> Result<HeaderValue, String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(HeaderValue::from_static("*"));
    };
    if config.origin_allowed(Some(origin.as_bytes())) {
        return Ok(origin.clone());
    }
    let shown: String = String::from_utf8_lossy(origin.as_bytes())
        .chars()
        .take(100)
        .collect();
    Err(format!(
        "origin {shown:?} may not use this relay: add it to --allowed-origins (server.allowed_origins)\n"
    ))
}

fn with_cors(mut response: Response, origin: HeaderValue) -> Response {
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

async fn preflight(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let origin = match check_origin(&app.config, &headers) {
        Ok(origin) => origin,
        Err(refused) => return (StatusCode::FORBIDDEN, refused).into_response(),
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
    State(app): State<Arc<AppState>>,
    Query(query): Query<OfferQuery>,
    headers: HeaderMap,
    body: BodyBytes,
) -> Response {
    let origin = match check_origin(&app.config, &headers) {
        Ok(origin) => origin,
        Err(refused) => return (StatusCode::FORBIDDEN, refused).into_response(),
    };
    let answer = answer_offer(&app, query, &headers, body).await;
    let response = match answer {
        Ok(sdp) => ([(header::CONTENT_TYPE, "application/sdp")], sdp).into_response(),
        Err((status, reason)) => (status, format!("{reason}\n")).into_response(),
    };
    with_cors(response, origin)
}

async fn answer_offer(
    app: &AppState,
    query: OfferQuery,
    headers: &HeaderMap,
    body: BodyBytes,
) -> Result<String, (StatusCode, String)> {
    let Some(rtc) = app.webrtc.get() else {
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
    let (reply, answer) = oneshot::channel();
    let command = Command::Offer {
        lan,
        sdp,
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
fn host_ip(headers: &HeaderMap) -> Option<IpAddr> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The gateway's counters on `/metrics`.
#[derive(Debug)]
pub struct WebRtcCollector(pub Arc<WebRtc>);

impl Collector for WebRtcCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        let counters = [
            (
                "webrtc_datachannel_buffer_drops",
                "Frames to browsers dropped because the DataChannel send buffer was full",
                s.buffer_drops.load(Relaxed),
            ),
            (
                "webrtc_not_open_drops",
                "Frames to browsers dropped because their DataChannel was not open yet",
                s.not_open_drops.load(Relaxed),
            ),
            (
                "webrtc_unclaimed_datagrams",
                "UDP datagrams no WebRTC peer claimed",
                s.unclaimed_datagrams.load(Relaxed),
            ),
            (
                "webrtc_foreign_messages",
                "DataChannel messages dropped: text, or not on the v86-relay channel",
                s.foreign_messages.load(Relaxed),
            ),
            (
                "webrtc_connect_timeouts",
                "WebRTC peers removed because they never connected",
                s.connect_timeouts.load(Relaxed),
            ),
            (
                "webrtc_peer_failures",
                "WebRTC peers dropped because the WebRTC stack failed on their input",
                s.failures.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        ConstGauge::new(self.0.peer_count() as i64).encode(encoder.encode_descriptor(
            "webrtc_peers",
            "WebRTC peers connecting or connected",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        h
    }

    #[test]
    fn host_header_ips() {
        assert_eq!(
            host_ip(&headers("127.0.0.1:8086")),
            Some([127, 0, 0, 1].into())
        );
        assert_eq!(host_ip(&headers("10.1.2.3")), Some([10, 1, 2, 3].into()));
        assert_eq!(
            host_ip(&headers("[::1]:8086")),
            Some("::1".parse().unwrap())
        );
        assert_eq!(host_ip(&headers("relay.example.org:8086")), None);
        assert_eq!(host_ip(&HeaderMap::new()), None);
    }

    fn rtc(listen: &str, public_ip: Option<&str>, public_port: Option<u16>) -> WebRtc {
        let (commands, _) = mpsc::channel(1);
        WebRtc {
            local_addr: listen.parse().unwrap(),
            addrs: WebRtcAddrs {
                listen: listen.parse().unwrap(),
                public_ip: public_ip.map(|ip| ip.parse().unwrap()),
                public_port,
            },
            fallback_ip: [192, 0, 2, 9].into(),
            commands,
            stats: Arc::default(),
            peers: Arc::default(),
        }
    }

    #[test]
    fn announced_candidate() {
        let reached = Some([10, 0, 0, 5].into());
        // A specific listen IP is announced as is.
        let c = rtc("127.0.0.1:8086", None, None).candidate(reached);
        assert_eq!(c, "127.0.0.1:8086".parse().unwrap());
        // On 0.0.0.0: the IP the page reached, else the default route's.
        let any = rtc("0.0.0.0:8086", None, None);
        assert_eq!(any.candidate(reached), "10.0.0.5:8086".parse().unwrap());
        assert_eq!(any.candidate(None), "192.0.2.9:8086".parse().unwrap());
        // A public address wins, with its port when given.
        let public = rtc("0.0.0.0:8086", Some("203.0.113.7"), Some(443));
        assert_eq!(
            public.candidate(reached),
            "203.0.113.7:443".parse().unwrap()
        );
    }

    #[test]
    fn offer_url_for_net_info() {
        let lan = LanName::new("physics-101").unwrap();
        assert_eq!(
            WebRtc::offer_url("http://127.0.0.1:8086/", &lan),
            "http://127.0.0.1:8086/net/rtc/offer?lan=physics-101"
        );
    }
}
