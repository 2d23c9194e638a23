//! `GET /admin/lans/{name}/capture`: every frame the LAN's switch carries, from every port
//! (the gateway's too), streamed as pcapng (the `capture` crate writes it). One Interface
//! Description Block per port, named by host name (from the LAN's leases when known), first
//! source MAC, transport and port id. Frames a slow reader lost are written as
//! `epb_dropcount` on that port's next packet and in the closing Interface Statistics
//! Blocks.
//!
//! Query: `secs` (stop after), `frames` (stop after that many), `snaplen` (bytes kept per
//! frame), `filter` (`arp`, `icmp`, `tcp port 80`, `udp port 53 or arp` ...).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use capture::{Filter, Pcapng};
use tokio::sync::{mpsc, oneshot};

use super::admin::{AdminState, error};
use super::classroom::LanAccess;
use crate::gateway_port::commands::GatewayCommand;
use crate::lan::{CaptureError, CaptureTap, Captured};
use crate::transport::query_param;

/// Frames a capture may hold while its reader is slow; beyond, frames are lost and counted.
const TAP_QUEUE: usize = 1024;
/// Chunks of the file waiting for the HTTP body, and the size a chunk grows to.
const BODY_CHUNKS: usize = 4;
const CHUNK_BYTES: usize = 64 * 1024;
/// A reader that takes nothing for this long ends its capture (and frees its slot).
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// The default and largest snap length (Wireshark's default).
const MAX_SNAPLEN: u32 = 262_144;
/// The longest capture asked for by `secs`.
const MAX_SECS: u64 = 86_400;

/// What the query asked for.
#[derive(Debug)]
struct Options {
    secs: Option<Duration>,
    frames: Option<u64>,
    snaplen: u32,
    filter: Filter,
}

fn number<T: std::str::FromStr>(query: Option<&str>, name: &str) -> Result<Option<T>, String> {
    match query_param(query, name) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| format!("?{name}={text} is not a number")),
    }
}

impl Options {
    fn parse(query: Option<&str>) -> Result<Options, String> {
        let secs: Option<u64> = number(query, "secs")?;
        if secs.is_some_and(|s| s == 0 || s > MAX_SECS) {
            return Err(format!("?secs= must be 1 to {MAX_SECS}"));
        }
        let frames: Option<u64> = number(query, "frames")?;
        if frames == Some(0) {
            return Err("?frames= must be at least 1".into());
        }
        let snaplen: u32 = number(query, "snaplen")?.unwrap_or(MAX_SNAPLEN);
        if !(14..=MAX_SNAPLEN).contains(&snaplen) {
            return Err(format!("?snaplen= must be 14 to {MAX_SNAPLEN}"));
        }
        let filter = match query_param(query, "filter") {
            Some(text) => Filter::parse(&text).map_err(|e| e.to_string())?,
            None => Filter::all(),
        };
        Ok(Options {
            secs: secs.map(Duration::from_secs),
            frames,
            snaplen,
            filter,
        })
    }
}

pub(super) async fn handler(
    State(state): State<Arc<AdminState>>,
    LanAccess { lan, caller }: LanAccess,
    uri: Uri,
) -> Response {
    let mut options = match Options::parse(uri.query()) {
        Ok(options) => options,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let max = state.ctx.config().capture.max_captures;
    let filter = std::mem::replace(&mut options.filter, Filter::all());
    let tap = match state.lans.start_capture(&lan, filter, TAP_QUEUE, max) {
        Ok(tap) => tap,
        Err(e @ CaptureError::NoLan(_)) => return error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ CaptureError::TooMany(_)) => {
            return error(StatusCode::TOO_MANY_REQUESTS, e.to_string());
        }
    };
    tracing::info!(
        target: "audit",
        event = "capture",
        lan = %lan,
        query = uri.query().unwrap_or(""),
        by = caller.role(),
        sub = caller.sub(),
        "capture"
    );
    let names = host_names(&state, &lan).await;
    let (body_tx, mut body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(BODY_CHUNKS);
    tokio::spawn(run(tap, options, names, body_tx));
    let stream = futures_util::stream::poll_fn(move |cx| body_rx.poll_recv(cx));
    let disposition = format!("attachment; filename=\"{lan}.pcapng\"");
    (
        [
            (header::CONTENT_TYPE, "application/x-pcapng".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Host names of the LAN's leases by MAC, from its gateway task, for interface names.
async fn host_names(state: &AdminState, lan: &crate::shared::LanName) -> HashMap<String, String> {
    let mut names = HashMap::new();
    let Some(gateway) = state.directory.get(lan) else {
        return names;
    };
    let (reply, answer) = oneshot::channel();
    if gateway.send(GatewayCommand::Describe(reply)).await.is_err() {
        return names;
    }
    let Ok(Ok(described)) = tokio::time::timeout(Duration::from_secs(2), answer).await else {
        return names;
    };
    for lease in described["leases"].as_array().into_iter().flatten() {
        if let (Some(mac), Some(host)) = (lease["mac"].as_str(), lease["host_name"].as_str()) {
            names.insert(mac.to_owned(), host.to_owned());
        }
    }
    names
}

/// Frames to pcapng: a capture's stream, and the live view's download of its recent frames
/// (`packets.rs`). Interfaces are named as they first appear.
pub(super) struct Writer {
    pcapng: Pcapng,
    pub(super) out: Vec<u8>,
    names: HashMap<String, String>,
    /// The wall clock at `base`: frame times are `Instant`s, the file's are since 1970.
    base: Instant,
    base_us: u64,
    written: u64,
}

impl Writer {
    /// A file with its section header written; `names` maps lease MACs (dashes) to host
    /// names.
    pub(super) fn new(snaplen: u32, names: HashMap<String, String>) -> Writer {
        let since_1970 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut writer = Writer {
            pcapng: Pcapng::new(snaplen),
            out: Vec::with_capacity(CHUNK_BYTES),
            names,
            base: Instant::now(),
            base_us: since_1970.as_micros() as u64,
            written: 0,
        };
        writer.pcapng.section_header(&mut writer.out, "v86-relay");
        writer
    }

    fn micros(&self, at: Instant) -> u64 {
        if at >= self.base {
            self.base_us + (at - self.base).as_micros() as u64
        } else {
            let before = (self.base - at).as_micros() as u64;
            self.base_us.saturating_sub(before)
        }
    }

    /// Writes one frame; `lost` frames of its port went missing just before it.
    pub(super) fn write(&mut self, captured: &Captured, lost: u64) {
        let key = captured.port.0;
        let id = match self.pcapng.interface_id(key) {
            Some(id) => id,
            None => {
                let name = self.interface_name(captured);
                self.pcapng.interface(&mut self.out, key, &name)
            }
        };
        let at = self.micros(captured.at);
        self.pcapng
            .packet(&mut self.out, id, at, &captured.frame, lost);
        self.written += 1;
    }

    /// `vm-a 02:00:00:00:00:0a websocket port 7`: host name when a lease names the MAC.
    fn interface_name(&self, captured: &Captured) -> String {
        let source = &captured.frame[6..12];
        let mac = colon_mac(source);
        let transport = captured.transport.as_str();
        let id = captured.port.0;
        // The leases spell MACs as smoltcp does (dashes).
        match self
            .names
            .get(&switch::MacAddr::from_bytes(source).to_string())
        {
            Some(host) => format!("{host} {mac} {transport} port {id}"),
            None => format!("{mac} {transport} port {id}"),
        }
    }

    /// The closing statistics: losses no packet carried go to their port's interface (one
    /// is described for a port that lost every frame).
    pub(super) fn finish(&mut self, drops: Vec<(switch::PortId, u64)>) {
        let mut late = Vec::new();
        for (port, lost) in drops {
            let id = match self.pcapng.interface_id(port.0) {
                Some(id) => id,
                None => self
                    .pcapng
                    .interface(&mut self.out, port.0, &format!("port {}", port.0)),
            };
            late.push((id, lost));
        }
        let now = self.micros(Instant::now());
        self.pcapng.statistics(&mut self.out, now, &late);
    }
}

/// `02:00:00:00:00:0a`, as Wireshark writes MACs.
fn colon_mac(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// Hands a chunk to the body; false when the reader left or stalled too long.
async fn send(body: &mpsc::Sender<Result<Bytes, std::io::Error>>, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let chunk = Bytes::from(std::mem::take(out));
    matches!(
        tokio::time::timeout(STALL_LIMIT, body.send(Ok(chunk))).await,
        Ok(Ok(()))
    )
}

async fn run(
    mut tap: CaptureTap,
    options: Options,
    names: HashMap<String, String>,
    body: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut writer = Writer::new(options.snaplen, names);
    let deadline = options.secs.map(|secs| tokio::time::Instant::now() + secs);
    let limit = options.frames.unwrap_or(u64::MAX);
    let lan = tap.lan().clone();
    while writer.written < limit {
        if !send(&body, &mut writer.out).await {
            return;
        }
        let first = tokio::select! {
            biased;
            _ = sleep_until(deadline) => break,
            _ = lan.removed() => break,
            _ = body.closed() => return,
            first = tap.frames.recv() => first,
        };
        let Some(first) = first else { break };
        writer.write(&first, tap.drops.take(first.port));
        // Whatever else is queued goes into the same chunk.
        while writer.written < limit && writer.out.len() < CHUNK_BYTES {
            let Ok(next) = tap.frames.try_recv() else {
                break;
            };
            writer.write(&next, tap.drops.take(next.port));
        }
    }
    writer.finish(tap.drops.take_all());
    drop(tap);
    send(&body, &mut writer.out).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let o = Options::parse(Some("secs=5&frames=10&snaplen=96&filter=udp%20port%2053")).unwrap();
        assert_eq!(o.secs, Some(Duration::from_secs(5)));
        assert_eq!((o.frames, o.snaplen), (Some(10), 96));
        assert_eq!(o.filter, Filter::parse("udp port 53").unwrap());
        let o = Options::parse(None).unwrap();
        assert_eq!((o.secs, o.frames, o.snaplen), (None, None, MAX_SNAPLEN));
        for bad in ["secs=0", "secs=x", "frames=0", "snaplen=10", "filter=bogus"] {
            assert!(Options::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
