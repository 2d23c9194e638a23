//! Frame-level tests: byte fixtures in, frames out, parsed back with smoltcp.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use dhcp::dhcproto::v4::{
    DhcpOption, HType, Message as DhcpMessage, MessageType, Opcode, OptionCode,
};
use dhcp::dhcproto::{Decodable, Encodable, Encoder};
use dhcp::{DhcpConfig, DhcpServer, LeaseEvent};
use dns::hickory_proto::op::{
    Message as DnsMessage, MessageType as DnsMessageType, OpCode, Query, ResponseCode,
};
use dns::hickory_proto::rr::rdata::A;
use dns::hickory_proto::rr::{Name, RData, Record, RecordType};
use dns::{DnsConfig, DnsProxy, UpstreamResult};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket, UdpRepr,
};

use crate::*;

const VM_MAC: EthernetAddress = EthernetAddress([0x00, 0x22, 0x15, 0xa1, 0xb2, 0xc3]);
const GW_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// ARP who-has 10.0.2.2 tell 10.0.2.15 from 00:22:15:a1:b2:c3, padded to 60 bytes (ne2k).
const ARP_WHO_HAS_GATEWAY: &str = concat!(
    "ffffffffffff",
    "002215a1b2c3",
    "0806", // Ethernet: broadcast, ARP
    "0001",
    "0800",
    "06",
    "04",
    "0001", // Ethernet/IPv4, request
    "002215a1b2c3",
    "0a00020f", // sender 00:22:15:a1:b2:c3 10.0.2.15
    "000000000000",
    "0a000202",                             // target ? 10.0.2.2
    "000000000000000000000000000000000000", // padding to 60
);

/// The reply: 10.0.2.2 is-at 52:54:00:12:34:56, padded to 60 bytes.
const ARP_GATEWAY_IS_AT: &str = concat!(
    "002215a1b2c3",
    "525400123456",
    "0806",
    "0001",
    "0800",
    "06",
    "04",
    "0002", // reply
    "525400123456",
    "0a000202", // sender: the gateway
    "002215a1b2c3",
    "0a00020f", // target: the asker
    "000000000000000000000000000000000000",
);

/// `ping -c1 -s4 10.0.2.2` from 10.0.2.15: id 0x1c2d, seq 1, data "v86!". IP total length
/// 32, frame padded to 60 with 0xaa garbage so anything that reads the frame length (a
/// checksum over the padding, a reply echoing it) fails.
const PING_GATEWAY: &str = concat!(
    "525400123456",
    "002215a1b2c3",
    "0800",
    "4500",
    "0020",
    "5a3c",
    "4000",
    "40",
    "01",
    "c890",
    "0a00020f",
    "0a000202",
    "08",
    "00",
    "2f78",
    "1c2d",
    "0001",
    "76383621",                     // echo request, "v86!"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaa", // 14 bytes of padding
);

/// TCP SYN 10.0.2.15:41234 -> 10.0.2.3:53, seq 0x11223344, MSS 1460, padded to 60.
const TCP_SYN_DNS: &str = concat!(
    "525400123456",
    "002215a1b2c3",
    "0800",
    "4500",
    "002c",
    "7711",
    "4000",
    "40",
    "06",
    "aba9",
    "0a00020f",
    "0a000203",
    "a112",
    "0035",
    "11223344",
    "00000000",
    "60",
    "02",
    "faf0",
    "9f76",
    "0000",
    "020405b4",
    "0000",
);

/// busybox udhcpc 1.36 DHCPDISCOVER from 00:22:15:a1:b2:c3 as it goes on the wire: raw
/// socket, 0.0.0.0:68 -> 255.255.255.255:67, xid 0x3903f326, no broadcast flag, client id
/// 01+MAC, max size 576, parameter list 1 3 6 12 15 28 42, vendor "udhcp 1.36.1", BOOTP
/// padded to 300 bytes.
const UDHCPC_DISCOVER: &str = concat!(
    "ffffffffffff",
    "002215a1b2c3",
    "0800",
    "4500",
    "0148",
    "0000",
    "0000",
    "40",
    "11",
    "79a6",
    "00000000",
    "ffffffff",
    "0044",
    "0043",
    "0134",
    "0712", // UDP 68 -> 67, length 308
    "01010600",
    "3903f326",
    "00000000", // op, htype, hlen, hops; xid; secs, flags
    "00000000",
    "00000000",
    "00000000",
    "00000000",                         // ciaddr yiaddr siaddr giaddr
    "002215a1b2c300000000000000000000", // chaddr
);
/// sname and file (192 zero bytes), between the header above and the options below.
const BOOTP_ZEROS: usize = 192;
const UDHCPC_DISCOVER_OPTIONS: &str = concat!(
    "63825363",
    "350101",
    "3d0701002215a1b2c3",
    "39020240",
    "37070103060c0f1c2a",
    "3c0c756468637020312e33362e31",
    "ff",
    "0000000000000000000000000000000000000000", // padding to 300
);

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn udhcpc_discover() -> Vec<u8> {
    let mut frame = hex(UDHCPC_DISCOVER);
    frame.extend_from_slice(&[0; BOOTP_ZEROS]);
    frame.extend_from_slice(&hex(UDHCPC_DISCOVER_OPTIONS));
    assert_eq!(frame.len(), 342);
    frame
}

fn gateway_with(config: GatewayConfig) -> Gateway {
    let dhcp = DhcpServer::new(DhcpConfig::default()).unwrap();
    let dns = DnsProxy::new(DnsConfig::new("default.lan").unwrap());
    Gateway::new(config, dhcp, dns)
}

fn gateway() -> Gateway {
    gateway_with(GatewayConfig::default())
}

fn drain(gateway: &mut Gateway) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| gateway.poll_frame()).collect()
}

fn one_frame(gateway: &mut Gateway) -> Vec<u8> {
    let frames = drain(gateway);
    assert_eq!(frames.len(), 1, "expected one frame, got {frames:02x?}");
    frames.into_iter().next().unwrap()
}

/// A UDP frame from a VM, built with smoltcp.
fn udp_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    from: SocketAddrV4,
    to: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let ip = Ipv4Repr {
        src_addr: *from.ip(),
        dst_addr: *to.ip(),
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let mut buffer = vec![0; (14 + 20 + 8 + payload.len()).max(60)];
    let mut frame = EthernetFrame::new_unchecked(&mut buffer[..]);
    EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    UdpRepr {
        src_port: from.port(),
        dst_port: to.port(),
    }
    .emit(
        &mut UdpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(*from.ip()),
        &IpAddress::Ipv4(*to.ip()),
        payload.len(),
        |out| out.copy_from_slice(payload),
        &caps,
    );
    buffer
}

/// Parses an emitted IPv4 frame, checking every checksum, TTL and the source MAC.
fn parse_ipv4(frame: &[u8]) -> (EthernetRepr, Ipv4Repr, Vec<u8>) {
    assert!(frame.len() >= 60);
    let eth = EthernetFrame::new_checked(frame).unwrap();
    let eth_repr = EthernetRepr::parse(&eth).unwrap();
    assert_eq!(eth_repr.src_addr, GW_MAC);
    assert_eq!(eth_repr.ethertype, EthernetProtocol::Ipv4);
    let packet = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let ip = Ipv4Repr::parse(&packet, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(ip.hop_limit, 64);
    (eth_repr, ip, packet.payload().to_vec())
}

fn parse_udp(frame: &[u8]) -> (EthernetRepr, Ipv4Repr, UdpRepr, Vec<u8>) {
    let (eth, ip, data) = parse_ipv4(frame);
    assert_eq!(ip.next_header, IpProtocol::Udp);
    let packet = UdpPacket::new_checked(&data[..]).unwrap();
    assert_ne!(packet.checksum(), 0, "we always fill the UDP checksum");
    let udp = UdpRepr::parse(
        &packet,
        &IpAddress::Ipv4(ip.src_addr),
        &IpAddress::Ipv4(ip.dst_addr),
        &ChecksumCapabilities::default(),
    )
    .unwrap();
    let payload = packet.payload().to_vec();
    (eth, ip, udp, payload)
}

fn dhcp_message(kind: MessageType, xid: u32, edit: impl FnOnce(&mut DhcpMessage)) -> Vec<u8> {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut message = DhcpMessage::new_with_id(
        xid,
        unspecified,
        unspecified,
        unspecified,
        unspecified,
        &VM_MAC.0,
    );
    message
        .set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth);
    message.opts_mut().insert(DhcpOption::MessageType(kind));
    // udhcpc sends client id 01+MAC, and leases are keyed by it.
    let mut client_id = vec![1];
    client_id.extend_from_slice(&VM_MAC.0);
    message
        .opts_mut()
        .insert(DhcpOption::ClientIdentifier(client_id));
    edit(&mut message);
    let mut buffer = Vec::new();
    message.encode(&mut Encoder::new(&mut buffer)).unwrap();
    buffer
}

fn dhcp_broadcast(payload: &[u8]) -> Vec<u8> {
    udp_frame(
        VM_MAC,
        EthernetAddress::BROADCAST,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        payload,
    )
}

/// DISCOVER, OFFER, REQUEST with host name `alice`, ACK: 10.0.2.15 is bound.
fn lease_alice(gateway: &mut Gateway, now: Instant) {
    gateway.handle_frame(now, &udhcpc_discover());
    let (_, _, _, offer) = parse_udp(&one_frame(gateway));
    let offer = DhcpMessage::decode(&mut dhcp::dhcproto::Decoder::new(&offer)).unwrap();
    let request = dhcp_message(MessageType::Request, 0x3903f327, |m| {
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(GW_IP));
        m.opts_mut().insert(DhcpOption::Hostname("alice".into()));
    });
    gateway.handle_frame(now, &dhcp_broadcast(&request));
    let (_, _, _, ack) = parse_udp(&one_frame(gateway));
    let ack = DhcpMessage::decode(&mut dhcp::dhcproto::Decoder::new(&ack)).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), VM_IP);
}

fn dns_query(id: u16, name: &str, record_type: RecordType) -> Vec<u8> {
    let mut message = DnsMessage::new(id, DnsMessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    message.to_vec().unwrap()
}

fn dns_frame(from: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    udp_frame(VM_MAC, GW_MAC, from, SocketAddrV4::new(DNS_IP, 53), payload)
}

fn a_records(message: &DnsMessage) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

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
fn fragments_to_us_are_dropped_and_counted() {
    let mut gateway = gateway();
    let mut ping = hex(PING_GATEWAY);
    ping[20] = 0x20; // MF, DF cleared
    Ipv4Packet::new_unchecked(&mut ping[14..46]).fill_checksum();
    gateway.handle_frame(Instant::now(), &ping);
    assert!(drain(&mut gateway).is_empty());
    assert_eq!(gateway.stats().fragments, 1);
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

// ---- bounds and robustness ----

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

// ---- NAT ----

const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn nat_gateway(now: Instant) -> Gateway {
    let mut gateway = gateway();
    gateway.enable_nat(NatConfig::default(), now);
    gateway
}

/// A TCP segment from the VM, built with smoltcp (checksums filled).
fn tcp_frame(to: SocketAddrV4, control: TcpControl, seq: u32, ack: Option<u32>) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let tcp = TcpRepr {
        src_port: 41234,
        dst_port: to.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64240,
        window_scale: Some(7),
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: VM_IP,
        dst_addr: *to.ip(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut buffer = vec![0; (14 + 20 + tcp.buffer_len()).max(60)];
    let mut frame = EthernetFrame::new_unchecked(&mut buffer[..]);
    EthernetRepr {
        src_addr: VM_MAC,
        dst_addr: GW_MAC,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(VM_IP),
        &IpAddress::Ipv4(*to.ip()),
        &caps,
    );
    buffer
}

fn parse_tcp(frame: &[u8]) -> (Ipv4Repr, TcpRepr<'static>) {
    let (eth, ip, data) = parse_ipv4(frame);
    assert_eq!(eth.dst_addr, VM_MAC);
    let packet = TcpPacket::new_checked(&data[..]).unwrap();
    let tcp = TcpRepr::parse(
        &packet,
        &IpAddress::Ipv4(ip.src_addr),
        &IpAddress::Ipv4(ip.dst_addr),
        &ChecksumCapabilities::default(),
    )
    .unwrap();
    // Only the header fields matter here; drop the borrowed payload.
    let tcp = TcpRepr {
        payload: &[],
        ..tcp
    };
    (ip, tcp)
}

#[test]
fn nat_syn_ack_waits_for_the_host_connect() {
    let now = Instant::now();
    let mut gateway = nat_gateway(now);
    let to = SocketAddrV4::new(INTERNET, 80);
    gateway.handle_frame(now, &tcp_frame(to, TcpControl::Syn, 1000, None));
    assert!(
        drain(&mut gateway).is_empty(),
        "no SYN-ACK before the connect"
    );
    let nat = gateway.nat_mut().unwrap();
    let Some(NatAction::TcpConnect { flow, vm, to: host }) = nat.poll_action() else {
        panic!("expected a connect");
    };
    assert_eq!((vm, host), (SocketAddrV4::new(VM_IP, 41234), to));
    // A retransmitted SYN starts nothing new.
    gateway.handle_frame(now, &tcp_frame(to, TcpControl::Syn, 1000, None));
    assert_eq!(gateway.nat_mut().unwrap().poll_action(), None);

    assert!(gateway.nat_mut().unwrap().handle_tcp_connected(now, flow));
    let (ip, syn_ack) = parse_tcp(&one_frame(&mut gateway));
    assert_eq!((ip.src_addr, ip.dst_addr), (INTERNET, VM_IP));
    assert_eq!(syn_ack.control, TcpControl::Syn);
    assert_eq!(syn_ack.ack_number, Some(TcpSeqNumber(1001)));
    assert!(syn_ack.max_seg_size.is_some_and(|mss| mss <= 1460));
    assert!(syn_ack.window_scale.is_some(), "window scaling on");
    assert_eq!(gateway.nat().unwrap().stats().flows_active, [1, 0, 0]);
}

#[test]
fn nat_refused_connect_resets_and_unreachable_sends_icmp() {
    let now = Instant::now();
    let mut gateway = nat_gateway(now);
    for (port, failure) in [
        (81, ConnectFailure::Refused),
        (82, ConnectFailure::TimedOut),
    ] {
        let to = SocketAddrV4::new(INTERNET, port);
        gateway.handle_frame(now, &tcp_frame(to, TcpControl::Syn, 5000, None));
        let nat = gateway.nat_mut().unwrap();
        let Some(NatAction::TcpConnect { flow, .. }) = nat.poll_action() else {
            panic!("expected a connect");
        };
        nat.handle_tcp_connect_failed(now, flow, failure);
        let frame = one_frame(&mut gateway);
        if failure == ConnectFailure::Refused {
            let (_, rst) = parse_tcp(&frame);
            assert_eq!(rst.control, TcpControl::Rst);
            assert_eq!(rst.ack_number, Some(TcpSeqNumber(5001)));
        } else {
            let (_, ip, data) = parse_ipv4(&frame);
            assert_eq!((ip.src_addr, ip.next_header), (GW_IP, IpProtocol::Icmp));
            let icmp = Icmpv4Packet::new_checked(&data[..]).unwrap();
            assert_eq!(
                icmp.msg_type(),
                smoltcp::wire::Icmpv4Message::DstUnreachable
            );
            assert_eq!(icmp.msg_code(), 1, "host unreachable");
        }
    }
    let stats = gateway.nat().unwrap().stats();
    assert_eq!((stats.flows_active, stats.connect_failed), ([0, 0, 0], 2));
}

#[test]
fn nat_policy_refuses_private_loopback_and_port_25() {
    let now = Instant::now();
    let mut gateway = nat_gateway(now);
    for to in [
        SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 80),
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 80),
        SocketAddrV4::new(INTERNET, 25),
        // The gateway address without host loopback.
        SocketAddrV4::new(GW_IP, 8080),
    ] {
        gateway.handle_frame(now, &tcp_frame(to, TcpControl::Syn, 1, None));
        let (_, rst) = parse_tcp(&one_frame(&mut gateway));
        assert_eq!(rst.control, TcpControl::Rst, "{to}");
    }
    let nat = gateway.nat_mut().unwrap();
    assert_eq!(nat.poll_action(), None);
    let denied = &nat.stats().denied;
    assert_eq!(denied.get(DenyReason::Private), 1);
    assert_eq!(denied.get(DenyReason::Loopback), 2);
    assert_eq!(denied.get(DenyReason::Port), 1);

    // UDP to a private address: ICMP port unreachable quoting the datagram.
    let from = SocketAddrV4::new(VM_IP, 5000);
    let to = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 1), 53);
    gateway.handle_frame(now, &udp_frame(VM_MAC, GW_MAC, from, to, b"q"));
    let (_, ip, data) = parse_ipv4(&one_frame(&mut gateway));
    assert_eq!(ip.next_header, IpProtocol::Icmp);
    let icmp = Icmpv4Packet::new_checked(&data[..]).unwrap();
    assert_eq!((icmp.msg_type().into(), icmp.msg_code()), (3u8, 3));
}

#[test]
fn nat_udp_answers_only_from_contacted_peers() {
    let now = Instant::now();
    let mut gateway = nat_gateway(now);
    let from = SocketAddrV4::new(VM_IP, 5000);
    let to = SocketAddrV4::new(INTERNET, 7);
    gateway.handle_frame(now, &udp_frame(VM_MAC, GW_MAC, from, to, b"hello"));
    let nat = gateway.nat_mut().unwrap();
    let Some(NatAction::UdpSend {
        flow,
        to: host,
        payload,
    }) = nat.poll_action()
    else {
        panic!("expected a UDP send");
    };
    assert_eq!((host, payload.as_slice()), (to, &b"hello"[..]));
    nat.handle_udp_datagram(now, flow, to, b"world");
    nat.handle_udp_datagram(now, flow, SocketAddrV4::new(INTERNET, 9), b"spoof");
    let (_, ip, udp, data) = parse_udp(&one_frame(&mut gateway));
    assert_eq!(
        (ip.src_addr, udp.src_port, udp.dst_port),
        (INTERNET, 7, 5000)
    );
    assert_eq!(data, b"world");
    assert_eq!(gateway.nat().unwrap().stats().unsolicited, 1);
    // Idle flows go, and the driver is told.
    gateway.handle_timeout(now + Duration::from_secs(200));
    let nat = gateway.nat_mut().unwrap();
    assert_eq!(nat.poll_action(), Some(NatAction::Close { flow }));
    assert_eq!(nat.stats().flows_active, [0, 0, 0]);
}

#[test]
fn nat_ping_reply_keeps_the_vms_identifier() {
    let now = Instant::now();
    let mut gateway = nat_gateway(now);
    // The gateway ping fixture, re-addressed to the internet host.
    let request = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 7,
        data: b"abcdefgh",
    };
    let ip = Ipv4Repr {
        src_addr: VM_IP,
        dst_addr: INTERNET,
        next_header: IpProtocol::Icmp,
        payload_len: request.buffer_len(),
        hop_limit: 64,
    };
    let mut frame = vec![0; 14 + 20 + request.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: VM_MAC,
        dst_addr: GW_MAC,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    request.emit(
        &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
        &ChecksumCapabilities::default(),
    );
    gateway.handle_frame(now, &frame);
    let nat = gateway.nat_mut().unwrap();
    let Some(NatAction::PingSend { flow, to, seq, .. }) = nat.poll_action() else {
        panic!("expected a ping");
    };
    assert_eq!((to, seq), (INTERNET, 7));
    nat.handle_ping_reply(now, flow, 7, b"abcdefgh");
    let (_, ip, data) = parse_ipv4(&one_frame(&mut gateway));
    assert_eq!(ip.src_addr, INTERNET);
    let packet = Icmpv4Packet::new_checked(&data[..]).unwrap();
    let reply = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(
        reply,
        Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 7,
            data: b"abcdefgh"
        }
    );
}
