//! Queue and cache bounds; random and mutated frames.

use super::*;

#[test]
fn output_queue_is_bounded() {
    let mut gateway = gateway_with(GatewayConfig {
        max_queued_frames: 2,
        ..GatewayConfig::default()
    });
    for _ in 0..3 {
        gateway.handle_frame(Instant::now(), &hex(ARP_WHO_HAS_GATEWAY));
    }
    assert_eq!(drain(&mut gateway).len(), 2);
    assert_eq!(gateway.stats().queue_drops, 1);
}

#[test]
fn neighbor_cache_is_bounded() {
    let mut gateway = gateway_with(GatewayConfig {
        max_neighbors: 4,
        ..GatewayConfig::default()
    });
    for last in 10..30u8 {
        let mut request = hex(ARP_WHO_HAS_GATEWAY);
        request[31] = last;
        gateway.handle_frame(Instant::now(), &request);
    }
    assert_eq!(gateway.stats().neighbors, 4);
    assert_eq!(gateway.neighbor(Ipv4Addr::new(10, 0, 2, 29)), Some(VM_MAC));
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let seeds: Vec<Vec<u8>> = vec![
        hex(ARP_WHO_HAS_GATEWAY),
        hex(PING_GATEWAY),
        hex(TCP_SYN_DNS),
        udhcpc_discover(),
        dns_frame(
            SocketAddrV4::new(VM_IP, 40000),
            &dns_query(1, "example.com.", RecordType::A),
        ),
        dns_frame(
            SocketAddrV4::new(VM_IP, 40000),
            &dns_query(2, "alice.default.lan.", RecordType::AAAA),
        ),
        dhcp_broadcast(&dhcp_message(MessageType::Request, 5, |m| {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(VM_IP));
            m.opts_mut().insert(DhcpOption::Hostname("bob".into()));
        })),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut gateway = gateway_with(GatewayConfig {
        max_neighbors: 16,
        max_queued_frames: 64,
        ..GatewayConfig::default()
    });
    let start = Instant::now();
    let mut now = start;
    for round in 0..20_000 {
        let frame = if round % 4 == 0 {
            let len = rng.below(200);
            (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            let mut frame = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(4) {
                    0 if !frame.is_empty() => {
                        let i = rng.below(frame.len());
                        frame[i] ^= 1 << rng.below(8);
                    }
                    1 if !frame.is_empty() => {
                        let i = rng.below(frame.len());
                        frame[i] = rng.next() as u8;
                    }
                    2 => frame.truncate(rng.below(frame.len() + 1)),
                    _ => frame.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
                }
            }
            frame
        };
        gateway.handle_frame(now, &frame);
        while let Some(query) = gateway.poll_dns_upstream() {
            let result = if rng.below(2) == 0 {
                UpstreamResult::Failed
            } else {
                let record = Record::from_rdata(
                    query.name.clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(1, 2, 3, 4))),
                );
                UpstreamResult::Answer {
                    records: vec![record],
                }
            };
            gateway.handle_dns_upstream(now, query.id, result);
        }
        if round % 64 == 0 {
            now += Duration::from_secs(rng.below(600) as u64);
            gateway.handle_timeout(now);
        }
        while gateway.poll_lease_event().is_some() {}
        for reply in drain(&mut gateway) {
            // Whatever we emit parses back.
            let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
            assert_eq!(eth.src_addr(), GW_MAC);
        }
    }
    let stats = gateway.stats();
    assert!(stats.malformed > 1000, "{stats:?}");
    assert!(
        stats.arp_replies + stats.icmp_echo_replies + stats.dhcp_messages + stats.dns_queries
            > 1000,
        "{stats:?}"
    );
}
