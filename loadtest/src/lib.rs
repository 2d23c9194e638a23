//! `v86-loadtest`: synthetic v86 VMs that load-test a v86-relay over its WebSocket transport.
//!
//! The wire protocol is v86's: one binary WebSocket message is one raw Ethernet frame, both
//! ways, nothing sent on open. Every synthetic VM ("client") has its own locally administered
//! MAC `02:00:ii:ii:ii:ii` (its index, big-endian) and joins `BASE/lan/{prefix}{lan}`.
//!
//! Frames use EtherType 0x88B5 (IEEE local experimental). Payload layout (offsets in the frame):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 14 | 1 | kind: 1 hello, 2 data, 3 idle |
//! | 15 | 1 | hello: 1 when the sender has already heard its partner |
//! | 16 | 4 | sender's client index (u32 BE) |
//! | 20 | 8 | sequence number (u64 BE) |
//! | 28 | 8 | send time, ns since the process's base `Instant` (u64 BE) |
//!
//! and zero padding up to `--frame-size` (at least 60 bytes, like ne2k).
//!
//! Modes:
//! - `idle`: connect N clients (bounded concurrency), each sends one 60-byte frame whose
//!   destination is its *own* MAC, then holds the connection. The relay learns the MAC (so its
//!   MAC table holds one entry per client, as with real VMs), but a learning switch never sends
//!   a frame back out of the port it came in on, so nothing is flooded: the relay's memory is
//!   measured with N live, learned ports and no traffic. Frames that do arrive are counted and
//!   reported (they should be 0).
//! - `switch`: clients 2k and 2k+1 are partners in the same LAN. Each broadcasts a hello until
//!   it has heard its partner (so the switch has learned both MACs), then all pairs start
//!   together and blast unicast frames at each other (batched with `feed` + `flush`), optionally
//!   capped by `--rate`. Receivers measure one-way latency (same process, same clock) and
//!   count frames whose send stamp lies in the measurement window, so
//!   `dropped = sent - received` is exact for that window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod packets;
mod services;

pub use services::{CpuUse, DhcpReport, DnsNames, DnsReport, read_cpu_seconds};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// EtherType of every frame the load test sends (IEEE 802 local experimental 1).
pub const ETHERTYPE: u16 = 0x88B5;
const KIND_HELLO: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_IDLE: u8 = 3;
const OFF_KIND: usize = 14;
const OFF_HEARD: usize = 15;
const OFF_FROM: usize = 16;
const OFF_SEQ: usize = 20;
const OFF_STAMP: usize = 28;
const HEADER_END: usize = 36;
/// Smallest frame v86's ne2k sends (padded, without FCS).
pub const MIN_FRAME: usize = 60;
/// Largest frame: 14-byte header plus a 65535-byte payload.
pub const MAX_FRAME: usize = 65549;
const BROADCAST: [u8; 6] = [0xff; 6];

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Connect, send one frame (to the client's own MAC, so it is not flooded), hold.
    Idle,
    /// Pairs exchange unicast frames as fast as the relay takes them (or at --rate).
    Switch,
    /// DHCP handshakes (DISCOVER/OFFER/REQUEST/ACK) with the LAN's gateway.
    Dhcp,
    /// DNS queries over UDP to the LAN's DNS address, after a DHCP lease.
    Dns,
}

/// Command line. Every flag can also come from an environment variable `V86_LOADTEST_*`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "v86-loadtest",
    version,
    about = "Synthetic v86 VMs that load-test v86-relay"
)]
pub struct Args {
    /// Base WebSocket URL of the relay; `/lan/{lan-prefix}{i}` is appended.
    #[arg(long, env = "V86_LOADTEST_URL", default_value = "ws://127.0.0.1:8086")]
    pub url: String,
    /// Number of clients (synthetic VMs). In switch mode an odd last client is left out.
    #[arg(long, env = "V86_LOADTEST_CLIENTS", default_value_t = 2)]
    pub clients: u32,
    /// Number of LANs the clients are spread over (round robin; pairs stay together).
    #[arg(long, env = "V86_LOADTEST_LANS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub lans: u32,
    /// LAN name prefix: client LANs are `{prefix}0 .. {prefix}{M-1}`.
    #[arg(long, env = "V86_LOADTEST_LAN_PREFIX", default_value = "lt-")]
    pub lan_prefix: String,
    /// What to do.
    #[arg(long, value_enum, env = "V86_LOADTEST_MODE", default_value_t = Mode::Switch)]
    pub mode: Mode,
    /// Ethernet frame size in bytes (header included, no FCS), 60..=65549.
    #[arg(long, env = "V86_LOADTEST_FRAME_SIZE", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(MIN_FRAME as i64..=MAX_FRAME as i64))]
    pub frame_size: u32,
    /// Seconds to measure (switch) or to hold the connections (idle).
    #[arg(long, env = "V86_LOADTEST_DURATION", default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of traffic before measuring (switch); settle time before sampling RSS (idle).
    #[arg(long, env = "V86_LOADTEST_WARMUP", default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds to wait after sending stops for frames still in flight.
    #[arg(long, env = "V86_LOADTEST_DRAIN", default_value_t = 2.0)]
    pub drain: f64,
    /// PID of a relay on this machine: its VmRSS is read from /proc/PID/status.
    #[arg(long, env = "V86_LOADTEST_RELAY_PID")]
    pub relay_pid: Option<u32>,
    /// Cap in frames per second per pair (both directions together; each client sends half).
    #[arg(long, env = "V86_LOADTEST_RATE")]
    pub rate: Option<f64>,
    /// Concurrent WebSocket handshakes while connecting.
    #[arg(long, env = "V86_LOADTEST_CONNECT_CONCURRENCY", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    /// Seconds allowed for one connection attempt.
    #[arg(long, env = "V86_LOADTEST_CONNECT_TIMEOUT", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Frames fed before each flush (0: automatic, about 64 KiB per batch, at most 256 frames).
    #[arg(long, env = "V86_LOADTEST_BATCH", default_value_t = 0)]
    pub batch: u32,
    /// Print one JSON object with the results as the last line.
    #[arg(long, env = "V86_LOADTEST_JSON")]
    pub json: bool,
    /// dhcp: handshakes in flight at once over all VMs [64]; dns: queries in flight per VM [8]
    /// (keep it under the relay's per-VM limit, 32, or the excess is answered REFUSED).
    #[arg(long, env = "V86_LOADTEST_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..))]
    pub in_flight: Option<u32>,
    /// dhcp: handshakes per VM, one after the other (later ones re-acquire the same lease).
    #[arg(long, env = "V86_LOADTEST_ROUNDS", default_value_t = 1)]
    pub rounds: u32,
    /// dhcp/dns: seconds to wait for a DHCP reply before retransmitting (4 tries per step),
    /// or for a DNS answer before counting the query lost.
    #[arg(long, env = "V86_LOADTEST_REPLY_TIMEOUT", default_value_t = 2.0)]
    pub reply_timeout: f64,
    /// dns: one name for every query (cached) or a new name each time (uncached).
    #[arg(long, value_enum, env = "V86_LOADTEST_DNS_NAMES", default_value_t = DnsNames::Cached)]
    pub dns_names: DnsNames,
    /// dns: the domain asked for (`www.DOMAIN`, or `qNONCE-VM-SEQ.DOMAIN`); the upstream
    /// must answer every name under it.
    #[arg(long, env = "V86_LOADTEST_DNS_DOMAIN", default_value = "bench.test")]
    pub dns_domain: String,
    /// dns: PID of the upstream DNS server, for its CPU use.
    #[arg(long, env = "V86_LOADTEST_UPSTREAM_PID")]
    pub upstream_pid: Option<u32>,
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// Relay memory, from /proc/PID/status, in KiB.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayMemory {
    pub pid: u32,
    pub rss_before_kib: Option<u64>,
    /// After all clients connected (idle: and `--warmup` seconds of settling).
    pub rss_after_kib: Option<u64>,
    /// At the end of the hold (idle) or of the measurement (switch).
    pub rss_end_kib: Option<u64>,
    /// (after - before) / clients connected at the "after" sample.
    pub rss_per_client_kib: Option<f64>,
    /// The divisor of `rss_per_client_kib`.
    pub clients_at_sample: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub url: String,
    pub clients: u32,
    pub lans: u32,
    pub frame_size: u32,
    pub duration_s: f64,
    pub connected: u64,
    pub connect_failed: u64,
    pub connect_seconds: f64,
    /// idle: clients whose connection was still open at the end of the hold.
    pub still_connected: u64,
    /// switch: pairs that heard each other and sent traffic.
    pub pairs_ready: u64,
    pub pairs: u64,
    /// switch: frames sent/received whose send stamp lies in the measurement window.
    pub sent: u64,
    pub received: u64,
    pub dropped: u64,
    pub drop_ratio: f64,
    pub reordered: u64,
    /// Frames a client received that it did not expect (not from its partner; idle: any).
    pub unexpected: u64,
    pub frames_per_s: f64,
    pub gbit_per_s: f64,
    pub rate_per_pair: Option<f64>,
    pub latency: Latency,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub relay: Option<RelayMemory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsReport>,
}

/// Reads VmRSS (KiB) of a process from /proc.
pub fn read_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Raises the soft open-files limit to the hard limit (safe API of the `rlimit` crate).
pub fn raise_nofile_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// The MAC of client `i`: locally administered, unicast, `02:00` + index.
pub fn client_mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, 0x00, b[0], b[1], b[2], b[3]]
}

fn frame_template(dst: [u8; 6], src: [u8; 6], kind: u8, from: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(MIN_FRAME)];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f[OFF_KIND] = kind;
    f[OFF_FROM..OFF_FROM + 4].copy_from_slice(&from.to_be_bytes());
    f
}

fn hello_frame(me: u32, heard: bool) -> Bytes {
    let mut f = frame_template(BROADCAST, client_mac(me), KIND_HELLO, me, MIN_FRAME);
    f[OFF_HEARD] = u8::from(heard);
    Bytes::from(f)
}

/// A parsed load-test frame.
struct Parsed {
    src: [u8; 6],
    kind: u8,
    heard: bool,
    seq: u64,
    stamp: u64,
}

fn parse(f: &[u8]) -> Option<Parsed> {
    if f.len() < HEADER_END || f[12..14] != ETHERTYPE.to_be_bytes() {
        return None;
    }
    let u64_at = |o: usize| u64::from_be_bytes(f[o..o + 8].try_into().unwrap_or_default());
    Some(Parsed {
        src: f[6..12].try_into().ok()?,
        kind: f[OFF_KIND],
        heard: f[OFF_HEARD] != 0,
        seq: u64_at(OFF_SEQ),
        stamp: u64_at(OFF_STAMP),
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 2 significant digits (1 %): about 20 KiB per receiver.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 2).expect("valid histogram bounds")
}

/// Collects error messages: counts all, keeps the first few.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    samples: std::sync::Mutex<Vec<String>>,
}

impl Errors {
    fn push(&self, msg: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.samples.lock()
            && s.len() < 10
        {
            s.push(msg);
        }
    }
    fn take(&self) -> (u64, Vec<String>) {
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        (self.count.load(Ordering::Relaxed), samples)
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn lan_url(args: &Args, lan: u32) -> String {
    format!(
        "{}/lan/{}{}",
        args.url.trim_end_matches('/'),
        args.lan_prefix,
        lan
    )
}

async fn connect(url: &str, cfg: WebSocketConfig, limit: Duration) -> anyhow::Result<Ws> {
    let (ws, _resp) = timeout(
        limit,
        tokio_tungstenite::connect_async_with_config(url, Some(cfg), true),
    )
    .await
    .with_context(|| format!("connect to {url}: timed out"))?
    .with_context(|| format!("connect to {url}"))?;
    Ok(ws)
}

fn check_args(args: &Args) -> anyhow::Result<()> {
    if !args.url.starts_with("ws://") {
        bail!("--url must start with ws:// (got {})", args.url);
    }
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be > 0");
    }
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate must be > 0");
    }
    if !(args.reply_timeout.is_finite() && args.reply_timeout > 0.0) {
        bail!("--reply-timeout must be > 0 seconds");
    }
    Ok(())
}

/// Runs the load test and returns its report (also what the binary prints).
pub async fn run(args: &Args) -> anyhow::Result<Report> {
    check_args(args)?;
    match args.mode {
        Mode::Idle => run_idle(args).await,
        Mode::Switch => run_switch(args).await,
        Mode::Dhcp => services::run_dhcp(args).await,
        Mode::Dns => services::run_dns(args).await,
    }
}

fn base_report(args: &Args) -> Report {
    Report {
        mode: format!("{:?}", args.mode).to_lowercase(),
        url: args.url.clone(),
        clients: args.clients,
        lans: args.lans,
        frame_size: args.frame_size,
        duration_s: args.duration,
        rate_per_pair: args.rate,
        ..Report::default()
    }
}

fn relay_memory(
    pid: Option<u32>,
    before: Option<u64>,
    after: Option<u64>,
    end: Option<u64>,
    n: u64,
) -> Option<RelayMemory> {
    let pid = pid?;
    let per_client = match (before, after) {
        (Some(b), Some(a)) if n > 0 => Some((a as f64 - b as f64) / n as f64),
        _ => None,
    };
    Some(RelayMemory {
        pid,
        rss_before_kib: before,
        rss_after_kib: after,
        rss_end_kib: end,
        rss_per_client_kib: per_client,
        clients_at_sample: n,
    })
}

// ---------------------------------------------------------------------------------------------
// idle mode

async fn run_idle(args: &Args) -> anyhow::Result<Report> {
    let n = args.clients;
    let rss = || args.relay_pid.and_then(read_rss_kib);
    let rss_before = rss();
    // Small buffers: thousands of idle sockets must not cost the client gigabytes.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let errors = Arc::new(Errors::default());
    let unexpected = Arc::new(AtomicU64::new(0));
    let alive = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let limit = secs(args.connect_timeout);
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let url = lan_url(args, i % args.lans);
        let (sem, errors, unexpected, alive) = (
            sem.clone(),
            errors.clone(),
            unexpected.clone(),
            alive.clone(),
        );
        let (done_tx, mut stop_rx) = (done_tx.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let ws = {
                let _permit = sem.acquire().await;
                connect(&url, cfg, limit).await
            };
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    errors.push(format!("client {i}: {e:#}"));
                    let _ = done_tx.send(false);
                    return;
                }
            };
            // One frame to our own MAC: the relay learns us, and never sends it back out.
            let me = client_mac(i);
            let frame = Bytes::from(frame_template(me, me, KIND_IDLE, i, MIN_FRAME));
            if let Err(e) = ws.send(Message::Binary(frame)).await {
                errors.push(format!("client {i}: send: {e}"));
                let _ = done_tx.send(false);
                return;
            }
            alive.fetch_add(1, Ordering::Relaxed);
            let _ = done_tx.send(true);
            loop {
                tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Binary(_))) => { unexpected.fetch_add(1, Ordering::Relaxed); }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => { errors.push(format!("client {i}: {e}")); break; }
                        None => { errors.push(format!("client {i}: relay closed the connection")); break; }
                    },
                    _ = stop_rx.changed() => {
                        let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                        return;
                    }
                }
            }
            alive.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    drop(done_tx);
    let (mut connected, mut failed) = (0u64, 0u64);
    let mut next_progress = Instant::now() + Duration::from_secs(2);
    while connected + failed < u64::from(n) {
        let Some(ok) = done_rx.recv().await else {
            break;
        };
        if ok {
            connected += 1;
        } else {
            failed += 1;
        }
        if Instant::now() >= next_progress {
            eprintln!("  connecting: {connected} connected, {failed} failed of {n}");
            next_progress += Duration::from_secs(2);
        }
    }
    let connect_seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "connected {connected}/{n} in {connect_seconds:.2} s ({:.0}/s), {failed} failed",
        connected as f64 / connect_seconds.max(1e-9)
    );
    let settle = secs(args.warmup.min(args.duration));
    tokio::time::sleep(settle).await;
    let rss_after = rss();
    // Divide by the clients still open now: a relay may accept a handshake and then close
    // the socket (a full LAN, say).
    let alive_after = alive.load(Ordering::Relaxed);
    tokio::time::sleep(secs(args.duration).saturating_sub(settle)).await;
    let rss_end = rss();
    let still_connected = alive.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let (errors, error_samples) = errors.take();
    Ok(Report {
        connected,
        connect_failed: failed,
        connect_seconds,
        still_connected,
        unexpected: unexpected.load(Ordering::Relaxed),
        errors,
        error_samples,
        relay: relay_memory(args.relay_pid, rss_before, rss_after, rss_end, alive_after),
        ..base_report(args)
    })
}

// ---------------------------------------------------------------------------------------------
// switch mode

/// What a sender publishes for its partner's receiver and for the report.
#[derive(Default)]
struct SendCounters {
    /// Frames whose stamp lies in the measurement window.
    window: AtomicU64,
    done: AtomicBool,
}

struct SwitchCtx {
    base: Instant,
    frame_len: usize,
    batch: usize,
    /// Frames per second per client (half the per-pair rate).
    rate: Option<f64>,
    win_start_ns: AtomicU64,
    win_end_ns: AtomicU64,
    drain: Duration,
    counters: Vec<SendCounters>,
    errors: Errors,
}

#[derive(Default)]
struct RxStats {
    received: u64,
    reordered: u64,
    unexpected: u64,
    hist: Option<Histogram<u64>>,
}

fn ns_since(base: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(base).as_nanos() as u64
}

async fn run_switch(args: &Args) -> anyhow::Result<Report> {
    let n = args.clients & !1;
    if n == 0 {
        bail!("switch mode needs at least 2 clients");
    }
    if n != args.clients {
        eprintln!(
            "note: switch mode uses pairs; client {} is left out",
            args.clients - 1
        );
    }
    let pairs = n / 2;
    let rss = || args.relay_pid.and_then(read_rss_kib);
    let rss_before = rss();
    let frame_len = args.frame_size as usize;
    let batch = if args.batch > 0 {
        args.batch as usize
    } else {
        (65536 / frame_len).clamp(1, 256)
    };
    let cfg = WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(MAX_FRAME + 1024))
        .max_frame_size(Some(MAX_FRAME + 1024));
    let ctx = Arc::new(SwitchCtx {
        base: Instant::now(),
        frame_len,
        batch,
        rate: args.rate.map(|r| r / 2.0),
        win_start_ns: AtomicU64::new(u64::MAX),
        win_end_ns: AtomicU64::new(u64::MAX),
        drain: secs(args.drain),
        counters: (0..n).map(|_| SendCounters::default()).collect(),
        errors: Errors::default(),
    });

    // Connect everyone first, so every hello reaches a LAN whose ports all exist.
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let limit = secs(args.connect_timeout);
    let mut conns = Vec::with_capacity(n as usize);
    for i in 0..n {
        let url = lan_url(args, (i / 2) % args.lans);
        let sem = sem.clone();
        conns.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            connect(&url, cfg, limit).await
        }));
    }
    let mut sockets: Vec<Option<Ws>> = Vec::with_capacity(n as usize);
    let mut failed = 0u64;
    for (i, c) in conns.into_iter().enumerate() {
        match c.await {
            Ok(Ok(ws)) => sockets.push(Some(ws)),
            Ok(Err(e)) => {
                ctx.errors.push(format!("client {i}: {e:#}"));
                failed += 1;
                sockets.push(None);
            }
            Err(e) => {
                ctx.errors.push(format!("client {i}: {e}"));
                failed += 1;
                sockets.push(None);
            }
        }
    }
    let connected = u64::from(n) - failed;
    let connect_seconds = t0.elapsed().as_secs_f64();
    eprintln!("connected {connected}/{n} in {connect_seconds:.2} s, {failed} failed");
    let rss_after = rss();

    // Pairs with a missing member are closed.
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let ready = Arc::new(AtomicUsize::new(0));
    let ready_notify = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    let mut active_pairs = 0u64;
    let mut it = sockets.into_iter();
    for p in 0..pairs {
        let (a, b) = (it.next().flatten(), it.next().flatten());
        let (Some(a), Some(b)) = (a, b) else {
            continue;
        };
        active_pairs += 1;
        for (i, ws) in [(2 * p, a), (2 * p + 1, b)] {
            let (ctx, start_rx, ready, notify) = (
                ctx.clone(),
                start_rx.clone(),
                ready.clone(),
                ready_notify.clone(),
            );
            tasks.push(tokio::spawn(switch_client(
                ws,
                i,
                i ^ 1,
                ctx,
                start_rx,
                ready,
                notify,
            )));
        }
    }
    let active_clients = (active_pairs * 2) as usize;
    if active_pairs == 0 {
        let (errors, error_samples) = ctx.errors.take();
        return Ok(Report {
            connected,
            connect_failed: failed,
            connect_seconds,
            pairs: u64::from(pairs),
            errors,
            error_samples,
            ..base_report(args)
        });
    }

    // Wait until every client heard its partner (or give up after a while).
    let setup_deadline =
        Instant::now() + Duration::from_secs(10) + Duration::from_millis(u64::from(n));
    loop {
        let notified = ready_notify.notified();
        if ready.load(Ordering::Acquire) >= active_clients || Instant::now() >= setup_deadline {
            break;
        }
        let _ = timeout_at(setup_deadline.into(), notified).await;
    }
    let ready_clients = ready.load(Ordering::Acquire);
    if ready_clients < active_clients {
        ctx.errors.push(format!(
            "{} of {active_clients} clients did not hear their partner's hello; they do not send",
            active_clients - ready_clients
        ));
    }

    let start = Instant::now() + Duration::from_millis(20);
    let win_start = start + secs(args.warmup);
    let win_end = win_start + secs(args.duration);
    ctx.win_start_ns
        .store(ns_since(ctx.base, win_start), Ordering::Release);
    ctx.win_end_ns
        .store(ns_since(ctx.base, win_end), Ordering::Release);
    let _ = start_tx.send(Some(start));
    eprintln!(
        "{active_pairs} pairs running: warmup {:.1} s, measuring {:.1} s",
        args.warmup, args.duration
    );
    sleep_until(win_end.into()).await;
    let rss_end = rss();

    let mut received = 0u64;
    let mut reordered = 0u64;
    let mut unexpected = 0u64;
    let mut hist = new_histogram();
    let mut pairs_ready = 0u64;
    let mut heard = vec![false; n as usize];
    for t in tasks {
        match t.await {
            Ok((i, h, s)) => {
                heard[i as usize] = h;
                received += s.received;
                reordered += s.reordered;
                unexpected += s.unexpected;
                if let Some(h) = s.hist {
                    let _ = hist.add(h);
                }
            }
            Err(e) => ctx.errors.push(format!("client task failed: {e}")),
        }
    }
    for p in 0..pairs as usize {
        if heard[2 * p] && heard[2 * p + 1] {
            pairs_ready += 1;
        }
    }
    let sent: u64 = ctx
        .counters
        .iter()
        .map(|c| c.window.load(Ordering::Acquire))
        .sum();
    let dur = args.duration;
    let (errors, error_samples) = ctx.errors.take();
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    let latency = if hist.is_empty() {
        Latency::default()
    } else {
        Latency {
            samples: hist.len(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: hist.max() as f64 / 1000.0,
            mean_us: hist.mean() / 1000.0,
        }
    };
    Ok(Report {
        connected,
        connect_failed: failed,
        connect_seconds,
        pairs: u64::from(pairs),
        pairs_ready,
        sent,
        received,
        dropped: sent.saturating_sub(received),
        drop_ratio: if sent > 0 {
            sent.saturating_sub(received) as f64 / sent as f64
        } else {
            0.0
        },
        reordered,
        unexpected,
        frames_per_s: received as f64 / dur,
        gbit_per_s: received as f64 * frame_len as f64 * 8.0 / dur / 1e9,
        latency,
        errors,
        error_samples,
        relay: relay_memory(args.relay_pid, rss_before, rss_after, rss_end, connected),
        ..base_report(args)
    })
}

/// One client of a pair: hello phase, then a sender task and this task as the receiver.
/// Returns (index, heard partner, receive stats).
async fn switch_client(
    mut ws: Ws,
    me: u32,
    partner: u32,
    ctx: Arc<SwitchCtx>,
    mut start_rx: watch::Receiver<Option<Instant>>,
    ready: Arc<AtomicUsize>,
    ready_notify: Arc<tokio::sync::Notify>,
) -> (u32, bool, RxStats) {
    let partner_mac = client_mac(partner);
    let mut heard = false;
    let mut stats = RxStats::default();
    // Hello phase: broadcast a hello every 200 ms until we heard the partner; answer a hello
    // from a partner who has not heard us yet.
    let mut next_hello = Instant::now();
    let start = loop {
        if let Some(s) = *start_rx.borrow_and_update() {
            break s;
        }
        if !heard && Instant::now() >= next_hello {
            if let Err(e) = ws.send(Message::Binary(hello_frame(me, false))).await {
                ctx.errors.push(format!("client {me}: send hello: {e}"));
                return (me, heard, stats);
            }
            next_hello = Instant::now() + Duration::from_millis(200);
        }
        let wake = if heard {
            Instant::now() + Duration::from_secs(3600)
        } else {
            next_hello
        };
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(f))) => match parse(&f) {
                    Some(p) if p.src == partner_mac && p.kind == KIND_HELLO => {
                        if !heard {
                            heard = true;
                            ready.fetch_add(1, Ordering::AcqRel);
                            ready_notify.notify_one();
                        }
                        if !p.heard
                            && let Err(e) = ws.send(Message::Binary(hello_frame(me, true))).await
                        {
                            ctx.errors.push(format!("client {me}: send hello: {e}"));
                            return (me, heard, stats);
                        }
                    }
                    Some(p) if p.kind == KIND_HELLO => {} // another pair's hello (flooded)
                    _ => stats.unexpected += 1,
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    ctx.errors.push(format!("client {me}: {e}"));
                    return (me, heard, stats);
                }
                None => {
                    ctx.errors.push(format!("client {me}: relay closed the connection"));
                    return (me, heard, stats);
                }
            },
            _ = sleep_until(wake.into()) => {}
            r = start_rx.changed() => if r.is_err() { return (me, heard, stats); },
        }
    };

    let (sink, stream) = ws.split();
    let sender = if heard {
        Some(tokio::spawn(send_loop(
            sink,
            me,
            partner_mac,
            start,
            ctx.clone(),
        )))
    } else {
        // Not sure the switch knows our partner: sending would flood the LAN. Only receive.
        ctx.counters[me as usize]
            .done
            .store(true, Ordering::Release);
        drop(sink);
        None
    };
    let stream = receive_loop(stream, me, partner, &mut stats, &ctx).await;
    if let Some(s) = sender
        && let Ok(Some(sink)) = s.await
        && let Ok(mut ws) = sink.reunite(stream)
    {
        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    }
    (me, heard, stats)
}

/// Sends unicast data frames to the partner from `start` until the window ends.
/// Returns the sink for a clean close, or None after an error.
async fn send_loop(
    mut sink: SplitSink<Ws, Message>,
    me: u32,
    partner_mac: [u8; 6],
    start: Instant,
    ctx: Arc<SwitchCtx>,
) -> Option<SplitSink<Ws, Message>> {
    let win_start = ctx.win_start_ns.load(Ordering::Acquire);
    let win_end = ctx.win_end_ns.load(Ordering::Acquire);
    let end = ctx.base + Duration::from_nanos(win_end);
    let hard_end = end + ctx.drain;
    let counters = &ctx.counters[me as usize];
    let template = frame_template(partner_mac, client_mac(me), KIND_DATA, me, ctx.frame_len);
    let len = template.len();
    // Frames are cut from one buffer; once tungstenite has copied a batch into its write
    // buffer the Bytes are gone and `reserve` reuses the same allocation.
    let mut buf = BytesMut::with_capacity(len * ctx.batch);
    let mut seq = 0u64;
    let mut in_window = 0u64;
    sleep_until(start.into()).await;
    let result = timeout_at(hard_end.into(), async {
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok::<(), tokio_tungstenite::tungstenite::Error>(());
            }
            let n = match ctx.rate {
                None => ctx.batch,
                Some(rate) => {
                    let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
                    let owed = due.saturating_sub(seq);
                    if owed == 0 {
                        let next = start + Duration::from_secs_f64((seq + 1) as f64 / rate);
                        sleep_until(next.min(end).into()).await;
                        continue;
                    }
                    owed.min(ctx.batch as u64) as usize
                }
            };
            for _ in 0..n {
                buf.reserve(len);
                buf.extend_from_slice(&template);
                let stamp = ns_since(ctx.base, Instant::now());
                buf[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&seq.to_be_bytes());
                buf[OFF_STAMP..OFF_STAMP + 8].copy_from_slice(&stamp.to_be_bytes());
                seq += 1;
                if stamp >= win_start && stamp < win_end {
                    in_window += 1;
                }
                sink.feed(Message::Binary(buf.split().freeze())).await?;
            }
            sink.flush().await?;
            counters.window.store(in_window, Ordering::Release);
            // Let this worker's receivers run: a socket that always takes the batch would
            // otherwise keep the sender spinning and starve them.
            tokio::task::yield_now().await;
        }
    })
    .await;
    counters.window.store(in_window, Ordering::Release);
    counters.done.store(true, Ordering::Release);
    match result {
        Ok(Ok(())) => Some(sink),
        Ok(Err(e)) => {
            ctx.errors.push(format!("client {me}: send: {e}"));
            None
        }
        Err(_) => {
            ctx.errors.push(format!(
                "client {me}: send stuck past the drain time (relay not reading)"
            ));
            None
        }
    }
}

/// Reads frames until the partner's sender is done and all its window frames arrived, or the
/// drain time after the window is over.
async fn receive_loop(
    mut stream: SplitStream<Ws>,
    me: u32,
    partner: u32,
    stats: &mut RxStats,
    ctx: &SwitchCtx,
) -> SplitStream<Ws> {
    let partner_mac = client_mac(partner);
    let peer = &ctx.counters[partner as usize];
    let win_start = ctx.win_start_ns.load(Ordering::Acquire);
    let win_end = ctx.win_end_ns.load(Ordering::Acquire);
    let end = ctx.base + Duration::from_nanos(win_end);
    let hard_end = end + ctx.drain;
    let mut hist = new_histogram();
    let mut next_seq = 0u64;
    let check = tokio::time::sleep_until(end.into());
    tokio::pin!(check);
    let finished = |received: u64| {
        peer.done.load(Ordering::Acquire) && received >= peer.window.load(Ordering::Acquire)
    };
    loop {
        tokio::select! {
            biased;
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(f))) => {
                    let now = ns_since(ctx.base, Instant::now());
                    match parse(&f) {
                        Some(p) if p.src == partner_mac && p.kind == KIND_DATA => {
                            if p.seq < next_seq {
                                stats.reordered += 1;
                            } else {
                                next_seq = p.seq + 1;
                            }
                            if p.stamp >= win_start && p.stamp < win_end {
                                stats.received += 1;
                                hist.saturating_record(now.saturating_sub(p.stamp));
                            }
                            if now >= win_end && finished(stats.received) {
                                break;
                            }
                        }
                        Some(p) if p.kind == KIND_HELLO => {}
                        _ => stats.unexpected += 1,
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    ctx.errors.push(format!("client {me}: receive: {e}"));
                    break;
                }
                None => {
                    ctx.errors.push(format!("client {me}: relay closed the connection"));
                    break;
                }
            },
            _ = &mut check => {
                let now = Instant::now();
                if finished(stats.received) || now >= hard_end {
                    break;
                }
                check.as_mut().reset((now + Duration::from_millis(20)).min(hard_end).into());
            }
        }
    }
    stats.hist = Some(hist);
    stream
}

/// Human-readable lines for a report.
pub fn format_report(r: &Report) -> String {
    let mut out = Vec::new();
    let mb = |k: u64| k as f64 / 1024.0;
    match r.mode.as_str() {
        "idle" => {
            out.push(format!(
                "idle: {} clients in {} LANs: connected {} ({} failed) in {:.2} s, {} still connected after {:.1} s",
                r.clients, r.lans, r.connected, r.connect_failed, r.connect_seconds, r.still_connected, r.duration_s
            ));
            out.push(format!(
                "frames received while idle: {} (expected 0)",
                r.unexpected
            ));
        }
        "dhcp" | "dns" => services::format_lines(r, &mut out),
        _ => {
            out.push(format!(
                "switch: {} pairs ({} ready) in {} LANs, frame {} B, {:.1} s measured, rate {}",
                r.pairs,
                r.pairs_ready,
                r.lans,
                r.frame_size,
                r.duration_s,
                r.rate_per_pair
                    .map_or("unlimited".to_owned(), |x| format!("{x} frames/s per pair"))
            ));
            out.push(format!(
                "frames: sent {} received {} dropped {} ({:.3} %), reordered {}, unexpected {}",
                r.sent,
                r.received,
                r.dropped,
                r.drop_ratio * 100.0,
                r.reordered,
                r.unexpected
            ));
            out.push(format!(
                "throughput: {:.0} frames/s, {:.3} Gbit/s of Ethernet frames",
                r.frames_per_s, r.gbit_per_s
            ));
            let l = &r.latency;
            out.push(format!(
                "one-way latency (us): p50 {:.1}  p99 {:.1}  p999 {:.1}  max {:.1}  mean {:.1}  (n={})",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.samples
            ));
        }
    }
    if let Some(m) = &r.relay {
        let f = |v: Option<u64>| v.map_or("?".to_owned(), |k| format!("{:.1} MiB", mb(k)));
        out.push(format!(
            "relay {} RSS: before {}, after connect {}, end {}; per client {} ({} clients open)",
            m.pid,
            f(m.rss_before_kib),
            f(m.rss_after_kib),
            f(m.rss_end_kib),
            m.rss_per_client_kib
                .map_or("?".to_owned(), |k| format!("{k:.1} KiB")),
            m.clients_at_sample
        ));
    }
    out.push(format!("errors: {}", r.errors));
    for e in &r.error_samples {
        out.push(format!("  {e}"));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_unique_local_unicast() {
        let m = client_mac(0x0102_0304);
        assert_eq!(m, [0x02, 0x00, 1, 2, 3, 4]);
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
        assert_ne!(client_mac(1), client_mac(2));
    }

    #[test]
    fn frames_are_padded_and_parse_back() {
        let h = hello_frame(7, true);
        assert_eq!(h.len(), MIN_FRAME);
        let p = parse(&h).unwrap();
        assert_eq!((p.src, p.kind, p.heard), (client_mac(7), KIND_HELLO, true));
        assert_eq!(&h[0..6], &BROADCAST);
        let mut d = frame_template(client_mac(1), client_mac(2), KIND_DATA, 2, 1514);
        d[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&42u64.to_be_bytes());
        d[OFF_STAMP..OFF_STAMP + 8].copy_from_slice(&99u64.to_be_bytes());
        assert_eq!(d.len(), 1514);
        let p = parse(&d).unwrap();
        assert_eq!((p.seq, p.stamp, p.kind), (42, 99, KIND_DATA));
        assert!(parse(&d[..20]).is_none());
        d[12] = 0x08;
        assert!(parse(&d).is_none(), "other EtherTypes are not ours");
    }

    #[test]
    fn rss_of_self_is_readable() {
        assert!(read_rss_kib(std::process::id()).unwrap() > 0);
        assert!(read_rss_kib(u32::MAX).is_none());
    }
}
