//! Arbitrary bytes as a VM's DNS message, then an upstream result built from the same bytes.
//! Invariants: no panic, every answer we emit parses, UDP answers respect the size limit,
//! and in-flight/cache bounds hold.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use dns::hickory_proto::op::{Message, ResponseCode};
use dns::hickory_proto::rr::RData;
use dns::hickory_proto::rr::rdata::A;
use dns::{ClientId, DnsConfig, DnsProxy, Record, Transport, UpstreamResult};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, packet)) = data.split_first() else {
        return;
    };
    let mut config = DnsConfig::new("fuzz.lan").expect("valid domain");
    config.max_inflight_per_client = 2;
    config.max_inflight_total = 4;
    config.cache_max_entries = 4;
    let mut proxy = DnsProxy::new(config);
    proxy.set_local_host("host", Ipv4Addr::new(10, 0, 2, 15));

    let now = Instant::now();
    let addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 1024);
    let client = if control & 1 == 0 {
        ClientId::udp(addr)
    } else {
        ClientId::tcp(addr, 1)
    };
    let check = |bytes: &[u8], client: ClientId| {
        let message = Message::from_vec(bytes).expect("answers parse");
        assert!(message.metadata.message_type == dns::hickory_proto::op::MessageType::Response);
        if client.transport == Transport::Udp {
            assert!(bytes.len() <= 1232);
        }
    };

    // Twice: the second time may hit the cache or join the first lookup.
    for _ in 0..2 {
        if let Ok(Some(reply)) = proxy.handle_query(now, client, packet) {
            check(&reply, client);
        }
    }

    while let Some(lookup) = proxy.poll_upstream() {
        let result = match (control >> 1) & 3 {
            0 => UpstreamResult::Failed,
            1 => UpstreamResult::NoRecords {
                response_code: ResponseCode::from_low(control >> 4),
                negative_ttl: Some(u32::from(control)),
            },
            // Whatever records the input parses to, if it parses as a message.
            2 => UpstreamResult::Answer {
                records: Message::from_vec(packet)
                    .map(|m| m.answers.into_iter().chain(m.additionals).collect())
                    .unwrap_or_default(),
            },
            _ => UpstreamResult::Answer {
                records: vec![
                    Record::from_rdata(
                        lookup.name.clone(),
                        u32::from(control) * 1000,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
                    );
                    usize::from(control >> 2)
                ],
            },
        };
        proxy.handle_upstream(now, lookup.id, result);
    }
    // Answer again from the cache, then let everything expire.
    if let Ok(Some(reply)) = proxy.handle_query(now + Duration::from_secs(1), client, packet) {
        check(&reply, client);
    }
    proxy.handle_timeout(now + Duration::from_secs(3600));
    while let Some((to, reply)) = proxy.poll_answer() {
        check(&reply, to);
    }
    let stats = proxy.stats();
    assert!(stats.inflight <= 4 && stats.cache_entries <= 4);
});
