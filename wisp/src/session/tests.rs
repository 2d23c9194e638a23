//! Session tests: handshakes, a v86-like client, closes, and every invariant in the module docs.

use std::time::{Duration, Instant};

use super::*;
use crate::wire::{Extension, ExtensionId, Info, PasswordCredentials};

/// What the server sent, owned, for comparisons.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Continue(u32, u32),
    Data(u32, Vec<u8>),
    Close(u32, CloseReason),
    Info(Vec<(ExtensionId, Vec<u8>)>),
}

fn transmits(s: &mut Session) -> Vec<Out> {
    std::iter::from_fn(|| s.poll_transmit())
        .map(|m| {
            let p = Packet::parse(&m).expect("the server sends well-formed packets");
            let id = p.stream_id.0;
            match p.payload {
                Payload::Continue(n) => Out::Continue(id, n),
                Payload::Data(d) => Out::Data(id, d.to_vec()),
                Payload::Close(r) => Out::Close(id, r),
                Payload::Info(i) => {
                    Out::Info(i.extensions().map(|e| (e.id, e.payload.to_vec())).collect())
                }
                Payload::Connect(_) => panic!("the server never sends CONNECT"),
            }
        })
        .collect()
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn connect(id: u32, stream_type: StreamType, host: &str, port: u16) -> Vec<u8> {
    let c = ConnectPayload {
        stream_type,
        port,
        host,
    };
    Packet::new(StreamId(id), Payload::Connect(c)).to_vec()
}

fn data(id: u32, bytes: &[u8]) -> Vec<u8> {
    Packet::new(StreamId(id), Payload::Data(bytes)).to_vec()
}

fn close(id: u32, reason: CloseReason) -> Vec<u8> {
    Packet::new(StreamId(id), Payload::Close(reason)).to_vec()
}

fn client_info(exts: &[Extension<'_>]) -> Vec<u8> {
    let mut list = Vec::new();
    exts.iter().for_each(|e| e.encode(&mut list));
    let info = Info {
        major: 2,
        minor: 0,
        extensions: &list,
    };
    Packet::new(StreamId::HANDSHAKE, Payload::Info(info)).to_vec()
}

fn v1() -> (Session, Instant) {
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::default(), now);
    assert_eq!(transmits(&mut s), [Out::Continue(0, 128)]);
    (s, now)
}

fn v2(config: SessionConfig) -> (Session, Instant) {
    let now = Instant::now();
    let config = SessionConfig {
        version: Version::V2,
        ..config
    };
    (Session::new(config, now), now)
}

/// Opens TCP stream `id` and drains what that produced.
fn open_tcp(s: &mut Session, now: Instant, id: u32) {
    s.handle_message(now, &connect(id, StreamType::Tcp, "198.18.0.1", 80));
    assert!(matches!(events(s)[..], [Event::Connect { .. }]));
    s.handle_stream_opened(StreamId(id));
    transmits(s);
}

#[test]
fn v1_first_transmit_is_continue_128_on_stream_0() {
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::default(), now);
    assert_eq!(
        s.poll_transmit().unwrap(),
        [0x03, 0, 0, 0, 0, 0x80, 0, 0, 0]
    );
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.version(), Version::V1);
}

#[test]
fn v86_like_client() {
    let (mut s, now) = v1();
    s.handle_message(now, &connect(1, StreamType::Tcp, "198.18.0.1", 80));
    let connect_event = Event::Connect {
        id: StreamId(1),
        stream_type: StreamType::Tcp,
        host: "198.18.0.1".into(),
        port: 80,
    };
    assert_eq!(events(&mut s), [connect_event]);
    // v86 may send before the socket connects; the data goes to the driver either way.
    s.handle_message(now, &data(1, b"GET / HTTP/1.0\r\n\r\n"));
    s.handle_stream_opened(StreamId(1));
    assert_eq!(transmits(&mut s), [], "v1 has no open confirmation");
    for _ in 1..64 {
        s.handle_message(now, &data(1, b"x"));
    }
    let got = events(&mut s);
    assert_eq!(got.len(), 64);
    let first = Event::Data {
        id: StreamId(1),
        data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
    };
    assert_eq!(got[0], first);
    // Half the buffer written to the host: re-credit before the client runs dry.
    s.handle_data_sent(StreamId(1), 63);
    assert_eq!(transmits(&mut s), []);
    s.handle_data_sent(StreamId(1), 1);
    assert_eq!(transmits(&mut s), [Out::Continue(1, 128)]);
    // Host to client.
    assert!(s.can_read_host(StreamId(1)));
    s.handle_host_data(StreamId(1), b"HTTP/1.0 200 OK\r\n")
        .unwrap();
    s.handle_host_closed(StreamId(1), CloseReason::Voluntary);
    assert_eq!(
        transmits(&mut s),
        [
            Out::Data(1, b"HTTP/1.0 200 OK\r\n".to_vec()),
            Out::Close(1, CloseReason::Voluntary)
        ]
    );
    let stats = s.stats();
    assert_eq!(
        (stats.streams_opened_tcp, stats.data_packets_from_client),
        (1, 64)
    );
    assert_eq!(
        (stats.data_packets_to_client, stats.data_bytes_to_client),
        (1, 17)
    );
    assert_eq!(stats.closes_sent[&CloseReason::Voluntary], 1);
}

#[test]
fn recredit_reports_the_room_left() {
    let (mut s, now) = v1();
    open_tcp(&mut s, now, 5);
    for _ in 0..100 {
        s.handle_message(now, &data(5, b"x"));
    }
    s.handle_data_sent(StreamId(5), 64);
    assert_eq!(transmits(&mut s), [Out::Continue(5, 128 - 36)]);
    // Nothing is owed until another half buffer is written.
    s.handle_data_sent(StreamId(5), 36);
    assert_eq!(transmits(&mut s), []);
}

#[test]
fn nothing_is_sent_on_a_stream_after_its_close() {
    let (mut s, now) = v1();
    open_tcp(&mut s, now, 1);
    for _ in 0..64 {
        s.handle_message(now, &data(1, b"x"));
    }
    s.handle_stream_failed(StreamId(1), CloseReason::NetworkError);
    assert_eq!(
        transmits(&mut s),
        [Out::Close(1, CloseReason::NetworkError)]
    );
    // Late driver reports and late host bytes produce nothing.
    s.handle_data_sent(StreamId(1), 64);
    s.handle_stream_opened(StreamId(1));
    assert_eq!(
        s.handle_host_data(StreamId(1), b"late"),
        Err(HostDataError::NotOpen(StreamId(1)))
    );
    s.handle_host_closed(StreamId(1), CloseReason::Voluntary);
    assert!(!s.can_read_host(StreamId(1)));
    assert_eq!(transmits(&mut s), []);
    // The client's DATA in flight is dropped and counted, not a panic.
    s.handle_message(now, &data(1, b"in flight"));
    events(&mut s);
    assert_eq!(s.stats().unknown_stream_dropped, 1);
    assert_eq!(s.stats().host_data_dropped, 1);
}

#[test]
fn client_close_is_not_echoed_and_the_id_can_be_reused() {
    let (mut s, now) = v1();
    open_tcp(&mut s, now, 1);
    s.handle_host_data(StreamId(1), &[7; 100]).unwrap();
    s.handle_message(now, &close(1, CloseReason::Voluntary));
    let closed = Event::Close {
        id: StreamId(1),
        reason: CloseReason::Voluntary,
    };
    assert_eq!(events(&mut s), [closed]);
    assert_eq!(s.stats().closes_received[&CloseReason::Voluntary], 1);
    // A second CLOSE for it is counted as unknown.
    s.handle_message(now, &close(1, CloseReason::Voluntary));
    assert_eq!(s.stats().unknown_stream_dropped, 1);
    // Reusing the id: the old stream's queued bytes are not charged to the new one.
    open_tcp(&mut s, now, 1);
    assert_eq!(s.transmit_backlog(), 0);
    s.handle_host_data(StreamId(1), b"new").unwrap();
    assert_eq!(transmits(&mut s), [Out::Data(1, b"new".to_vec())]);
}

#[test]
fn duplicate_connect_closes_the_stream_with_invalid() {
    let (mut s, now) = v1();
    open_tcp(&mut s, now, 3);
    s.handle_message(now, &connect(3, StreamType::Tcp, "198.18.0.2", 22));
    let closed = Event::Close {
        id: StreamId(3),
        reason: CloseReason::Invalid,
    };
    assert_eq!(events(&mut s), [closed]);
    assert_eq!(transmits(&mut s), [Out::Close(3, CloseReason::Invalid)]);
    assert!(!s.is_stream_open(StreamId(3)));
    assert_eq!(
        s.handle_host_data(StreamId(3), b"x"),
        Err(HostDataError::NotOpen(StreamId(3)))
    );
}

#[test]
fn stream_limit_refuses_with_throttled() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionConfig {
            max_streams: 2,
            ..Default::default()
        },
        now,
    );
    transmits(&mut s);
    open_tcp(&mut s, now, 1);
    open_tcp(&mut s, now, 2);
    s.handle_message(now, &connect(3, StreamType::Tcp, "198.18.0.1", 80));
    assert_eq!(events(&mut s), []);
    assert_eq!(transmits(&mut s), [Out::Close(3, CloseReason::Throttled)]);
    assert_eq!(s.stream_count(), 2);
    // Room again after a close.
    s.handle_message(now, &close(1, CloseReason::Voluntary));
    events(&mut s);
    open_tcp(&mut s, now, 3);
    assert_eq!(s.stats().connects_refused, 1);
}

#[test]
fn invalid_connects_get_a_close_on_their_stream() {
    let (mut s, now) = v1();
    let mut bad_utf8 = connect(4, StreamType::Tcp, "ab", 80);
    bad_utf8[8] = 0xff;
    s.handle_message(now, &bad_utf8);
    s.handle_message(now, &connect(5, StreamType::Tcp, "198.18.0.1", 0));
    s.handle_message(now, &connect(6, StreamType::Other(9), "198.18.0.1", 80));
    s.handle_message(now, &[0x01, 7, 0, 0, 0, 0x01, 0x50, 0x00]); // empty host
    let want = [4, 5, 6, 7].map(|id| Out::Close(id, CloseReason::Invalid));
    assert_eq!(transmits(&mut s), want);
    let got = events(&mut s);
    assert!(
        got.iter().all(|e| matches!(e, Event::ProtocolError(_))),
        "{got:?}"
    );
    assert_eq!(s.stream_count(), 0);
}

#[test]
fn malformed_messages_are_dropped_and_counted() {
    let (mut s, now) = v1();
    s.handle_message(now, &[]);
    s.handle_message(now, &[0x02, 1, 0]);
    s.handle_message(now, &[0x09, 1, 0, 0, 0]);
    s.handle_message(now, &[0x04, 1, 0, 0, 0]); // CLOSE without a reason
    s.handle_message(
        now,
        &Packet::new(StreamId(1), Payload::Continue(9)).to_vec(),
    );
    assert_eq!(transmits(&mut s), []);
    assert_eq!(s.stats().malformed_dropped, 5);
    assert_eq!(events(&mut s).len(), 5);
}

#[test]
fn stream_zero_is_never_a_stream() {
    let (mut s, now) = v1();
    s.handle_message(now, &connect(0, StreamType::Tcp, "198.18.0.1", 80));
    s.handle_message(now, &data(0, b"x"));
    s.handle_message(now, &close(0, CloseReason::Voluntary));
    // No reply at all: a CLOSE on stream 0 would wreck v86's stream table.
    assert_eq!(transmits(&mut s), []);
    assert!(!s.is_finished());
    assert_eq!(s.stats().malformed_dropped, 3);
    assert_eq!(
        s.handle_host_data(StreamId(0), b"x"),
        Err(HostDataError::NotOpen(StreamId(0)))
    );
}

#[test]
fn overrunning_the_credit_closes_with_throttled() {
    let (mut s, now) = v1();
    open_tcp(&mut s, now, 1);
    // The driver writes nothing: one buffer of slack beyond the credit is tolerated.
    for _ in 0..256 {
        s.handle_message(now, &data(1, b"x"));
    }
    assert_eq!(transmits(&mut s), []);
    s.handle_message(now, &data(1, b"x"));
    assert_eq!(transmits(&mut s), [Out::Close(1, CloseReason::Throttled)]);
    let got = events(&mut s);
    let tail = &got[got.len() - 2..];
    let closed = Event::Close {
        id: StreamId(1),
        reason: CloseReason::Throttled,
    };
    assert_eq!(
        tail,
        [
            Event::ProtocolError(ProtocolError::CreditExceeded(StreamId(1))),
            closed
        ]
    );
    s.handle_data_sent(StreamId(1), 256);
    s.handle_message(now, &data(1, b"x"));
    assert_eq!(transmits(&mut s), []);
}

#[test]
fn udp_has_no_credit_and_drops_over_a_buffer() {
    let (mut s, now) = v1();
    s.handle_message(now, &connect(2, StreamType::Udp, "198.18.0.1", 53));
    s.handle_stream_opened(StreamId(2));
    for _ in 0..130 {
        s.handle_message(now, &data(2, b"q"));
    }
    assert_eq!(s.stats().udp_dropped, 2);
    s.handle_data_sent(StreamId(2), 128);
    assert_eq!(transmits(&mut s), [], "no CONTINUE for UDP");
    assert_eq!(s.stats().streams_opened_udp, 1);
}

#[test]
fn udp_can_be_switched_off() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionConfig {
            udp_enabled: false,
            ..Default::default()
        },
        now,
    );
    transmits(&mut s);
    s.handle_message(now, &connect(2, StreamType::Udp, "198.18.0.1", 53));
    assert_eq!(transmits(&mut s), [Out::Close(2, CloseReason::Blocked)]);
}

#[test]
fn host_reads_are_paced_per_stream_and_per_session() {
    let now = Instant::now();
    let config = SessionConfig {
        transmit_budget: 1000,
        stream_transmit_budget: 300,
        ..Default::default()
    };
    let mut s = Session::new(config, now);
    transmits(&mut s);
    assert!(!s.can_read_host(StreamId(1)), "no such stream yet");
    open_tcp(&mut s, now, 1);
    open_tcp(&mut s, now, 2);
    s.handle_host_data(StreamId(1), &[0; 300]).unwrap();
    assert!(!s.can_read_host(StreamId(1)));
    assert!(s.can_read_host(StreamId(2)));
    s.handle_host_data(StreamId(2), &[0; 800]).unwrap();
    assert!(!s.can_read_host(StreamId(2)));
    // Over twice the session budget, bytes are refused.
    assert_eq!(
        s.handle_host_data(StreamId(2), &[0; 900]),
        Err(HostDataError::QueueFull)
    );
    assert_eq!(transmits(&mut s).len(), 2);
    assert!(s.can_read_host(StreamId(1)) && s.can_read_host(StreamId(2)));
}

#[test]
fn a_client_that_never_reads_loses_the_session() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionConfig {
            transmit_budget: 100,
            ..Default::default()
        },
        now,
    );
    // Each refused CONNECT queues a 6-byte CLOSE; nobody polls the transmits.
    for id in 1..100 {
        s.handle_message(now, &connect(id, StreamType::Tcp, "198.18.0.1", 0));
    }
    assert!(s.is_finished());
    let got = events(&mut s);
    assert_eq!(
        got.last(),
        Some(&Event::Finished {
            reason: CloseReason::Throttled
        })
    );
    assert!(got.contains(&Event::ProtocolError(ProtocolError::TransmitBacklog)));
    assert_eq!(s.transmit_backlog(), 0);
}

#[test]
fn protocol_error_events_are_bounded() {
    let (mut s, now) = v1();
    for _ in 0..1000 {
        s.handle_message(now, &[0xee; 3]);
    }
    assert_eq!(events(&mut s).len(), MAX_QUEUED_DIAGNOSTICS);
    assert_eq!(s.stats().malformed_dropped, 1000);
    s.handle_message(now, &[0xee; 3]);
    assert_eq!(events(&mut s).len(), 1, "room again once polled");
}

#[test]
fn v2_handshake_and_udp() {
    let motd = SessionConfig {
        motd: Some("hi".into()),
        ..Default::default()
    };
    let (mut s, now) = v2(motd);
    let offered = vec![
        (ExtensionId::Udp, vec![]),
        (ExtensionId::Motd, b"hi".to_vec()),
        (ExtensionId::StreamConfirmation, vec![]),
    ];
    assert_eq!(transmits(&mut s), [Out::Info(offered)]);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(10)));
    let udp = Extension {
        id: ExtensionId::Udp,
        payload: &[],
    };
    let unknown = Extension {
        id: ExtensionId::Other(0x77),
        payload: b"?",
    };
    s.handle_message(now, &client_info(&[udp, unknown]));
    assert_eq!(transmits(&mut s), [Out::Continue(0, 128)]);
    assert_eq!(s.poll_timeout(), None);
    s.handle_message(now, &connect(1, StreamType::Udp, "198.18.0.1", 53));
    assert!(matches!(
        events(&mut s)[..],
        [Event::Connect {
            stream_type: StreamType::Udp,
            ..
        }]
    ));
    // Confirmation was not negotiated: opening sends nothing.
    s.handle_stream_opened(StreamId(1));
    assert_eq!(transmits(&mut s), []);
}

#[test]
fn v2_udp_needs_the_clients_extension_too() {
    let (mut s, now) = v2(SessionConfig::default());
    transmits(&mut s);
    s.handle_message(now, &client_info(&[]));
    s.handle_message(now, &connect(1, StreamType::Udp, "198.18.0.1", 53));
    assert_eq!(
        transmits(&mut s),
        [Out::Continue(0, 128), Out::Close(1, CloseReason::Blocked)]
    );
}

#[test]
fn v2_stream_confirmation() {
    let (mut s, now) = v2(SessionConfig::default());
    transmits(&mut s);
    let confirm = Extension {
        id: ExtensionId::StreamConfirmation,
        payload: &[],
    };
    s.handle_message(now, &client_info(&[confirm]));
    s.handle_message(now, &connect(9, StreamType::Tcp, "example.com", 443));
    s.handle_message(now, &data(9, b"early"));
    s.handle_stream_opened(StreamId(9));
    s.handle_stream_opened(StreamId(9));
    assert_eq!(
        transmits(&mut s),
        [Out::Continue(0, 128), Out::Continue(9, 127)]
    );
}

fn password_ext(user: &str, password: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    PasswordCredentials { user, password }.encode(&mut payload);
    client_info(&[Extension {
        id: ExtensionId::PasswordAuth,
        payload: &payload,
    }])
}

fn password_session(auth: PasswordAuth) -> (Session, Instant) {
    let config = SessionConfig {
        password_auth: auth,
        udp_enabled: false,
        ..Default::default()
    };
    let (mut s, now) = v2(config);
    let required = u8::from(auth == PasswordAuth::Required);
    let offered = vec![
        (ExtensionId::PasswordAuth, vec![required]),
        (ExtensionId::StreamConfirmation, vec![]),
    ];
    assert_eq!(transmits(&mut s), [Out::Info(offered)]);
    (s, now)
}

#[test]
fn v2_password_accepted() {
    let (mut s, now) = password_session(PasswordAuth::Required);
    s.handle_message(now, &password_ext("alice", "s3cret"));
    let auth = Event::Authenticate {
        user: "alice".into(),
        password: "s3cret".into(),
    };
    assert_eq!(events(&mut s), [auth]);
    assert_eq!(transmits(&mut s), []);
    // Messages before the verdict are dropped; the client must wait for the CONTINUE.
    s.handle_message(now, &connect(1, StreamType::Tcp, "198.18.0.1", 80));
    assert_eq!(s.stats().malformed_dropped, 1);
    s.handle_auth_result(true);
    assert_eq!(transmits(&mut s), [Out::Continue(0, 128)]);
    s.handle_auth_result(false);
    assert!(!s.is_finished(), "a late verdict changes nothing");
}

#[test]
fn v2_password_refusals() {
    let (mut s, now) = password_session(PasswordAuth::Required);
    s.handle_message(now, &password_ext("alice", "wrong"));
    events(&mut s);
    s.handle_auth_result(false);
    assert_eq!(
        transmits(&mut s),
        [Out::Close(0, CloseReason::AuthBadPassword)]
    );
    let finished = Event::Finished {
        reason: CloseReason::AuthBadPassword,
    };
    assert_eq!(events(&mut s), [finished]);
    s.handle_message(now, &connect(1, StreamType::Tcp, "198.18.0.1", 80));
    s.handle_message(now, b"garbage");
    assert_eq!((transmits(&mut s), events(&mut s)), (vec![], vec![]));
    assert_eq!(
        s.stats().malformed_dropped,
        0,
        "a finished session ignores input"
    );

    let (mut s, now) = password_session(PasswordAuth::Required);
    s.handle_message(now, &client_info(&[]));
    assert_eq!(
        transmits(&mut s),
        [Out::Close(0, CloseReason::AuthMissingCredentials)]
    );

    let (mut s, now) = password_session(PasswordAuth::Required);
    let garbled = Extension {
        id: ExtensionId::PasswordAuth,
        payload: &[9, 9],
    };
    s.handle_message(now, &client_info(&[garbled]));
    assert_eq!(
        transmits(&mut s),
        [Out::Close(0, CloseReason::AuthBadPassword)]
    );

    let (mut s, now) = password_session(PasswordAuth::Optional);
    s.handle_message(now, &client_info(&[]));
    assert_eq!(transmits(&mut s), [Out::Continue(0, 128)]);
}

#[test]
fn v2_handshake_timeout() {
    let (mut s, now) = password_session(PasswordAuth::Optional);
    s.handle_timeout(now + Duration::from_secs(9));
    assert!(!s.is_finished());
    s.handle_message(now + Duration::from_secs(11), &client_info(&[]));
    assert!(s.is_finished());
    assert_eq!(transmits(&mut s), [], "nothing to say to a silent client");
    let got = events(&mut s);
    assert_eq!(
        got.last(),
        Some(&Event::Finished {
            reason: CloseReason::Timeout
        })
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn v2_wrong_first_messages() {
    // A v1 client that sent a Sec-WebSocket-Protocol header anyway.
    let (mut s, now) = v2(SessionConfig::default());
    transmits(&mut s);
    s.handle_message(now, &connect(1, StreamType::Tcp, "198.18.0.1", 80));
    assert_eq!(
        transmits(&mut s),
        [Out::Close(0, CloseReason::IncompatibleExtensions)]
    );
    assert!(s.is_finished());
    // The client rejects our extensions.
    let (mut s, now) = v2(SessionConfig::default());
    transmits(&mut s);
    s.handle_message(now, &close(0, CloseReason::IncompatibleExtensions));
    assert_eq!(transmits(&mut s), []);
    let finished = Event::Finished {
        reason: CloseReason::IncompatibleExtensions,
    };
    assert_eq!(events(&mut s), [finished]);
    // An older major version.
    let (mut s, now) = v2(SessionConfig::default());
    transmits(&mut s);
    let old = Info {
        major: 1,
        minor: 0,
        extensions: &[],
    };
    s.handle_message(now, &Packet::new(StreamId(0), Payload::Info(old)).to_vec());
    assert_eq!(
        transmits(&mut s),
        [Out::Close(0, CloseReason::IncompatibleExtensions)]
    );
    // A broken INFO.
    let (mut s, now) = v2(SessionConfig::default());
    transmits(&mut s);
    s.handle_message(now, &[0x05, 0, 0, 0, 0, 2, 0, 0x01, 9, 0, 0, 0]);
    assert_eq!(
        transmits(&mut s),
        [Out::Close(0, CloseReason::IncompatibleExtensions)]
    );
}
