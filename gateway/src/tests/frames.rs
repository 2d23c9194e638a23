//! ARP, ping, IPv4 validation and what the gateway ignores.

use super::*;

// ---- ARP ----

#[test]
fn arp_request_for_gateway_gets_reply_bytes() {
    let mut gateway = gateway();
    gateway.handle_frame(Instant::now(), &hex(ARP_WHO_HAS_GATEWAY));
    assert_eq!(one_frame(&mut gateway), hex(ARP_GATEWAY_IS_AT));
    assert_eq!(gateway.stats().arp_replies, 1);
    assert_eq!(gateway.neighbor(VM_IP), Some(VM_MAC));
}

#[test]
fn arp_request_for_dns_answered_with_gateway_mac() {
    let mut gateway = gateway();
    let request = hex(&ARP_WHO_HAS_GATEWAY.replace("0a000202000000", "0a000203000000"));
    gateway.handle_frame(Instant::now(), &request);
    let expected = hex(&ARP_GATEWAY_IS_AT.replace("5254001234560a000202", "5254001234560a000203"));
    assert_eq!(one_frame(&mut gateway), expected);
}

#[test]
fn arp_request_for_another_vm_is_ignored() {
    let mut gateway = gateway();
    let request = hex(&ARP_WHO_HAS_GATEWAY.replace("0a000202000000", "0a00020f000000"));
    let request = {
        // sender 10.0.2.16 asking for 10.0.2.15
        let mut bytes = request;
        bytes[31] = 16;
        bytes
    };
    gateway.handle_frame(Instant::now(), &request);
    assert!(drain(&mut gateway).is_empty());
    assert_eq!(gateway.stats().ignored, 1);
    assert_eq!(gateway.stats().arp_replies, 0);
}

#[test]
fn arp_probe_from_zero_address_is_answered() {
    let mut gateway = gateway();
    let mut probe = hex(ARP_WHO_HAS_GATEWAY);
    probe[28..32].copy_from_slice(&[0; 4]);
    gateway.handle_frame(Instant::now(), &probe);
    let reply = one_frame(&mut gateway);
    assert_eq!(&reply[38..42], &[0, 0, 0, 0]);
    assert_eq!(gateway.neighbor(Ipv4Addr::UNSPECIFIED), None);
}

#[test]
fn neighbor_probes_ask_for_recent_addresses_by_broadcast() {
    let mut gateway = gateway();
    assert!(gateway.neighbor_probes(4).is_empty());
    gateway.handle_frame(Instant::now(), &hex(ARP_WHO_HAS_GATEWAY));
    drain(&mut gateway);
    let probes = gateway.neighbor_probes(4);
    // Broadcast from the gateway: who has 10.0.2.15? Tell 10.0.2.2. No MAC of the VM.
    let expected = hex(concat!(
        "ffffffffffff",
        "525400123456",
        "0806",
        "0001",
        "0800",
        "06",
        "04",
        "0001",
        "525400123456",
        "0a000202",
        "000000000000",
        "0a00020f",
        "000000000000000000000000000000000000",
    ));
    assert_eq!(probes, [expected]);
    assert!(gateway.neighbor_probes(0).is_empty());
}

// ---- ICMP and IPv4 validation ----

#[test]
fn ping_padded_frame_gets_echo_reply() {
    let mut gateway = gateway();
    gateway.handle_frame(Instant::now(), &hex(PING_GATEWAY));
    let reply = one_frame(&mut gateway);
    let (eth, ip, data) = parse_ipv4(&reply);
    assert_eq!(eth.dst_addr, VM_MAC);
    assert_eq!(
        (ip.src_addr, ip.dst_addr, ip.next_header),
        (GW_IP, VM_IP, IpProtocol::Icmp)
    );
    // The padding is not echoed: the reply carries exactly the request's 4 data bytes.
    assert_eq!(ip.payload_len, 12);
    let packet = Icmpv4Packet::new_checked(&data[..]).unwrap();
    let repr = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(
        repr,
        Icmpv4Repr::EchoReply {
            ident: 0x1c2d,
            seq_no: 1,
            data: b"v86!"
        }
    );
    assert_eq!(reply.len(), 60);
    assert_eq!(gateway.stats().icmp_echo_replies, 1);
}

#[test]
fn ping_dns_address_answered_from_it() {
    let mut gateway = gateway();
    let mut ping = hex(PING_GATEWAY);
    ping[33] = 3; // destination 10.0.2.3
    ping[24..26].copy_from_slice(&0xc88fu16.to_be_bytes()); // header checksum - 1
    gateway.handle_frame(Instant::now(), &ping);
    let (_, ip, _) = parse_ipv4(&one_frame(&mut gateway));
    assert_eq!(ip.src_addr, DNS_IP);
}

#[test]
fn bad_ipv4_checksum_is_malformed() {
    let mut gateway = gateway();
    let mut ping = hex(PING_GATEWAY);
    ping[25] ^= 0x01;
    gateway.handle_frame(Instant::now(), &ping);
    assert!(drain(&mut gateway).is_empty());
    assert_eq!(gateway.stats().malformed, 1);
}

#[test]
fn truncated_and_lying_lengths_are_malformed() {
    let mut gateway = gateway();
    let ping = hex(PING_GATEWAY);
    // Total length beyond the frame.
    let mut long = ping.clone();
    long[16..18].copy_from_slice(&0x0100u16.to_be_bytes());
    // Cut inside the IP header, and inside the Ethernet header.
    for frame in [&long[..], &ping[..30], &ping[..10]] {
        gateway.handle_frame(Instant::now(), frame);
    }
    assert!(drain(&mut gateway).is_empty());
    assert_eq!(gateway.stats().malformed, 3);
}

#[test]
fn bad_icmp_checksum_and_bad_udp_checksum_are_malformed() {
    let mut gateway = gateway();
    let mut ping = hex(PING_GATEWAY);
    ping[41] ^= 0xff; // data byte, covered by the ICMP checksum
    gateway.handle_frame(Instant::now(), &ping);
    let mut query = dns_frame(
        SocketAddrV4::new(VM_IP, 40000),
        &dns_query(1, "example.com.", RecordType::A),
    );
    let last = 14 + 20 + 8 + 5;
    query[last] ^= 0x40;
    gateway.handle_frame(Instant::now(), &query);
    assert_eq!(gateway.stats().malformed, 2);
    assert_eq!(gateway.stats().dns_queries, 0);
}

#[test]
fn ipv4_options_are_skipped() {
    // The ping with a 4-byte NOP/NOP/NOP/EOL option: IHL 6, total length 36.
    let mut gateway = gateway();
    let ping = hex(PING_GATEWAY);
    let mut with_options = ping[..34].to_vec();
    with_options[14] = 0x46;
    with_options[16..18].copy_from_slice(&36u16.to_be_bytes());
    with_options.extend_from_slice(&[1, 1, 1, 0]);
    with_options.extend_from_slice(&ping[34..46]);
    let mut packet = Ipv4Packet::new_unchecked(&mut with_options[14..]);
    packet.fill_checksum();
    with_options.resize(60, 0);
    gateway.handle_frame(Instant::now(), &with_options);
    let (_, _, data) = parse_ipv4(&one_frame(&mut gateway));
    assert_eq!(&data[8..], b"v86!");
}

#[test]
fn a_lone_fragment_to_us_waits_then_times_out() {
    let mut gateway = gateway();
    let mut ping = hex(PING_GATEWAY);
    // The last fragment of a datagram (offset 8, DF and MF clear): its start never comes.
    ping[20..22].copy_from_slice(&[0x00, 0x01]);
    Ipv4Packet::new_unchecked(&mut ping[14..46]).fill_checksum();
    let now = Instant::now();
    gateway.handle_frame(now, &ping);
    assert!(drain(&mut gateway).is_empty());
    assert_eq!(gateway.stats().fragments, 1);
    // Held for reassembly until the timeout, then dropped and counted.
    assert!(gateway.stats().fragment_bytes > 0);
    gateway.handle_timeout(now + FragLimits::default().timeout);
    assert_eq!(gateway.stats().fragment_bytes, 0);
    assert_eq!(gateway.stats().fragment_drops.get(FragDrop::Timeout), 1);
}

#[test]
fn frames_for_others_and_other_ethertypes_are_ignored() {
    let mut gateway = gateway();
    let mut other_mac = hex(PING_GATEWAY);
    other_mac[5] = 0x57;
    let mut multicast = hex(PING_GATEWAY);
    multicast[0..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
    let mut ipv6 = hex(PING_GATEWAY);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    for frame in [other_mac, multicast, ipv6] {
        gateway.handle_frame(Instant::now(), &frame);
    }
    assert!(drain(&mut gateway).is_empty());
    assert_eq!(gateway.stats().ignored, 3);
}

#[test]
fn udp_elsewhere_is_not_routed() {
    let mut gateway = gateway();
    let frame = udp_frame(
        VM_MAC,
        GW_MAC,
        SocketAddrV4::new(VM_IP, 5000),
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 9),
        b"hello",
    );
    gateway.handle_frame(Instant::now(), &frame);
    assert!(drain(&mut gateway).is_empty());
    assert_eq!(gateway.stats().not_routed, 1);
    assert_eq!(gateway.stats().malformed, 0);
}
