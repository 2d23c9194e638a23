//! `switch` mode: pairs of VMs blasting unicast frames at each other through the relay.
//!
//! This file runs the whole test (connect, pair up, wait for every hello, open the
//! measurement window, sum up); `client` is what each VM of a pair does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::report::{base_report, relay_memory};
use crate::{
    Args, Errors, Latency, MAX_FRAME, Report, Ws, connect, lan_url_at, new_histogram, read_rss_kib,
    secs,
};

mod client;

use client::switch_client;

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

impl SwitchCtx {
    fn new(args: &Args, clients: u32) -> SwitchCtx {
        let frame_len = args.frame_size as usize;
        let batch = if args.batch > 0 {
            args.batch as usize
        } else {
            (65536 / frame_len).clamp(1, 256)
        };
        SwitchCtx {
            base: Instant::now(),
            frame_len,
            batch,
            rate: args.rate.map(|r| r / 2.0),
            // Set when the window opens, after every pair is ready.
            win_start_ns: AtomicU64::new(u64::MAX),
            win_end_ns: AtomicU64::new(u64::MAX),
            drain: secs(args.drain),
            counters: (0..clients).map(|_| SendCounters::default()).collect(),
            errors: Errors::default(),
        }
    }
}

/// How many clients have heard their partner; `notify` wakes the run on each new one.
#[derive(Default)]
struct Readiness {
    count: AtomicUsize,
    notify: Notify,
}

#[derive(Default)]
struct RxStats {
    received: u64,
    reordered: u64,
    unexpected: u64,
    hist: Option<Histogram<u64>>,
}

/// What every client's receiver measured, summed.
struct Totals {
    received: u64,
    reordered: u64,
    unexpected: u64,
    hist: Histogram<u64>,
    /// By client index: whether it heard its partner.
    heard: Vec<bool>,
}

fn ns_since(base: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(base).as_nanos() as u64
}

pub(crate) async fn run_switch(args: &Args) -> anyhow::Result<Report> {
    let n = paired_clients(args)?;
    let pairs = n / 2;
    let rss = || args.relay_pid.and_then(read_rss_kib);
    let rss_before = rss();
    let ctx = Arc::new(SwitchCtx::new(args, n));

    // Connect everyone first, so every hello reaches a LAN whose ports all exist.
    let t0 = Instant::now();
    let (sockets, failed) = connect_clients(args, n, &ctx).await;
    let connected = u64::from(n) - failed;
    let connect_seconds = t0.elapsed().as_secs_f64();
    eprintln!("connected {connected}/{n} in {connect_seconds:.2} s, {failed} failed");
    let rss_after = rss();
    let connect_report = Report {
        connected,
        connect_failed: failed,
        connect_seconds,
        pairs: u64::from(pairs),
        ..base_report(args)
    };

    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let readiness = Arc::new(Readiness::default());
    let (tasks, active_pairs) = spawn_pairs(sockets, &ctx, &start_rx, &readiness);
    if active_pairs == 0 {
        let (errors, error_samples) = ctx.errors.take();
        return Ok(Report {
            errors,
            error_samples,
            ..connect_report
        });
    }
    wait_until_ready(&ctx, &readiness, (active_pairs * 2) as usize, n).await;
    let win_end = open_window(&ctx, args, &start_tx);
    eprintln!(
        "{active_pairs} pairs running: warmup {:.1} s, measuring {:.1} s",
        args.warmup, args.duration
    );
    sleep_until(win_end.into()).await;
    let rss_end = rss();

    let totals = collect(tasks, n, &ctx).await;
    let pairs_ready = (0..pairs as usize)
        .filter(|&p| totals.heard[2 * p] && totals.heard[2 * p + 1])
        .count() as u64;
    let sent: u64 = ctx
        .counters
        .iter()
        .map(|c| c.window.load(Ordering::Acquire))
        .sum();
    let received = totals.received;
    let dur = args.duration;
    let (errors, error_samples) = ctx.errors.take();
    Ok(Report {
        pairs_ready,
        sent,
        received,
        dropped: sent.saturating_sub(received),
        drop_ratio: if sent > 0 {
            sent.saturating_sub(received) as f64 / sent as f64
        } else {
            0.0
        },
        reordered: totals.reordered,
        unexpected: totals.unexpected,
        frames_per_s: received as f64 / dur,
        gbit_per_s: received as f64 * ctx.frame_len as f64 * 8.0 / dur / 1e9,
        latency: Latency::of(&totals.hist),
        errors,
        error_samples,
        relay: relay_memory(args.relay_pid, rss_before, rss_after, rss_end, connected),
        ..connect_report
    })
}

/// The number of clients that take part: pairs only, so an odd last one is left out.
fn paired_clients(args: &Args) -> anyhow::Result<u32> {
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
    Ok(n)
}

/// Connects clients `0..n` (bounded concurrency), partners to the same LAN. Returns the
/// sockets by index, None where connecting failed, and the number of failures.
async fn connect_clients(args: &Args, n: u32, ctx: &SwitchCtx) -> (Vec<Option<Ws>>, u64) {
    let cfg = WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(MAX_FRAME + 1024))
        .max_frame_size(Some(MAX_FRAME + 1024));
    let sem = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let limit = secs(args.connect_timeout);
    let mut conns = Vec::with_capacity(n as usize);
    for i in 0..n {
        let base = match &args.peer_url {
            Some(peer) if i % 2 == 1 => peer,
            _ => &args.url,
        };
        let url = lan_url_at(base, args, (i / 2) % args.lans);
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
    (sockets, failed)
}

type ClientTask = JoinHandle<(u32, bool, RxStats)>;

/// Starts both clients of every pair whose two sockets connected; the sockets of a pair
/// with a missing member are closed. Returns the tasks and the number of active pairs.
fn spawn_pairs(
    sockets: Vec<Option<Ws>>,
    ctx: &Arc<SwitchCtx>,
    start_rx: &watch::Receiver<Option<Instant>>,
    readiness: &Arc<Readiness>,
) -> (Vec<ClientTask>, u64) {
    let pairs = sockets.len() as u32 / 2;
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
            tasks.push(tokio::spawn(switch_client(
                ws,
                i,
                i ^ 1,
                ctx.clone(),
                start_rx.clone(),
                readiness.clone(),
            )));
        }
    }
    (tasks, active_pairs)
}

/// Waits until every client heard its partner, or gives up after 10 s plus 1 ms per client
/// (recording how many never did: they do not send).
async fn wait_until_ready(ctx: &SwitchCtx, readiness: &Readiness, active_clients: usize, n: u32) {
    let setup_deadline =
        Instant::now() + Duration::from_secs(10) + Duration::from_millis(u64::from(n));
    loop {
        let notified = readiness.notify.notified();
        if readiness.count.load(Ordering::Acquire) >= active_clients
            || Instant::now() >= setup_deadline
        {
            break;
        }
        let _ = timeout_at(setup_deadline.into(), notified).await;
    }
    let ready_clients = readiness.count.load(Ordering::Acquire);
    if ready_clients < active_clients {
        ctx.errors.push(format!(
            "{} of {active_clients} clients did not hear their partner's hello; they do not send",
            active_clients - ready_clients
        ));
    }
}

/// Publishes the measurement window (after `--warmup`, `--duration` long) and starts every
/// client 20 ms from now. Returns the end of the window.
fn open_window(ctx: &SwitchCtx, args: &Args, start_tx: &watch::Sender<Option<Instant>>) -> Instant {
    let start = Instant::now() + Duration::from_millis(20);
    let win_start = start + secs(args.warmup);
    let win_end = win_start + secs(args.duration);
    ctx.win_start_ns
        .store(ns_since(ctx.base, win_start), Ordering::Release);
    ctx.win_end_ns
        .store(ns_since(ctx.base, win_end), Ordering::Release);
    let _ = start_tx.send(Some(start));
    win_end
}

/// Waits for every client task and sums what the receivers measured.
async fn collect(tasks: Vec<ClientTask>, n: u32, ctx: &SwitchCtx) -> Totals {
    let mut totals = Totals {
        received: 0,
        reordered: 0,
        unexpected: 0,
        hist: new_histogram(),
        heard: vec![false; n as usize],
    };
    for t in tasks {
        match t.await {
            Ok((i, heard, s)) => {
                totals.heard[i as usize] = heard;
                totals.received += s.received;
                totals.reordered += s.reordered;
                totals.unexpected += s.unexpected;
                if let Some(h) = s.hist {
                    let _ = totals.hist.add(h);
                }
            }
            Err(e) => ctx.errors.push(format!("client task failed: {e}")),
        }
    }
    totals
}
