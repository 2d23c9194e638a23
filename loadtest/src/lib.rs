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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod idle;
pub mod packets;
mod report;
mod services;
mod switch;

pub use report::{Latency, RelayMemory, Report, format_report};
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
    /// switch: base URL for the second client of each pair (another node of a relay
    /// cluster, docs/cluster.md), so every frame crosses the cluster bus. [default: --url]
    #[arg(long, env = "V86_LOADTEST_PEER_URL")]
    pub peer_url: Option<String>,
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
    lan_url_at(&args.url, args, lan)
}

fn lan_url_at(base: &str, args: &Args, lan: u32) -> String {
    format!(
        "{}/lan/{}{}",
        base.trim_end_matches('/'),
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
        Mode::Idle => idle::run_idle(args).await,
        Mode::Switch => switch::run_switch(args).await,
        Mode::Dhcp => services::run_dhcp(args).await,
        Mode::Dns => services::run_dns(args).await,
    }
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
