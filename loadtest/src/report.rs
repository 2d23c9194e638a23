//! What a run measured, and how it is printed.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Args;
use crate::services::{self, DhcpReport, DnsReport};

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

impl Latency {
    pub(crate) fn of(hist: &Histogram<u64>) -> Latency {
        if hist.is_empty() {
            return Latency::default();
        }
        let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
        Latency {
            samples: hist.len(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: hist.max() as f64 / 1000.0,
            mean_us: hist.mean() / 1000.0,
        }
    }
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

pub(crate) fn base_report(args: &Args) -> Report {
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

pub(crate) fn relay_memory(
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
