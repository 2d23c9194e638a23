//! WebTransport clients (wtransport, certificate pinned by hash as a browser does) and
//! WebSocket clients on the same LANs of a relay on loopback: frames both ways, fragmentation,
//! lost fragments, hostile datagrams, /net/info, certificate rotation under a live session.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use relay::Relay;
use webtransport::{Fragmenter, Reassembler, ReassemblyLimits, Received};
use wtransport::tls::{Sha256Digest, Sha256DigestFmt};
use wtransport::{ClientConfig, Connection, Endpoint};

const LONG: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(300);
const SIZES: [usize; 4] = [60, 1211, 1400, 1514];

struct Wt {
    conn: Connection,
    fragmenter: Fragmenter,
    reassembler: Reassembler,
    // Keeps the client endpoint alive.
    _endpoint: Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

impl Wt {
    async fn send(&mut self, frame: &[u8]) {
        // Chromium sends at most 1211 bytes per datagram whatever QUIC allows; do the same.
        let max = self
            .conn
            .max_datagram_size()
            .expect("datagrams supported")
            .min(1211);
        let mut out = Vec::new();
        self.fragmenter.encode(frame, max, &mut out).unwrap();
        for d in out {
            self.conn.send_datagram(d).expect("send datagram");
        }
    }

    async fn send_raw(&self, datagram: &[u8]) {
        self.conn.send_datagram(datagram).expect("send datagram");
    }

    async fn recv(&mut self, wait: Duration) -> Option<Bytes> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let d = tokio::time::timeout_at(deadline, self.conn.receive_datagram())
                .await
                .ok()?
                .ok()?;
            if let Received::Frame(f) = self.reassembler.receive(Instant::now(), d.payload()) {
                return Some(f);
            }
        }
    }
}

async fn net_info(relay: &Relay, lan: &str) -> serde_json::Value {
    let (status, body) = http_get(relay.listen_addr, &format!("/net/info?lan={lan}")).await;
    assert!(status.contains("200"), "{status}: {body}");
    serde_json::from_str(&body).expect("net/info is JSON")
}

fn hashes(info: &serde_json::Value) -> Vec<String> {
    info["webtransport"]["certificate_hashes"]
        .as_array()
        .expect("certificate hashes")
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect()
}

async fn connect_wt(relay: &Relay, path: &str) -> Result<Wt, String> {
    let info = net_info(relay, "default").await;
    connect_wt_pinned(relay, path, &hashes(&info)).await
}

async fn connect_wt_pinned(relay: &Relay, path: &str, pins: &[String]) -> Result<Wt, String> {
    let digests = pins.iter().map(|h| {
        let dotted: Vec<String> = h
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        Sha256Digest::from_str_fmt(dotted.join(":"), Sha256DigestFmt::DottedHex).unwrap()
    });
    let config = ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes(digests)
        .build();
    let endpoint = Endpoint::client(config).map_err(|e| e.to_string())?;
    let port = relay.webtransport_addr.expect("webtransport on").port();
    let conn = tokio::time::timeout(
        LONG,
        endpoint.connect(format!("https://127.0.0.1:{port}{path}")),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(Wt {
        conn,
        fragmenter: Fragmenter::new(),
        reassembler: Reassembler::new(ReassemblyLimits::default()),
        _endpoint: endpoint,
    })
}

/// A WebTransport client and a WebSocket client that know each other's MAC.
async fn pair(relay: &Relay, lan: &str) -> (Wt, Ws) {
    let mut wt = connect_wt(relay, &format!("/lan/{lan}")).await.unwrap();
    let mut ws = connect(relay, &format!("/lan/{lan}")).await;
    wt.send(&frame(BROADCAST, mac(1), 60, 0)).await;
    assert_eq!(tag_of(&recv(&mut ws, LONG).await.unwrap()), 0);
    send(&mut ws, frame(mac(1), mac(2), 60, 0)).await;
    assert_eq!(tag_of(&wt.recv(LONG).await.unwrap()), 0);
    (wt, ws)
}

#[tokio::test]
async fn frames_of_every_size_pass_both_ways_and_are_counted_exactly() {
    let relay = start(test_config()).await;
    let (mut wt, mut ws) = pair(&relay, "t").await;
    let mut tag = 100;
    for round in 0..5 {
        for size in SIZES {
            tag += 1;
            let sent = frame(mac(2), mac(1), size, tag);
            wt.send(&sent).await;
            let got = recv(&mut ws, LONG).await.expect("WebSocket client gets it");
            assert_eq!(
                got, sent,
                "webtransport -> websocket, {size} bytes, round {round}"
            );
            let sent = frame(mac(1), mac(2), size, tag + 10_000);
            send(&mut ws, sent.clone()).await;
            let got = wt.recv(LONG).await.expect("WebTransport client gets it");
            assert_eq!(
                got, sent,
                "websocket -> webtransport, {size} bytes, round {round}"
            );
        }
    }
    assert!(wt.recv(SHORT).await.is_none(), "nothing extra");
    expect_silence(&mut ws, SHORT).await;

    let text = scrape(&relay).await;
    // 20 frames each way plus the learning frame.
    let wt_in = "v86_relay_frames_received_total{transport=\"webtransport\"}";
    let wt_out = "v86_relay_frames_sent_total{transport=\"webtransport\"}";
    assert_eq!(metric(&text, wt_in), 21);
    assert_eq!(metric(&text, wt_out), 21);
    assert_eq!(
        metric(&text, "v86_relay_connections{transport=\"webtransport\"}"),
        1
    );
    // From the client (limit 1211) 1211, 1400 and 1514 take two fragments each; towards it,
    // at least 1514 does (the relay's limit grows with QUIC path MTU discovery).
    assert_eq!(
        metric(&text, "v86_relay_webtransport_fragments_received_total"),
        30
    );
    assert!(metric(&text, "v86_relay_webtransport_fragments_sent_total") >= 10);
    assert_eq!(metric(&text, "v86_relay_webtransport_reassembly_bytes"), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn default_lan_at_root_and_bad_paths_refused() {
    let relay = start(test_config()).await;
    let mut wt = connect_wt(&relay, "/").await.unwrap();
    let mut ws = connect(&relay, "/lan/default").await;
    wt.send(&frame(BROADCAST, mac(1), 1514, 7)).await;
    assert_eq!(tag_of(&recv(&mut ws, LONG).await.unwrap()), 7);
    assert!(connect_wt(&relay, "/lan/bad%name").await.is_err());
    assert!(connect_wt(&relay, "/elsewhere").await.is_err());
    relay.shutdown().await;
}

#[tokio::test]
async fn lost_fragments_and_abandoned_sessions_free_their_memory() {
    let relay = start(test_config()).await;
    let (wt, mut ws) = pair(&relay, "lossy").await;
    let gauge = "v86_relay_webtransport_reassembly_bytes";
    // First two fragments of a three-fragment frame; the third is "lost".
    wt.send_raw(&[&[0x01, 0, 9, 0, 3][..], &[0xaa; 600]].concat())
        .await;
    wt.send_raw(&[&[0x01, 0, 9, 1, 3][..], &[0xaa; 600]].concat())
        .await;
    eventually("fragments held", || async {
        metric(&scrape(&relay).await, gauge) == 1200
    })
    .await;
    eventually("the incomplete frame times out", || async {
        metric(&scrape(&relay).await, gauge) == 0
    })
    .await;
    let text = scrape(&relay).await;
    assert_eq!(
        metric(
            &text,
            "v86_relay_webtransport_reassembly_drops_total{reason=\"timeout\"}"
        ),
        1
    );
    expect_silence(&mut ws, SHORT).await;

    // Hostile datagrams are dropped and counted; the session survives.
    wt.send_raw(&[0x07, 1, 2, 3]).await;
    wt.send_raw(&[0x01, 0, 1, 5, 2, 1]).await;
    eventually("hostile datagrams counted", || async {
        let text = scrape(&relay).await;
        metric(
            &text,
            "v86_relay_webtransport_reassembly_drops_total{reason=\"unknown_type\"}",
        ) == 1
            && metric(
                &text,
                "v86_relay_webtransport_reassembly_drops_total{reason=\"malformed\"}",
            ) == 1
    })
    .await;

    // A session that leaves with fragments pending gives their memory back at once.
    wt.send_raw(&[&[0x01, 0, 10, 0, 2][..], &[0xbb; 500]].concat())
        .await;
    eventually("fragment held", || async {
        metric(&scrape(&relay).await, gauge) == 500
    })
    .await;
    wt.conn.close(0u32.into(), b"bye");
    drop(wt);
    eventually("abandoned session freed", || async {
        let text = scrape(&relay).await;
        metric(&text, gauge) == 0
            && metric(&text, "v86_relay_connections{transport=\"webtransport\"}") == 0
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn net_info_lists_every_transport() {
    let relay = start(test_config()).await;
    let info = net_info(&relay, "physics-101").await;
    let port = relay.listen_addr.port();
    let wt_port = relay.webtransport_addr.unwrap().port();
    assert_eq!(info["lan"], "physics-101");
    assert_eq!(
        info["websocket"],
        format!("ws://test:{port}/lan/physics-101")
    );
    assert_eq!(
        info["webtransport"]["url"],
        format!("https://test:{wt_port}/lan/physics-101")
    );
    let h = hashes(&info);
    assert_eq!(h.len(), 2, "current and next certificate");
    assert!(h.iter().all(|h| h.len() == 64), "{h:?}");
    assert_eq!(
        info["webrtc"]["offer_url"],
        format!("http://test:{port}/net/rtc/offer?lan=physics-101")
    );
    let (status, _) = http_get(relay.listen_addr, "/net/info?lan=a/b").await;
    assert!(status.contains("400"), "{status}");
    relay.shutdown().await;

    let mut config = test_config();
    config.webtransport.listen = relay::config::WebTransportListen::Off;
    let relay = start(config).await;
    assert!(relay.webtransport_addr.is_none());
    let info = net_info(&relay, "t").await;
    assert!(info.get("webtransport").is_none(), "{info}");
    relay.shutdown().await;
}

#[tokio::test]
async fn certificate_rotation_keeps_live_sessions() {
    let mut config = test_config();
    config.webtransport.cert_rotation_secs = 1;
    let relay = start(config).await;
    let before = hashes(&net_info(&relay, "rot").await);
    let (mut wt, mut ws) = pair(&relay, "rot").await;
    // Wait for two rotations: the certificate this session was made with is gone.
    eventually("two rotations", || async {
        let now = hashes(&net_info(&relay, "rot").await);
        !now.contains(&before[0]) && !now.contains(&before[1])
    })
    .await;
    for (i, size) in SIZES.into_iter().enumerate() {
        let sent = frame(mac(2), mac(1), size, i as u32);
        wt.send(&sent).await;
        assert_eq!(recv(&mut ws, LONG).await.unwrap(), sent);
        let sent = frame(mac(1), mac(2), size, 50 + i as u32);
        send(&mut ws, sent.clone()).await;
        assert_eq!(wt.recv(LONG).await.unwrap(), sent);
    }
    // New sessions pin the published hashes; the old pins no longer match.
    let now = hashes(&net_info(&relay, "rot").await);
    assert!(connect_wt_pinned(&relay, "/lan/rot", &now).await.is_ok());
    assert!(
        connect_wt_pinned(&relay, "/lan/rot", &before)
            .await
            .is_err()
    );
    relay.shutdown().await;
}

/// A TLS client stream to the relay's --listen port, trusting only `cert`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cert: &rcgen::Certificate,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// A short-lived certificate for localhost (short, so WebTransport may pin it by hash) and
/// its key, written as PEM to `cert_path` and `key_path`.
fn write_certificate(
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> rcgen::Certificate {
    use wtransport::tls::self_signed::time::{Duration as D, OffsetDateTime};
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params.not_before = OffsetDateTime::now_utc() - D::minutes(1);
    params.not_after = OffsetDateTime::now_utc() + D::days(10);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(cert_path, cert.pem()).unwrap();
    std::fs::write(key_path, key.serialize_pem()).unwrap();
    cert
}

fn pin_of(cert: &rcgen::Certificate) -> String {
    wtransport::tls::Certificate::from_der(cert.der().to_vec())
        .unwrap()
        .hash()
        .fmt(Sha256DigestFmt::DottedHex)
        .replace(':', "")
}

#[tokio::test]
async fn a_reload_serves_renewed_certificate_files_without_dropping_sessions() {
    let dir = binary::tempdir();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let old = write_certificate(&cert_path, &key_path);
    let mut config = test_config();
    config.tls.cert = Some(cert_path.clone());
    config.tls.key = Some(key_path.clone());
    let same = config.clone();
    let relay = Relay::start_with_source(config, Some(Box::new(move || Ok(same.clone()))))
        .await
        .expect("relay starts");
    let port = relay.listen_addr.port();
    let tls = tls_connect(relay.listen_addr, &old).await;
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{port}/lan/renew"), tls)
            .await
            .expect("wss upgrade");
    let mut wt = connect_wt_pinned(&relay, "/lan/renew", &[pin_of(&old)])
        .await
        .unwrap();

    // The files are renewed in place (as certbot does), then the relay reloads.
    let new = write_certificate(&cert_path, &key_path);
    assert_eq!(relay.reload().await.unwrap(), Vec::<&str>::new());

    // Live sessions on the old certificate still carry frames both ways.
    wt.send(&frame(BROADCAST, mac(1), 1514, 1)).await;
    let got = tokio::time::timeout(LONG, futures_util::StreamExt::next(&mut ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(tag_of(&got.into_data()), 1);
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::binary(frame(mac(1), mac(2), 60, 2)),
    )
    .await
    .unwrap();
    assert_eq!(tag_of(&wt.recv(LONG).await.unwrap()), 2);
    // New handshakes get the new certificate on both listeners, and no longer the old.
    let tls = tls_connect(relay.listen_addr, &new).await;
    tokio_tungstenite::client_async(format!("wss://localhost:{port}/lan/renew"), tls)
        .await
        .expect("wss upgrade with the new certificate");
    assert!(
        connect_wt_pinned(&relay, "/lan/renew", &[pin_of(&new)])
            .await
            .is_ok()
    );
    assert!(
        connect_wt_pinned(&relay, "/lan/renew", &[pin_of(&old)])
            .await
            .is_err()
    );

    // A broken file is refused whole, and the served certificate stays.
    std::fs::write(&key_path, "not a key").unwrap();
    let refused = relay.reload().await.unwrap_err();
    assert!(refused.contains("--tls-key"), "{refused}");
    assert!(
        connect_wt_pinned(&relay, "/lan/renew", &[pin_of(&new)])
            .await
            .is_ok()
    );
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn one_real_certificate_serves_https_wss_and_webtransport() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wtransport::tls::self_signed::time::{Duration as D, OffsetDateTime};
    let dir = std::env::temp_dir().join(format!("v86-relay-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    // Short-lived, so the WebTransport client may pin it by hash as a browser would.
    params.not_before = OffsetDateTime::now_utc() - D::minutes(1);
    params.not_after = OffsetDateTime::now_utc() + D::days(10);
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let mut config = test_config();
    config.tls.cert = Some(cert_path.clone());
    config.tls.key = Some(key_path.clone());
    let relay = start(config).await;
    let port = relay.listen_addr.port();

    // https:// on --listen: /net/info names wss:// and https://, with no hashes to pin.
    let mut s = tls_connect(relay.listen_addr, &cert).await;
    s.write_all(
        format!(
            "GET /net/info?lan=tls HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw);
    let body = raw.split_once("\r\n\r\n").expect("HTTP answer").1;
    let info: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(info["websocket"], format!("wss://localhost:{port}/lan/tls"));
    assert_eq!(info["wisp"], format!("wss://localhost:{port}/wisp/"));
    assert!(hashes(&info).is_empty(), "{info}");

    // wss:// on --listen and WebTransport with the same certificate, on one LAN.
    let tls = tls_connect(relay.listen_addr, &cert).await;
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{port}/lan/tls"), tls)
            .await
            .expect("wss upgrade");
    let served = wtransport::tls::Certificate::from_der(cert.der().to_vec()).unwrap();
    let pin = served
        .hash()
        .fmt(Sha256DigestFmt::DottedHex)
        .replace(':', "");
    let mut wt = connect_wt_pinned(&relay, "/lan/tls", &[pin]).await.unwrap();
    wt.send(&frame(BROADCAST, mac(1), 1514, 5)).await;
    let got = tokio::time::timeout(LONG, futures_util::StreamExt::next(&mut ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(tag_of(&got.into_data()), 5);
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    // Only one of the two files is a start-up error that says what to do.
    let mut config = test_config();
    config.tls.cert = Some(cert_path);
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("--tls-key"), "{err}");
}
