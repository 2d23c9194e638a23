//! Feeds arbitrary bytes to `dhcp::DhcpServer::handle_message`: the first 6 bytes are the
//! frame's source MAC, the rest the UDP payload. A tiny pool with a static lease makes
//! exhaustion, conflicts and expiry reachable; a few timeouts drive the clock.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dhcp::{DhcpConfig, DhcpServer, EthernetAddress, StaticLease};
use libfuzzer_sys::fuzz_target;

fn start() -> Instant {
    // One fixed base instant keeps runs comparable; the crate itself never reads the clock.
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn server() -> DhcpServer {
    let config = DhcpConfig {
        pool_start: Ipv4Addr::new(10, 0, 2, 15),
        pool_end: Ipv4Addr::new(10, 0, 2, 18),
        static_leases: vec![StaticLease {
            mac: EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            ip: Ipv4Addr::new(10, 0, 2, 40),
            host_name: Some("fixed".into()),
        }],
        max_remembered_clients: 8,
        ..DhcpConfig::default()
    };
    DhcpServer::new(config).expect("fuzz config is valid")
}

fuzz_target!(|data: &[u8]| {
    let Some((mac, payload)) = data.split_first_chunk::<6>() else {
        return;
    };
    let frame_src = EthernetAddress(*mac);
    let mut server = server();
    let mut now = start();
    // The same payload three times with time passing in between: first contact, a repeat
    // (renewal, retransmission), then after offers and short leases could have expired.
    for step in [0u64, 30, 4000] {
        now += Duration::from_secs(step);
        server.handle_timeout(now);
        let _ = server.handle_message(now, frame_src, payload);
        if let Some(deadline) = server.poll_timeout() {
            server.handle_timeout(deadline);
        }
        while server.poll_event().is_some() {}
    }
    assert_eq!(
        server.stats().active_leases as usize,
        server.leases().count()
    );
    let snapshot = server.snapshot(now, 1_700_000_000);
    let mut restored = self::server();
    restored.restore(&snapshot, now, 1_700_000_000);
    assert_eq!(restored.leases().count(), server.leases().count());
});
