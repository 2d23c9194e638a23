//! WebSocket clients that behave like v86 against a relay on loopback: lazy connect, no
//! handshake, 60-byte padded frames, reconnects as new sockets, bursts, hostile input.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(5);

#[tokio::test]
async fn two_vms_talk_and_other_lans_hear_nothing() {
    let relay = start(test_config()).await;
    // v86 connects lazily, on the guest's first frame, and sends nothing on open.
    let mut a = connect(&relay, "/lan/class-1").await;
    send(&mut a, frame(BROADCAST, mac(1), 42, 1)).await;
    let mut b = connect(&relay, "/lan/class-1").await;
    let mut other = connect(&relay, "/lan/class-2").await;
    send(&mut other, frame(BROADCAST, mac(9), 60, 90)).await;

    // B's ARP-style broadcast reaches A (padded to 60 bytes, as ne2k pads), not class-2.
    send(&mut b, frame(BROADCAST, mac(2), 42, 2)).await;
    let got = recv(&mut a, LONG).await.expect("A hears B's broadcast");
    assert_eq!(got.len(), 60);
    assert_eq!(tag_of(&got), 2);
    // Known unicast both ways.
    send(&mut a, frame(mac(2), mac(1), 98, 3)).await;
    let got = recv(&mut b, LONG).await.expect("B hears A");
    assert_eq!((tag_of(&got), got.len()), (3, 98));
    send(&mut b, frame(mac(1), mac(2), 1514, 4)).await;
    assert_eq!(tag_of(&recv(&mut a, LONG).await.unwrap()), 4);

    expect_silence(&mut other, SHORT).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn default_lan_at_root_path() {
    let relay = start(test_config()).await;
    let mut a = connect(&relay, "/").await;
    let mut b = connect(&relay, "/lan/default").await;
    send(&mut a, frame(BROADCAST, mac(1), 60, 7)).await;
    assert_eq!(tag_of(&recv(&mut b, LONG).await.unwrap()), 7);
    relay.shutdown().await;
}

#[tokio::test]
async fn reconnect_as_new_socket_moves_the_mac() {
    let relay = start(test_config()).await;
    let mut a = connect(&relay, "/lan/r").await;
    let mut b = connect(&relay, "/lan/r").await;
    send(&mut a, frame(BROADCAST, mac(1), 60, 1)).await;
    send(&mut b, frame(BROADCAST, mac(2), 60, 2)).await;
    recv(&mut a, LONG).await.unwrap();
    recv(&mut b, LONG).await.unwrap();

    // A's tab loses its socket; v86 opens a brand-new one and sends from the same MAC.
    drop(a);
    let mut a2 = connect(&relay, "/lan/r").await;
    send(&mut a2, frame(mac(2), mac(1), 60, 3)).await;
    assert_eq!(tag_of(&recv(&mut b, LONG).await.unwrap()), 3);
    send(&mut b, frame(mac(1), mac(2), 60, 4)).await;
    assert_eq!(tag_of(&recv(&mut a2, LONG).await.unwrap()), 4);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_queued_frames_arrives_whole_and_in_order() {
    let relay = start(test_config()).await;
    let mut a = connect(&relay, "/lan/burst").await;
    let mut b = connect(&relay, "/lan/burst").await;
    send(&mut b, frame(BROADCAST, mac(2), 60, 0)).await;
    recv(&mut a, LONG).await.unwrap();
    // v86 queues up to 128 frames while its socket connects, then sends them at once.
    for i in 0..128 {
        a.feed(Message::Binary(frame(mac(2), mac(1), 60 + i as usize, i)))
            .await
            .unwrap();
    }
    a.flush().await.unwrap();
    for i in 0..128 {
        let got = recv(&mut b, LONG)
            .await
            .expect("every queued frame arrives");
        assert_eq!(tag_of(&got), i);
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn malformed_storm_is_dropped_counted_and_the_socket_survives() {
    let mut config = test_config();
    config.limits.max_frame_size = 1514;
    let relay = start(config).await;
    let mut evil = connect(&relay, "/lan/storm").await;
    let mut good = connect(&relay, "/lan/storm").await;
    let mut neighbour = connect(&relay, "/lan/storm").await;

    let mut short = 0u64;
    for i in 0..3000u32 {
        let len = (i % 14) as usize; // 0..=13 bytes: never a whole Ethernet header
        evil.feed(Message::Binary(Bytes::from(vec![0xff; len])))
            .await
            .unwrap();
        short += 1;
    }
    for _ in 0..50 {
        evil.feed(Message::Text("hello".into())).await.unwrap();
        evil.feed(Message::Binary(frame(BROADCAST, mac(6), 1515, 0)))
            .await
            .unwrap();
        // Multicast source addresses are invalid.
        evil.feed(Message::Binary(frame(
            BROADCAST,
            [0x01, 0, 0x5e, 0, 0, 1],
            60,
            0,
        )))
        .await
        .unwrap();
    }
    evil.flush().await.unwrap();
    // The socket stays open and a good frame from it still passes.
    send(&mut evil, frame(BROADCAST, mac(6), 60, 77)).await;
    assert_eq!(tag_of(&recv(&mut good, LONG).await.unwrap()), 77);
    assert_eq!(tag_of(&recv(&mut neighbour, LONG).await.unwrap()), 77);

    let text = scrape(&relay).await;
    assert_eq!(
        metric(
            &text,
            "v86_relay_frames_dropped_total{reason=\"too_short\"}"
        ),
        short
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_frames_dropped_total{reason=\"text_message\"}"
        ),
        50
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_frames_dropped_total{reason=\"too_large\"}"
        ),
        50
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_frames_dropped_total{reason=\"invalid_source\"}"
        ),
        50
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_slow_its_neighbours() {
    let mut config = test_config();
    config.limits.port_queue_frames = 64;
    let relay = start(config).await;
    let mut sender = connect(&relay, "/lan/slow").await;
    let mut reader = connect(&relay, "/lan/slow").await;
    // The stalled client announces itself, then never reads again.
    let mut stalled = connect(&relay, "/lan/slow").await;
    send(&mut stalled, frame(BROADCAST, mac(3), 60, 0)).await;
    send(&mut reader, frame(BROADCAST, mac(2), 60, 0)).await;
    recv(&mut sender, LONG).await.unwrap();
    recv(&mut sender, LONG).await.unwrap();

    recv(&mut reader, LONG).await.unwrap(); // the stalled client's hello

    // Broadcasts go to both. The sender waits for the reader window by window, as TCP
    // would; the stalled client's queue and socket buffers fill up meanwhile.
    const N: u32 = 20_000;
    const WINDOW: u32 = 64;
    for start in (1..=N).step_by(WINDOW as usize) {
        for i in start..start + WINDOW {
            sender
                .feed(Message::Binary(frame(BROADCAST, mac(1), 1400, i)))
                .await
                .unwrap();
        }
        sender.flush().await.unwrap();
        for i in start..start + WINDOW {
            let got = recv(&mut reader, LONG)
                .await
                .unwrap_or_else(|| panic!("reader stalled at frame {i}"));
            assert_eq!(tag_of(&got), i, "the reader loses nothing");
        }
    }

    let text = scrape(&relay).await;
    let queue_full = metric(
        &text,
        "v86_relay_frames_dropped_total{reason=\"queue_full\"}",
    );
    assert!(
        queue_full > 0,
        "the stalled client's frames were dropped for it alone"
    );
    drop(stalled);
    relay.shutdown().await;
}

#[tokio::test]
async fn metrics_match_the_traffic_sent() {
    let relay = start(test_config()).await;
    let mut a = connect(&relay, "/lan/m1").await;
    let mut b = connect(&relay, "/lan/m1").await;
    let mut c = connect(&relay, "/lan/m2").await;
    // a -> broadcast (reaches b), b -> a unicast, c -> broadcast (reaches nobody).
    send(&mut a, frame(BROADCAST, mac(1), 100, 1)).await;
    recv(&mut b, LONG).await.unwrap();
    for i in 0..10 {
        send(&mut b, frame(mac(1), mac(2), 200, i)).await;
        recv(&mut a, LONG).await.unwrap();
    }
    send(&mut c, frame(BROADCAST, mac(3), 60, 0)).await;
    send(&mut c, Bytes::from_static(&[1, 2, 3])).await;

    eventually("counters reflect every frame", || async {
        let text = scrape(&relay).await;
        metric(
            &text,
            "v86_relay_frames_received_total{transport=\"websocket\"}",
        ) == 13
    })
    .await;
    let text = scrape(&relay).await;
    assert_eq!(
        metric(
            &text,
            "v86_relay_bytes_received_total{transport=\"websocket\"}"
        ),
        100 + 2000 + 60 + 3
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_frames_sent_total{transport=\"websocket\"}"
        ),
        11
    );
    assert_eq!(
        metric(&text, "v86_relay_bytes_sent_total{transport=\"websocket\"}"),
        100 + 2000
    );
    assert_eq!(
        metric(&text, "v86_relay_connections{transport=\"websocket\"}"),
        3
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_connections_opened_total{transport=\"websocket\"}"
        ),
        3
    );
    assert_eq!(metric(&text, "v86_relay_lans"), 2);
    assert_eq!(metric(&text, "v86_relay_ports"), 3);
    assert_eq!(metric(&text, "v86_relay_mac_table_entries"), 3);
    assert_eq!(
        metric(
            &text,
            "v86_relay_frames_dropped_total{reason=\"too_short\"}"
        ),
        1
    );

    // Counters survive the clients leaving; gauges return to zero.
    drop((a, b, c));
    eventually("gauges back to zero", || async {
        let text = scrape(&relay).await;
        metric(&text, "v86_relay_ports") == 0 && metric(&text, "v86_relay_lans") == 0
    })
    .await;
    let text = scrape(&relay).await;
    assert_eq!(
        metric(
            &text,
            "v86_relay_frames_received_total{transport=\"websocket\"}"
        ),
        13
    );
    assert_eq!(
        metric(
            &text,
            "v86_relay_frames_sent_total{transport=\"websocket\"}"
        ),
        11
    );
    assert_eq!(metric(&text, "v86_relay_mac_table_entries"), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn bad_lan_names_get_400_with_a_reason_and_healthz_answers() {
    let relay = start(test_config()).await;
    let (status, body) = http_get(relay.listen_addr, "/lan/no.dots").await;
    assert!(status.contains("400"), "{status}");
    assert!(body.contains("invalid LAN name"), "{body}");
    let long = "x".repeat(65);
    let (status, _) = http_get(relay.listen_addr, &format!("/lan/{long}")).await;
    assert!(status.contains("400"), "{status}");
    let err = tokio_tungstenite::connect_async(url(&relay, "/lan/bad%20name")).await;
    assert!(err.is_err(), "a bad name is refused before the upgrade");
    let (status, body) = http_get(relay.listen_addr, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "ok\n");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_idle_timeout() {
    let mut config = test_config();
    config.websocket.ping_interval_secs = 1;
    config.websocket.idle_timeout_secs = 2;
    let relay = start(config).await;
    // A client that never polls its socket never answers pings.
    let _mute = connect(&relay, "/lan/idle").await;
    // A client that reads answers pings (tungstenite replies with pongs) and stays.
    let mut live = connect(&relay, "/lan/idle").await;
    let keep_reading = tokio::spawn(async move { while let Some(Ok(_)) = live.next().await {} });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let text = scrape(&relay).await;
    assert_eq!(
        metric(&text, "v86_relay_connections{transport=\"websocket\"}"),
        1
    );
    keep_reading.abort();
    relay.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001() {
    let relay = start(test_config()).await;
    let mut a = connect(&relay, "/lan/bye").await;
    send(&mut a, frame(BROADCAST, mac(1), 60, 0)).await;
    let closer = tokio::spawn(relay.shutdown());
    let mut code = None;
    while let Some(Ok(msg)) = a.next().await {
        if let Message::Close(Some(frame)) = msg {
            code = Some(frame.code);
            break;
        }
    }
    assert_eq!(code, Some(CloseCode::Away));
    assert!(
        closer.await.unwrap(),
        "shutdown finished within its grace period"
    );
}

#[tokio::test]
async fn allowed_origins_refuse_other_pages_but_not_programs() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut config = test_config();
    config.server.allowed_origins = vec!["https://class.example.org".to_owned()];
    let relay = start(config).await;
    let with_origin = |origin: &str| {
        let mut request = url(&relay, "/lan/o").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        request
    };
    let refused = tokio_tungstenite::connect_async(with_origin("https://evil.example"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
    tokio_tungstenite::connect_async(with_origin("https://class.example.org"))
        .await
        .expect("listed origin connects");
    // v86 in Node and the TAP client send no Origin.
    connect(&relay, "/lan/o").await;
    relay.shutdown().await;
}

/// A client that closes gets the closing handshake back, whether it had joined its LAN or
/// was still waiting to be placed on a private one: never a connection that just ends.
#[tokio::test]
async fn a_client_that_closes_gets_the_closing_handshake_back() {
    for private in [false, true] {
        let mut config = test_config();
        if private {
            config.server.default_lan = relay::config::DefaultLan::Private;
        }
        let relay = start(config).await;
        for round in 0..20u8 {
            let mut ws = connect(&relay, if private { "/" } else { "/lan/closing" }).await;
            if !private {
                send(&mut ws, frame(BROADCAST, mac(round), 60, round.into())).await;
            }
            ws.send(Message::Close(None)).await.unwrap();
            let answer = tokio::time::timeout(LONG, async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(_))) => return Ok(()),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("the connection ended without a Close".to_owned()),
                    }
                }
            })
            .await
            .expect("an answer to the Close");
            assert_eq!(answer, Ok(()), "round {round}, private LAN {private}");
        }
        relay.shutdown().await;
    }
}
