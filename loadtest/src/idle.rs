//! `idle` mode: many connected VMs that each sent one frame and then stay quiet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::report::{base_report, relay_memory};
use crate::{
    Args, Errors, KIND_IDLE, MIN_FRAME, Report, client_mac, connect, frame_template, lan_url,
    read_rss_kib, secs,
};

pub(crate) async fn run_idle(args: &Args) -> anyhow::Result<Report> {
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
