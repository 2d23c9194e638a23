//! Arbitrary SDP offers and UDP datagrams into the WebRTC gateway: it must never panic,
//! and peers that never connect must be removed.
#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use webrtc_gw::{Gateway, GatewayConfig};

thread_local! {
    // One gateway for the whole run: creating its DTLS certificate per input is slow.
    static GATEWAY: RefCell<Gateway> =
        RefCell::new(Gateway::new(GatewayConfig::default()).expect("certificate"));
}

fuzz_target!(|data: &[u8]| {
    let local: SocketAddr = "192.0.2.1:8086".parse().unwrap();
    let source: SocketAddr = "198.51.100.7:50000".parse().unwrap();
    GATEWAY.with(|gateway| {
        let mut gateway = gateway.borrow_mut();
        let now = Instant::now();
        // First byte 0: the rest is an offer; otherwise a datagram.
        match data.split_first() {
            Some((0, offer)) => {
                if let Ok(sdp) = std::str::from_utf8(offer) {
                    let _ = gateway.accept_offer(now, sdp, local);
                }
            }
            Some((_, datagram)) => gateway.handle_receive(now, source, datagram),
            None => {}
        }
        while gateway.poll_transmit().is_some() {}
        while gateway.poll_event().is_some() {}
        // Every peer is past its connect deadline: none may survive.
        gateway.handle_timeout(now + Duration::from_secs(60));
        while gateway.poll_transmit().is_some() {}
        while gateway.poll_event().is_some() {}
        assert_eq!(gateway.peer_count(), 0);
    });
});
