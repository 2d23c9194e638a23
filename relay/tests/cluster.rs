//! Relay nodes sharing LANs over NATS (docs/cluster.md), against a real `nats-server -js`
//! that each test starts on a free loopback port and kills by PID.
//!
//! - Three nodes, one LAN: VM namespaces attached with `v86-relay tap` to different nodes
//!   take distinct leases from the owner, ping and resolve each other, move 100 MB between
//!   two non-owners with the right sha256, and reach the "internet" namespace through NAT
//!   from a non-owner. Then the owner is SIGKILLed: another node owns the LAN within 15 s,
//!   the survivors keep their addresses (the new owner has their leases) and ping again,
//!   and a VM that joins afterwards gets an address nobody holds.
//! - A node cut off from NATS (a TCP proxy in front of it stops passing bytes) stops
//!   answering DHCP; the other node answers only after it stopped (never two OFFERs).
//! - Start-up fails clearly without NATS, and without JetStream.
//!
//! The namespace tests need root (they skip without it, and fail under
//! V86_RELAY_REQUIRE_ROOT=1); every test needs `nats-server` (scripts/setup-test-deps.sh).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::internet::*;
use common::netns::*;
use common::vm::*;
use common::{recv, send};

/// The claim TTL of these tests: short, so a dead owner's LAN moves in seconds.
const TTL_SECS: u64 = 3;

/// `nats-server -js` on a free loopback port, storing in `dir`.
fn nats_server(dir: &Path, jetstream: bool) -> (Proc, u16) {
    let port = free_port();
    std::fs::create_dir_all(dir).unwrap();
    let mut command = Command::new("nats-server");
    if jetstream {
        command.args(["-js", "-sd", dir.to_str().unwrap()]);
    }
    let child = command
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server (apt package nats-server; scripts/setup-test-deps.sh)");
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !common::accepts(("127.0.0.1", port)) {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, port)
}

/// A relay node of the cluster, with its admin API and metrics on loopback.
struct Node {
    proc: Proc,
    port: u16,
    metrics: u16,
}

fn config_file(dir: &Path) -> String {
    let path = dir.join("cluster.toml");
    std::fs::write(&path, format!("[cluster]\nlease_ttl_secs = {TTL_SECS}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

fn node(name: &str, nats: &str, config: &str) -> Node {
    let metrics = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let (proc, port) = start_relay(&[
        "--metrics-listen",
        &metrics_addr,
        "--webtransport-listen",
        "off",
        "--webrtc-listen",
        "off",
        "--cluster-nats",
        nats,
        "--node-name",
        name,
        "--config",
        config,
    ]);
    Node {
        proc,
        port,
        metrics,
    }
}

/// `GET /admin/cluster` of a node.
fn cluster_view(metrics: u16) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{metrics}/admin/cluster");
    let out = run(&["curl", "-s", "--max-time", "3", &url]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The owner of LAN `lan` as the cluster's claims say, asked of node `metrics`.
fn owner(metrics: u16, lan: &str) -> Option<String> {
    let view = cluster_view(metrics);
    view["claims"]
        .as_array()?
        .iter()
        .find(|c| c["lan"] == lan)
        .and_then(|c| c["owner"].as_str().map(str::to_owned))
}

fn wait_owner(metrics: u16, lan: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(o) = owner(metrics, lan).filter(|o| ok(o)) {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "no owner as expected for LAN {lan} within {within:?}: {}",
            cluster_view(metrics)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ipv4_of(ns: &Netns) -> String {
    let out = ns.exec(&["ip", "-4", "-o", "addr", "show", "dev", "tap0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or("")
        .to_owned()
}

/// busybox httpd on port 8080 of `ns`, serving `mib` MiB of random bytes as `/big` from
/// `dir`; returns it and the file's sha256.
fn serve_random_file(ns: &Netns, dir: &Path, mib: usize, seed: u32) -> (Proc, String) {
    std::fs::create_dir_all(dir).unwrap();
    let sha = random_file(&dir.join("big"), mib, seed);
    let httpd = ns.spawn_proc(&[
        "busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        dir.to_str().unwrap(),
    ]);
    (httpd, sha)
}

#[test]
fn three_nodes_share_a_lan_and_survive_the_owner() {
    if !root_or_skip("three_nodes_share_a_lan_and_survive_the_owner") {
        return;
    }
    let scratch = Scratch::new("clu3");
    let (_nats, nats_port) = nats_server(&scratch.0.join("js"), true);
    let nats = format!("nats://127.0.0.1:{nats_port}");
    let config = config_file(&scratch.0);
    let mut a = node("node-a", &nats, &config);
    let b = node("node-b", &nats, &config);
    let c = node("node-c", &nats, &config);
    let internet = Internet::new("cluinet", 61);

    // The first VM joins through node-a, which claims the LAN.
    let vm1 = vm("cl1");
    let _tap1 = attach_tap(a.port, "lab", &vm1);
    let lease1 = udhcpc(&vm1, &scratch.0, Some("vm1"), &[]);
    assert_eq!(owner(b.metrics, "lab").as_deref(), Some("node-a"));
    let vm2 = vm("cl2");
    let _tap2 = attach_tap(b.port, "lab", &vm2);
    let lease2 = udhcpc(&vm2, &scratch.0, Some("vm2"), &[]);
    let vm3 = vm("cl3");
    let _tap3 = attach_tap(c.port, "lab", &vm3);
    let lease3 = udhcpc(&vm3, &scratch.0, Some("vm3"), &[]);
    let (ip1, ip2, ip3) = (&lease1["ip"], &lease2["ip"], &lease3["ip"]);
    assert!(
        ip1 != ip2 && ip2 != ip3 && ip1 != ip3,
        "distinct leases: {ip1} {ip2} {ip3}"
    );
    for lease in [&lease1, &lease2, &lease3] {
        assert_eq!(lease["router"], "10.0.2.2", "one gateway, the owner's");
    }

    // Across nodes: ping and names.
    assert!(
        vm2.ping_ok(ip3, Duration::from_secs(5)),
        "vm2 (b) pings vm3 (c)"
    );
    assert!(
        vm3.ping_ok(ip1, Duration::from_secs(5)),
        "vm3 (c) pings vm1 (a)"
    );
    assert!(
        vm1.ping_ok(ip2, Duration::from_secs(5)),
        "vm1 (a) pings vm2 (b)"
    );
    assert_eq!(dig(&vm2, "vm3"), *ip3, "vm2 resolves vm3 by host name");
    assert_eq!(dig(&vm3, "vm1.lab.lan"), *ip1, "vm3 resolves vm1");

    // 100 MB from vm3 (node-c) to vm2 (node-b): both non-owners, so every frame crosses
    // the bus twice (c -> owner a -> b).
    let www = scratch.0.join("www");
    let (_httpd, expected) = serve_random_file(&vm3, &www, 100, 0x005e_edc1);
    wait_listening(&vm2, ip3, 8080);
    let started = Instant::now();
    let out = vm2.exec(&[
        "sh",
        "-c",
        &format!("curl -sS --max-time 120 http://{ip3}:8080/big | sha256sum"),
    ]);
    let seconds = started.elapsed().as_secs_f64();
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        got.split_whitespace().next(),
        Some(expected.as_str()),
        "sha256 of 100 MiB between nodes; curl said {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "cluster: 100 MiB vm3 (node-c) -> vm2 (node-b) through owner node-a in {seconds:.2} s ({:.0} Mbit/s)",
        100.0 * 8.0 * 1.048_576 / seconds
    );

    // The internet through the owner's NAT, from a non-owner.
    std::fs::write(www.join("hello"), "hello from the internet\n").unwrap();
    let _web = internet.spawn(&[
        "busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        www.to_str().unwrap(),
    ]);
    wait_listening(&internet.ns, &internet.addr(), 8080);
    let out = vm2.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        &format!("http://{}:8080/hello", internet.addr()),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the internet\n",
        "vm2 (node-b) reaches the internet: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = metrics(b.metrics);
    assert!(sample(&m, "v86_relay_cluster_remote_ports") >= 1, "{m}");
    assert!(sample(&m, "v86_relay_cluster_bus_frames_total{direction=\"out\"}") > 1000);
    let m = metrics(a.metrics);
    assert_eq!(sample(&m, "v86_relay_cluster_remote_ports_served"), 2);

    // The owner dies.
    let killed = Instant::now();
    a.proc.0.kill().unwrap();
    let _ = a.proc.0.wait();
    let new_owner = wait_owner(b.metrics, "lab", Duration::from_secs(15), |o| o != "node-a");
    let moved = killed.elapsed().as_secs_f64();
    eprintln!("cluster: {new_owner} owns the LAN {moved:.1} s after node-a was killed");
    assert!(
        vm2.ping_ok(ip3, Duration::from_secs(10)),
        "vm2 pings vm3 again"
    );
    let back = killed.elapsed().as_secs_f64();
    eprintln!("cluster: vm2 pings vm3 again {back:.1} s after the kill");
    assert_eq!(ipv4_of(&vm2), *ip2);
    assert_eq!(ipv4_of(&vm3), *ip3);
    // The new owner has the leases: vm2 asks for its own address and gets it.
    let renewed = udhcpc(&vm2, &scratch.0, Some("vm2"), &["-r", ip2]);
    assert_eq!(
        &renewed["ip"], ip2,
        "vm2 keeps its address with the new owner"
    );
    // A VM that joins now gets an address nobody holds (vm1's lease is kept too).
    let vm4 = vm("cl4");
    let _tap4 = attach_tap(c.port, "lab", &vm4);
    let lease4 = udhcpc(&vm4, &scratch.0, Some("vm4"), &[]);
    let ip4 = &lease4["ip"];
    assert!(
        ip4 != ip1 && ip4 != ip2 && ip4 != ip3,
        "a new VM gets a free address: {ip4} (held: {ip1} {ip2} {ip3})"
    );
    assert!(vm4.ping_ok(ip2, Duration::from_secs(5)), "vm4 pings vm2");
    let m = metrics(b.metrics) + &metrics(c.metrics);
    // Claimed anew once the dead owner's claim expired, or taken over when it went stale.
    let claimed: u64 = m
        .lines()
        .filter(|l| {
            l.starts_with("v86_relay_cluster_ownership_changes_total{change=\"won\"}")
                || l.starts_with("v86_relay_cluster_ownership_changes_total{change=\"taken_over\"}")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    assert_eq!(claimed, 1, "one node took the LAN: {m}");
}

/// A TCP proxy that can be cut: from then on it passes no byte either way and connects
/// nothing new (a partition, not a reset).
struct CutProxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

async fn cut_proxy(upstream: u16) -> CutProxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                if flag.load(Ordering::Relaxed) {
                    // Hold it open, silent.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(client);
                    return;
                }
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, flag.clone()));
                pump(sr, cw, flag).await;
            });
        }
    });
    CutProxy { port, cut }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.load(Ordering::Relaxed) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Sends a DISCOVER (xid `xid`) and collects every OFFER for it for `wait`.
async fn offers(ws: &mut common::Ws, mac: [u8; 6], xid: u32, wait: Duration) -> usize {
    send(ws, loadtest::packets::dhcp_discover(mac, xid).into()).await;
    let deadline = tokio::time::Instant::now() + wait;
    let mut n = 0;
    while let Some(frame) = recv(ws, deadline - tokio::time::Instant::now()).await {
        if loadtest::packets::parse_dhcp_reply(&frame, mac, xid).is_some() {
            n += 1;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_stops_answering_dhcp() {
    let scratch = Scratch::new("clucut");
    let (_nats, nats_port) = nats_server(&scratch.0.join("js"), true);
    let proxy = cut_proxy(nats_port).await;
    let config = config_file(&scratch.0);
    let a = node(
        "cut-a",
        &format!("nats://127.0.0.1:{}", proxy.port),
        &config,
    );
    let b = node("cut-b", &format!("nats://127.0.0.1:{nats_port}"), &config);
    let ws = |port: u16| async move {
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/lan/cut"))
            .await
            .unwrap()
            .0
    };
    let (mac_a, mac_b) = ([2, 0, 0, 0, 0xca, 1], [2, 0, 0, 0, 0xcb, 1]);
    let mut on_a = ws(a.port).await;
    // node-a claims the LAN on this first join; its gateway answers.
    let mut xid = 100;
    let deadline = Instant::now() + Duration::from_secs(5);
    while offers(&mut on_a, mac_a, xid, Duration::from_millis(300)).await == 0 {
        assert!(Instant::now() < deadline, "node-a never answered DHCP");
        xid += 1;
    }
    assert_eq!(owner(b.metrics, "cut").as_deref(), Some("cut-a"));
    let mut on_b = ws(b.port).await;
    assert_eq!(
        offers(&mut on_b, mac_b, 1, Duration::from_millis(1000)).await,
        1,
        "node-b's client is answered by node-a over the bus"
    );

    // Cut node-a off. Both clients keep asking; record who answers when.
    proxy.cut.store(true, Ordering::Relaxed);
    let cut_at = Instant::now();
    let (mut last_a, mut first_b) = (None::<f64>, None::<f64>);
    let mut b_silent_seen = false;
    while cut_at.elapsed() < Duration::from_secs(20) {
        xid += 1;
        let (got_a, got_b) = tokio::join!(
            offers(&mut on_a, mac_a, xid, Duration::from_millis(250)),
            offers(&mut on_b, mac_b, xid, Duration::from_millis(250)),
        );
        let t = cut_at.elapsed().as_secs_f64();
        assert!(
            got_a <= 1 && got_b <= 1,
            "two OFFERs for one DISCOVER at {t:.2} s"
        );
        if got_a > 0 {
            last_a = Some(t);
        }
        if got_b == 0 {
            b_silent_seen = true;
        }
        if got_b > 0 && b_silent_seen && first_b.is_none() {
            first_b = Some(t);
        }
        if first_b.is_some_and(|f| t > f + 2.0) {
            break;
        }
    }
    let first_b = first_b.expect("node-b never took the LAN over");
    eprintln!(
        "cluster cut: node-a last answered DHCP at {:?} s, node-b first at {first_b:.2} s after the cut",
        last_a.map(|t| format!("{t:.2}"))
    );
    assert!(
        last_a.unwrap_or(0.0) < first_b,
        "both nodes answered DHCP for the LAN: node-a until {last_a:?} s, node-b from {first_b} s"
    );
    assert!(
        last_a.unwrap_or(0.0) <= TTL_SECS as f64,
        "node-a served for {last_a:?} s without its claim"
    );
    assert_eq!(owner(b.metrics, "cut").as_deref(), Some("cut-b"));
    let m = metrics(a.metrics);
    assert_eq!(
        sample(
            &m,
            "v86_relay_cluster_ownership_changes_total{change=\"lost\"}"
        ),
        1,
        "{m}"
    );
    assert!(sample(&m, "v86_relay_cluster_lease_renew_failures_total") >= 1);
    drop(b);
}

#[test]
fn start_up_fails_clearly_without_nats_or_jetstream() {
    let scratch = Scratch::new("clustart");
    let start = |nats: &str| {
        let out = Command::new(relay_bin())
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .args(["--webtransport-listen", "off", "--webrtc-listen", "off"])
            .args(["--cluster-nats", nats, "--node-name", "n1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let nobody = format!("nats://127.0.0.1:{}", free_port());
    let err = start(&nobody);
    assert!(err.contains("cannot reach NATS"), "{err}");
    let (_plain, port) = nats_server(&scratch.0.join("plain"), false);
    let err = start(&format!("nats://127.0.0.1:{port}"));
    assert!(err.contains("has no JetStream"), "{err}");
}

/// A load balancer in front of relay nodes, as nginx or HAProxy would be: each new TCP
/// connection goes to the first node that accepts it. Runs on its own thread.
fn balancer(backends: Vec<u16>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let never = Arc::new(AtomicBool::new(false));
            while let Ok((client, _)) = listener.accept().await {
                for &backend in &backends {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        continue;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, never.clone()));
                    tokio::spawn(pump(sr, cw, never.clone()));
                    break;
                }
            }
        });
    });
    port
}

/// The longest time between two answered pings in `ping -D` output, in seconds.
fn longest_gap(ping_output: &str) -> f64 {
    let times: Vec<f64> = ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

#[test]
fn a_drained_owner_hands_its_lan_over_while_a_vm_downloads() {
    if !root_or_skip("a_drained_owner_hands_its_lan_over_while_a_vm_downloads") {
        return;
    }
    let scratch = Scratch::new("cludrain");
    let (_nats, nats_port) = nats_server(&scratch.0.join("js"), true);
    let nats = format!("nats://127.0.0.1:{nats_port}");
    let config = config_file(&scratch.0);
    let a = node("drain-a", &nats, &config);
    let mut b = node("drain-b", &nats, &config);
    let c = node("drain-c", &nats, &config);
    let internet = Internet::new("cldinet", 62);
    // vm1 reaches the cluster through the balancer (node-a first), vm2 through node-b.
    let lb = balancer(vec![a.port, b.port, c.port]);
    let vm1 = vm("cld1");
    let _tap1 = attach_tap(lb, "roll", &vm1);
    let ip1 = udhcpc(&vm1, &scratch.0, Some("vm1"), &[])["ip"].clone();
    assert_eq!(owner(b.metrics, "roll").as_deref(), Some("drain-a"));
    let vm2 = vm("cld2");
    let _tap2 = attach_tap(b.port, "roll", &vm2);
    let ip2 = udhcpc(&vm2, &scratch.0, Some("vm2"), &[])["ip"].clone();

    // vm1 downloads 24 MiB from vm2 at 4 MB/s (about 6 s) and pings the internet every
    // 100 ms, while node-a is drained.
    let www = scratch.0.join("www");
    let (_httpd, expected) = serve_random_file(&vm2, &www, 24, 0x00d0_0d1e);
    wait_listening(&vm1, &ip2, 8080);
    let sums = scratch.0.join("download.sha");
    let pings = scratch.0.join("ping.txt");
    let mut download = vm1.spawn_proc(&[
        "sh",
        "-c",
        &format!(
            "curl -sS --max-time 60 --limit-rate 4M http://{ip2}:8080/big | sha256sum > {}",
            sums.display()
        ),
    ]);
    let target = internet.addr();
    let mut ping = vm1.spawn_proc(&[
        "sh",
        "-c",
        &format!("ping -D -i 0.1 -W 1 -w 10 {target} > {}", pings.display()),
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let drained = run(&[
        "curl",
        "-s",
        "--max-time",
        "20",
        "-X",
        "POST",
        &format!("http://127.0.0.1:{}/admin/drain", a.metrics),
    ]);
    let drained: serde_json::Value = serde_json::from_slice(&drained.stdout).unwrap();
    eprintln!("cluster drain: {drained}");
    assert_eq!(drained["drained"], true);
    wait_owner(b.metrics, "roll", Duration::from_secs(10), |o| {
        o == "drain-b"
    });

    let _ = ping.0.wait();
    let status = download.0.wait().unwrap();
    assert!(status.success());
    let got = std::fs::read_to_string(&sums).unwrap();
    assert_eq!(
        got.split_whitespace().next(),
        Some(expected.as_str()),
        "the download between VMs survives the drain"
    );
    let gap = longest_gap(&std::fs::read_to_string(&pings).unwrap());
    eprintln!("cluster drain: vm1 was without connectivity for at most {gap:.2} s");
    assert!(gap < 5.0, "vm1 was cut off for {gap:.2} s");
    assert_eq!(ipv4_of(&vm1), ip1, "vm1 keeps its address");
    let renewed = udhcpc(&vm1, &scratch.0, Some("vm1"), &["-r", &ip1]);
    assert_eq!(renewed["ip"], ip1, "the new owner has vm1's lease");
    let view = cluster_view(b.metrics);
    let lan = view["lans"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["lan"] == "roll").cloned())
        .unwrap_or_default();
    assert_eq!(lan["owned"], true, "{view}");
    assert_eq!(lan["local_ports"], 2, "vm1 reconnected to node-b: {view}");

    // SIGTERM drains too (cluster.drain_on_stop, on by default): node-b hands the LAN
    // over as it stops, and vm1 carries on through node-c with its address.
    let stopped = Instant::now();
    must(&["kill", "-TERM", &b.proc.0.id().to_string()]);
    let status = b.proc.0.wait().unwrap();
    assert!(status.success(), "node-b stops cleanly: {status}");
    wait_owner(c.metrics, "roll", Duration::from_secs(10), |o| {
        o == "drain-c"
    });
    assert!(
        vm1.ping_ok(&target, Duration::from_secs(10)),
        "vm1 reaches the internet through node-c"
    );
    eprintln!(
        "cluster SIGTERM: vm1 reaches the internet through node-c {:.2} s after node-b was stopped",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(ipv4_of(&vm1), ip1, "vm1 keeps its address");
    let renewed = udhcpc(&vm1, &scratch.0, Some("vm1"), &["-r", &ip1]);
    assert_eq!(renewed["ip"], ip1, "node-c has vm1's lease");
    drop(a);
}
