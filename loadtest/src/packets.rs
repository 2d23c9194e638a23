//! Frames a synthetic VM sends to the gateway and parses back: DHCP client messages
//! (dhcproto) and DNS queries (hickory-proto) in UDP/IPv4/Ethernet (smoltcp wire).

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message as DhcpMessage, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable, Encoder};
use hickory_proto::op::{Message as DnsMessage, MessageType as DnsType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    IPV4_HEADER_LEN, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UDP_HEADER_LEN, UdpPacket,
    UdpRepr,
};

pub use dhcproto::v4::MessageType as DhcpType;
pub use hickory_proto::op::ResponseCode;

pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;
pub const DNS_PORT: u16 = 53;
/// Smallest Ethernet frame without FCS; shorter frames are padded, as a NIC does.
const MIN_FRAME: usize = 60;

/// Ethernet + IPv4 (TTL 64, checksums) + UDP around `payload`.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    };
    let ip = Ipv4Repr {
        src_addr: src.0,
        dst_addr: dst.0,
        next_header: IpProtocol::Udp,
        payload_len: UDP_HEADER_LEN + payload.len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let len = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN + payload.len();
    let mut buffer = vec![0u8; len.max(MIN_FRAME)];
    let caps = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut buffer[..]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(src.0),
        &IpAddress::Ipv4(dst.0),
        payload.len(),
        |out| out.copy_from_slice(payload),
        &caps,
    );
    buffer
}

/// A UDP datagram taken out of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp<'a> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub payload: &'a [u8],
}

/// The UDP datagram in an Ethernet/IPv4 frame, checksums verified; None for anything else.
/// Bounded by the IP total length, so padding is ignored.
pub fn parse_udp(frame: &[u8]) -> Option<Udp<'_>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let (src_mac, dst_mac) = (eth.src_addr().0, eth.dst_addr().0);
    let ip = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]).ok()?;
    let caps = ChecksumCapabilities::default();
    let ip_repr = Ipv4Repr::parse(&ip, &caps).ok()?;
    if ip_repr.next_header != IpProtocol::Udp || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let header_len = usize::from(ip.header_len());
    let ip_payload =
        &frame[ETHERNET_HEADER_LEN + header_len..ETHERNET_HEADER_LEN + usize::from(ip.total_len())];
    let udp = UdpPacket::new_checked(ip_payload).ok()?;
    let (src_ip, dst_ip) = (ip_repr.src_addr, ip_repr.dst_addr);
    let udp_repr = UdpRepr::parse(
        &udp,
        &IpAddress::Ipv4(src_ip),
        &IpAddress::Ipv4(dst_ip),
        &caps,
    )
    .ok()?;
    let payload_len = usize::from(udp.len()).checked_sub(UDP_HEADER_LEN)?;
    Some(Udp {
        src_mac,
        dst_mac,
        src: (src_ip, udp_repr.src_port),
        dst: (dst_ip, udp_repr.dst_port),
        payload: ip_payload.get(UDP_HEADER_LEN..UDP_HEADER_LEN + payload_len)?,
    })
}

/// A DHCPDISCOVER (broadcast, no broadcast flag: the server answers by unicast to `mac`).
pub fn dhcp_discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    dhcp_frame(mac, xid, MessageType::Discover, |_| {})
}

/// A DHCPREQUEST in SELECTING state: takes `offered` from `server`.
pub fn dhcp_request(mac: [u8; 6], xid: u32, offered: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
    dhcp_frame(mac, xid, MessageType::Request, |m| {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(offered));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    })
}

fn dhcp_frame(
    mac: [u8; 6],
    xid: u32,
    kind: MessageType,
    edit: impl FnOnce(&mut DhcpMessage),
) -> Vec<u8> {
    let zero = Ipv4Addr::UNSPECIFIED;
    let mut msg = DhcpMessage::new_with_id(xid, zero, zero, zero, zero, &mac);
    msg.set_opcode(Opcode::BootRequest).set_htype(HType::Eth);
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    msg.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainName,
        OptionCode::InterfaceMtu,
    ]));
    edit(&mut msg);
    let mut payload = Vec::with_capacity(300);
    // Encoding a message we built ourselves cannot fail (dhcproto only errors on sizes).
    msg.encode(&mut Encoder::new(&mut payload))
        .expect("encode DHCP message");
    udp_frame(
        mac,
        [0xff; 6],
        (Ipv4Addr::UNSPECIFIED, DHCP_CLIENT_PORT),
        (Ipv4Addr::BROADCAST, DHCP_SERVER_PORT),
        &payload,
    )
}

/// What a VM needs from an OFFER or ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpReply {
    pub kind: MessageType,
    pub yiaddr: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    pub dns: Option<Ipv4Addr>,
    /// Ethernet source: the gateway's MAC.
    pub from_mac: [u8; 6],
}

/// A DHCP reply for `mac` and `xid`; None for any other frame (other VMs' broadcasts).
pub fn parse_dhcp_reply(frame: &[u8], mac: [u8; 6], xid: u32) -> Option<DhcpReply> {
    let udp = parse_udp(frame)?;
    if udp.src.1 != DHCP_SERVER_PORT || udp.dst.1 != DHCP_CLIENT_PORT {
        return None;
    }
    let msg = DhcpMessage::from_bytes(udp.payload).ok()?;
    if msg.opcode() != Opcode::BootReply || msg.xid() != xid || msg.chaddr() != mac {
        return None;
    }
    let kind = msg.opts().msg_type()?;
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let dns = match msg.opts().get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(ips)) => ips.first().copied(),
        _ => None,
    };
    Some(DhcpReply {
        kind,
        yiaddr: msg.yiaddr(),
        server_id,
        dns,
        from_mac: udp.src_mac,
    })
}

/// A recursive A query for `name` with DNS id `id`, as a UDP payload.
pub fn dns_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let name = Name::from_ascii(name).ok()?;
    let mut message = DnsMessage::new(id, DnsType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, RecordType::A));
    message.to_vec().ok()
}

/// A DNS answer: id, response code and number of answer records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    pub id: u16,
    pub rcode: ResponseCode,
    pub answers: usize,
}

/// The DNS answer in a frame from `dns`:53 to `to`; None for anything else.
pub fn parse_dns_answer(frame: &[u8], dns: Ipv4Addr, to: (Ipv4Addr, u16)) -> Option<DnsAnswer> {
    let udp = parse_udp(frame)?;
    if udp.src != (dns, DNS_PORT) || udp.dst != to {
        return None;
    }
    let message = DnsMessage::from_vec(udp.payload).ok()?;
    if message.message_type != DnsType::Response {
        return None;
    }
    Some(DnsAnswer {
        id: message.id,
        rcode: message.response_code,
        answers: message.answers.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0, 0, 0, 7];
    const GW: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// Ethernet + IPv4 + UDP headers of a DNS answer from 10.0.2.3:53 to 10.0.2.15:4000
    /// (id 0x0102, NOERROR, one A record 198.18.0.9 for "a.test"), checksums by hand.
    fn dns_answer_fixture() -> Vec<u8> {
        let dns: [u8; 40] = [
            0x01, 0x02, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // header
            0x01, b'a', 0x04, b't', b'e', b's', b't', 0x00, 0x00, 0x01, 0x00,
            0x01, // question
            0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3c, 0x00,
            0x04, // A, TTL 60
            198, 18, 0, 9,
        ];
        let mut f = Vec::new();
        f.extend_from_slice(&MAC); // dst
        f.extend_from_slice(&GW); // src
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + dns.len()) as u16;
        let mut ip = vec![
            0x45,
            0x00,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
            10,
            0,
            2,
            3,
            10,
            0,
            2,
            15,
        ];
        let sum = !fold(sum16(&ip, 0));
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        let udp_len = (8 + dns.len()) as u16;
        let mut udp = vec![0, 53, 0x0f, 0xa0, (udp_len >> 8) as u8, udp_len as u8, 0, 0];
        udp.extend_from_slice(&dns);
        let pseudo = [
            10,
            0,
            2,
            3,
            10,
            0,
            2,
            15,
            0,
            17,
            (udp_len >> 8) as u8,
            udp_len as u8,
        ];
        let sum = !fold(sum16(&udp, sum16(&pseudo, 0)));
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&udp);
        f
    }

    fn sum16(bytes: &[u8], mut acc: u32) -> u32 {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            acc += hi | pair.get(1).map_or(0, |&b| u32::from(b));
        }
        acc
    }

    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn discover_is_a_broadcast_bootrequest_from_our_mac() {
        let f = dhcp_discover(MAC, 0xdead_beef);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &MAC);
        let udp = parse_udp(&f).unwrap();
        assert_eq!(udp.src, (Ipv4Addr::UNSPECIFIED, 68));
        assert_eq!(udp.dst, (Ipv4Addr::BROADCAST, 67));
        let msg = DhcpMessage::from_bytes(udp.payload).unwrap();
        assert_eq!(msg.xid(), 0xdead_beef);
        assert_eq!(msg.chaddr(), MAC);
        assert!(
            !msg.flags().broadcast(),
            "unicast replies keep other VMs quiet"
        );
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
    }

    #[test]
    fn request_names_offer_and_server() {
        let (ip, server) = (Ipv4Addr::new(10, 0, 0, 15), Ipv4Addr::new(10, 0, 0, 2));
        let f = dhcp_request(MAC, 9, ip, server);
        let msg = DhcpMessage::from_bytes(parse_udp(&f).unwrap().payload).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(
            msg.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ip))
        );
        assert_eq!(
            msg.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(server))
        );
    }

    #[test]
    fn replies_are_matched_by_xid_and_chaddr() {
        let offered = Ipv4Addr::new(10, 0, 0, 15);
        let server = Ipv4Addr::new(10, 0, 0, 2);
        let mut msg = DhcpMessage::new_with_id(
            42,
            Ipv4Addr::UNSPECIFIED,
            offered,
            server,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        msg.set_opcode(Opcode::BootReply).set_htype(HType::Eth);
        msg.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        msg.opts_mut()
            .insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 0, 0, 3,
            )]));
        let mut payload = Vec::new();
        msg.encode(&mut Encoder::new(&mut payload)).unwrap();
        let f = udp_frame(GW, MAC, (server, 67), (offered, 68), &payload);
        let reply = parse_dhcp_reply(&f, MAC, 42).unwrap();
        assert_eq!(reply.kind, MessageType::Offer);
        assert_eq!(reply.yiaddr, offered);
        assert_eq!(reply.server_id, Some(server));
        assert_eq!(reply.dns, Some(Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(reply.from_mac, GW);
        assert!(parse_dhcp_reply(&f, MAC, 43).is_none(), "other xid");
        assert!(
            parse_dhcp_reply(&f, [2, 0, 0, 0, 0, 8], 42).is_none(),
            "other VM"
        );
        // Our own DISCOVER (a request, from port 68) is not a reply.
        assert!(parse_dhcp_reply(&dhcp_discover(MAC, 42), MAC, 42).is_none());
    }

    #[test]
    fn dns_answer_fixture_parses() {
        let f = dns_answer_fixture();
        let dns = Ipv4Addr::new(10, 0, 2, 3);
        let me = (Ipv4Addr::new(10, 0, 2, 15), 4000);
        let answer = parse_dns_answer(&f, dns, me).unwrap();
        assert_eq!(answer.id, 0x0102);
        assert_eq!(answer.rcode, ResponseCode::NoError);
        assert_eq!(answer.answers, 1);
        assert!(
            parse_dns_answer(&f, dns, (me.0, 4001)).is_none(),
            "other port"
        );
        // Padding after the IP packet is ignored; a broken UDP checksum is not.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 20]);
        assert!(parse_dns_answer(&padded, dns, me).is_some());
        let mut bad = f.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(parse_dns_answer(&bad, dns, me).is_none());
        assert!(parse_udp(&f[..40]).is_none(), "truncated");
    }

    #[test]
    fn dns_query_frame_round_trips() {
        let payload = dns_query(7, "q1.bench.test.").unwrap();
        let (me, dns) = (Ipv4Addr::new(10, 0, 0, 15), Ipv4Addr::new(10, 0, 0, 3));
        let f = udp_frame(MAC, GW, (me, 4000), (dns, 53), &payload);
        let udp = parse_udp(&f).unwrap();
        assert_eq!((udp.src, udp.dst), ((me, 4000), (dns, 53)));
        let msg = DnsMessage::from_vec(udp.payload).unwrap();
        assert_eq!(msg.id, 7);
        assert!(msg.recursion_desired);
        assert_eq!(msg.queries[0].name().to_ascii(), "q1.bench.test.");
        assert!(dns_query(1, "bad..name").is_none());
        // A query is not an answer.
        assert!(
            parse_dns_answer(
                &udp_frame(GW, MAC, (dns, 53), (me, 4000), &payload),
                dns,
                (me, 4000)
            )
            .is_none()
        );
    }
}
