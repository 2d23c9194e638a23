//! `switch` mode: pairs of VMs blasting unicast frames at each other through the relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, watch};
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::report::{base_report, relay_memory};
use crate::{
    Args, Errors, KIND_DATA, KIND_HELLO, Latency, MAX_FRAME, OFF_SEQ, OFF_STAMP, Report, Ws,
    client_mac, connect, frame_template, hello_frame, lan_url, new_histogram, parse, read_rss_kib,
    secs,
};

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

pub(crate) async fn run_switch(args: &Args) -> anyhow::Result<Report> {
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
