//! Bandwidth shaping against real Linux stacks: a VM namespace with `port_rate = "8Mbit"`
//! downloads through NAT at that rate, whole and without a retransmission storm, because
//! the NAT paces its host reads instead of dropping frames. Needs root; skips without it
//! (fails under V86_RELAY_REQUIRE_ROOT=1).

mod common;

use std::time::Instant;

use common::internet::*;
use common::netns::*;
use common::vm::*;

/// `TcpRetransSegs` of a namespace's kernel.
fn retransmissions(ns: &Netns) -> u64 {
    let out = ns.exec(&["nstat", "-asz", "TcpRetransSegs"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("TcpRetransSegs")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn a_shaped_vm_downloads_at_its_port_rate_without_a_retransmission_storm() {
    if !root_or_skip("a_shaped_vm_downloads_at_its_port_rate_without_a_retransmission_storm") {
        return;
    }
    let scratch = Scratch::new("shape");
    let config = scratch.0.join("relay.toml");
    std::fs::write(&config, "[limits]\nport_rate = \"8Mbit\"\n").unwrap();
    let internet = Internet::new("shinet", 57);
    let (_relay, _port, _metrics, vm_ns, _tap) =
        relay_and_vm("shvm", &scratch, &["--config", config.to_str().unwrap()]);

    const MB: usize = 20;
    let www = scratch.0.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let expected = random_file(&www.join("big"), MB, 0x1234_5678);
    let www_dir = www.to_str().unwrap().to_owned();
    let _httpd = internet.spawn(&["busybox", "httpd", "-f", "-p", "8080", "-h", &www_dir]);
    wait_listening(&internet.ns, &internet.addr(), 8080);
    let retrans_before = retransmissions(&internet.ns);
    let started = Instant::now();
    let out = vm_ns.exec(&[
        "sh",
        "-c",
        &format!(
            "curl -sS --max-time 120 http://{}:8080/big | sha256sum",
            internet.addr()
        ),
    ]);
    let elapsed = started.elapsed().as_secs_f64();
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(got.starts_with(&expected), "sha256 {got} (want {expected})");
    let mbit = (MB << 20) as f64 * 8.0 / 1e6 / elapsed;
    let retrans = retransmissions(&internet.ns) - retrans_before;
    let segments = (MB << 20) / 1448;
    eprintln!(
        "shaped download: {MB} MiB in {elapsed:.1} s = {mbit:.2} Mbit/s at port_rate 8Mbit; {retrans} retransmitted segments of about {segments}"
    );
    assert!(
        (7.0..=8.8).contains(&mbit),
        "{mbit:.2} Mbit/s, want 7 to 8.8"
    );
    assert!(
        retrans * 100 < segments as u64,
        "{retrans} retransmissions: a storm"
    );
}

#[test]
fn a_broadcast_flood_leaves_a_neighbouring_pair_its_rate() {
    if !root_or_skip("a_broadcast_flood_leaves_a_neighbouring_pair_its_rate") {
        return;
    }
    let scratch = Scratch::new("flood");
    let config = scratch.0.join("relay.toml");
    std::fs::write(&config, "[limits]\nport_rate = \"100Mbit\"\n").unwrap();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let (_relay, port) = start_relay(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics-listen",
        &metrics_addr,
    ]);
    let server = vm("flsrv");
    let _tap_s = attach_tap(port, "flood", &server);
    let server_ip = udhcpc(&server, &scratch.0, Some("flsrv"), &[])["ip"].clone();
    let client = vm("flcli");
    let _tap_c = attach_tap(port, "flood", &client);
    udhcpc(&client, &scratch.0, Some("flcli"), &[]);
    let _iperf = Proc(
        std::process::Command::new("ip")
            .args(["netns", "exec", &server.name, "iperf3", "-s", "-p", "5201"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start iperf3"),
    );
    wait_listening(&server, &server_ip, 5201);
    let quiet = iperf3_mbits(&client, &server_ip, 3);

    // A third machine floods the LAN with full-size broadcast frames as fast as it can.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = stop.clone();
    let flooder = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            use futures_util::SinkExt;
            let url = format!("ws://127.0.0.1:{port}/lan/flood");
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let mut frame = vec![0xffu8; 6];
            frame.extend_from_slice(&[0x02, 0xf1, 0, 0, 0, 1, 0x88, 0xb5]);
            frame.resize(1514, 0x5a);
            let frame = bytes::Bytes::from(frame);
            let mut sent = 0u64;
            while !flooding.load(std::sync::atomic::Ordering::Relaxed) {
                let message = tokio_tungstenite::tungstenite::Message::Binary(frame.clone());
                if ws.feed(message).await.is_err() {
                    break;
                }
                sent += 1;
                if sent.is_multiple_of(64) && ws.flush().await.is_err() {
                    break;
                }
            }
            sent
        })
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let flooded = iperf3_mbits(&client, &server_ip, 3);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    let shaped = sample(
        &metrics(metrics_port),
        "v86_relay_frames_dropped_total{reason=\"shaped\"}",
    );
    eprintln!(
        "broadcast flood: pair iperf3 {quiet:.1} Mbit/s alone, {flooded:.1} Mbit/s while a neighbour sent {sent} broadcast frames ({shaped} shaped away) at port_rate 100Mbit"
    );
    assert!(shaped > 0, "the flood was shaped");
    assert!(
        flooded >= 0.9 * quiet,
        "{flooded:.1} Mbit/s under the flood, {quiet:.1} without"
    );
}
