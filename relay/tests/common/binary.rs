//! The real `v86-relay` binary in tests: start it with a config, find its address, read
//! its memory, and VMs that take a DHCP lease over a WebSocket.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Ws, eventually, recv, send};

pub fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "v86-relay-hosted-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
pub fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}
/// Runs the real binary with `args`; returns it and its listen address.
pub fn spawn_relay(args: &[&str], capture: bool) -> (std::process::Child, SocketAddr) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_v86-relay"))
        .args([
            "--listen",
            &listen,
            "--metrics-listen",
            "off",
            "--webtransport-listen",
            "off",
            "--webrtc-listen",
            "off",
        ])
        .args(args)
        // Piped output must be read or the relay blocks on a full pipe: only the audit test
        // reads it (its log is short); the others discard it.
        .stdout(if capture {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stderr(if capture {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .spawn()
        .expect("start v86-relay");
    (child, listen.parse().unwrap())
}
pub async fn wait_listening(addr: SocketAddr) {
    eventually("the relay listens", || async { super::accepts(addr) }).await;
}
/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
/// A DHCP DISCOVER over a fresh WebSocket to `path`; the OFFER's address.
pub async fn dhcp_offer(addr: SocketAddr, path: &str, mac: [u8; 6]) -> Option<std::net::Ipv4Addr> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .ok()?;
    send(&mut ws, loadtest::packets::dhcp_discover(mac, 7).into()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let frame = recv(&mut ws, Duration::from_secs(5)).await?;
        if let Some(reply) = loadtest::packets::parse_dhcp_reply(&frame, mac, 7) {
            return Some(reply.yiaddr);
        }
    }
    None
}
/// One VM takes a lease on LAN `path` (DISCOVER, OFFER, REQUEST, ACK), then leaves.
pub async fn leased_lan(addr: SocketAddr, path: &str, m: [u8; 6]) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .unwrap();
    send(&mut ws, loadtest::packets::dhcp_discover(m, 1).into()).await;
    let offer = dhcp_reply(&mut ws, m, "offer").await;
    let server = offer.server_id.expect("server id");
    send(
        &mut ws,
        loadtest::packets::dhcp_request(m, 1, offer.yiaddr, server).into(),
    )
    .await;
    let ack = dhcp_reply(&mut ws, m, "ack").await;
    assert_eq!(ack.kind, loadtest::packets::DhcpType::Ack, "{path}");
}
pub async fn dhcp_reply(ws: &mut Ws, m: [u8; 6], what: &str) -> loadtest::packets::DhcpReply {
    loop {
        let frame = recv(ws, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no {what}"));
        if let Some(reply) = loadtest::packets::parse_dhcp_reply(&frame, m, 1) {
            return reply;
        }
    }
}
