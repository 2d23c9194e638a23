//! DHCP, lease names in DNS, DNS over UDP and upstream, and the RST for DNS over TCP
//! without NAT.

use super::*;

// ---- DHCP ----

#[test]
fn udhcpc_discover_gets_offer() {
    let mut gateway = gateway();
    gateway.handle_frame(Instant::now(), &udhcpc_discover());
    let (eth, ip, udp, payload) = parse_udp(&one_frame(&mut gateway));
    // No broadcast flag: unicast to the client's MAC and the offered address.
    assert_eq!(eth.dst_addr, VM_MAC);
    assert_eq!((ip.src_addr, ip.dst_addr), (GW_IP, VM_IP));
    assert_eq!((udp.src_port, udp.dst_port), (67, 68));
    let offer = DhcpMessage::decode(&mut dhcp::dhcproto::Decoder::new(&payload)).unwrap();
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.xid(), 0x3903f326);
    assert_eq!(offer.yiaddr(), VM_IP);
    assert_eq!(
        offer.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![GW_IP]))
    );
    assert_eq!(
        offer.opts().get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![DNS_IP]))
    );
    assert_eq!(gateway.stats().dhcp_messages, 1);
}

#[test]
fn broadcast_flag_gives_broadcast_offer() {
    let mut gateway = gateway();
    let mut discover = udhcpc_discover();
    discover[14 + 20 + 8 + 10] = 0x80; // flags: broadcast
    let mut packet = UdpPacket::new_unchecked(&mut discover[34..]);
    packet.fill_checksum(
        &IpAddress::Ipv4(Ipv4Addr::UNSPECIFIED),
        &IpAddress::Ipv4(Ipv4Addr::BROADCAST),
    );
    gateway.handle_frame(Instant::now(), &discover);
    let (eth, ip, _, _) = parse_udp(&one_frame(&mut gateway));
    assert_eq!(eth.dst_addr, EthernetAddress::BROADCAST);
    assert_eq!(ip.dst_addr, Ipv4Addr::BROADCAST);
}

#[test]
fn lease_host_name_resolves_until_released() {
    let now = Instant::now();
    let mut gateway = gateway();
    lease_alice(&mut gateway, now);
    assert!(matches!(
        gateway.poll_lease_event(),
        Some(LeaseEvent::Bound { ip: VM_IP, host_name: Some(ref name), .. }) if name == "alice"
    ));

    let client = SocketAddrV4::new(VM_IP, 40000);
    gateway.handle_frame(
        now,
        &dns_frame(client, &dns_query(7, "alice.default.lan.", RecordType::A)),
    );
    let (eth, ip, udp, payload) = parse_udp(&one_frame(&mut gateway));
    assert_eq!(eth.dst_addr, VM_MAC);
    assert_eq!((ip.src_addr, ip.dst_addr), (DNS_IP, VM_IP));
    assert_eq!((udp.src_port, udp.dst_port), (53, 40000));
    let answer = DnsMessage::from_vec(&payload).unwrap();
    assert_eq!(answer.id, 7);
    assert_eq!(a_records(&answer), vec![VM_IP]);
    assert_eq!(gateway.stats().dns_queries, 1);

    let release = dhcp_message(MessageType::Release, 0x3903f328, |m| {
        m.set_ciaddr(VM_IP);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(GW_IP));
    });
    let frame = udp_frame(
        VM_MAC,
        GW_MAC,
        SocketAddrV4::new(VM_IP, 68),
        SocketAddrV4::new(GW_IP, 67),
        &release,
    );
    gateway.handle_frame(now, &frame);
    assert!(drain(&mut gateway).is_empty());
    assert!(matches!(
        gateway.poll_lease_event(),
        Some(LeaseEvent::Released { ip: VM_IP, .. })
    ));

    gateway.handle_frame(
        now,
        &dns_frame(client, &dns_query(8, "alice.default.lan.", RecordType::A)),
    );
    let (_, _, _, payload) = parse_udp(&one_frame(&mut gateway));
    let answer = DnsMessage::from_vec(&payload).unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn restored_leases_are_published() {
    let now = Instant::now();
    let mut first = gateway();
    lease_alice(&mut first, now);
    let snapshot = first.dhcp().snapshot(now, 1_000_000);

    let mut second = gateway();
    let report = second.restore_leases(&snapshot, now, 1_000_000);
    assert_eq!(report.restored, 1);
    assert!(matches!(
        second.poll_lease_event(),
        Some(LeaseEvent::Bound { ip: VM_IP, .. })
    ));
    assert_eq!(second.dns().stats().local_names, 1);
    // The restored lease's MAC addresses late answers.
    assert_eq!(second.neighbor(VM_IP), Some(VM_MAC));
}

#[test]
fn restore_through_dhcp_mut_is_picked_up() {
    let now = Instant::now();
    let mut first = gateway();
    lease_alice(&mut first, now);
    let snapshot = first.dhcp().snapshot(now, 1_000_000);
    let mut second = gateway();
    second.dhcp_mut().restore(&snapshot, now, 1_000_000);
    assert!(second.poll_lease_event().is_some());
    assert_eq!(second.dns().stats().local_names, 1);
}

#[test]
fn lease_expiry_withdraws_name() {
    let now = Instant::now();
    let mut gateway = gateway();
    lease_alice(&mut gateway, now);
    assert_eq!(gateway.dns().stats().local_names, 1);
    let deadline = gateway.poll_timeout().unwrap();
    assert!(deadline <= now + Duration::from_secs(3600));
    gateway.handle_timeout(now + Duration::from_secs(3601));
    let events: Vec<_> = std::iter::from_fn(|| gateway.poll_lease_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, LeaseEvent::Expired { ip: VM_IP, .. }))
    );
    assert_eq!(gateway.dns().stats().local_names, 0);
}

// ---- DNS ----

#[test]
fn dns_upstream_round_trip() {
    let now = Instant::now();
    let mut gateway = gateway();
    let client = SocketAddrV4::new(VM_IP, 40001);
    gateway.handle_frame(
        now,
        &dns_frame(client, &dns_query(0x4242, "example.com.", RecordType::A)),
    );
    assert!(drain(&mut gateway).is_empty());
    let lookup = gateway.poll_dns_upstream().unwrap();
    assert_eq!(lookup.name, Name::from_ascii("example.com.").unwrap());
    assert_eq!(lookup.record_type, RecordType::A);
    assert!(gateway.poll_dns_upstream().is_none());
    assert!(gateway.poll_timeout().is_some());

    let record = Record::from_rdata(
        lookup.name.clone(),
        300,
        RData::A(A(Ipv4Addr::new(93, 184, 215, 14))),
    );
    gateway.handle_dns_upstream(
        now,
        lookup.id,
        UpstreamResult::Answer {
            records: vec![record],
        },
    );
    let (eth, ip, udp, payload) = parse_udp(&one_frame(&mut gateway));
    assert_eq!(eth.dst_addr, VM_MAC);
    assert_eq!((ip.src_addr, ip.dst_addr), (DNS_IP, VM_IP));
    assert_eq!((udp.src_port, udp.dst_port), (53, 40001));
    let answer = DnsMessage::from_vec(&payload).unwrap();
    assert_eq!(answer.id, 0x4242);
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(93, 184, 215, 14)]);
}

#[test]
fn dns_upstream_timeout_answers_servfail() {
    let now = Instant::now();
    let mut gateway = gateway();
    let client = SocketAddrV4::new(VM_IP, 40002);
    gateway.handle_frame(
        now,
        &dns_frame(client, &dns_query(9, "slow.example.", RecordType::A)),
    );
    let deadline = gateway.poll_timeout().unwrap();
    gateway.handle_timeout(deadline);
    let (_, _, _, payload) = parse_udp(&one_frame(&mut gateway));
    let answer = DnsMessage::from_vec(&payload).unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn late_answer_without_neighbor_is_counted() {
    // A VM with a static address outside the subnet gets immediate answers (they go to
    // the frame's source MAC) but is not learned, so a late answer has nowhere to go.
    let now = Instant::now();
    let mut gateway = gateway();
    let client = SocketAddrV4::new(Ipv4Addr::new(192, 168, 5, 5), 40003);
    gateway.handle_frame(
        now,
        &dns_frame(client, &dns_query(10, "example.org.", RecordType::A)),
    );
    let lookup = gateway.poll_dns_upstream().unwrap();
    gateway.handle_dns_upstream(now, lookup.id, UpstreamResult::Failed);
    assert!(drain(&mut gateway).is_empty());
    assert_eq!(gateway.stats().no_neighbor, 1);
}

#[test]
fn oversized_answer_is_dropped_and_counted() {
    let config = GatewayConfig {
        mtu: 576,
        ..GatewayConfig::default()
    };
    let mut gateway = gateway_with(config);
    let mut ping = hex(PING_GATEWAY)[..46].to_vec();
    ping.extend_from_slice(&[0x55; 600]);
    ping[16..18].copy_from_slice(&(32u16 + 600).to_be_bytes());
    // DF clear: with DF the request itself would get "fragmentation needed".
    ping[20] = 0x00;
    Ipv4Packet::new_unchecked(&mut ping[14..]).fill_checksum();
    Icmpv4Packet::new_unchecked(&mut ping[34..]).fill_checksum();
    gateway.handle_frame(Instant::now(), &ping);
    assert!(drain(&mut gateway).is_empty());
    assert_eq!(gateway.stats().oversized, 1);
}

#[test]
fn tcp_syn_to_dns_gets_reset() {
    let mut gateway = gateway();
    gateway.handle_frame(Instant::now(), &hex(TCP_SYN_DNS));
    let (eth, ip, data) = parse_ipv4(&one_frame(&mut gateway));
    assert_eq!(eth.dst_addr, VM_MAC);
    assert_eq!(
        (ip.src_addr, ip.dst_addr, ip.next_header),
        (DNS_IP, VM_IP, IpProtocol::Tcp)
    );
    let packet = TcpPacket::new_checked(&data[..]).unwrap();
    let rst = TcpRepr::parse(
        &packet,
        &IpAddress::Ipv4(DNS_IP),
        &IpAddress::Ipv4(VM_IP),
        &ChecksumCapabilities::default(),
    )
    .unwrap();
    assert_eq!((rst.src_port, rst.dst_port), (53, 41234));
    assert_eq!(rst.control, TcpControl::Rst);
    assert_eq!(rst.seq_number, TcpSeqNumber(0));
    assert_eq!(rst.ack_number, Some(TcpSeqNumber(0x11223345)));
    assert_eq!(gateway.stats().dns_tcp_reset, 1);
}
