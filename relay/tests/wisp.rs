//! The Wisp server at /wisp/ against real clients. A third-party client
//! (MercuryWorkshop's @mercuryworkshop/wisp-js, driven by tests/js/wisp-client.mjs) speaks v1
//! and v2 to TCP and UDP echo servers in an "internet" namespace behind a veth pair on
//! 198.18.0.0/15, runs 200 streams at once with their bytes checked, and is refused where the
//! egress policy says (0x48) or the host says (0x44); its log of every frame proves no DATA
//! or CONTINUE follows a server CLOSE. A raw Rust client checks the limits (0x49) and the v2
//! password extension carrying a join token. The namespace test needs root and node with
//! tests/js/node_modules (scripts/setup-test-deps.sh); it skips without them unless
//! V86_RELAY_REQUIRE_ROOT=1 / V86_RELAY_REQUIRE_BROWSER=1.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Netns, Proc, must, root_or_skip, run};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wisp::wire::{ConnectPayload, Payload};
use wisp::{CloseReason, Packet, StreamId, StreamType};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Whether node and wisp-js are installed; explains why not, or fails when they must be.
fn node_or_skip(test: &str) -> bool {
    let modules = repo().join("tests/js/node_modules");
    let node = Command::new("node").arg("--version").output().is_ok();
    let missing = if !node {
        Some("node not found (apt install nodejs)".to_owned())
    } else if !modules.join("@mercuryworkshop/wisp-js").exists() {
        Some(format!(
            "{} lacks @mercuryworkshop/wisp-js (run scripts/setup-test-deps.sh)",
            modules.display()
        ))
    } else {
        None
    };
    let Some(missing) = missing else { return true };
    if std::env::var("V86_RELAY_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("{test}: {missing}, and V86_RELAY_REQUIRE_BROWSER=1 forbids skipping it");
    }
    eprintln!("SKIPPED {test}: {missing}");
    false
}

/// An "internet" namespace behind a veth pair: the host side is 198.18.N.1/24 (one of the
/// relay host's own addresses), the namespace 198.18.N.2/24.
struct Internet {
    ns: Netns,
    host_if: String,
    n: u8,
}

impl Internet {
    fn new(tag: &str, n: u8) -> Internet {
        let ns = Netns::new(tag);
        let host_if = format!("v86w{}{n}", std::process::id() % 10000);
        let peer = format!("{host_if}p");
        let _ = run(&["ip", "link", "del", &host_if]);
        must(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]);
        must(&["ip", "link", "set", &peer, "netns", &ns.name]);
        let host_cidr = format!("198.18.{n}.1/24");
        must(&["ip", "addr", "add", &host_cidr, "dev", &host_if]);
        must(&["ip", "link", "set", &host_if, "up"]);
        ns.ip(&["addr", "add", &format!("198.18.{n}.2/24"), "dev", &peer]);
        ns.ip(&["link", "set", &peer, "up"]);
        Internet { ns, host_if, n }
    }

    fn addr(&self) -> String {
        format!("198.18.{}.2", self.n)
    }

    fn host_addr(&self) -> String {
        format!("198.18.{}.1", self.n)
    }

    /// A process inside the namespace, killed by PID on drop.
    fn spawn(&self, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        Proc(child)
    }

    /// Waits until something in the namespace accepts TCP on `port`.
    fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let target: std::net::SocketAddr = format!("{}:{port}", self.addr()).parse().unwrap();
        loop {
            let ok = self
                .ns
                .spawn(move || {
                    std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300))
                        .is_ok()
                })
                .join()
                .unwrap();
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "nothing listens on {target}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

const TCP_ECHO: &str = "import socketserver\nclass H(socketserver.BaseRequestHandler):\n def handle(self):\n  while True:\n   d=self.request.recv(65536)\n   if not d: return\n   self.request.sendall(d)\nT=socketserver.ThreadingTCPServer\nT.allow_reuse_address=True\nT.daemon_threads=True\nT.request_queue_size=512\nT(('0.0.0.0',7007),H).serve_forever()\n";
const UDP_ECHO: &str = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7007))\nwhile True:\n d,a=s.recvfrom(65535)\n s.sendto(d,a)\n";

/// Runs tests/js/wisp-client.mjs; returns its exit status (None on timeout) and output.
async fn run_node(config: &serde_json::Value, dir: &Path) -> (Option<bool>, String) {
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let log = dir.join("node.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("node")
        .arg(repo().join("tests/js/wisp-client.mjs"))
        .arg(&config_path)
        .arg(dir.join("frames.log"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("node starts");
    // Poll rather than block: the relay runs on this same runtime.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.success());
        }
        if tokio::time::Instant::now() > deadline {
            // Only the node process this test started, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

/// Checks the frame log: after the server's CLOSE for a stream, no DATA (2) or CONTINUE (3)
/// for it, unless the client opened the id again. Returns the CLOSEs seen.
fn check_wire(frames: &str) -> usize {
    let mut closed: HashSet<(String, u32)> = HashSet::new();
    let mut closes = 0;
    for line in frames.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let (version, dir, kind) = (fields[0], fields[1], fields[2]);
        let id: u32 = fields[3].parse().unwrap();
        let key = (version.to_owned(), id);
        match (dir, kind) {
            ("in", "4") => {
                closes += 1;
                closed.insert(key);
            }
            ("in", "2" | "3") => {
                assert!(!closed.contains(&key), "{line} after the server's CLOSE");
            }
            ("out", "1") => {
                closed.remove(&key);
            }
            _ => {}
        }
    }
    closes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wisp_js_speaks_v1_and_v2_through_the_relay() {
    if !root_or_skip("wisp_js_speaks_v1_and_v2") || !node_or_skip("wisp_js_speaks_v1_and_v2") {
        return;
    }
    let internet = Internet::new("wisp", 44);
    let _tcp_echo = internet.spawn(&["python3", "-c", TCP_ECHO]);
    let _udp_echo = internet.spawn(&["python3", "-c", UDP_ECHO]);
    internet.wait_listening(7007);
    // Listeners the policy must keep the client from: loopback and the host's own address.
    let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let own = std::net::TcpListener::bind(format!("{}:0", internet.host_addr())).unwrap();
    // Started after the veth exists, so its address is one of the host's own.
    let relay = start(test_config()).await;
    let config = serde_json::json!({
        "url": format!("ws://{}/wisp/", relay.listen_addr),
        "echo": internet.addr(),
        "tcp_port": 7007,
        "udp_port": 7007,
        "parallel": 200,
        "blocked": [
            format!("127.0.0.1:{}", lo.local_addr().unwrap().port()),
            "10.1.2.3:80".to_owned(),
            format!("{}:{}", internet.host_addr(), own.local_addr().unwrap().port()),
        ],
        "refused": [format!("{}:9", internet.addr())],
    });
    let dir = std::env::temp_dir().join(format!("v86-relay-wisp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (status, output) = run_node(&config, &dir).await;
    let frames = std::fs::read_to_string(dir.join("frames.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{output}");
    match status {
        Some(ok) => assert!(ok, "wisp-client.mjs failed:\n{output}"),
        None => panic!("wisp-client.mjs did not finish in 180 s:\n{output}"),
    }
    let summary: serde_json::Value = output
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a JSON summary");
    let results = summary["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{summary}");
    for (result, version) in results.iter().zip([1, 2]) {
        assert_eq!(result["version"], version, "{result}");
        assert_eq!(result["info"], version == 2, "{result}");
        assert_eq!(result["tcp"], true, "{result}");
        assert_eq!(result["udp_echo"], true, "{result}");
        assert_eq!(result["parallel"], 200, "{result}");
        assert_eq!(
            result["blocked"],
            serde_json::json!([0x48, 0x48, 0x48]),
            "{result}"
        );
        assert_eq!(result["refused"], serde_json::json!([0x44]), "{result}");
        eprintln!(
            "v{version}: 200 streams x 32 KiB echoed in {} ms",
            result["parallel_ms"]
        );
    }
    // The wire, as the client saw it: v1 opens with CONTINUE on stream 0, v2 with INFO.
    assert!(frames.starts_with("v1 in 3 0"), "{frames:.200}");
    assert!(frames.contains("v2 in 5 0"), "no v2 INFO");
    let closes = check_wire(&frames);
    assert!(closes >= 2 * 4, "only {closes} CLOSEs on the wire");

    let text = scrape(&relay).await;
    assert!(metric(&text, "v86_relay_wisp_streams_opened_total{type=\"tcp\"}") >= 2 * 205);
    assert!(metric(&text, "v86_relay_wisp_streams_opened_total{type=\"udp\"}") >= 2);
    assert_eq!(
        metric(
            &text,
            "v86_relay_wisp_closes_sent_total{reason=\"blocked\"}"
        ),
        6
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_wisp_closes_sent_total{reason=\"refused\"}"
        ),
        2
    );
    assert!(metric(&text, "v86_relay_wisp_bytes_total{direction=\"to_host\"}") >= 2 * 200 * 32768);
    assert!(
        metric(&text, "v86_relay_wisp_bytes_total{direction=\"to_client\"}") >= 2 * 200 * 32768
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_wisp_streams_denied_total{reason=\"loopback\"}"
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_wisp_streams_denied_total{reason=\"private\"}"
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_wisp_streams_denied_total{reason=\"host_address\"}"
        ),
        2
    );
    let relay_ref = &relay;
    eventually("wisp sessions and streams gone", || async move {
        let text = scrape(relay_ref).await;
        metric(&text, "v86_relay_wisp_sessions") == 0
            && metric(&text, "v86_relay_wisp_streams{type=\"tcp\"}") == 0
            && metric(&text, "v86_relay_wisp_streams{type=\"udp\"}") == 0
    })
    .await;
    relay.shutdown().await;
}

// ----- a raw client, for what wisp-js cannot be made to do -----

type Ws = common::Ws;

async fn wisp_connect(url: &str, protocol: Option<&str>) -> Ws {
    let mut request = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    let echoed = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(echoed.as_deref(), protocol, "the subprotocol is echoed");
    ws
}

async fn next_packet(ws: &mut Ws) -> Vec<u8> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a packet within 10 s")
            .expect("open")
            .expect("no error");
        if let Message::Binary(data) = message {
            return data.to_vec();
        }
    }
}

async fn send_packet(ws: &mut Ws, id: u32, payload: Payload<'_>) {
    let bytes = Packet::new(StreamId(id), payload).to_vec();
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

async fn connect_stream(ws: &mut Ws, id: u32, host: &str, port: u16) {
    let connect = ConnectPayload {
        stream_type: StreamType::Tcp,
        port,
        host,
    };
    send_packet(ws, id, Payload::Connect(connect)).await;
}

/// The CLOSE reasons of the next `n` CLOSE packets, by stream id.
async fn closes(ws: &mut Ws, n: usize) -> HashMap<u32, CloseReason> {
    let mut out = HashMap::new();
    while out.len() < n {
        let bytes = next_packet(ws).await;
        let packet = Packet::parse(&bytes).unwrap();
        if let Payload::Close(reason) = packet.payload {
            out.insert(packet.stream_id.0, reason);
        }
    }
    out
}

#[tokio::test]
async fn stream_limits_close_with_throttled() {
    let mut config = test_config();
    config.wisp.max_streams_per_session = 2;
    config.wisp.max_streams_per_ip = 3;
    // Streams to this test's own listener stay open; an `allow` rule is the only way past
    // the loopback denial.
    config.nat.allow = vec!["127.0.0.1/32".to_owned()];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let relay = start(config).await;
    let url = format!("ws://{}/wisp/", relay.listen_addr);
    let mut a = wisp_connect(&url, None).await;
    assert_eq!(
        next_packet(&mut a).await[0],
        0x03,
        "v1 starts with CONTINUE"
    );
    for id in 1..=3 {
        connect_stream(&mut a, id, "127.0.0.1", port).await;
    }
    let refused = closes(&mut a, 1).await;
    assert_eq!(
        refused.get(&3),
        Some(&CloseReason::Throttled),
        "per session"
    );
    let mut b = wisp_connect(&url, None).await;
    next_packet(&mut b).await;
    for id in 1..=2 {
        connect_stream(&mut b, id, "127.0.0.1", port).await;
    }
    let refused = closes(&mut b, 1).await;
    assert_eq!(
        refused.get(&2),
        Some(&CloseReason::Throttled),
        "per address"
    );
    // A stream the client closes gives its address's slot back.
    send_packet(&mut a, 1, Payload::Close(CloseReason::Voluntary)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    connect_stream(&mut b, 3, "127.0.0.1", port).await;
    send_packet(&mut b, 1, Payload::Close(CloseReason::Voluntary)).await;
    // 127.0.0.2 is not in the rule: denied, and the first CLOSE b sees (so 3 stayed open).
    connect_stream(&mut b, 4, "127.0.0.2", port).await;
    let next = closes(&mut b, 1).await;
    assert_eq!(next.get(&4), Some(&CloseReason::Blocked), "{next:?}");
    relay.shutdown().await;
}

#[tokio::test]
async fn v2_password_is_a_join_token() {
    let mut config = test_config();
    config.auth.secrets = vec!["0123456789abcdef0123456789abcdef".to_owned()];
    let relay = start(config).await;
    let url = format!("ws://{}/wisp/", relay.listen_addr);
    // v1 has no password: without ?token= the upgrade is refused.
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(refused.is_err(), "v1 without a token must be refused");
    let claims = admission::Claims::new("wisp", relay::app::unix_now(), Duration::from_secs(600));
    let token = admission::mint_hs256(b"0123456789abcdef0123456789abcdef", &claims);
    for (password, accepted) in [("wrong", false), (token.as_str(), true)] {
        let mut ws = wisp_connect(&url, Some("wisp-v2")).await;
        let info = next_packet(&mut ws).await;
        assert_eq!(info[0], 0x05, "v2 starts with INFO");
        // Client INFO: v2.0 with the password extension (id 2): user "", password.
        let mut ext = vec![
            0u8,
            (password.len() & 0xff) as u8,
            (password.len() >> 8) as u8,
        ];
        ext.extend_from_slice(password.as_bytes());
        let mut info = vec![0x05, 0, 0, 0, 0, 2, 0, 0x02];
        info.extend_from_slice(&(ext.len() as u32).to_le_bytes());
        info.extend_from_slice(&ext);
        ws.send(Message::Binary(info.into())).await.unwrap();
        let answer = next_packet(&mut ws).await;
        if accepted {
            assert_eq!(answer[0], 0x03, "accepted: CONTINUE on stream 0");
        } else {
            assert_eq!((answer[0], answer[5]), (0x04, 0xc0), "refused: CLOSE 0xc0");
        }
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn net_info_names_the_wisp_server_while_it_is_on() {
    let relay = start(test_config()).await;
    let port = relay.listen_addr.port();
    let (_, body) = http_get(relay.listen_addr, "/net/info?lan=x&token=a%20b").await;
    let info: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    // http_get sends `Host: test`.
    assert_eq!(
        info["wisp"],
        format!("ws://test:{port}/wisp/?token=a+b"),
        "{info}"
    );
    relay.shutdown().await;

    let mut config = test_config();
    config.wisp.enabled = false;
    let relay = start(config).await;
    let (_, body) = http_get(relay.listen_addr, "/net/info").await;
    let info: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(info.get("wisp").is_none(), "{info}");
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/wisp/", relay.listen_addr));
    assert!(refused.await.is_err(), "no Wisp server while it is off");
    relay.shutdown().await;
}

/// A client that stops reading its WebSocket stops the host side: the relay reads a host
/// socket only while the session has room, so what an endless sender gets written is bounded
/// by socket buffers and the session's budgets, and all of it arrives in order afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_stops_the_host_side() {
    let mut config = test_config();
    config.nat.allow = vec!["127.0.0.1/32".to_owned()];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = written.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        let (mut socket, _) = listener.accept().unwrap();
        let mut n: u64 = 0;
        loop {
            // Bytes count up mod 251, so a gap or a reordering shows.
            let chunk: Vec<u8> = (n..n + 65536).map(|i| (i % 251) as u8).collect();
            if socket.write_all(&chunk).is_err() {
                return;
            }
            n += 65536;
            counter.store(n, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let relay = start(config).await;
    let mut ws = wisp_connect(&format!("ws://{}/wisp/", relay.listen_addr), None).await;
    next_packet(&mut ws).await;
    connect_stream(&mut ws, 1, "127.0.0.1", port).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = written.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = written.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stalled, later, "the sender was not stopped");
    assert!(
        stalled < 48 << 20,
        "{stalled} bytes written to an unread session"
    );
    // Reading again resumes it, with every byte in order.
    let mut expected: u64 = 0;
    while expected < stalled + (8 << 20) {
        let bytes = next_packet(&mut ws).await;
        let packet = Packet::parse(&bytes).unwrap();
        let Payload::Data(data) = packet.payload else {
            panic!("unexpected {:?}", packet.payload);
        };
        for &b in data {
            assert_eq!(b, (expected % 251) as u8, "byte {expected}");
            expected += 1;
        }
    }
    eprintln!("stalled after {stalled} bytes; {expected} read in order afterwards");
    relay.shutdown().await;
}

/// Idle streams hold no share of the session's read budget: with 200 streams open on one
/// session, each echoing one byte and then idle, every echo arrives. (A read used to be
/// granted to every open stream in advance, so about 32 idle streams starved the rest.)
#[tokio::test]
async fn idle_streams_do_not_starve_the_others() {
    let mut config = test_config();
    config.nat.allow = vec!["127.0.0.1/32".to_owned()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = tcp.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    let relay = start(config).await;
    let mut ws = wisp_connect(&format!("ws://{}/wisp/", relay.listen_addr), None).await;
    assert_eq!(next_packet(&mut ws).await[0], 0x03);
    const STREAMS: u32 = 200;
    for id in 1..=STREAMS {
        connect_stream(&mut ws, id, "127.0.0.1", port).await;
        send_packet(&mut ws, id, Payload::Data(&[id as u8])).await;
    }
    let mut echoed = HashSet::new();
    while echoed.len() < STREAMS as usize {
        let bytes = next_packet(&mut ws).await;
        let packet = Packet::parse(&bytes).unwrap();
        match packet.payload {
            Payload::Data(data) => {
                assert_eq!(data, [packet.stream_id.0 as u8]);
                echoed.insert(packet.stream_id.0);
            }
            Payload::Close(reason) => panic!("stream {} closed: {reason:?}", packet.stream_id.0),
            _ => {}
        }
    }
    relay.shutdown().await;
}
