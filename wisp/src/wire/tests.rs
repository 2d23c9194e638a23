//! Byte fixtures for every packet type and every way a message can be malformed.

use super::*;

/// CONNECT stream 1, TCP, port 80, "198.18.0.1" (what v86 sends for its first connection).
const CONNECT_V86: [u8; 18] = [
    0x01, 0x01, 0x00, 0x00, 0x00, // CONNECT, stream 1
    0x01, 0x50, 0x00, // TCP, port 80
    b'1', b'9', b'8', b'.', b'1', b'8', b'.', b'0', b'.', b'1',
];
/// DATA stream 0x01020304 "hi".
const DATA_HI: [u8; 7] = [0x02, 0x04, 0x03, 0x02, 0x01, b'h', b'i'];
/// CONTINUE stream 0, 128 packets: the v1 server's first message.
const CONTINUE_128: [u8; 9] = [0x03, 0, 0, 0, 0, 0x80, 0, 0, 0];
/// CLOSE stream 7, throttled.
const CLOSE_THROTTLED: [u8; 6] = [0x04, 7, 0, 0, 0, 0x49];
/// INFO v2.0 with UDP (empty) and MOTD "hey".
const INFO_UDP_MOTD: [u8; 20] = [
    0x05, 0, 0, 0, 0, // INFO, stream 0
    2, 0, // v2.0
    0x01, 0, 0, 0, 0, // UDP, no payload
    0x04, 3, 0, 0, 0, b'h', b'e', b'y', // MOTD "hey"
];

fn round_trip(bytes: &[u8]) -> Packet<'_> {
    let packet = Packet::parse(bytes).unwrap();
    assert_eq!(packet.encoded_len(), bytes.len());
    assert_eq!(packet.to_vec(), bytes);
    let mut buf = bytes::BytesMut::new();
    packet.encode(&mut buf);
    assert_eq!(&buf[..], bytes);
    packet
}

#[test]
fn connect_fixture() {
    let p = round_trip(&CONNECT_V86);
    assert_eq!(p.stream_id, StreamId(1));
    let Payload::Connect(c) = p.payload else {
        panic!("{p:?}")
    };
    assert_eq!(c.stream_type, StreamType::Tcp);
    assert_eq!(c.port, 80);
    assert_eq!(c.host, "198.18.0.1");
}

#[test]
fn connect_udp_and_unknown_stream_type_are_kept() {
    let udp = [0x01, 9, 0, 0, 0, 0x02, 0x35, 0x00, b'h'];
    let Payload::Connect(c) = round_trip(&udp).payload else {
        panic!()
    };
    assert_eq!((c.stream_type, c.port), (StreamType::Udp, 53));
    let odd = [0x01, 9, 0, 0, 0, 0x07, 0x35, 0x00, b'h'];
    let Payload::Connect(c) = round_trip(&odd).payload else {
        panic!()
    };
    assert_eq!(c.stream_type, StreamType::Other(7));
}

#[test]
fn data_fixture() {
    let p = round_trip(&DATA_HI);
    assert_eq!(p.stream_id, StreamId(0x0102_0304));
    assert_eq!(p.payload, Payload::Data(b"hi"));
    // An empty DATA is legal (it carries nothing, but it is well formed).
    assert_eq!(round_trip(&[0x02, 1, 0, 0, 0]).payload, Payload::Data(b""));
}

#[test]
fn continue_and_close_fixtures() {
    let p = round_trip(&CONTINUE_128);
    assert_eq!(
        (p.stream_id, p.payload),
        (StreamId::HANDSHAKE, Payload::Continue(128))
    );
    let p = round_trip(&CLOSE_THROTTLED);
    assert_eq!(
        (p.stream_id, p.payload),
        (StreamId(7), Payload::Close(CloseReason::Throttled))
    );
}

#[test]
fn trailing_bytes_after_continue_and_close_are_ignored() {
    let p = Packet::parse(&[0x03, 1, 0, 0, 0, 5, 0, 0, 0, 0xff]).unwrap();
    assert_eq!(p.payload, Payload::Continue(5));
    let p = Packet::parse(&[0x04, 1, 0, 0, 0, 0x02, 0xff]).unwrap();
    assert_eq!(p.payload, Payload::Close(CloseReason::Voluntary));
}

#[test]
fn close_reasons_round_trip_and_unknown_is_preserved() {
    for b in 0..=u8::MAX {
        assert_eq!(CloseReason::from_u8(b).to_u8(), b);
    }
    assert_eq!(CloseReason::from_u8(0x45), CloseReason::Other(0x45));
    assert_eq!(
        CloseReason::from_u8(0xc2),
        CloseReason::AuthMissingCredentials
    );
    let p = round_trip(&[0x04, 1, 0, 0, 0, 0x99]);
    assert_eq!(p.payload, Payload::Close(CloseReason::Other(0x99)));
}

#[test]
fn info_fixture() {
    let p = round_trip(&INFO_UDP_MOTD);
    let Payload::Info(info) = p.payload else {
        panic!()
    };
    assert_eq!((info.major, info.minor), (2, 0));
    let exts: Vec<_> = info.extensions().collect();
    assert_eq!(
        exts,
        [
            Extension {
                id: ExtensionId::Udp,
                payload: b""
            },
            Extension {
                id: ExtensionId::Motd,
                payload: b"hey"
            },
        ]
    );
    let mut rebuilt = Vec::new();
    exts.iter().for_each(|e| e.encode(&mut rebuilt));
    assert_eq!(rebuilt, &INFO_UDP_MOTD[7..]);
    // No extensions at all is fine.
    let Payload::Info(info) = round_trip(&[0x05, 0, 0, 0, 0, 2, 0]).payload else {
        panic!()
    };
    assert_eq!(info.extensions().count(), 0);
}

#[test]
fn password_credentials_fixture() {
    // user "ab", password "xyz": u8 2 | u16 3 | "ab" | "xyz"
    let bytes = [2, 3, 0, b'a', b'b', b'x', b'y', b'z'];
    let c = PasswordCredentials::parse(&bytes).unwrap();
    assert_eq!((c.user, c.password), ("ab", "xyz"));
    let mut out = Vec::new();
    c.encode(&mut out);
    assert_eq!(out, bytes);
    assert!(matches!(
        PasswordCredentials::parse(&[2, 3, 0, b'a', b'b', b'x']),
        Err(WireError::Truncated { .. })
    ));
    assert_eq!(
        PasswordCredentials::parse(&[1, 0, 0, 0xff]),
        Err(WireError::BadUtf8)
    );
    assert!(PasswordCredentials::parse(&[1, 0]).is_err());
}

#[test]
fn truncated_headers() {
    for len in 0..HEADER_LEN {
        assert_eq!(
            Packet::parse(&CONNECT_V86[..len]),
            Err(WireError::Truncated {
                needed: HEADER_LEN,
                got: len
            })
        );
        assert!(Frame::parse(&CONNECT_V86[..len]).is_err());
    }
}

#[test]
fn truncated_payloads() {
    // CONNECT needs type and port; CONTINUE four bytes; CLOSE one; INFO two.
    for len in HEADER_LEN..HEADER_LEN + 3 {
        let err = Packet::parse(&CONNECT_V86[..len]).unwrap_err();
        assert_eq!(
            err,
            WireError::Truncated {
                needed: 8,
                got: len
            }
        );
    }
    for len in HEADER_LEN..CONTINUE_128.len() {
        assert!(matches!(
            Packet::parse(&CONTINUE_128[..len]),
            Err(WireError::Truncated { .. })
        ));
    }
    assert!(matches!(
        Packet::parse(&CLOSE_THROTTLED[..5]),
        Err(WireError::Truncated { .. })
    ));
    for len in HEADER_LEN..HEADER_LEN + 2 {
        assert!(matches!(
            Packet::parse(&INFO_UDP_MOTD[..len]),
            Err(WireError::Truncated { .. })
        ));
    }
}

#[test]
fn frame_keeps_the_stream_id_of_a_bad_payload() {
    let bad = [0x01, 0x2a, 0, 0, 0, 0x01, 0x50, 0x00, 0xff, 0xfe];
    let frame = Frame::parse(&bad).unwrap();
    assert_eq!((frame.packet_type, frame.stream_id), (0x01, StreamId(42)));
    assert_eq!(Packet::parse(&bad), Err(WireError::BadUtf8));
}

#[test]
fn bad_hosts() {
    // Empty host.
    assert_eq!(Packet::parse(&CONNECT_V86[..8]), Err(WireError::EmptyHost));
    // Invalid UTF-8 (a lone continuation byte).
    let mut bad = CONNECT_V86.to_vec();
    bad[10] = 0x80;
    assert_eq!(Packet::parse(&bad), Err(WireError::BadUtf8));
    // Longest accepted, then one byte more.
    let mut long = CONNECT_V86[..8].to_vec();
    long.extend(std::iter::repeat_n(b'a', MAX_HOST_LEN));
    assert!(Packet::parse(&long).is_ok());
    long.push(b'a');
    assert_eq!(
        Packet::parse(&long),
        Err(WireError::HostTooLong(MAX_HOST_LEN + 1))
    );
    // Multi-byte UTF-8 is a valid host name for the parser (policy decides later).
    let mut utf = CONNECT_V86[..8].to_vec();
    utf.extend("bücher.de".as_bytes());
    let Payload::Connect(c) = round_trip(&utf).payload else {
        panic!()
    };
    assert_eq!(c.host, "bücher.de");
}

#[test]
fn unknown_packet_types() {
    for t in [0x00, 0x06, 0x42, 0xff] {
        assert_eq!(
            Packet::parse(&[t, 1, 0, 0, 0, 1]),
            Err(WireError::UnknownType(t))
        );
    }
}

#[test]
fn malformed_extension_lists() {
    // Extension header cut short.
    let cut = [0x05, 0, 0, 0, 0, 2, 0, 0x01, 0, 0];
    assert!(matches!(
        Packet::parse(&cut),
        Err(WireError::Truncated { needed: 5, got: 3 })
    ));
    // Length claims more than is there.
    let over = [0x05, 0, 0, 0, 0, 2, 0, 0x04, 9, 0, 0, 0, b'h'];
    assert_eq!(
        Packet::parse(&over),
        Err(WireError::ExtensionOverrun {
            id: 4,
            claimed: 9,
            left: 1
        })
    );
    // A huge length must not overflow anything.
    let huge = [0x05, 0, 0, 0, 0, 2, 0, 0x04, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        Packet::parse(&huge),
        Err(WireError::ExtensionOverrun { .. })
    ));
    // Unknown extension ids are kept.
    let odd = [0x05, 0, 0, 0, 0, 2, 0, 0x7f, 1, 0, 0, 0, 9];
    let Payload::Info(info) = round_trip(&odd).payload else {
        panic!()
    };
    let ext = info.extensions().next().unwrap();
    assert_eq!(
        (ext.id, ext.payload),
        (ExtensionId::Other(0x7f), &[9u8][..])
    );
}

#[test]
fn ids_round_trip() {
    for b in 0..=u8::MAX {
        assert_eq!(StreamType::from_u8(b).to_u8(), b);
        assert_eq!(ExtensionId::from_u8(b).to_u8(), b);
        if let Ok(t) = PacketType::from_u8(b) {
            assert_eq!(t.to_u8(), b);
        }
    }
}
