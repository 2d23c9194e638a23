//! Frame-level tests: byte fixtures in, frames out, parsed back with smoltcp. The fixtures
//! and helpers are here; the tests are in the files below, by subject.

mod bounds;
mod dhcp_dns;
mod fragments;
mod frames;
mod nat;

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
