//! Runs the load test against a tiny in-process learning switch that speaks v86's WebSocket
//! protocol (one binary message = one Ethernet frame, LAN from the URL path).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use loadtest::{Args, run};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

#[derive(Default)]
struct Lan {
    ports: HashMap<u64, mpsc::Sender<Bytes>>,
    macs: HashMap<[u8; 6], u64>,
}

type Lans = Arc<Mutex<HashMap<String, Lan>>>;

/// A learning switch per LAN path. Unicast to a known MAC waits for room (lossless); floods
/// use try_send (dropped when a queue is full).
async fn spawn_switch() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lans: Lans = Arc::default();
    tokio::spawn(async move {
        let mut next_id = 0u64;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            next_id += 1;
            tokio::spawn(serve(tcp, next_id, lans.clone()));
        }
    });
    addr
}

#[allow(clippy::result_large_err)] // the callback signature is tungstenite's
async fn serve(tcp: tokio::net::TcpStream, id: u64, lans: Lans) {
    let mut path = String::new();
    let cb = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
        return;
    };
    let lan_name = path.strip_prefix("/lan/").unwrap_or("default").to_owned();
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    lans.lock()
        .unwrap()
        .entry(lan_name.clone())
        .or_default()
        .ports
        .insert(id, tx);
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if sink.feed(Message::Binary(f)).await.is_err() {
                return;
            }
            while let Ok(f) = rx.try_recv() {
                if sink.feed(Message::Binary(f)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Binary(f) = msg else { continue };
        if f.len() < 14 {
            continue;
        }
        let dst: [u8; 6] = f[0..6].try_into().unwrap();
        let src: [u8; 6] = f[6..12].try_into().unwrap();
        let target = {
            let mut lans = lans.lock().unwrap();
            let lan = lans.get_mut(&lan_name).unwrap();
            lan.macs.insert(src, id);
            match lan.macs.get(&dst) {
                Some(&port) if dst[0] & 1 == 0 => {
                    if port == id {
                        continue; // never back out of the ingress port
                    }
                    lan.ports.get(&port).cloned()
                }
                _ => {
                    for (&p, tx) in &lan.ports {
                        if p != id {
                            let _ = tx.try_send(f.clone());
                        }
                    }
                    None
                }
            }
        };
        if let Some(tx) = target {
            let _ = tx.send(f).await;
        }
    }
    {
        let mut lans = lans.lock().unwrap();
        let lan = lans.get_mut(&lan_name).unwrap();
        lan.ports.remove(&id);
        lan.macs.retain(|_, p| *p != id);
    }
    writer.abort();
}

fn args(addr: SocketAddr, extra: &[&str]) -> Args {
    let url = format!("ws://{addr}");
    let mut v = vec!["v86-loadtest", "--url", &url];
    v.extend_from_slice(extra);
    Args::parse_from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_one_pair_is_lossless() {
    let addr = spawn_switch().await;
    let a = args(
        addr,
        &[
            "--mode",
            "switch",
            "--clients",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
    );
    let r = run(&a).await.unwrap();
    eprintln!("{}", loadtest::format_report(&r));
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
    assert_eq!(r.pairs_ready, 1);
    assert!(r.sent > 1000, "sent only {}", r.sent);
    assert_eq!(r.received, r.sent);
    assert_eq!(r.dropped, 0);
    assert_eq!(r.unexpected, 0);
    assert_eq!(r.latency.samples, r.received);
    // Unlimited sending into a lossless switch: latency is mostly queueing, so only sanity.
    assert!(r.latency.p50_us > 0.0 && r.latency.p50_us < 10_000_000.0);
    assert!(r.latency.p50_us <= r.latency.p99_us && r.latency.p99_us <= r.latency.p999_us);
    assert!(r.frames_per_s > 0.0 && r.gbit_per_s > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_rate_cap_and_many_lans() {
    let addr = spawn_switch().await;
    // 6 pairs in 2 LANs (3 pairs share each LAN, so hellos flood to strangers), 200 frames/s
    // per pair, 1514-byte frames.
    let a = args(
        addr,
        &[
            "--clients",
            "12",
            "--lans",
            "2",
            "--rate",
            "200",
            "--frame-size",
            "1514",
            "--duration",
            "1",
            "--warmup",
            "0.1",
        ],
    );
    let r = run(&a).await.unwrap();
    eprintln!("{}", loadtest::format_report(&r));
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
    assert_eq!(r.pairs_ready, 6);
    assert_eq!(r.received, r.sent);
    assert_eq!(r.unexpected, 0);
    // 6 pairs * 200 frames/s * 1 s, give or take the window edges.
    assert!((1100..=1300).contains(&r.sent), "sent {}", r.sent);
    // At a light load, latency is not queueing.
    assert!(
        r.latency.p50_us > 0.0 && r.latency.p50_us < 50_000.0,
        "{:?}",
        r.latency
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_twenty_clients() {
    let addr = spawn_switch().await;
    let pid = std::process::id().to_string();
    let a = args(
        addr,
        &[
            "--mode",
            "idle",
            "--clients",
            "20",
            "--lans",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--relay-pid",
            &pid,
        ],
    );
    let r = run(&a).await.unwrap();
    eprintln!("{}", loadtest::format_report(&r));
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
    assert_eq!(r.connected, 20);
    assert_eq!(r.still_connected, 20);
    // Frames to one's own MAC are never flooded.
    assert_eq!(r.unexpected, 0);
    let m = r.relay.unwrap();
    assert!(m.rss_before_kib.is_some() && m.rss_per_client_kib.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_relay_is_reported_not_panicked() {
    // Bind then drop a listener to get a closed port.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let a = args(
        addr,
        &[
            "--mode",
            "idle",
            "--clients",
            "3",
            "--duration",
            "0.1",
            "--warmup",
            "0",
        ],
    );
    let r = run(&a).await.unwrap();
    assert_eq!(r.connected, 0);
    assert_eq!(r.connect_failed, 3);
    assert_eq!(r.errors, 3);
    let a = args(addr, &["--clients", "2", "--duration", "0.1"]);
    let r = run(&a).await.unwrap();
    assert_eq!(r.pairs_ready, 0);
    assert!(r.errors >= 2);
}
