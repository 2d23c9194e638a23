//! `idle` mode: many connected VMs that each sent one frame and then stay quiet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::report::{base_report, relay_memory};
use crate::{
    Args, Errors, KIND_IDLE, MIN_FRAME, Report, Ws, client_mac, connect, frame_template, lan_url,
    read_rss_kib, secs,
};

/// What every idle client shares with the run.
struct IdleShared {
    connect_slots: Semaphore,
    ws_config: WebSocketConfig,
    connect_timeout: Duration,
    errors: Errors,
    /// Frames received while idle (there should be none).
    unexpected: AtomicU64,
    /// Clients whose connection is open.
    alive: AtomicU64,
}

pub(crate) async fn run_idle(args: &Args) -> anyhow::Result<Report> {
    let n = args.clients;
    let rss = || args.relay_pid.and_then(read_rss_kib);
    let rss_before = rss();
    let shared = Arc::new(IdleShared {
        connect_slots: Semaphore::new(args.connect_concurrency as usize),
        // Small buffers: thousands of idle sockets must not cost the client gigabytes.
        ws_config: WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0),
        connect_timeout: secs(args.connect_timeout),
        errors: Errors::default(),
        unexpected: AtomicU64::new(0),
        alive: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::unbounded_channel::<bool>();
    let t0 = Instant::now();
    let tasks: Vec<JoinHandle<()>> = (0..n)
        .map(|i| {
            let url = lan_url(args, i % args.lans);
            let client = idle_client(i, url, shared.clone(), done_tx.clone(), stop_rx.clone());
            tokio::spawn(client)
        })
        .collect();
    drop(done_tx);
    let (connected, failed) = count_connections(n, done_rx).await;
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
    let alive_after = shared.alive.load(Ordering::Relaxed);
    tokio::time::sleep(secs(args.duration).saturating_sub(settle)).await;
    let rss_end = rss();
    let still_connected = shared.alive.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let (errors, error_samples) = shared.errors.take();
    Ok(Report {
        connected,
        connect_failed: failed,
        connect_seconds,
        still_connected,
        unexpected: shared.unexpected.load(Ordering::Relaxed),
        errors,
        error_samples,
        relay: relay_memory(args.relay_pid, rss_before, rss_after, rss_end, alive_after),
        ..base_report(args)
    })
}

/// Tallies the clients' connect outcomes as they come in, with progress every 2 s.
/// Returns (connected, failed).
async fn count_connections(n: u32, mut done_rx: mpsc::UnboundedReceiver<bool>) -> (u64, u64) {
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
    (connected, failed)
}

/// One idle client: join the LAN, report whether that worked, then hold until stopped.
async fn idle_client(
    i: u32,
    url: String,
    shared: Arc<IdleShared>,
    done_tx: mpsc::UnboundedSender<bool>,
    stop_rx: watch::Receiver<bool>,
) {
    let ws = match join(i, &url, &shared).await {
        Ok(ws) => ws,
        Err(e) => {
            shared.errors.push(e);
            let _ = done_tx.send(false);
            return;
        }
    };
    shared.alive.fetch_add(1, Ordering::Relaxed);
    let _ = done_tx.send(true);
    hold(i, ws, &shared, stop_rx).await;
}

/// Connects and sends the client's one frame; the error is worded for the report.
async fn join(i: u32, url: &str, shared: &IdleShared) -> Result<Ws, String> {
    let ws = {
        let _permit = shared.connect_slots.acquire().await;
        connect(url, shared.ws_config, shared.connect_timeout).await
    };
    let mut ws = ws.map_err(|e| format!("client {i}: {e:#}"))?;
    // One frame to our own MAC: the relay learns us, and never sends it back out.
    let me = client_mac(i);
    let frame = Bytes::from(frame_template(me, me, KIND_IDLE, i, MIN_FRAME));
    ws.send(Message::Binary(frame))
        .await
        .map_err(|e| format!("client {i}: send: {e}"))?;
    Ok(ws)
}

/// Counts whatever arrives until told to stop. A client whose connection the relay drops
/// is no longer alive; one that is stopped closes cleanly and still counts as alive.
async fn hold(i: u32, mut ws: Ws, shared: &IdleShared, mut stop_rx: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(_))) => { shared.unexpected.fetch_add(1, Ordering::Relaxed); }
                Some(Ok(_)) => {}
                Some(Err(e)) => { shared.errors.push(format!("client {i}: {e}")); break; }
                None => { shared.errors.push(format!("client {i}: relay closed the connection")); break; }
            },
            _ = stop_rx.changed() => {
                let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                return;
            }
        }
    }
    shared.alive.fetch_sub(1, Ordering::Relaxed);
}
