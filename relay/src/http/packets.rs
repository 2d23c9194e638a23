//! `GET /net/packets?lan=NAME` (WebSocket): the demo page's live "Packets" panel. The relay
//! taps the LAN as a capture does (`lan/tap.rs`, counted against `[capture] max_captures`)
//! and decodes frames into lines a person reads with the `capture` crate's [`Decoder`]:
//! decoding here, not in the page, keeps one decoder (tested with byte fixtures, fuzzed)
//! for every client, names machines from the LAN's leases, and sends a busy LAN's page a
//! few lines a second instead of every frame.
//!
//! Who may watch: the admin token, or a join token with `role: "teacher"` for that LAN, as
//! `?token=` (a teacher link opens the panel); without either, only a client on this
//! host's loopback, and only when the relay has no admin token (the local demo).
//!
//! Messages to the page (JSON text), every [`BATCH`]:
//! `{"type":"lines","lines":[{"t":UNIX_MS,"kind":"icmp","text":"vm-a -> vm-b  ICMP echo request id=3 seq=1"}],"frames":N,"shown":K,"lost":L}`
//! where `frames` counts every frame of the interval, `shown` the lines sent (at most
//! [`LINES_PER_SEC`] a second: a busy LAN is sampled, and the page says so) and `lost`
//! frames the tap itself dropped; and `{"type":"status","text":...}` while the LAN is
//! not there (the view waits for it). From the page: `pause`, `resume`, and `pcapng`,
//! answered with one binary message: the last [`RING_SECS`] of frames as a pcapng file.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use capture::{Decoder, Filter};
use serde_json::json;

use super::AppState;
use super::pcap::Writer;
use crate::admission::JoinRequest;
use crate::gateway_port::leases::LeaseStore;
use crate::lan::{CaptureError, CaptureTap, Captured};
use crate::shared::LanName;
use crate::transport::{ClientAddr, TransportContext, http_join, query_param};

/// How often lines go to the page.
const BATCH: Duration = Duration::from_millis(250);
/// Lines a page gets per second at most; the rest of a busy LAN's frames are counted only.
const LINES_PER_SEC: usize = 40;
/// Frames the tap may hold while this view is busy; beyond, the tap drops and counts.
const TAP_QUEUE: usize = 1024;
/// The download: frames of the last five minutes, cut to [`RING_SNAPLEN`] bytes, at most
/// [`RING_BYTES`] of them.
const RING_SECS: u64 = 300;
const RING_SNAPLEN: usize = 1600;
const RING_BYTES: usize = 8 * 1024 * 1024;
/// How often the lease names are read again, and a missing LAN looked for.
const REFRESH: Duration = Duration::from_secs(2);

/// Who asked, for the audit log.
fn authorize(
    app: &AppState,
    lan: &LanName,
    token: Option<&str>,
    request: &JoinRequest<'_>,
) -> Result<&'static str, (StatusCode, String)> {
    let config = app.ctx.config();
    let admin = config.server.admin_token.as_deref();
    match token {
        Some(given) if admin == Some(given) => Ok("admin"),
        Some(given) => match app.ctx.admission.verify_role(given, lan, "teacher") {
            Ok(_) => Ok("teacher"),
            Err(problem) => Err((StatusCode::UNAUTHORIZED, problem)),
        },
        None if admin.is_none() && app.ctx.admission.client_ip(request).is_loopback() => {
            Ok("local")
        }
        None => Err((
            StatusCode::UNAUTHORIZED,
            "the packet view needs a teacher's token for this LAN (or the admin token) as ?token="
                .into(),
        )),
    }
}

pub(super) async fn handler(
    State(app): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let refuse = |status: StatusCode, text: String| (status, format!("{text}\n")).into_response();
    let name = query_param(uri.query(), "lan").unwrap_or("default".into());
    let lan = match LanName::new(&name) {
        Ok(lan) => lan,
        Err(invalid) => return refuse(StatusCode::BAD_REQUEST, invalid.to_string()),
    };
    let origin = headers.get(header::ORIGIN).map(|o| o.as_bytes());
    if let Err(refused) = app.ctx.config().check_origin(origin) {
        return crate::transport::forbidden_origin(&refused);
    }
    let token = query_param(uri.query(), "token");
    let request = http_join(
        peer.ip(),
        &headers,
        &lan,
        token.as_deref(),
        crate::shared::Transport::WebSocket,
    );
    let by = match authorize(&app, &lan, token.as_deref(), &request) {
        Ok(by) => by,
        Err((status, text)) => return refuse(status, text),
    };
    let filter = match query_param(uri.query(), "filter") {
        Some(text) => match Filter::parse(&text) {
            Ok(filter) => filter,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
        },
        None => Filter::all(),
    };
    // A plain GET (the page's check before it connects) learns that it may (200, JSON).
    let Ok(ws) = ws else {
        let allowed = json!({ "lan": lan.as_str(), "allowed": by, "connect": "WebSocket" });
        return axum::Json(allowed).into_response();
    };
    tracing::info!(target: "audit", event = "packets", lan = %lan, by, client = %peer.ip(), "packets");
    ws.max_message_size(1024).on_upgrade(move |socket| {
        View::new(app.ctx.clone(), app.leases.clone(), lan, filter).run(socket)
    })
}

/// One page's view of one LAN.
struct View {
    ctx: Arc<TransportContext>,
    leases: Arc<LeaseStore>,
    lan: LanName,
    filter: Filter,
    decoder: Decoder,
    /// Lease host names by MAC (dashes), for the download's interface names.
    names: HashMap<String, String>,
    ring: VecDeque<Captured>,
    ring_bytes: usize,
    /// Lines waiting for the next batch, and what this interval saw.
    lines: Vec<serde_json::Value>,
    frames: u64,
    lost: u64,
    /// Lines still allowed in the current second, and when it started.
    budget: usize,
    second: Instant,
    paused: bool,
    /// The wall clock at `base`, for line times.
    base: Instant,
    base_ms: u64,
}

/// What woke the view.
enum Event {
    Frame(Option<Captured>),
    Page(Option<Message>),
    Batch,
    Gone,
    Refresh,
}

impl View {
    fn new(
        ctx: Arc<TransportContext>,
        leases: Arc<LeaseStore>,
        lan: LanName,
        filter: Filter,
    ) -> View {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        View {
            ctx,
            leases,
            lan,
            filter,
            decoder: Decoder::new(),
            names: HashMap::new(),
            ring: VecDeque::new(),
            ring_bytes: 0,
            lines: Vec::new(),
            frames: 0,
            lost: 0,
            budget: LINES_PER_SEC,
            second: Instant::now(),
            paused: false,
            base: Instant::now(),
            base_ms,
        }
    }

    /// Names the gateway and DNS addresses (from the LAN's settings) and every leased
    /// machine (from its leases).
    fn refresh_names(&mut self) {
        if let Ok(services) = self
            .ctx
            .config()
            .network_tables()
            .for_lan(self.lan.as_str())
            .and_then(|network| network.services(self.lan.as_str()))
        {
            let gateway = &services.gateway;
            self.decoder.name_mac(gateway.gateway_mac.0, "gateway");
            self.decoder.name_ip(gateway.gateway_ip, "gateway");
            self.decoder.name_ip(gateway.dns_ip, "dns");
        }
        let Some(snapshot) = self.leases.get(self.lan.as_str()) else {
            return;
        };
        for lease in snapshot.leases {
            if let Some(host) = lease.host_name.as_deref() {
                self.decoder.name_mac(lease.mac.0, host);
                self.decoder.name_ip(lease.ip, host);
                let key = switch::MacAddr::from_bytes(&lease.mac.0).to_string();
                self.names.insert(key, host.to_owned());
            }
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let shutdown = self.ctx.shutdown.clone();
        let mut batch = tokio::time::interval(BATCH);
        let mut refresh = tokio::time::interval(REFRESH);
        let mut tap: Option<CaptureTap> = None;
        let mut waiting: Option<String> = None;
        loop {
            let event = {
                let lan = tap.as_ref().map(|t| t.lan().clone());
                let frames = async {
                    match tap.as_mut() {
                        Some(tap) => Event::Frame(tap.frames.recv().await),
                        None => std::future::pending().await,
                    }
                };
                let gone = async {
                    match lan {
                        Some(lan) => lan.removed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    message = socket.recv() => Event::Page(message.and_then(Result::ok)),
                    event = frames => event,
                    () = gone => Event::Gone,
                    _ = batch.tick() => Event::Batch,
                    _ = refresh.tick() => Event::Refresh,
                }
            };
            match event {
                Event::Refresh => {
                    self.refresh_names();
                    if tap.is_none() {
                        match self.start() {
                            Ok(started) => {
                                tap = Some(started);
                                waiting = None;
                            }
                            Err(why) if waiting.as_ref() != Some(&why) => {
                                if !send_status(&mut socket, &why).await {
                                    return;
                                }
                                waiting = Some(why);
                            }
                            Err(_) => {}
                        }
                    }
                }
                Event::Frame(Some(captured)) => {
                    let lost = tap.as_ref().map_or(0, |t| t.drops.take(captured.port));
                    self.frame(captured, lost);
                    // Whatever else is queued, before the next look at the page.
                    while let Some(next) = tap.as_mut().and_then(|t| t.frames.try_recv().ok()) {
                        let lost = tap.as_ref().map_or(0, |t| t.drops.take(next.port));
                        self.frame(next, lost);
                    }
                }
                Event::Frame(None) | Event::Gone => {
                    // The LAN went (closed, or its last machine left): wait for it again.
                    tap = None;
                    refresh.reset_immediately();
                }
                Event::Page(message) => {
                    if !self.on_page(&mut socket, message).await {
                        return;
                    }
                }
                Event::Batch => {
                    if let Some(message) = self.batch()
                        && socket.send(Message::Text(message.into())).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// A message from the page; false when the page is gone.
    async fn on_page(&mut self, socket: &mut WebSocket, message: Option<Message>) -> bool {
        match message {
            None | Some(Message::Close(_)) => false,
            Some(Message::Text(text)) => match text.as_str() {
                "pause" => {
                    self.paused = true;
                    true
                }
                "resume" => {
                    self.paused = false;
                    true
                }
                "pcapng" => {
                    let file = self.pcapng();
                    socket.send(Message::Binary(file)).await.is_ok()
                }
                _ => true,
            },
            Some(_) => true,
        }
    }

    fn start(&self) -> Result<CaptureTap, String> {
        let max = self.ctx.config().capture.max_captures;
        let filter = self.filter.clone();
        match self
            .ctx
            .lans
            .start_capture(&self.lan, filter, TAP_QUEUE, max)
        {
            Ok(tap) => Ok(tap),
            Err(CaptureError::NoLan(_)) => Err(format!(
                "waiting for LAN {}: no machine is on it yet",
                self.lan
            )),
            Err(e @ CaptureError::TooMany(_)) => Err(format!("waiting: {e}")),
        }
    }

    /// One frame: into the ring, and a line when this second's budget allows.
    fn frame(&mut self, captured: Captured, lost: u64) {
        self.frames += 1;
        self.lost += lost;
        let now = captured.at;
        if !self.paused {
            if now.saturating_duration_since(self.second) >= Duration::from_secs(1) {
                self.second = now;
                self.budget = LINES_PER_SEC;
            }
            if self.budget > 0 {
                self.budget -= 1;
                let line = self.decoder.decode(&captured.frame);
                let t = self.base_ms + now.saturating_duration_since(self.base).as_millis() as u64;
                self.lines.push(json!({
                    "t": t,
                    "kind": line.kind.as_str(),
                    "text": line.to_string(),
                }));
            }
        }
        self.keep(captured);
    }

    /// Keeps a copy of the frame's first bytes for the download; forgets the oldest frames
    /// beyond five minutes or the byte budget.
    fn keep(&mut self, captured: Captured) {
        let cut = captured.frame.len().min(RING_SNAPLEN);
        let kept = Captured {
            frame: Bytes::copy_from_slice(&captured.frame[..cut]),
            ..captured
        };
        self.ring_bytes += cut;
        let horizon = kept.at.checked_sub(Duration::from_secs(RING_SECS));
        self.ring.push_back(kept);
        while let Some(oldest) = self.ring.front() {
            let old = horizon.is_some_and(|h| oldest.at < h);
            if !old && self.ring_bytes <= RING_BYTES {
                break;
            }
            self.ring_bytes -= oldest.frame.len();
            self.ring.pop_front();
        }
    }

    /// The interval's lines and counts, or nothing when nothing happened.
    fn batch(&mut self) -> Option<String> {
        if self.frames == 0 && self.lines.is_empty() {
            return None;
        }
        let message = json!({
            "type": "lines",
            "lines": std::mem::take(&mut self.lines),
            "frames": self.frames,
            "shown": 0,
            "lost": self.lost,
        });
        let shown = message["lines"].as_array().map_or(0, Vec::len);
        let mut message = message;
        message["shown"] = shown.into();
        self.frames = 0;
        self.lost = 0;
        Some(message.to_string())
    }

    /// The ring as a pcapng file.
    fn pcapng(&mut self) -> Bytes {
        self.refresh_names();
        let mut writer = Writer::new(RING_SNAPLEN as u32, self.names.clone());
        for captured in &self.ring {
            writer.write(captured, 0);
        }
        writer.finish(Vec::new());
        Bytes::from(std::mem::take(&mut writer.out))
    }
}

/// Tells the page why there is nothing to show yet; false when the page is gone.
async fn send_status(socket: &mut WebSocket, why: &str) -> bool {
    let status = json!({"type": "status", "text": why});
    socket
        .send(Message::Text(status.to_string().into()))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(at: Instant, len: usize) -> Captured {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        frame.resize(len, 0);
        Captured {
            port: switch::PortId(7),
            transport: crate::shared::Transport::WebSocket,
            at,
            frame: Bytes::from(frame),
        }
    }

    fn view() -> View {
        let config = crate::config::Config::default();
        let lans = crate::lan::LanRegistry::new(&config);
        let admission = crate::admission::Admission::new(&config).unwrap();
        let ctx = Arc::new(TransportContext::new(config, lans, admission));
        let leases = Arc::new(LeaseStore::open(None).unwrap());
        View::new(ctx, leases, LanName::default_lan(), Filter::all())
    }

    #[tokio::test]
    async fn a_busy_lan_is_sampled_and_the_ring_stays_bounded() {
        let mut view = view();
        let now = Instant::now();
        for _ in 0..1000 {
            view.frame(captured(now, 60), 0);
        }
        let message: serde_json::Value = serde_json::from_str(&view.batch().unwrap()).unwrap();
        assert_eq!(message["frames"], 1000);
        assert_eq!(message["shown"], LINES_PER_SEC);
        assert!(
            message["lines"][0]["text"]
                .as_str()
                .unwrap()
                .starts_with("02:00:00:00:00:01 -> broadcast  malformed ARP"),
            "{message}"
        );
        assert!(view.batch().is_none(), "nothing new, nothing sent");
        // Big frames are cut, and the oldest go beyond the byte budget.
        for _ in 0..(RING_BYTES / RING_SNAPLEN + 100) {
            view.frame(captured(now, 9000), 0);
        }
        assert!(view.ring_bytes <= RING_BYTES);
        assert!(view.ring.iter().all(|c| c.frame.len() <= RING_SNAPLEN));
        // Frames older than five minutes go.
        let later = now + Duration::from_secs(RING_SECS + 1);
        view.frame(captured(later, 60), 0);
        assert_eq!(view.ring.len(), 1);
        let file = view.pcapng();
        assert_eq!(&file[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
        // Paused: counted, not shown.
        view.batch();
        view.paused = true;
        view.frame(captured(later, 60), 0);
        let message: serde_json::Value = serde_json::from_str(&view.batch().unwrap()).unwrap();
        assert_eq!(
            (message["frames"].as_u64(), message["shown"].as_u64()),
            (Some(1), Some(0))
        );
    }
}
