//! The dhcp and dns modes against a real relay (in-process, on loopback) whose DNS upstream
//! is a tiny UDP server in this test: short runs that check the modes work, not how fast.

use std::net::{Ipv4Addr, SocketAddr};

use clap::Parser;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use loadtest::{Args, run};
use tokio::net::UdpSocket;

/// Answers every A query with 198.18.0.9 (TTL 1 h); stands in for the internet's DNS.
async fn spawn_upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut answer = Message::new(query.id, MessageType::Response, query.op_code);
            answer.metadata.recursion_desired = query.recursion_desired;
            answer.metadata.recursion_available = true;
            answer.metadata.response_code = ResponseCode::NoError;
            for q in &query.queries {
                answer.add_query(q.clone());
                answer.add_answer(Record::from_rdata(
                    q.name().clone(),
                    3600,
                    RData::A(A(Ipv4Addr::new(198, 18, 0, 9))),
                ));
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}

/// A relay on 127.0.0.1 with /16 LANs, DNS going to `upstream`.
async fn start_relay(upstream: SocketAddr) -> relay::Relay {
    let mut config = relay::Config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [network]
        subnet = "10.0.0.0/16"
        gateway = "10.0.0.2"
        dns = "10.0.0.3"
        pool_start = "10.0.0.15"
        pool_end = "10.0.255.254"
        [dns]
        upstream = ["{upstream}"]
        "#
    ))
    .unwrap();
    config.server.metrics_listen = None;
    config.validate().unwrap();
    relay::Relay::start(config).await.unwrap()
}

fn args(relay: &relay::Relay, extra: &[&str]) -> Args {
    let url = format!("ws://{}", relay.listen_addr);
    let mut v = vec!["v86-loadtest", "--url", &url, "--relay-pid"];
    let pid = std::process::id().to_string();
    v.push(&pid);
    v.extend_from_slice(extra);
    Args::parse_from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhcp_mode_completes_every_handshake() {
    let upstream = spawn_upstream().await;
    let relay = start_relay(upstream).await;
    // Three VMs share LAN 0, so each also sees the others' broadcasts and must ignore them.
    let a = args(
        &relay,
        &[
            "--mode",
            "dhcp",
            "--clients",
            "6",
            "--lans",
            "2",
            "--rounds",
            "2",
        ],
    );
    let report = run(&a).await.unwrap();
    let dhcp = report.dhcp.expect("dhcp part");
    assert_eq!(report.errors, 0, "{:?}", report.error_samples);
    assert_eq!(report.connected, 6);
    assert_eq!((dhcp.handshakes, dhcp.failed), (12, 0));
    assert_eq!(dhcp.latency.samples, 12);
    assert!(dhcp.handshakes_per_s > 0.0);
    assert!(dhcp.relay_cpu.is_some());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_mode_gets_answers_cached_and_uncached_and_counts_refused() {
    let upstream = spawn_upstream().await;
    let relay = start_relay(upstream).await;
    // Generous timeouts: a busy CI machine must not turn a slow answer into a lost one.
    let short = [
        "--clients",
        "4",
        "--lans",
        "2",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--reply-timeout",
        "10",
        "--drain",
        "10",
    ];
    for names in ["cached", "uncached"] {
        let mut extra = vec!["--mode", "dns", "--dns-names", names, "--in-flight", "4"];
        extra.extend_from_slice(&short);
        // Distinct LANs per case: the uncached run must not find the cached name.
        let prefix = format!("{names}-");
        extra.extend_from_slice(&["--lan-prefix", &prefix]);
        let report = run(&args(&relay, &extra)).await.unwrap();
        let dns = report.dns.expect("dns part");
        assert_eq!(report.errors, 0, "{names}: {:?}", report.error_samples);
        assert_eq!(dns.vms_with_lease, 4, "{names}");
        assert!(dns.answered > 0, "{names}: {dns:?}");
        assert_eq!(dns.noerror, dns.answered, "{names}: {dns:?}");
        assert_eq!(dns.lost, 0, "{names}: {dns:?}");
    }
    // Over the relay's per-VM limit of 32 queries waiting upstream: REFUSED, counted.
    let mut extra = vec![
        "--mode",
        "dns",
        "--dns-names",
        "uncached",
        "--in-flight",
        "64",
        "--lan-prefix",
        "over-",
    ];
    extra.extend_from_slice(&short);
    let report = run(&args(&relay, &extra)).await.unwrap();
    let dns = report.dns.expect("dns part");
    assert!(dns.answered > 0, "{dns:?}");
    assert_eq!(dns.answered, dns.noerror + dns.refused, "{dns:?}");
    relay.shutdown().await;
}
