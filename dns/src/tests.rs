use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::*;

/// `dig @10.0.2.3 example.com` (DiG 9.18.49): id 0x3e88, RD+AD, EDNS payload 1232, a COOKIE.
const DIG_EXAMPLE_COM: &[u8] = &[
    0x3e, 0x88, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x07, 0x65, 0x78, 0x61,
    0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x29,
    0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x08, 0x14, 0x73, 0x69, 0xea,
    0xb3, 0x9f, 0xce, 0x70,
];

const ALICE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

fn vm(last: u8, port: u16) -> ClientId {
    ClientId::udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, last), port))
}

fn config() -> DnsConfig {
    DnsConfig::new("physics-101.lan").unwrap()
}

fn proxy_with(config: DnsConfig) -> DnsProxy {
    let mut proxy = DnsProxy::new(config);
    proxy.set_local_host("alice", ALICE);
    proxy
}

fn proxy() -> DnsProxy {
    proxy_with(config())
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn query_msg(id: u16, qname: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(qname), qtype));
    message
}

fn query(id: u16, qname: &str, qtype: RecordType) -> Vec<u8> {
    query_msg(id, qname, qtype).to_vec().unwrap()
}

fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).unwrap()
}

/// An answer given at once.
fn ask(proxy: &mut DnsProxy, now: Instant, client: ClientId, bytes: &[u8]) -> Message {
    parse(&proxy.handle_query(now, client, bytes).unwrap().unwrap())
}

fn a_record(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

fn addrs(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Queues `qname` upstream and returns the lookup.
fn forward(
    proxy: &mut DnsProxy,
    now: Instant,
    client: ClientId,
    id: u16,
    qname: &str,
) -> UpstreamQuery {
    let bytes = query(id, qname, RecordType::A);
    assert!(proxy.handle_query(now, client, &bytes).unwrap().is_none());
    proxy.poll_upstream().expect("upstream lookup")
}

fn answers(proxy: &mut DnsProxy) -> Vec<(ClientId, Message)> {
    std::iter::from_fn(|| proxy.poll_answer())
        .map(|(c, b)| (c, parse(&b)))
        .collect()
}

#[test]
fn dig_query_goes_upstream_and_answer_echoes_id_question_and_edns() {
    let mut proxy = proxy();
    let now = Instant::now();
    assert!(
        proxy
            .handle_query(now, vm(15, 40000), DIG_EXAMPLE_COM)
            .unwrap()
            .is_none()
    );
    let lookup = proxy.poll_upstream().unwrap();
    assert_eq!(lookup.name, name("example.com."));
    assert_eq!(lookup.record_type, RecordType::A);
    assert!(proxy.poll_upstream().is_none());

    let records = vec![a_record("example.com.", 300, [93, 184, 215, 14])];
    proxy.handle_upstream(now, lookup.id, UpstreamResult::Answer { records });
    let got = answers(&mut proxy);
    assert_eq!(got.len(), 1);
    let (client, answer) = &got[0];
    assert_eq!(*client, vm(15, 40000));
    assert_eq!(answer.id, 0x3e88);
    assert_eq!(answer.message_type, MessageType::Response);
    assert!(answer.recursion_desired && answer.recursion_available);
    assert!(!answer.authoritative);
    assert_eq!(answer.response_code, ResponseCode::NoError);
    assert_eq!(answer.queries, parse(DIG_EXAMPLE_COM).queries);
    assert!(answer.edns.is_some(), "EDNS query gets an EDNS answer");
    assert_eq!(addrs(answer), [Ipv4Addr::new(93, 184, 215, 14)]);
    assert_eq!(proxy.stats().upstream_ok, 1);
    assert_eq!(proxy.stats().inflight, 0);
}

#[test]
fn local_a_bare_and_fqdn_any_case() {
    let mut proxy = proxy();
    let now = Instant::now();
    for qname in [
        "alice.physics-101.lan.",
        "ALICE.Physics-101.LAN.",
        "alice.",
        "AlIcE",
    ] {
        let answer = ask(
            &mut proxy,
            now,
            vm(16, 1000),
            &query(7, qname, RecordType::A),
        );
        assert_eq!(answer.id, 7);
        assert_eq!(answer.response_code, ResponseCode::NoError, "{qname}");
        assert!(answer.authoritative && answer.recursion_available);
        assert_eq!(addrs(&answer), [ALICE], "{qname}");
        // The owner name is the question as asked, case included.
        assert!(answer.answers[0].name.eq_case(&answer.queries[0].name));
        assert_eq!(answer.answers[0].ttl, 60);
    }
    assert!(proxy.poll_upstream().is_none());
    assert_eq!(proxy.stats().local, 4);
}

#[test]
fn local_aaaa_is_empty_noerror() {
    let mut proxy = proxy();
    for qname in ["alice.physics-101.lan.", "alice."] {
        let answer = ask(
            &mut proxy,
            Instant::now(),
            vm(16, 1),
            &query(1, qname, RecordType::AAAA),
        );
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert!(answer.answers.is_empty());
        assert!(answer.authoritative);
    }
    assert!(proxy.poll_upstream().is_none());
}

#[test]
fn ptr_for_a_lease() {
    let mut proxy = proxy();
    let bytes = query(2, "15.2.0.10.in-addr.arpa.", RecordType::PTR);
    let answer = ask(&mut proxy, Instant::now(), vm(16, 1), &bytes);
    assert_eq!(answer.response_code, ResponseCode::NoError);
    assert!(answer.authoritative);
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(
        answer.answers[0].data,
        RData::PTR(PTR(name("alice.physics-101.lan.")))
    );
}

#[test]
fn private_reverse_stays_local_public_reverse_goes_upstream() {
    let mut proxy = proxy();
    let now = Instant::now();
    for qname in [
        "99.2.0.10.in-addr.arpa.",
        "1.1.168.192.in-addr.arpa.",
        "1.0.20.172.in-addr.arpa.",
    ] {
        let answer = ask(
            &mut proxy,
            now,
            vm(16, 1),
            &query(3, qname, RecordType::PTR),
        );
        assert_eq!(answer.response_code, ResponseCode::NXDomain, "{qname}");
    }
    // A partial private reverse zone exists but is empty.
    let answer = ask(
        &mut proxy,
        now,
        vm(16, 1),
        &query(3, "2.0.10.in-addr.arpa.", RecordType::PTR),
    );
    assert_eq!(answer.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert!(proxy.poll_upstream().is_none());

    let bytes = query(4, "8.8.8.8.in-addr.arpa.", RecordType::PTR);
    assert!(
        proxy
            .handle_query(now, vm(16, 1), &bytes)
            .unwrap()
            .is_none()
    );
    assert_eq!(proxy.poll_upstream().unwrap().record_type, RecordType::PTR);
}

#[test]
fn unknown_name_in_own_domain_is_nxdomain_locally() {
    let mut proxy = proxy();
    let now = Instant::now();
    for qname in ["bob.physics-101.lan.", "x.alice.physics-101.lan."] {
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::MX] {
            let answer = ask(&mut proxy, now, vm(16, 1), &query(5, qname, qtype));
            assert_eq!(
                answer.response_code,
                ResponseCode::NXDomain,
                "{qname} {qtype}"
            );
            assert!(answer.authoritative);
        }
    }
    // The domain itself exists.
    let answer = ask(
        &mut proxy,
        now,
        vm(16, 1),
        &query(5, "physics-101.lan.", RecordType::A),
    );
    assert_eq!(answer.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert!(proxy.poll_upstream().is_none());
    assert_eq!(proxy.stats().nxdomain, 6);
}

#[test]
fn another_lans_names_do_not_resolve() {
    let mut physics = proxy();
    let mut chemistry = DnsProxy::new(DnsConfig::new("chemistry.lan").unwrap());
    chemistry.set_local_host("bob", Ipv4Addr::new(10, 0, 2, 16));
    let now = Instant::now();

    let answer = ask(
        &mut chemistry,
        now,
        vm(16, 1),
        &query(1, "bob.chemistry.lan.", RecordType::A),
    );
    assert_eq!(addrs(&answer), [Ipv4Addr::new(10, 0, 2, 16)]);

    // Neither bare nor qualified, and not alice under the other LAN's domain.
    for qname in ["bob.chemistry.lan.", "bob.", "alice.chemistry.lan."] {
        let reply = physics.handle_query(now, vm(15, 1), &query(1, qname, RecordType::A));
        assert!(
            matches!(reply, Ok(None)),
            "{qname} must not be answered locally"
        );
    }
    assert_eq!(physics.stats().local, 0);
    let reply = chemistry.handle_query(now, vm(16, 1), &query(1, "alice.", RecordType::A));
    assert!(matches!(reply, Ok(None)));
}

#[test]
fn lease_changes_are_reflected() {
    let mut proxy = proxy();
    let now = Instant::now();
    // Address reused by another host: the old name loses it.
    proxy.set_local_host("Carol", ALICE);
    let answer = ask(
        &mut proxy,
        now,
        vm(16, 1),
        &query(1, "alice.physics-101.lan.", RecordType::A),
    );
    assert_eq!(answer.response_code, ResponseCode::NXDomain);
    let answer = ask(
        &mut proxy,
        now,
        vm(16, 1),
        &query(1, "carol.physics-101.lan.", RecordType::A),
    );
    assert_eq!(addrs(&answer), [ALICE]);
    let answer = ask(
        &mut proxy,
        now,
        vm(16, 1),
        &query(1, "15.2.0.10.in-addr.arpa.", RecordType::PTR),
    );
    assert_eq!(
        answer.answers[0].data,
        RData::PTR(PTR(name("carol.physics-101.lan.")))
    );

    proxy.remove_local_host("carol", ALICE);
    let answer = ask(
        &mut proxy,
        now,
        vm(16, 1),
        &query(1, "carol.physics-101.lan.", RecordType::A),
    );
    assert_eq!(answer.response_code, ResponseCode::NXDomain);
    assert_eq!(proxy.stats().local_names, 0);

    proxy.set_local_host("not a label", ALICE);
    proxy.set_local_host("a.b", ALICE);
    assert_eq!(proxy.stats().local_names_rejected, 2);
}

#[test]
fn identical_queries_are_coalesced() {
    let mut proxy = proxy();
    let now = Instant::now();
    let lookup = forward(&mut proxy, now, vm(15, 1000), 11, "www.example.com.");
    let bytes = query(22, "WWW.example.COM.", RecordType::A);
    assert!(
        proxy
            .handle_query(now, vm(16, 2000), &bytes)
            .unwrap()
            .is_none()
    );
    assert!(
        proxy.poll_upstream().is_none(),
        "one upstream lookup for both"
    );
    assert_eq!(proxy.stats().coalesced, 1);
    assert_eq!(proxy.stats().inflight, 2);
    assert_eq!(proxy.stats().upstream_inflight, 1);

    let records = vec![
        Record::from_rdata(
            name("www.example.com."),
            120,
            RData::CNAME(CNAME(name("example.com."))),
        ),
        a_record("example.com.", 300, [93, 184, 215, 14]),
    ];
    proxy.handle_upstream(now, lookup.id, UpstreamResult::Answer { records });
    let got = answers(&mut proxy);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, vm(15, 1000));
    assert_eq!(got[0].1.id, 11);
    assert_eq!(got[1].0, vm(16, 2000));
    assert_eq!(got[1].1.id, 22);
    assert!(got[1].1.queries[0].name.eq_case(&name("WWW.example.COM.")));
    assert_eq!(got[1].1.answers.len(), 2);
}

#[test]
fn retransmitted_query_is_not_answered_twice() {
    let mut proxy = proxy();
    let now = Instant::now();
    let lookup = forward(&mut proxy, now, vm(15, 1000), 11, "example.com.");
    let bytes = query(11, "example.com.", RecordType::A);
    assert!(
        proxy
            .handle_query(now, vm(15, 1000), &bytes)
            .unwrap()
            .is_none()
    );
    assert_eq!(proxy.stats().inflight, 1);
    proxy.handle_upstream(now, lookup.id, UpstreamResult::Failed);
    assert_eq!(answers(&mut proxy).len(), 1);
}

#[test]
fn cache_hit_decrements_ttl_then_expires() {
    let mut proxy = proxy();
    let t0 = Instant::now();
    let lookup = forward(&mut proxy, t0, vm(15, 1), 1, "example.com.");
    let records = vec![a_record("example.com.", 300, [1, 2, 3, 4])];
    proxy.handle_upstream(t0, lookup.id, UpstreamResult::Answer { records });
    answers(&mut proxy);
    assert_eq!(proxy.poll_timeout(), Some(t0 + Duration::from_secs(300)));

    let later = t0 + Duration::from_secs(100);
    let answer = ask(
        &mut proxy,
        later,
        vm(16, 1),
        &query(9, "Example.com.", RecordType::A),
    );
    assert_eq!(answer.id, 9);
    assert_eq!(answer.answers[0].ttl, 200);
    assert!(!answer.authoritative);
    assert_eq!(proxy.stats().cache_hits, 1);
    assert!(proxy.poll_upstream().is_none());

    let expired = t0 + Duration::from_secs(300);
    proxy.handle_timeout(expired);
    assert_eq!(proxy.stats().cache_entries, 0);
    assert_eq!(proxy.poll_timeout(), None);
    let bytes = query(10, "example.com.", RecordType::A);
    assert!(
        proxy
            .handle_query(expired, vm(16, 1), &bytes)
            .unwrap()
            .is_none()
    );
    assert!(proxy.poll_upstream().is_some());
}

#[test]
fn ttls_are_clamped() {
    let mut config = config();
    config.min_ttl = 10;
    config.max_ttl = 100;
    let mut proxy = proxy_with(config);
    let t0 = Instant::now();
    let lookup = forward(&mut proxy, t0, vm(15, 1), 1, "zero.example.");
    let records = vec![a_record("zero.example.", 0, [1, 2, 3, 4])];
    proxy.handle_upstream(t0, lookup.id, UpstreamResult::Answer { records });
    let lookup = forward(&mut proxy, t0, vm(15, 1), 2, "long.example.");
    let records = vec![a_record("long.example.", 100_000, [1, 2, 3, 4])];
    proxy.handle_upstream(t0, lookup.id, UpstreamResult::Answer { records });
    let got = answers(&mut proxy);
    assert_eq!(got[1].1.answers[0].ttl, 100);

    let t5 = t0 + Duration::from_secs(5);
    let answer = ask(
        &mut proxy,
        t5,
        vm(15, 1),
        &query(3, "zero.example.", RecordType::A),
    );
    assert_eq!(
        addrs(&answer),
        [Ipv4Addr::new(1, 2, 3, 4)],
        "min_ttl keeps it 10 s"
    );
    let answer = ask(
        &mut proxy,
        t5,
        vm(15, 1),
        &query(3, "long.example.", RecordType::A),
    );
    assert_eq!(answer.answers[0].ttl, 95);
}

#[test]
fn negative_answers_are_cached() {
    let mut proxy = proxy();
    let t0 = Instant::now();
    let lookup = forward(&mut proxy, t0, vm(15, 1), 1, "nope.example.");
    proxy.handle_upstream(
        t0,
        lookup.id,
        UpstreamResult::NoRecords {
            response_code: ResponseCode::NXDomain,
            negative_ttl: Some(60),
        },
    );
    let got = answers(&mut proxy);
    assert_eq!(got[0].1.response_code, ResponseCode::NXDomain);

    let t30 = t0 + Duration::from_secs(30);
    let answer = ask(
        &mut proxy,
        t30,
        vm(15, 1),
        &query(2, "nope.example.", RecordType::A),
    );
    assert_eq!(answer.response_code, ResponseCode::NXDomain);
    assert_eq!(proxy.stats().cache_hits, 1);
    assert_eq!(proxy.stats().nxdomain, 2);

    let t60 = t0 + Duration::from_secs(60);
    let bytes = query(3, "nope.example.", RecordType::A);
    assert!(
        proxy
            .handle_query(t60, vm(15, 1), &bytes)
            .unwrap()
            .is_none()
    );
}

#[test]
fn aaaa_without_records_is_empty_noerror() {
    let mut proxy = proxy();
    let now = Instant::now();
    for (i, result) in [
        UpstreamResult::NoRecords {
            response_code: ResponseCode::NoError,
            negative_ttl: None,
        },
        UpstreamResult::Answer { records: vec![] },
    ]
    .into_iter()
    .enumerate()
    {
        let qname = format!("v4only{i}.example.");
        let bytes = query(1, &qname, RecordType::AAAA);
        assert!(
            proxy
                .handle_query(now, vm(15, 1), &bytes)
                .unwrap()
                .is_none()
        );
        let lookup = proxy.poll_upstream().unwrap();
        assert_eq!(lookup.record_type, RecordType::AAAA);
        proxy.handle_upstream(now, lookup.id, result);
        let got = answers(&mut proxy);
        assert_eq!(got[0].1.response_code, ResponseCode::NoError);
        assert!(got[0].1.answers.is_empty());
        // Cached as NODATA with the default negative TTL.
        let answer = ask(&mut proxy, now + Duration::from_secs(29), vm(15, 1), &bytes);
        assert_eq!(answer.response_code, ResponseCode::NoError);
    }
}

#[test]
fn upstream_failure_is_servfail_and_not_cached() {
    let mut proxy = proxy();
    let now = Instant::now();
    let lookup = forward(&mut proxy, now, vm(15, 1), 1, "broken.example.");
    proxy.handle_upstream(now, lookup.id, UpstreamResult::Failed);
    let got = answers(&mut proxy);
    assert_eq!(got[0].1.response_code, ResponseCode::ServFail);
    assert_eq!(got[0].1.id, 1);
    assert_eq!(proxy.stats().servfail, 1);
    assert_eq!(proxy.stats().upstream_failures, 1);
    // Not cached: the next query asks again.
    forward(&mut proxy, now, vm(15, 1), 2, "broken.example.");

    // An upstream REFUSED is a failure too.
    let lookup = forward(&mut proxy, now, vm(15, 1), 3, "refused.example.");
    let result = UpstreamResult::NoRecords {
        response_code: ResponseCode::Refused,
        negative_ttl: None,
    };
    proxy.handle_upstream(now, lookup.id, result);
    assert_eq!(
        answers(&mut proxy)[0].1.response_code,
        ResponseCode::ServFail
    );
}

#[test]
fn upstream_timeout_is_servfail() {
    let mut proxy = proxy();
    let t0 = Instant::now();
    let lookup = forward(&mut proxy, t0, vm(15, 1), 1, "slow.example.");
    let bytes = query(2, "slow.example.", RecordType::A);
    assert!(proxy.handle_query(t0, vm(16, 1), &bytes).unwrap().is_none());
    let deadline = t0 + Duration::from_secs(5);
    assert_eq!(proxy.poll_timeout(), Some(deadline));

    proxy.handle_timeout(deadline - Duration::from_millis(1));
    assert!(proxy.poll_answer().is_none());
    proxy.handle_timeout(deadline);
    let got = answers(&mut proxy);
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|(_, m)| m.response_code == ResponseCode::ServFail)
    );
    assert_eq!(proxy.stats().upstream_timeouts, 1);
    assert_eq!(proxy.stats().inflight, 0);
    assert_eq!(proxy.poll_timeout(), None);

    // The late result is ignored.
    let records = vec![a_record("slow.example.", 60, [1, 1, 1, 1])];
    proxy.handle_upstream(deadline, lookup.id, UpstreamResult::Answer { records });
    assert!(proxy.poll_answer().is_none());
    assert_eq!(proxy.stats().upstream_late, 1);
}

#[test]
fn timed_out_lookup_not_yet_polled_is_withdrawn() {
    let mut proxy = proxy();
    let t0 = Instant::now();
    let bytes = query(1, "slow.example.", RecordType::A);
    assert!(proxy.handle_query(t0, vm(15, 1), &bytes).unwrap().is_none());
    proxy.handle_timeout(t0 + Duration::from_secs(5));
    assert!(proxy.poll_upstream().is_none());
}

#[test]
fn per_client_in_flight_limit_refuses() {
    let mut config = config();
    config.max_inflight_per_client = 2;
    config.max_inflight_total = 3;
    let mut proxy = proxy_with(config);
    let now = Instant::now();
    let first = forward(&mut proxy, now, vm(15, 1000), 1, "a.example.");
    forward(&mut proxy, now, vm(15, 1001), 2, "b.example.");
    // Same VM, another port: still over its budget.
    let answer = ask(
        &mut proxy,
        now,
        vm(15, 1002),
        &query(3, "c.example.", RecordType::A),
    );
    assert_eq!(answer.response_code, ResponseCode::Refused);
    assert_eq!(answer.id, 3);
    assert_eq!(proxy.stats().dropped_over_limit, 1);
    // Local names are still answered.
    let answer = ask(
        &mut proxy,
        now,
        vm(15, 1002),
        &query(4, "alice.", RecordType::A),
    );
    assert_eq!(addrs(&answer), [ALICE]);

    // Another VM has its own budget, within the LAN total.
    forward(&mut proxy, now, vm(16, 1000), 5, "c.example.");
    let answer = ask(
        &mut proxy,
        now,
        vm(17, 1000),
        &query(6, "d.example.", RecordType::A),
    );
    assert_eq!(
        answer.response_code,
        ResponseCode::Refused,
        "LAN total reached"
    );

    // An answer frees the budget.
    proxy.handle_upstream(now, first.id, UpstreamResult::Failed);
    forward(&mut proxy, now, vm(15, 1002), 7, "e.example.");
    assert_eq!(proxy.stats().inflight, 3);
}

#[test]
fn removed_client_frees_its_budget() {
    let mut config = config();
    config.max_inflight_per_client = 1;
    let mut proxy = proxy_with(config);
    let now = Instant::now();
    let tcp = ClientId::tcp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 5000), 42);
    let bytes = query(1, "a.example.", RecordType::A);
    assert!(proxy.handle_query(now, tcp, &bytes).unwrap().is_none());
    let lookup = proxy.poll_upstream().unwrap();
    proxy.remove_client(tcp);
    assert_eq!(proxy.stats().inflight, 0);
    forward(&mut proxy, now, vm(15, 1), 2, "b.example.");
    // The orphaned lookup still fills the cache.
    let records = vec![a_record("a.example.", 60, [1, 1, 1, 1])];
    proxy.handle_upstream(now, lookup.id, UpstreamResult::Answer { records });
    assert!(proxy.poll_answer().is_none());
    let answer = ask(&mut proxy, now, vm(16, 1), &bytes);
    assert_eq!(addrs(&answer), [Ipv4Addr::new(1, 1, 1, 1)]);
}

#[test]
fn cache_is_bounded_and_evicts_soonest_expiring() {
    let mut config = config();
    config.cache_max_entries = 2;
    let mut proxy = proxy_with(config);
    let now = Instant::now();
    for (i, ttl) in [(0u8, 300), (1, 100), (2, 200)] {
        let qname = format!("n{i}.example.");
        let lookup = forward(&mut proxy, now, vm(15, 1), 1, &qname);
        let records = vec![a_record(&qname, ttl, [1, 1, 1, i])];
        proxy.handle_upstream(now, lookup.id, UpstreamResult::Answer { records });
    }
    assert_eq!(proxy.stats().cache_entries, 2);
    // n1 (TTL 100) was evicted; n0 and n2 are still cached.
    for (qname, cached) in [
        ("n0.example.", true),
        ("n1.example.", false),
        ("n2.example.", true),
    ] {
        let reply = proxy.handle_query(now, vm(15, 1), &query(2, qname, RecordType::A));
        assert_eq!(reply.unwrap().is_some(), cached, "{qname}");
    }
}

#[test]
fn malformed_input_is_an_error_or_formerr() {
    let mut proxy = proxy();
    let now = Instant::now();
    for short in [&[][..], &[0x12], &DIG_EXAMPLE_COM[..11]] {
        assert!(matches!(
            proxy.handle_query(now, vm(15, 1), short),
            Err(DnsError::TooShort(_))
        ));
    }
    assert_eq!(proxy.stats().malformed, 3);

    // Header readable, question cut short: FORMERR with the id.
    let answer = ask(&mut proxy, now, vm(15, 1), &DIG_EXAMPLE_COM[..20]);
    assert_eq!(answer.response_code, ResponseCode::FormErr);
    assert_eq!(answer.id, 0x3e88);
    assert!(answer.queries.is_empty());

    // No question, and two questions.
    let mut none = query_msg(5, "example.com.", RecordType::A);
    none.queries.clear();
    let mut two = query_msg(6, "example.com.", RecordType::A);
    two.add_query(Query::query(name("example.org."), RecordType::A));
    for message in [none, two] {
        let answer = ask(&mut proxy, now, vm(15, 1), &message.to_vec().unwrap());
        assert_eq!(answer.response_code, ResponseCode::FormErr);
        assert_eq!(answer.id, message.id);
    }
    assert_eq!(proxy.stats().formerr, 3);
    assert!(proxy.poll_upstream().is_none());
}

#[test]
fn responses_from_vms_are_dropped() {
    let mut proxy = proxy();
    let mut response = query_msg(1, "example.com.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    let reply = proxy.handle_query(Instant::now(), vm(15, 1), &response.to_vec().unwrap());
    assert!(matches!(reply, Err(DnsError::NotAQuery)));
    assert_eq!(proxy.stats().responses_dropped, 1);
    assert!(proxy.poll_upstream().is_none());
}

#[test]
fn unsupported_opcode_class_and_edns_version() {
    let mut proxy = proxy();
    let now = Instant::now();
    let mut status = query_msg(1, "example.com.", RecordType::A);
    status.metadata.op_code = OpCode::Status;
    let answer = ask(&mut proxy, now, vm(15, 1), &status.to_vec().unwrap());
    assert_eq!(answer.response_code, ResponseCode::NotImp);
    assert_eq!(answer.op_code, OpCode::Status);

    let mut chaos = query_msg(2, "version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let answer = ask(&mut proxy, now, vm(15, 1), &chaos.to_vec().unwrap());
    assert_eq!(answer.response_code, ResponseCode::Refused);

    let axfr = query(3, "physics-101.lan.", RecordType::AXFR);
    let answer = ask(&mut proxy, now, vm(15, 1), &axfr);
    assert_eq!(answer.response_code, ResponseCode::Refused);

    let mut edns1 = query_msg(4, "example.com.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_version(1);
    edns1.set_edns(edns);
    let answer = ask(&mut proxy, now, vm(15, 1), &edns1.to_vec().unwrap());
    // BADVERS and BADSIG share code 16; hickory decodes it as the latter.
    assert_eq!(
        u16::from(answer.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    assert!(answer.edns.is_some(), "extended codes need the OPT record");
    assert!(proxy.poll_upstream().is_none());
}

/// 60 A records: about 1 KB, over 512 but under 1232.
fn big_answer(owner: &str) -> Vec<Record> {
    (0..60u8)
        .map(|i| a_record(owner, 300, [192, 0, 2, i]))
        .collect()
}

#[test]
fn large_udp_answer_is_truncated() {
    let mut proxy = proxy();
    let now = Instant::now();
    let lookup = forward(&mut proxy, now, vm(15, 1), 1, "big.example.");
    proxy.handle_upstream(
        now,
        lookup.id,
        UpstreamResult::Answer {
            records: big_answer("big.example."),
        },
    );
    let (_, bytes) = proxy.poll_answer().unwrap();
    assert!(bytes.len() <= 512);
    let answer = parse(&bytes);
    assert!(answer.truncation);
    assert!(answer.answers.is_empty());
    assert_eq!(answer.queries[0].name, name("big.example."));
    assert_eq!(proxy.stats().truncated, 1);

    // Over TCP (from the cache) the whole answer fits.
    let tcp = ClientId::tcp(SocketAddrV4::new(ALICE, 5000), 1);
    let bytes = query(2, "big.example.", RecordType::A);
    let answer = ask(&mut proxy, now, tcp, &bytes);
    assert!(!answer.truncation);
    assert_eq!(answer.answers.len(), 60);

    // So does UDP with an EDNS payload of 4096 (capped at 1232).
    let mut with_edns = query_msg(3, "big.example.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    with_edns.set_edns(edns);
    let reply = proxy
        .handle_query(now, vm(15, 1), &with_edns.to_vec().unwrap())
        .unwrap()
        .unwrap();
    assert!(reply.len() > 512 && reply.len() <= 1232);
    let answer = parse(&reply);
    assert!(!answer.truncation);
    assert_eq!(answer.edns.as_ref().map(|e| e.max_payload()), Some(1232));
}

#[test]
fn config_rejects_bad_domains() {
    for bad in ["", ".", "a..b", "has space.lan", "-x.lan", &"a".repeat(64)] {
        assert!(DnsConfig::new(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        DnsConfig::new("Physics-101.LAN.").unwrap().domain,
        "physics-101.lan"
    );
}

/// xorshift64: deterministic noise without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn random_and_mutated_packets_never_panic() {
    let mut config = config();
    config.max_inflight_per_client = 4;
    config.max_inflight_total = 16;
    config.cache_max_entries = 8;
    let mut proxy = proxy_with(config);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t0 = Instant::now();
    let seeds: Vec<Vec<u8>> = vec![
        DIG_EXAMPLE_COM.to_vec(),
        query(1, "alice.physics-101.lan.", RecordType::A),
        query(2, "15.2.0.10.in-addr.arpa.", RecordType::PTR),
        query(3, "bob.physics-101.lan.", RecordType::AAAA),
    ];
    for i in 0..10_000u64 {
        let now = t0 + Duration::from_millis(i * 10);
        let mut packet = if rng.below(4) == 0 {
            (0..rng.below(80)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        for _ in 0..rng.below(6) {
            match rng.below(3) {
                0 if !packet.is_empty() => {
                    let at = rng.below(packet.len());
                    packet[at] = rng.next() as u8;
                }
                1 => packet.truncate(rng.below(packet.len() + 1)),
                _ => packet.push(rng.next() as u8),
            }
        }
        let client = if rng.below(2) == 0 {
            vm(15 + rng.below(3) as u8, 1000)
        } else {
            ClientId::tcp(SocketAddrV4::new(ALICE, 2000), 7)
        };
        if let Ok(Some(reply)) = proxy.handle_query(now, client, &packet) {
            let answer = Message::from_vec(&reply).expect("our answers parse");
            assert_eq!(answer.message_type, MessageType::Response);
            if client.transport == Transport::Udp {
                assert!(reply.len() <= 1232);
            }
        }
        while let Some(lookup) = proxy.poll_upstream() {
            let result = match rng.below(4) {
                0 => UpstreamResult::Failed,
                1 => UpstreamResult::NoRecords {
                    response_code: ResponseCode::from_low(rng.next() as u8 & 0xf),
                    negative_ttl: Some(rng.next() as u32),
                },
                2 => continue, // left to time out
                _ => UpstreamResult::Answer {
                    records: vec![
                        a_record("x.example.", rng.next() as u32, [1, 2, 3, 4]);
                        rng.below(70)
                    ],
                },
            };
            proxy.handle_upstream(now, lookup.id, result);
        }
        while let Some((_, reply)) = proxy.poll_answer() {
            Message::from_vec(&reply).expect("our answers parse");
        }
        if i % 50 == 0 {
            proxy.handle_timeout(now);
        }
        assert!(proxy.stats().inflight <= 16);
        assert!(proxy.stats().cache_entries <= 8);
    }
    // The seed is fixed: make sure the noise reached every stage.
    let stats = proxy.stats();
    assert_eq!(stats.queries, 10_000);
    assert!(stats.local > 0 && stats.cache_hits > 0 && stats.upstream_ok > 0);
    assert!(stats.formerr > 0 && stats.malformed > 0 && stats.upstream_timeouts > 0);
}

/// Found by the `dns_message` fuzz target: a SIG record among upstream "answers" made us emit
/// a message hickory (and any resolver) rejects.
#[test]
fn message_level_records_from_upstream_are_dropped() {
    const WITH_SIG: &[u8] = &[
        0x3e, 0x88, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x07, 0x65, 0x30,
        0x17, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00,
        0x00, 0x18, 0x01, 0x00, 0x00, 0x00, 0x00, 0x28, 0x00, 0x19, 0x19, 0x19, 0x19, 0x19, 0x08,
        0x19, 0x73, 0x1c, 0x19, 0x19, 0x19, 0x19, 0xea, 0x19, 0x19, 0x19, 0x19, 0x19, 0x08, 0x19,
        0x73, 0x69, 0xfa, 0xb3, 0x9f, 0xce, 0x70,
    ];
    let records = parse(WITH_SIG).additionals;
    assert_eq!(records[0].record_type(), RecordType::SIG);
    let mut proxy = proxy();
    let now = Instant::now();
    let lookup = forward(&mut proxy, now, vm(15, 1), 1, "example.com.");
    proxy.handle_upstream(now, lookup.id, UpstreamResult::Answer { records });
    let got = answers(&mut proxy);
    assert_eq!(got[0].1.response_code, ResponseCode::NoError);
    assert!(got[0].1.answers.is_empty());
}
