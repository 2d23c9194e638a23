//! The hosted-service controls against real WebSocket clients on loopback: join tokens
//! (refused before the upgrade with their reason and a metric), per-address limits with
//! trusted proxies, hot reload, and the JSON audit log of the real binary.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use admission::{Claims, mint_hs256};
use common::binary::*;
use common::*;
use relay::{Config, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SECRET: &str = "class-secret-0123456789-abcdefghijklmnop";
const OTHER_SECRET: &str = "other-secret-0123456789-abcdefghijklmnop";

fn now_unix() -> u64 {
    relay::app::unix_now()
}

fn token(secret: &str, lan: &str, nbf: Option<u64>, exp: u64) -> String {
    let mut claims = Claims::new(lan, now_unix(), Duration::from_secs(3600));
    claims.exp = exp;
    claims.nbf = nbf;
    claims.sub = Some("ada".into());
    mint_hs256(secret.as_bytes(), &claims)
}

fn auth_config() -> Config {
    let mut config = test_config();
    config.auth.secrets = vec![SECRET.into()];
    config
}

/// A TCP connection to `addr` from `source` (127.0.0.2 is as local as 127.0.0.1).
async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.expect("tcp connect")
}

/// Sends a WebSocket upgrade and returns the status and body of the answer (the body is
/// empty for a 101, whose connection is kept in the returned stream).
async fn upgrade(
    source: IpAddr,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, TcpStream) {
    let mut stream = connect_from(source, addr).await;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0; 4096];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        got.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            if status == 101 || body.len() >= length || n == 0 {
                return (status, body.to_owned(), stream);
            }
        } else if n == 0 {
            return (0, text, stream);
        }
    }
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const LOCAL2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

#[tokio::test]
async fn tokens_are_checked_before_the_upgrade_with_a_reason_and_a_metric() {
    let relay = start(auth_config()).await;
    let addr = relay.listen_addr;
    let now = now_unix();
    let valid = token(SECRET, "physics-*", None, now + 600);
    let (status, _, _ok) =
        upgrade(LOCAL, addr, &format!("/lan/physics-101?token={valid}"), &[]).await;
    assert_eq!(status, 101, "a valid token joins");

    let tampered = {
        let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
        let claims = format!(r#"{{"lan":"*","exp":{}}}"#, now + 600);
        parts[1] = base64_url(claims.as_bytes());
        parts.join(".")
    };
    let alg_none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(format!(r#"{{"lan":"*","exp":{}}}"#, now + 600).as_bytes())
    );
    let cases = [
        ("".to_owned(), "auth_missing", "token is required"),
        (
            token(SECRET, "physics-*", None, now - 600),
            "auth_expired",
            "expired",
        ),
        (
            token(SECRET, "physics-*", Some(now + 600), now + 1200),
            "auth_invalid",
            "not valid for another",
        ),
        (
            token(SECRET, "chemistry", None, now + 600),
            "auth_lan",
            "not \"physics-101\"",
        ),
        (tampered, "auth_invalid", "signature"),
        (
            token(OTHER_SECRET, "physics-*", None, now + 600),
            "auth_invalid",
            "signature",
        ),
        (alg_none, "auth_invalid", "algorithm"),
        ("x".repeat(5000), "auth_invalid", "over the 4096-byte limit"),
    ];
    for (token, reason, says) in &cases {
        let path = if token.is_empty() {
            "/lan/physics-101".to_owned()
        } else {
            format!("/lan/physics-101?token={token}")
        };
        let (status, body, _) = upgrade(LOCAL, addr, &path, &[]).await;
        assert_eq!(status, 401, "{reason}: {body}");
        assert!(body.contains(says), "{reason}: {body}");
        assert!(
            !body.contains(token.as_str()) || token.is_empty(),
            "the token is not echoed"
        );
    }
    let text = scrape(&relay).await;
    for (reason, count) in [
        ("auth_missing", 1),
        ("auth_expired", 1),
        ("auth_lan", 1),
        ("auth_invalid", 5),
    ] {
        let sample = format!("v86_relay_joins_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &sample), count, "{sample}");
    }
    relay.shutdown().await;
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn a_rotated_secret_list_keeps_old_tokens_until_the_old_secret_goes() {
    let dir = tempdir();
    let file = dir.join("relay.toml");
    let write = |secrets: &[&str]| {
        let list: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
        std::fs::write(
            &file,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[auth]\nsecrets = [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
    };
    write(&[SECRET]);
    let source_file = file.clone();
    let source: relay::reload::ConfigSource =
        Box::new(move || Config::from_file(&source_file).map_err(|e| e.to_string()));
    let relay = Relay::start_with_source(Config::from_file(&file).unwrap(), Some(source))
        .await
        .unwrap();
    let addr = relay.listen_addr;
    let old = token(SECRET, "t", None, now_unix() + 600);
    let new = token(OTHER_SECRET, "t", None, now_unix() + 600);
    let joins = |token: String| async move {
        upgrade(LOCAL, addr, &format!("/lan/t?token={token}"), &[])
            .await
            .0
    };
    assert_eq!(joins(new.clone()).await, 401);
    write(&[OTHER_SECRET, SECRET]);
    assert_eq!(relay.reload().await.unwrap(), Vec::<&str>::new());
    assert_eq!(joins(old.clone()).await, 101, "old secret still listed");
    assert_eq!(joins(new.clone()).await, 101, "new secret listed first");
    write(&[OTHER_SECRET]);
    relay.reload().await.unwrap();
    assert_eq!(joins(old.clone()).await, 401, "old secret removed");
    assert_eq!(joins(new.clone()).await, 101);
    // An invalid file is refused whole; the running config stays.
    std::fs::write(&file, "[auth]\nsecrets = [\"too short\"]\n").unwrap();
    let refused = relay.reload().await.unwrap_err();
    assert!(refused.contains("auth.secrets[0]"), "{refused}");
    assert_eq!(joins(new).await, 101);
    relay.shutdown().await;
}

#[tokio::test]
async fn per_address_limits_count_every_connection_and_trust_only_listed_proxies() {
    let mut config = test_config();
    config.limits.max_connections_per_ip = 64;
    let relay = start(config).await;
    let addr = relay.listen_addr;
    let mut open = Vec::new();
    for i in 0..64 {
        let (status, body, stream) = upgrade(LOCAL, addr, "/lan/limits", &[]).await;
        assert_eq!(status, 101, "connection {i}: {body}");
        open.push(stream);
    }
    let (status, body, _) = upgrade(LOCAL, addr, "/lan/limits", &[]).await;
    assert_eq!(status, 429, "the 65th from 127.0.0.1: {body}");
    assert!(body.contains("too many connections"), "{body}");
    let (status, _, _other) = upgrade(LOCAL2, addr, "/lan/limits", &[]).await;
    assert_eq!(status, 101, "127.0.0.2 still joins");
    let text = scrape(&relay).await;
    assert_eq!(
        metric(
            &text,
            "v86_relay_joins_refused_total{reason=\"ip_connections\"}"
        ),
        1
    );
    // A closed connection frees its slot.
    drop(open.pop());
    eventually("a slot frees", || async {
        upgrade(LOCAL, addr, "/lan/limits", &[]).await.0 == 101
    })
    .await;
    relay.shutdown().await;

    let mut config = test_config();
    config.limits.max_connections_per_ip = 2;
    config.server.trusted_proxies = vec!["127.0.0.1/32".into()];
    let relay = start(config).await;
    let addr = relay.listen_addr;
    let xff = [("X-Forwarded-For", "198.18.7.7")];
    let (a, _, _ka) = upgrade(LOCAL, addr, "/", &xff).await;
    let (b, _, _kb) = upgrade(LOCAL, addr, "/", &xff).await;
    let (c, _, _) = upgrade(LOCAL, addr, "/", &xff).await;
    assert_eq!((a, b, c), (101, 101, 429), "limited as 198.18.7.7");
    let (d, _, _kd) = upgrade(LOCAL, addr, "/", &[("X-Forwarded-For", "198.18.7.8")]).await;
    assert_eq!(d, 101, "another client behind the proxy");
    // 127.0.0.2 is no trusted proxy: its header is ignored and it counts as itself.
    let (e, _, _ke) = upgrade(LOCAL2, addr, "/", &xff).await;
    let (f, _, _kf) = upgrade(LOCAL2, addr, "/", &xff).await;
    let (g, _, _) = upgrade(LOCAL2, addr, "/", &xff).await;
    assert_eq!((e, f, g), (101, 101, 429));
    relay.shutdown().await;
}

#[tokio::test]
async fn json_log_lines_of_a_join_a_refusal_and_a_leave_carry_every_field() {
    let dir = tempdir();
    let file = dir.join("relay.toml");
    std::fs::write(&file, format!("[auth]\nsecrets = [\"{SECRET}\"]\n")).unwrap();
    let (child, addr) = spawn_relay(
        &["--log-format", "json", "--config", file.to_str().unwrap()],
        true,
    );
    wait_listening(addr).await;
    let valid = token(SECRET, "audit", None, now_unix() + 600);
    let (status, _, mut stream) =
        upgrade(LOCAL, addr, &format!("/lan/audit?token={valid}"), &[]).await;
    assert_eq!(status, 101);
    // One frame in, then leave.
    let frame = frame(BROADCAST, mac(1), 60, 1);
    let mut message = vec![0x82, 0x80 | frame.len() as u8, 0, 0, 0, 0];
    message.extend_from_slice(&frame);
    stream.write_all(&message).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    assert_eq!(upgrade(LOCAL, addr, "/lan/audit", &[]).await.0, 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix_kill(&child);
    let output = child.wait_with_output_async().await;
    let records: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "audit")
        .collect();
    let find = |event: &str| {
        records
            .iter()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("no {event} record in:\n{output}"))
            .clone()
    };
    let join = find("join");
    for field in ["timestamp", "client_ip", "transport", "lan", "port", "sub"] {
        assert!(!join[field].is_null(), "join lacks {field}: {join}");
    }
    assert_eq!(join["sub"], "ada");
    assert_eq!(join["client_ip"], "127.0.0.1");
    let leave = find("leave");
    assert_eq!(leave["frames_in"], 1, "{leave}");
    assert_eq!(leave["bytes_in"], 60, "{leave}");
    let refuse = find("refuse");
    assert_eq!(refuse["reason"], "auth_missing");
    assert!(!output.contains(&valid), "a token is never logged whole");
}

fn nix_kill(child: &std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

trait WaitOutput {
    async fn wait_with_output_async(self) -> String;
}

impl WaitOutput for std::process::Child {
    async fn wait_with_output_async(self) -> String {
        let output = tokio::task::spawn_blocking(move || self.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr)
    }
}

#[tokio::test]
async fn sighup_applies_a_new_limit_and_secret_without_dropping_a_session() {
    let dir = tempdir();
    let file = dir.join("relay.toml");
    let write = |secret: &str, per_ip: u32| {
        std::fs::write(
            &file,
            format!(
                "[auth]\nsecrets = [\"{secret}\"]\n[limits]\nmax_connections_per_ip = {per_ip}\n"
            ),
        )
        .unwrap();
    };
    write(SECRET, 10);
    let (mut child, addr) = spawn_relay(&["--config", file.to_str().unwrap()], true);
    wait_listening(addr).await;
    let old = token(SECRET, "*", None, now_unix() + 600);
    let url = |token: &str| format!("ws://{addr}/lan/reload?token={token}");
    let (mut a, _) = tokio_tungstenite::connect_async(url(&old)).await.unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(url(&old)).await.unwrap();
    write(OTHER_SECRET, 2);
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The live sessions still carry frames.
    send(&mut a, frame(BROADCAST, mac(1), 60, 7)).await;
    assert_eq!(
        tag_of(
            &recv(&mut b, Duration::from_secs(3))
                .await
                .expect("b hears a")
        ),
        7
    );
    // New joins see the new secret and the new limit (2 open already from 127.0.0.1).
    let new = token(OTHER_SECRET, "*", None, now_unix() + 600);
    assert_eq!(
        upgrade(LOCAL, addr, &format!("/lan/reload?token={old}"), &[])
            .await
            .0,
        429
    );
    assert_eq!(
        upgrade(LOCAL2, addr, &format!("/lan/reload?token={old}"), &[])
            .await
            .0,
        401
    );
    assert_eq!(
        upgrade(LOCAL2, addr, &format!("/lan/reload?token={new}"), &[])
            .await
            .0,
        101
    );
    // An invalid file is refused and the old config keeps serving.
    std::fs::write(&file, "[limits]\nmax_connections_per_ip = 0\n").unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        upgrade(LOCAL2, addr, &format!("/lan/reload?token={new}"), &[])
            .await
            .0,
        101
    );
    send(&mut b, frame(BROADCAST, mac(2), 60, 8)).await;
    assert_eq!(
        tag_of(
            &recv(&mut a, Duration::from_secs(3))
                .await
                .expect("a hears b")
        ),
        8
    );
    let _ = child.kill();
    let output = child.wait_with_output_async().await;
    assert!(output.contains("config reload refused"), "{output}");
}

#[tokio::test]
async fn one_address_creates_at_most_max_lans_per_ip_lans() {
    let mut config = test_config();
    config.limits.max_lans_per_ip = 64;
    let relay = start(config).await;
    let addr = relay.listen_addr;
    let mut open = Vec::new();
    for i in 0..64 {
        let (status, body, stream) = upgrade(LOCAL, addr, &format!("/lan/class-{i}"), &[]).await;
        assert_eq!(status, 101, "LAN {i}: {body}");
        open.push(stream);
    }
    let (status, body, _) = upgrade(LOCAL, addr, "/lan/class-64", &[]).await;
    assert_eq!(status, 429, "the 65th new LAN: {body}");
    assert!(body.contains("LANs"), "{body}");
    let (status, _, _joined) = upgrade(LOCAL, addr, "/lan/class-3", &[]).await;
    assert_eq!(status, 101, "joining an existing LAN is no new LAN");
    let (status, _, _other) = upgrade(LOCAL2, addr, "/lan/class-64", &[]).await;
    assert_eq!(status, 101, "127.0.0.2 still creates one");
    let text = scrape(&relay).await;
    assert_eq!(
        metric(&text, "v86_relay_joins_refused_total{reason=\"ip_lans\"}"),
        1
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn stalled_request_heads_are_closed_and_never_block_a_new_vm() {
    let dir = tempdir();
    let file = dir.join("relay.toml");
    std::fs::write(&file, "[limits]\nrequest_head_timeout_secs = 3\n").unwrap();
    let (mut child, addr) = spawn_relay(&["--config", file.to_str().unwrap()], false);
    wait_listening(addr).await;
    let before = rss_kib(child.id());
    let mut stalled = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /lan/x HTTP/1.1\r\nHost: relay\r\nUpgrade: web")
            .await
            .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = rss_kib(child.id());
    let started = std::time::Instant::now();
    let offered = dhcp_offer(addr, "/lan/fresh", mac(9)).await;
    let took = started.elapsed();
    assert!(offered.is_some(), "a new VM gets a DHCP offer");
    assert!(
        took < Duration::from_secs(1),
        "offer took {took:?} with 2000 stalled heads"
    );
    // After the head deadline every stalled connection is closed by the relay.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut closed = 0;
    for s in &mut stalled {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    let after = rss_kib(child.id());
    println!(
        "stalled heads: 2000 connections, relay RSS {before} KiB before, {during} KiB with them open ({:.1} KiB each), {after} KiB after they were closed; DHCP offer in {took:?}",
        (during.saturating_sub(before)) as f64 / 2000.0
    );
    assert_eq!(
        closed, 2000,
        "every stalled connection is closed after the deadline"
    );
    assert!(
        during.saturating_sub(before) < 2000 * 64,
        "RSS stays bounded"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn empty_lans_keep_only_their_lease_snapshot() {
    let dir = tempdir();
    let file = dir.join("relay.toml");
    std::fs::write(&file, "[limits]\nempty_lan_grace_secs = 1\nmax_lans_per_ip = 2000\nnew_connections_per_ip_per_sec = 100000\nnew_connections_per_ip_burst = 100000\n").unwrap();
    let (mut child, addr) = spawn_relay(&["--config", file.to_str().unwrap()], false);
    wait_listening(addr).await;
    // Warm up: a first round of LANs through their whole life, so that the allocator's
    // and the runtime's one-time growth is not counted as per-LAN residue.
    for i in 0..100 {
        assert!(
            dhcp_offer(addr, &format!("/lan/warmup-{i}"), mac(1))
                .await
                .is_some()
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = rss_kib(child.id());
    const LANS: usize = 1000;
    // Two rounds of 1,000 LANs under new names each: the first also pays the allocator's and
    // the runtime's one-time growth; the second shows what a retired LAN really keeps.
    let mut after = [0u64; 2];
    for (round, rss) in after.iter_mut().enumerate() {
        for i in 0..LANS {
            leased_lan(
                addr,
                &format!("/lan/r{round}-{i}"),
                [0x02, round as u8, 0, (i >> 8) as u8, i as u8, 1],
            )
            .await;
        }
        // Every client has left; after the grace the LANs retire to their snapshots.
        tokio::time::sleep(Duration::from_secs(6)).await;
        *rss = rss_kib(child.id());
    }
    let per_lan = |from: u64, to: u64| (to.saturating_sub(from)) as f64 * 1024.0 / LANS as f64;
    let steady = per_lan(after[0], after[1]);
    println!(
        "empty LANs: 1,000 LANs with one lease each, then left: relay RSS {before} KiB at start, {} KiB after the first 1,000 ({:.0} bytes per LAN from a cold start), {} KiB after 1,000 more ({steady:.0} bytes per retired LAN)",
        after[0],
        per_lan(before, after[0]),
        after[1],
    );
    // The same VM comes back to its LAN and gets its address back.
    let m = [0x02, 0, 0, 0, 5, 1];
    let back = dhcp_offer(addr, "/lan/r0-5", m).await;
    assert_eq!(
        back,
        Some("10.0.2.15".parse().unwrap()),
        "the lease survived in the snapshot"
    );
    let stranger = dhcp_offer(addr, "/lan/r0-5", [0x02, 9, 9, 9, 9, 9]).await;
    assert_ne!(stranger, back, "the address is still held for its VM");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        steady <= 4096.0,
        "{steady:.0} bytes per retired LAN, over 4 KiB"
    );
}

#[tokio::test]
async fn private_default_lans_keep_strangers_apart_and_find_a_reconnecting_vm() {
    let mut config = test_config();
    config.server.default_lan = relay::config::DefaultLan::Private;
    let relay = start(config).await;
    let addr = relay.listen_addr;
    let (a_mac, b_mac) = ([0x02, 0xa0, 0, 0, 0, 1], [0x02, 0xb0, 0, 0, 0, 2]);
    let (mut a, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    // Each machine's DISCOVER reaches its own LAN's gateway, and not the other machine.
    send(&mut a, loadtest::packets::dhcp_discover(a_mac, 1).into()).await;
    send(&mut b, loadtest::packets::dhcp_discover(b_mac, 1).into()).await;
    let offer_a = dhcp_reply(&mut a, a_mac, "offer for a").await;
    let offer_b = dhcp_reply(&mut b, b_mac, "offer for b").await;
    assert_eq!(
        offer_a.yiaddr, offer_b.yiaddr,
        "two LANs, each with its first address"
    );
    send(&mut a, frame(BROADCAST, a_mac, 60, 42)).await;
    expect_silence(&mut b, Duration::from_millis(300)).await;
    let text = scrape(&relay).await;
    assert_eq!(metric(&text, "v86_relay_lans"), 2, "one LAN each");
    // A takes its lease, leaves, and comes back as a new socket with the same MAC: the same
    // LAN (still 2 LANs), and its address is held for it.
    let server = offer_a.server_id.unwrap();
    send(
        &mut a,
        loadtest::packets::dhcp_request(a_mac, 1, offer_a.yiaddr, server).into(),
    )
    .await;
    dhcp_reply(&mut a, a_mac, "ack for a").await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut again, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    send(
        &mut again,
        loadtest::packets::dhcp_discover(a_mac, 2).into(),
    )
    .await;
    let back = loop {
        let frame = recv(&mut again, Duration::from_secs(5))
            .await
            .expect("offer again");
        if let Some(reply) = loadtest::packets::parse_dhcp_reply(&frame, a_mac, 2) {
            break reply;
        }
    };
    assert_eq!(
        back.yiaddr, offer_a.yiaddr,
        "the reconnecting VM keeps its address"
    );
    assert_eq!(
        metric(&scrape(&relay).await, "v86_relay_lans"),
        2,
        "no third LAN"
    );
    // Nobody may join a private LAN by name.
    assert_eq!(
        upgrade(LOCAL, addr, "/lan/private-0123456789abcdef", &[])
            .await
            .0,
        400
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_token_holds_at_most_its_max_ports_sessions_at_once() {
    let relay = start(auth_config()).await;
    let addr = relay.listen_addr;
    let mut claims = Claims::new("ports", now_unix(), Duration::from_secs(600));
    claims.max_ports = Some(2);
    let limited = mint_hs256(SECRET.as_bytes(), &claims);
    let path = format!("/lan/ports?token={limited}");
    let (first, _, a) = upgrade(LOCAL, addr, &path, &[]).await;
    let (second, _, b) = upgrade(LOCAL2, addr, &path, &[]).await;
    assert_eq!((first, second), (101, 101));
    // A third copy of the same token is refused before the upgrade, from any address.
    let (third, body, _) = upgrade(LOCAL, addr, &path, &[]).await;
    assert_eq!(third, 429, "{body}");
    assert!(body.contains("max_ports"), "{body}");
    assert_eq!(
        metric(
            &scrape(&relay).await,
            "v86_relay_joins_refused_total{reason=\"token_ports\"}"
        ),
        1
    );
    // Another token of the same LAN is not affected.
    let other = token(SECRET, "ports", None, now_unix() + 600);
    assert_eq!(
        upgrade(LOCAL, addr, &format!("/lan/ports?token={other}"), &[])
            .await
            .0,
        101
    );
    // A session that ends gives its slot back.
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = upgrade(LOCAL, addr, &path, &[]).await;
        if status == 101 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(b);
    relay.shutdown().await;
}
