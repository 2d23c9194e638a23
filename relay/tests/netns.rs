//! Real Linux network stacks on relay LANs: namespaces behind TAP devices attached with
//! `v86-relay tap`. Needs root; skips without it (fails under V86_RELAY_REQUIRE_ROOT=1).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::netns::*;
use sha2::{Digest, Sha256};

const TOTAL: usize = 100 * 1024 * 1024;

/// Deterministic bytes, so the sender need not keep 100 MB around.
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

#[test]
fn two_namespaces_on_one_lan_ping_and_move_100_mb_another_lan_cannot_reach() {
    if !root_or_skip("two_namespaces_on_one_lan") {
        return;
    }
    let (_relay, port) = start_relay(&[]);
    let a = Netns::with_tap("a", "10.0.9.1/24");
    let b = Netns::with_tap("b", "10.0.9.2/24");
    // Same subnet on purpose: only the LAN boundary keeps it apart.
    let c = Netns::with_tap("c", "10.0.9.3/24");
    let _tap_a = attach_tap(port, "red", &a);
    let _tap_b = attach_tap(port, "red", &b);
    let _tap_c = attach_tap(port, "blue", &c);

    assert!(a.ping_ok("10.0.9.2", Duration::from_secs(15)), "a pings b");
    assert!(b.ping_ok("10.0.9.1", Duration::from_secs(5)), "b pings a");

    let listener = b.spawn(|| TcpListener::bind("10.0.9.2:5001").expect("bind in b"));
    let listener = listener.join().unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            let n = conn.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n;
        }
        (total, hash.finalize())
    });
    let sender = a.spawn(|| {
        let mut conn = TcpStream::connect("10.0.9.2:5001").expect("connect from a");
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut sent = 0;
        while sent < TOTAL {
            fill(&mut buf, &mut state);
            conn.write_all(&buf).expect("write");
            hash.update(&buf);
            sent += buf.len();
        }
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        hash.finalize()
    });
    let sent_hash = sender.join().unwrap();
    let (received, received_hash) = receiver.join().unwrap();
    assert_eq!(received, TOTAL);
    assert_eq!(sent_hash, received_hash, "100 MB arrived intact");

    assert!(
        !c.ping_ok("10.0.9.1", Duration::from_secs(3)),
        "a namespace on another LAN must not reach LAN red"
    );
}
