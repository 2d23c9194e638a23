//! Arbitrary frames into one LAN's gateway, mixed with timeouts and upstream DNS results,
//! draining every output after each step. Invariants: no panic, every emitted frame is a
//! well-formed Ethernet frame from the gateway MAC, and the queue and neighbour bounds hold.
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcp::{DhcpConfig, DhcpServer};
use dns::hickory_proto::rr::RData;
use dns::hickory_proto::rr::rdata::A;
use dns::{DnsConfig, DnsProxy, Record, UpstreamResult};
use gateway::smoltcp::wire::{EthernetFrame, EthernetProtocol};
use gateway::{Gateway, GatewayConfig};
use libfuzzer_sys::fuzz_target;

const MAX_QUEUED: usize = 8;
const MAX_NEIGHBORS: usize = 4;

/// Prefixes that get the fuzzer past the Ethernet layer quickly.
const GATEWAY_IPV4: [u8; 14] = [
    0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x00, 0x22, 0x15, 0xa1, 0xb2, 0xc3, 0x08, 0x00,
];
const BROADCAST_ARP: [u8; 14] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x22, 0x15, 0xa1, 0xb2, 0xc3, 0x08, 0x06,
];
const BROADCAST_IPV4: [u8; 14] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x22, 0x15, 0xa1, 0xb2, 0xc3, 0x08, 0x00,
];

fuzz_target!(|data: &[u8]| {
    let config = GatewayConfig {
        max_queued_frames: MAX_QUEUED,
        max_neighbors: MAX_NEIGHBORS,
        ..GatewayConfig::default()
    };
    let gateway_mac = config.gateway_mac;
    let dhcp = DhcpServer::new(DhcpConfig::default()).expect("default DHCP config is valid");
    let dns = DnsProxy::new(DnsConfig::new("fuzz.lan").expect("valid domain"));
    let mut gateway = Gateway::new(config, dhcp, dns);

    let mut now = Instant::now();
    // Each record: [control, length (u16, big-endian), bytes...].
    let mut rest = data;
    while let [control, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        match control % 8 {
            0 | 1 => gateway.handle_frame(now, bytes),
            2 => gateway.handle_frame(now, &[&GATEWAY_IPV4[..], bytes].concat()),
            3 => gateway.handle_frame(now, &[&BROADCAST_ARP[..], bytes].concat()),
            4 => gateway.handle_frame(now, &[&BROADCAST_IPV4[..], bytes].concat()),
            5 => {
                now += Duration::from_secs(u64::from(*hi) * 60 + u64::from(*lo));
                gateway.handle_timeout(now);
            }
            _ => {
                if let Some(query) = gateway.poll_dns_upstream() {
                    let result = if control & 0x80 == 0 {
                        UpstreamResult::Failed
                    } else {
                        let ip = Ipv4Addr::new(*hi, *lo, 0, 1);
                        let record = Record::from_rdata(query.name.clone(), 60, RData::A(A(ip)));
                        UpstreamResult::Answer {
                            records: vec![record],
                        }
                    };
                    gateway.handle_dns_upstream(now, query.id, result);
                }
            }
        }
        let _ = gateway.poll_timeout();
        while gateway.poll_lease_event().is_some() {}
        assert!(gateway.stats().queued_frames <= MAX_QUEUED);
        assert!(gateway.stats().neighbors <= MAX_NEIGHBORS);
        while let Some(frame) = gateway.poll_frame() {
            assert!(frame.len() >= 60);
            let frame = EthernetFrame::new_checked(&frame[..]).expect("emitted frame parses");
            assert_eq!(frame.src_addr(), gateway_mac);
            assert!(matches!(
                frame.ethertype(),
                EthernetProtocol::Arp | EthernetProtocol::Ipv4
            ));
        }
    }
});
