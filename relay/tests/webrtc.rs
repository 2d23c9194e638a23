//! The WebRTC transport against a real WebRTC peer: a str0m client doing ICE, DTLS and SCTP
//! over real UDP on 127.0.0.1, POSTing its offer like a browser, next to WebSocket clients
//! on the same LAN.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use relay::{Config, Relay};
use str0m::change::SdpAnswer;
use str0m::channel::{ChannelConfig, Reliability};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

const LONG: Duration = Duration::from_secs(5);

fn rtc_config() -> Config {
    let mut config = test_config();
    config.webrtc.listen = Some("127.0.0.1:0".into());
    config
}

/// A raw HTTP/1.1 request; returns (status code, headers, body).
async fn http(
    relay: &Relay,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(relay.listen_addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        relay.listen_addr,
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A WebRTC client like a browser page: one unordered `v86-relay` DataChannel with no
/// retransmits, its offer POSTed to the relay, then ICE/DTLS/SCTP over UDP.
struct RtcClient {
    send: mpsc::Sender<Bytes>,
    frames: mpsc::UnboundedReceiver<Bytes>,
    close: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// A loopback UDP socket with the buffers a browser has (Chromium asks for large ones);
/// the default ~200 KiB overflows in a burst.
fn udp_socket() -> UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    UdpSocket::from_std(socket.into()).unwrap()
}

/// Posts an offer and returns the HTTP answer plus what the client needs to go on.
async fn offer(
    relay: &Relay,
    lan: &str,
) -> (
    Rtc,
    str0m::channel::ChannelId,
    UdpSocket,
    (u16, String, String),
    str0m::change::SdpPendingOffer,
) {
    let socket = udp_socket();
    let mut rtc = Rtc::builder()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .set_sctp_max_buffered_amount(4 << 20)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(socket.local_addr().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    let channel = api.add_channel_with_config(ChannelConfig {
        label: "v86-relay".into(),
        ordered: false,
        reliability: Reliability::MaxRetransmits { retransmits: 0 },
        ..Default::default()
    });
    let (sdp, pending) = api.apply().unwrap();
    let response = http(
        relay,
        "POST",
        &format!("/net/rtc/offer?lan={lan}"),
        &[("Content-Type", "application/sdp")],
        &sdp.to_sdp_string(),
    )
    .await;
    (rtc, channel, socket, response, pending)
}

impl RtcClient {
    async fn connect(relay: &Relay, lan: &str) -> RtcClient {
        let (mut rtc, channel, socket, (status, _, answer), pending) = offer(relay, lan).await;
        assert_eq!(status, 200, "offer answered: {answer}");
        rtc.sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        let (send, mut to_send) = mpsc::channel::<Bytes>(4096);
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let (close, mut close_rx) = oneshot::channel();
        let (open_tx, open_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut open_tx = Some(open_tx);
            let mut open = false;
            let mut closing = false;
            let mut buf = vec![0u8; 65536];
            let local = socket.local_addr().unwrap();
            loop {
                let timeout = loop {
                    match rtc.poll_output() {
                        Ok(Output::Timeout(t)) => break t,
                        Ok(Output::Transmit(t)) => {
                            let _ = socket.send_to(&t.contents, t.destination).await;
                        }
                        Ok(Output::Event(Event::ChannelOpen(..))) => {
                            open = true;
                            if let Some(tx) = open_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Output::Event(Event::ChannelData(d))) => {
                            let _ = frames_tx.send(Bytes::from(d.data));
                        }
                        Ok(Output::Event(_)) => {}
                        Err(_) => return,
                    }
                };
                if !rtc.is_alive() {
                    return;
                }
                tokio::select! {
                    _ = &mut close_rx, if !closing => {
                        closing = true;
                        let _ = rtc.close();
                    }
                    r = socket.recv_from(&mut buf) => {
                        let Ok((n, source)) = r else { return };
                        if let Ok(receive) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                            let _ = rtc.handle_input(Input::Receive(Instant::now(), receive));
                        }
                    }
                    frame = to_send.recv(), if open && !closing => {
                        let Some(frame) = frame else { return };
                        if let Some(mut ch) = rtc.channel(channel) {
                            // A full buffer drops the frame, as a page would skip it.
                            let _ = ch.write(true, &frame);
                        }
                    }
                    _ = tokio::time::sleep_until(timeout.into()) => {
                        let _ = rtc.handle_input(Input::Timeout(Instant::now()));
                    }
                }
            }
        });
        tokio::time::timeout(LONG, open_rx)
            .await
            .expect("the DataChannel opens within 5 s")
            .expect("client task alive");
        RtcClient {
            send,
            frames,
            close: Some(close),
            task,
        }
    }

    async fn send(&self, frame: Bytes) {
        self.send.send(frame).await.unwrap();
    }

    async fn recv(&mut self, wait: Duration) -> Option<Bytes> {
        tokio::time::timeout(wait, self.frames.recv())
            .await
            .ok()
            .flatten()
    }

    async fn close(mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        let _ = tokio::time::timeout(LONG, self.task).await;
    }
}

/// Two clients of one LAN that know each other: the WebRTC one is mac(1), the WebSocket
/// one mac(2).
async fn pair(relay: &Relay, lan: &str) -> (RtcClient, Ws) {
    let mut rtc = RtcClient::connect(relay, lan).await;
    let mut ws = connect(relay, &format!("/lan/{lan}")).await;
    rtc.send(frame(BROADCAST, mac(1), 60, 0)).await;
    recv(&mut ws, LONG).await.unwrap();
    send(&mut ws, frame(BROADCAST, mac(2), 60, 0)).await;
    rtc.recv(LONG).await.unwrap();
    (rtc, ws)
}

/// `n` 1400-byte frames from the WebSocket client to the WebRTC one, as fast as it goes.
async fn burst(ws: &mut Ws, n: u32) {
    use futures_util::SinkExt;
    for i in 0..n {
        ws.feed(tokio_tungstenite::tungstenite::Message::Binary(frame(
            mac(1),
            mac(2),
            1400,
            i,
        )))
        .await
        .unwrap();
    }
    ws.flush().await.unwrap();
}

fn webrtc_addr(relay: &Relay) -> SocketAddr {
    relay.webrtc_addr.expect("webrtc on")
}

async fn metric_now(relay: &Relay, sample: &str) -> u64 {
    metric(&scrape(relay).await, sample)
}

#[tokio::test]
async fn frames_of_every_size_pass_both_ways_next_to_a_websocket_client() {
    let relay = start(rtc_config()).await;
    assert_eq!(webrtc_addr(&relay).ip().to_string(), "127.0.0.1");
    let mut rtc = RtcClient::connect(&relay, "t").await;
    let mut ws = connect(&relay, "/lan/t").await;
    // Both announce themselves so the switch learns their MACs.
    rtc.send(frame(BROADCAST, mac(1), 60, 0)).await;
    assert_eq!(tag_of(&recv(&mut ws, LONG).await.unwrap()), 0);
    send(&mut ws, frame(BROADCAST, mac(2), 60, 1)).await;
    assert_eq!(tag_of(&rtc.recv(LONG).await.unwrap()), 1);

    let sizes = [60usize, 1211, 1400, 1514];
    for (i, len) in sizes.into_iter().enumerate() {
        rtc.send(frame(mac(2), mac(1), len, 10 + i as u32)).await;
        send(&mut ws, frame(mac(1), mac(2), len, 20 + i as u32)).await;
    }
    let mut at_ws = vec![];
    let mut at_rtc = vec![];
    for _ in sizes {
        let f = recv(&mut ws, LONG)
            .await
            .expect("WebSocket client gets the frame");
        at_ws.push((tag_of(&f), f.len()));
        let f = rtc.recv(LONG).await.expect("WebRTC client gets the frame");
        at_rtc.push((tag_of(&f), f.len()));
    }
    // The channel is unordered: compare as sets.
    at_ws.sort();
    at_rtc.sort();
    assert_eq!(at_ws, [(10, 60), (11, 1211), (12, 1400), (13, 1514)]);
    assert_eq!(at_rtc, [(20, 60), (21, 1211), (22, 1400), (23, 1514)]);

    let text = scrape(&relay).await;
    let bytes: u64 = 60 + sizes.iter().sum::<usize>() as u64;
    let m = |s: &str| metric(&text, s);
    assert_eq!(m("v86_relay_connections{transport=\"webrtc\"}"), 1);
    assert_eq!(
        m("v86_relay_connections_opened_total{transport=\"webrtc\"}"),
        1
    );
    assert_eq!(
        m("v86_relay_frames_received_total{transport=\"webrtc\"}"),
        5
    );
    assert_eq!(
        m("v86_relay_bytes_received_total{transport=\"webrtc\"}"),
        bytes
    );
    assert_eq!(m("v86_relay_frames_sent_total{transport=\"webrtc\"}"), 5);
    assert_eq!(m("v86_relay_bytes_sent_total{transport=\"webrtc\"}"), bytes);
    assert_eq!(m("v86_relay_webrtc_peers"), 1);
    assert_eq!(m("v86_relay_webrtc_datachannel_buffer_drops_total"), 0);

    // Leaving frees the port.
    rtc.close().await;
    eventually("the WebRTC port is gone", || async {
        metric_now(&relay, "v86_relay_connections{transport=\"webrtc\"}").await == 0
            && metric_now(&relay, "v86_relay_webrtc_peers").await == 0
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_1000_frames_mostly_arrives_both_ways() {
    // What this measures is the DataChannel and its buffers. The port queue in front of
    // them overflowed (hundreds of queue_full drops) whenever the machine was busy, while
    // the single WebRTC task encrypted: a queue that holds the whole burst keeps that out.
    let mut config = rtc_config();
    config.limits.port_queue_frames = 2048;
    let relay = start(config).await;
    let (mut rtc, mut ws) = pair(&relay, "burst").await;

    const N: u32 = 1000;
    burst(&mut ws, N).await;
    let mut to_rtc = 0;
    while to_rtc < N && rtc.recv(Duration::from_secs(1)).await.is_some() {
        to_rtc += 1;
    }
    for i in 0..N {
        rtc.send(frame(mac(2), mac(1), 1400, i)).await;
    }
    let mut to_ws = 0;
    while to_ws < N && recv(&mut ws, Duration::from_secs(1)).await.is_some() {
        to_ws += 1;
    }
    let text = scrape(&relay).await;
    eprintln!(
        "burst of {N} 1400-byte frames: WebSocket -> WebRTC {to_rtc}, WebRTC -> WebSocket {to_ws}; \
         DataChannel buffer drops {}, queue drops {}",
        metric(&text, "v86_relay_webrtc_datachannel_buffer_drops_total"),
        metric(
            &text,
            "v86_relay_frames_dropped_total{reason=\"queue_full\"}"
        ),
    );
    assert!(to_rtc >= N * 9 / 10, "WebSocket -> WebRTC: {to_rtc} of {N}");
    assert!(to_ws >= N * 9 / 10, "WebRTC -> WebSocket: {to_ws} of {N}");
    rtc.close().await;
    relay.shutdown().await;
}

/// A browser that stops acknowledging (a frozen tab): the relay holds its frames up to the
/// SCTP buffer, then drops them, counted under `send_buffer_full` for WebRTC.
#[tokio::test]
async fn frames_for_a_browser_that_stops_acknowledging_are_counted_as_lost() {
    let mut config = rtc_config();
    config.webrtc.sctp_send_buffer_bytes = 64 * 1024;
    config.webrtc.send_window_bytes = 16 * 1024;
    config.limits.port_queue_frames = 4096;
    let relay = start(config).await;
    let (rtc, mut ws) = pair(&relay, "frozen").await;
    // The tab stops: no more SACKs, no more reads.
    rtc.task.abort();

    const N: u32 = 200;
    burst(&mut ws, N).await;
    let lost = "v86_relay_frames_lost_total{transport=\"webrtc\",reason=\"send_buffer_full\"}";
    // 16 KiB in flight plus 64 KiB waiting: about 57 of the 200 frames fit, the rest are lost.
    eventually("the lost frames are counted", || async {
        metric_now(&relay, lost).await >= u64::from(N) / 2
    })
    .await;
    let text = scrape(&relay).await;
    let lost = metric(&text, lost);
    let sent = metric(&text, "v86_relay_frames_sent_total{transport=\"webrtc\"}");
    eprintln!("to a frozen tab: {sent} frames taken, {lost} lost");
    assert_eq!(
        sent + lost,
        u64::from(N) + 1,
        "every frame is either taken or counted as lost"
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_frames_dropped_total{reason=\"send_buffer_full\"}"
        ),
        lost
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_never_connects_is_removed() {
    let mut config = rtc_config();
    config.webrtc.connect_timeout_secs = 1;
    let relay = start(config).await;
    // The offer is answered, but the client never sends a single datagram.
    let (_rtc, _channel, _socket, (status, _, answer), _pending) = offer(&relay, "t").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("a=ice-lite"), "{answer}");
    assert!(answer.contains("127.0.0.1"), "{answer}");
    assert_eq!(
        metric_now(&relay, "v86_relay_connections{transport=\"webrtc\"}").await,
        1
    );
    eventually("the silent peer times out", || async {
        metric_now(&relay, "v86_relay_connections{transport=\"webrtc\"}").await == 0
    })
    .await;
    assert_eq!(
        metric_now(&relay, "v86_relay_webrtc_connect_timeouts_total").await,
        1
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn bad_offers_get_a_reason() {
    let mut config = rtc_config();
    config.server.allowed_origins = vec!["http://class.test".into()];
    let relay = start(config).await;
    let (status, _, body) = http(&relay, "POST", "/net/rtc/offer?lan=no/slash", &[], "v=0").await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid LAN name"), "{body}");
    let (status, _, body) = http(&relay, "POST", "/net/rtc/offer?lan=t", &[], "hello").await;
    assert_eq!(status, 400);
    assert!(body.contains("SDP"), "{body}");
    let big = "a".repeat(100_000);
    let (status, _, _) = http(&relay, "POST", "/net/rtc/offer?lan=t", &[], &big).await;
    assert_eq!(status, 413);
    // A page from an origin not on the list is refused; a listed one gets CORS headers.
    let evil = [("Origin", "http://evil.test")];
    let (status, _, body) = http(&relay, "POST", "/net/rtc/offer?lan=t", &evil, "v=0").await;
    assert_eq!(status, 403);
    assert!(body.contains("--allowed-origins"), "{body}");
    let good = [
        ("Origin", "http://class.test"),
        ("Access-Control-Request-Method", "POST"),
    ];
    let (status, head, _) = http(&relay, "OPTIONS", "/net/rtc/offer?lan=t", &good, "").await;
    assert_eq!(status, 204);
    assert!(
        head.contains("access-control-allow-origin: http://class.test"),
        "{head}"
    );
    // Nothing joined the LAN.
    assert_eq!(
        metric_now(
            &relay,
            "v86_relay_connections_opened_total{transport=\"webrtc\"}"
        )
        .await,
        0
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_full_lan_refuses_the_offer_with_503() {
    let mut config = rtc_config();
    config.limits.max_ports_per_lan = 2;
    let relay = start(config).await;
    let _a = connect(&relay, "/lan/full").await;
    let _b = connect(&relay, "/lan/full").await;
    eventually("both WebSocket clients joined", || async {
        metric_now(&relay, "v86_relay_connections{transport=\"websocket\"}").await == 2
    })
    .await;
    let (_rtc, _channel, _socket, (status, _, body), _pending) = offer(&relay, "full").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("LAN is full"), "{body}");
    // The refused peer is not left behind in the gateway.
    eventually("no WebRTC peer remains", || async {
        metric_now(&relay, "v86_relay_webrtc_peers").await == 0
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn webrtc_off_answers_503() {
    let mut config = rtc_config();
    config.webrtc.listen = Some("off".into());
    let relay = start(config).await;
    assert!(relay.webrtc_addr.is_none());
    let (status, _, body) = http(&relay, "POST", "/net/rtc/offer?lan=t", &[], "v=0").await;
    assert_eq!(status, 503);
    assert!(body.contains("WebRTC is off"), "{body}");
    relay.shutdown().await;
}

/// Whether headless Chromium can run here; prints why not and skips, unless
/// V86_RELAY_REQUIRE_BROWSER=1 makes a missing browser a failure.
fn browser_or_skip(test: &str) -> Option<std::path::PathBuf> {
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js");
    let missing = if !std::path::Path::new("/usr/bin/chromium").exists() {
        Some("/usr/bin/chromium is missing (apt install chromium)")
    } else if !js.join("node_modules/playwright-core").exists()
        || !js.join("node_modules/ws").exists()
    {
        Some("tests/js/node_modules is missing (run scripts/setup-test-deps.sh)")
    } else if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        Some("node is missing (apt install nodejs)")
    } else {
        None
    };
    match missing {
        None => Some(js),
        Some(why) if std::env::var("V86_RELAY_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("{test}: {why}, and V86_RELAY_REQUIRE_BROWSER=1 forbids skipping it")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_page_exchanges_frames_with_a_websocket_client() {
    let Some(js) = browser_or_skip("chromium_page_exchanges_frames_with_a_websocket_client") else {
        return;
    };
    let relay = start(rtc_config()).await;
    let base = format!("http://{}", relay.listen_addr);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg("webrtc-smoke.mjs")
            .arg(base)
            .arg("t")
            .current_dir(js)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "webrtc-smoke.mjs failed:\n{stdout}\n{stderr}"
    );
    eprintln!("webrtc-smoke: {stdout}");
    let text = scrape(&relay).await;
    assert_eq!(
        metric(
            &text,
            "v86_relay_frames_received_total{transport=\"webrtc\"}"
        ),
        5
    );
    assert_eq!(
        metric(&text, "v86_relay_frames_sent_total{transport=\"webrtc\"}"),
        5
    );
    // The page closed its connection: the port is free.
    eventually("the page's port is gone", || async {
        metric_now(&relay, "v86_relay_connections{transport=\"webrtc\"}").await == 0
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_vanishes_is_removed() {
    let relay = start(rtc_config()).await;
    let rtc = RtcClient::connect(&relay, "t").await;
    assert_eq!(
        metric_now(&relay, "v86_relay_connections{transport=\"webrtc\"}").await,
        1
    );
    // The tab is killed: no close, no more consent checks.
    rtc.task.abort();
    let gone = Instant::now();
    while metric_now(&relay, "v86_relay_connections{transport=\"webrtc\"}").await != 0 {
        assert!(
            gone.elapsed() < Duration::from_secs(60),
            "a vanished peer still holds its port after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("vanished peer removed after {:?}", gone.elapsed());
    relay.shutdown().await;
}
