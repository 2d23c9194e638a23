//! Packet emission: every frame and IPv4 packet the gateway and its NAT send is built here,
//! so each shape exists once. A leaf module: it imports neither the gateway nor the NAT.
//!
//! Emitted IPv4 packets carry [`TTL`], DF and correct checksums; transport checksums cover
//! exactly the transport bytes (never frame padding); frames are padded to
//! [`MIN_FRAME_LEN`].

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IPV4_HEADER_LEN, Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UDP_HEADER_LEN,
    UdpPacket, UdpRepr,
};

/// TTL of every packet we emit (Linux's default).
pub const TTL: u8 = 64;
/// Frames we emit are padded to the Ethernet minimum (without FCS), as a real NIC would.
pub const MIN_FRAME_LEN: usize = 60;
/// Bytes kept free in front of a bare IP packet for its Ethernet header.
pub(crate) const HEADROOM: usize = ETHERNET_HEADER_LEN;

/// What follows the IPv4 header of a packet we emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport<'a> {
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: &'a [u8],
    },
    Tcp(TcpRepr<'a>),
    Icmp(Icmpv4Repr<'a>),
    /// ICMP "fragmentation needed": smoltcp's repr has no field for the next-hop MTU
    /// (RFC 1191), which goes into the second half of the unused word.
    FragNeeded(Icmpv4Repr<'a>, u16),
}

/// One IPv4 packet to emit: addresses and transport; TTL, DF and checksums are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutPacket<'a> {
    pub(crate) src: Ipv4Addr,
    pub(crate) dst: Ipv4Addr,
    pub(crate) transport: Transport<'a>,
}

impl<'a> OutPacket<'a> {
    /// A UDP datagram from `from` to `to`.
    pub(crate) fn udp(from: SocketAddrV4, to: SocketAddrV4, payload: &'a [u8]) -> Self {
        Self {
            src: *from.ip(),
            dst: *to.ip(),
            transport: Transport::Udp {
                src_port: from.port(),
                dst_port: to.port(),
                payload,
            },
        }
    }

    /// An ICMP message (echo reply, error) from `src` to `dst`.
    pub(crate) fn icmp(src: Ipv4Addr, dst: Ipv4Addr, message: Icmpv4Repr<'a>) -> Self {
        Self {
            src,
            dst,
            transport: Transport::Icmp(message),
        }
    }

    /// ICMP destination unreachable from `router` to the sender of `about`, quoting the
    /// first 8 bytes of its payload.
    pub(crate) fn unreachable(
        router: Ipv4Addr,
        about: &Ipv4Repr,
        payload: &'a [u8],
        reason: Icmpv4DstUnreachable,
    ) -> Self {
        let message = Icmpv4Repr::DstUnreachable {
            reason,
            header: *about,
            data: &payload[..payload.len().min(8)],
        };
        Self::icmp(router, about.src_addr, message)
    }

    /// ICMP "fragmentation needed and DF set" from `router` to the sender of `about`, with
    /// the next-hop `mtu`, quoting the first 8 bytes of its payload.
    pub(crate) fn frag_needed(
        router: Ipv4Addr,
        about: &Ipv4Repr,
        payload: &'a [u8],
        mtu: u16,
    ) -> Self {
        let message = Icmpv4Repr::DstUnreachable {
            reason: Icmpv4DstUnreachable::FragRequired,
            header: *about,
            data: &payload[..payload.len().min(8)],
        };
        Self {
            src: router,
            dst: about.src_addr,
            transport: Transport::FragNeeded(message, mtu),
        }
    }

    /// The RST that answers `segment`, which arrived in `about`: from its destination back
    /// to its source (see [`reset_for`]).
    pub(crate) fn reset(about: &Ipv4Repr, segment: &TcpRepr) -> OutPacket<'static> {
        OutPacket {
            src: about.dst_addr,
            dst: about.src_addr,
            transport: Transport::Tcp(reset_for(segment)),
        }
    }

    fn protocol(&self) -> IpProtocol {
        match self.transport {
            Transport::Udp { .. } => IpProtocol::Udp,
            Transport::Tcp(_) => IpProtocol::Tcp,
            Transport::Icmp(_) | Transport::FragNeeded(..) => IpProtocol::Icmp,
        }
    }

    fn payload_len(&self) -> usize {
        match &self.transport {
            Transport::Udp { payload, .. } => UDP_HEADER_LEN + payload.len(),
            Transport::Tcp(segment) => segment.buffer_len(),
            Transport::Icmp(message) | Transport::FragNeeded(message, _) => message.buffer_len(),
        }
    }

    /// The IPv4 packet's length (header and payload), to compare with the MTU.
    pub(crate) fn len(&self) -> usize {
        IPV4_HEADER_LEN + self.payload_len()
    }

    /// Writes the IPv4 packet at the start of `buffer` (at least [`Self::len`] bytes).
    fn emit(&self, buffer: &mut [u8]) {
        let ip = Ipv4Repr {
            src_addr: self.src,
            dst_addr: self.dst,
            next_header: self.protocol(),
            payload_len: self.payload_len(),
            hop_limit: TTL,
        };
        let caps = ChecksumCapabilities::default();
        // `Ipv4Repr::emit` sets DF; the payload slice ends at the total length.
        let mut packet = Ipv4Packet::new_unchecked(&mut buffer[..self.len()]);
        ip.emit(&mut packet, &caps);
        let out = packet.payload_mut();
        let (src, dst) = (IpAddress::Ipv4(self.src), IpAddress::Ipv4(self.dst));
        match &self.transport {
            Transport::Udp {
                src_port,
                dst_port,
                payload,
            } => {
                let udp = UdpRepr {
                    src_port: *src_port,
                    dst_port: *dst_port,
                };
                udp.emit(
                    &mut UdpPacket::new_unchecked(out),
                    &src,
                    &dst,
                    payload.len(),
                    |data| data.copy_from_slice(payload),
                    &caps,
                );
            }
            Transport::Tcp(segment) => {
                segment.emit(&mut TcpPacket::new_unchecked(out), &src, &dst, &caps);
            }
            Transport::Icmp(message) => {
                message.emit(&mut Icmpv4Packet::new_unchecked(out), &caps);
            }
            Transport::FragNeeded(message, mtu) => {
                let mut icmp = Icmpv4Packet::new_unchecked(out);
                message.emit(&mut icmp, &caps);
                // Bytes 6..8 of a destination unreachable: the echo sequence number's place.
                icmp.set_echo_seq_no(*mtu);
                icmp.fill_checksum();
            }
        }
    }

    /// The bare IP packet after `headroom` free bytes (see [`frame_packet`]).
    pub(crate) fn packet_bytes(&self, headroom: usize) -> Vec<u8> {
        let mut buffer = vec![0; headroom + self.len()];
        self.emit(&mut buffer[headroom..]);
        buffer
    }

    /// The packet in an Ethernet frame, padded to [`MIN_FRAME_LEN`].
    pub(crate) fn frame_bytes(
        &self,
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
    ) -> Vec<u8> {
        frame(
            src_mac,
            dst_mac,
            EthernetProtocol::Ipv4,
            self.len(),
            |out| {
                self.emit(out);
            },
        )
    }
}

/// An Ethernet frame around `payload_len` bytes that `fill` writes (it gets exactly that
/// slice), padded with zeros to [`MIN_FRAME_LEN`].
pub(crate) fn frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    ethertype: EthernetProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let len = ETHERNET_HEADER_LEN + payload_len;
    let mut buffer = vec![0; len.max(MIN_FRAME_LEN)];
    write_ethernet(&mut buffer, src_mac, dst_mac, ethertype);
    fill(&mut buffer[ETHERNET_HEADER_LEN..len]);
    buffer
}

/// An ARP message from the gateway's `src_mac` to `dst_mac` (a reply, or a broadcast request).
pub(crate) fn arp_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    arp: &ArpRepr,
) -> Vec<u8> {
    frame(
        src_mac,
        dst_mac,
        EthernetProtocol::Arp,
        arp.buffer_len(),
        |buffer| arp.emit(&mut ArpPacket::new_unchecked(buffer)),
    )
}

/// Turns a bare IPv4 packet with [`HEADROOM`] free bytes in front into a frame: the
/// Ethernet header goes into the headroom, then zero padding to [`MIN_FRAME_LEN`].
pub(crate) fn frame_packet(
    mut packet: Vec<u8>,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
) -> Vec<u8> {
    write_ethernet(&mut packet, src_mac, dst_mac, EthernetProtocol::Ipv4);
    if packet.len() < MIN_FRAME_LEN {
        packet.resize(MIN_FRAME_LEN, 0);
    }
    packet
}

fn write_ethernet(
    buffer: &mut [u8],
    src_addr: EthernetAddress,
    dst_addr: EthernetAddress,
    ethertype: EthernetProtocol,
) {
    let eth = EthernetRepr {
        src_addr,
        dst_addr,
        ethertype,
    };
    eth.emit(&mut EthernetFrame::new_unchecked(
        &mut buffer[..ETHERNET_HEADER_LEN],
    ));
}

/// The RST that answers `segment` (RFC 9293 3.10.7.1, closed port).
pub(crate) fn reset_for(segment: &TcpRepr) -> TcpRepr<'static> {
    let (seq_number, ack_number) = match segment.ack_number {
        Some(ack) => (ack, None),
        None => (
            TcpSeqNumber(0),
            Some(segment.seq_number + segment.segment_len()),
        ),
    };
    TcpRepr {
        src_port: segment.dst_port,
        dst_port: segment.src_port,
        control: TcpControl::Rst,
        seq_number,
        ack_number,
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    }
}

#[cfg(test)]
mod tests {
    //! Byte fixtures: the expected bytes (checksums included) were computed independently
    //! of smoltcp.

    use super::*;

    const GW_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const VM_MAC: EthernetAddress = EthernetAddress([0x00, 0x22, 0x15, 0xa1, 0xb2, 0xc3]);
    const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
    const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// UDP 10.0.2.3:53 -> 10.0.2.15:40000 "hello", framed and padded to 60.
    const UDP_FRAME: &str = concat!(
        "002215a1b2c3",
        "525400123456",
        "0800",
        "4500",
        "0021",
        "0000",
        "4000",
        "40",
        "11",
        "22bb", // TTL 64, UDP, header checksum
        "0a000203",
        "0a00020f",
        "0035",
        "9c40",
        "000d",
        "077b",       // 53 -> 40000, length 13, checksum
        "68656c6c6f", // "hello"
        "00000000000000000000000000",
    );

    /// The RST for a SYN 10.0.2.15:41234 -> 10.0.2.3:53 with seq 0x11223344, framed.
    const RST_FOR_SYN_FRAME: &str = concat!(
        "002215a1b2c3",
        "525400123456",
        "0800",
        "4500",
        "0028",
        "0000",
        "4000",
        "40",
        "06",
        "22bf",
        "0a000203",
        "0a00020f",
        "0035",
        "a112",
        "00000000",
        "11223345", // seq 0, ack = SYN + 1
        "50",
        "14",
        "0000",
        "b210",
        "0000", // RST|ACK, window 0
        "000000000000",
    );

    /// The RST for an ACK segment 10.0.2.15:41234 -> 198.18.0.2:80 acking 0xa0b0c0d0.
    const RST_FOR_ACK_PACKET: &str = concat!(
        "4500", "0028", "0000", "4000", "40", "06", "68ad", "c6120002", "0a00020f", "0050", "a112",
        "a0b0c0d0", "00000000", // seq = their ack, no ack
        "50", "04", "0000", "dad9", "0000", // RST only
    );

    /// Echo reply 198.18.0.2 -> 10.0.2.15, id 0x1234, seq 7, "abcdefgh".
    const ECHO_REPLY_PACKET: &str = concat!(
        "4500",
        "0024",
        "0000",
        "4000",
        "40",
        "01",
        "68b6",
        "c6120002",
        "0a00020f",
        "00",
        "00",
        "5c2f",
        "1234",
        "0007",
        "6162636465666768",
    );

    /// Port unreachable from 10.0.2.2 about UDP 10.0.2.15:5000 -> 192.168.1.1:53 "q":
    /// the offending IPv4 header, then the first 8 bytes of its datagram.
    const PORT_UNREACHABLE_PACKET: &str = concat!(
        "4500",
        "0038",
        "0000",
        "4000",
        "40",
        "01",
        "22b5",
        "0a000202",
        "0a00020f",
        "03",
        "03",
        "3bd0",
        "00000000", // destination unreachable, port
        "4500001d0000400040116d180a00020fc0a80101",
        "138800350009ad66", // the datagram's UDP header; "q" is not quoted
    );

    fn tcp(seq: u32, ack: Option<u32>, control: TcpControl) -> TcpRepr<'static> {
        TcpRepr {
            src_port: 41234,
            dst_port: 53,
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: ack.map(|ack| TcpSeqNumber(ack as i32)),
            window_len: 64240,
            window_scale: None,
            max_seg_size: Some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        }
    }

    fn from_vm(dst_addr: Ipv4Addr, next_header: IpProtocol, payload_len: usize) -> Ipv4Repr {
        Ipv4Repr {
            src_addr: VM_IP,
            dst_addr,
            next_header,
            payload_len,
            hop_limit: 64,
        }
    }

    #[test]
    fn udp_datagram_frame() {
        let from = SocketAddrV4::new(DNS_IP, 53);
        let to = SocketAddrV4::new(VM_IP, 40000);
        let packet = OutPacket::udp(from, to, b"hello");
        assert_eq!(packet.len(), 33);
        assert_eq!(packet.frame_bytes(GW_MAC, VM_MAC), hex(UDP_FRAME));
    }

    #[test]
    fn reset_for_a_syn_acks_it() {
        let syn = tcp(0x1122_3344, None, TcpControl::Syn);
        let ip = from_vm(DNS_IP, IpProtocol::Tcp, syn.buffer_len());
        let packet = OutPacket::reset(&ip, &syn);
        assert_eq!(packet.frame_bytes(GW_MAC, VM_MAC), hex(RST_FOR_SYN_FRAME));
    }

    #[test]
    fn reset_for_an_ack_takes_its_sequence_number() {
        let segment = TcpRepr {
            dst_port: 80,
            payload: b"abc",
            ..tcp(7, Some(0xa0b0_c0d0), TcpControl::Psh)
        };
        let reset = reset_for(&segment);
        assert_eq!(
            (reset.seq_number, reset.ack_number),
            (TcpSeqNumber(0xa0b0_c0d0_u32 as i32), None)
        );
        let ip = from_vm(INTERNET, IpProtocol::Tcp, segment.buffer_len());
        let packet = OutPacket::reset(&ip, &segment);
        assert_eq!(packet.packet_bytes(0), hex(RST_FOR_ACK_PACKET));
    }

    #[test]
    fn echo_reply_packet() {
        let reply = Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 7,
            data: b"abcdefgh",
        };
        let packet = OutPacket::icmp(INTERNET, VM_IP, reply);
        assert_eq!(packet.packet_bytes(0), hex(ECHO_REPLY_PACKET));
    }

    #[test]
    fn unreachable_quotes_eight_bytes() {
        let datagram = hex("138800350009ad6671"); // 5000 -> 53, "q"
        let about = from_vm(
            Ipv4Addr::new(192, 168, 1, 1),
            IpProtocol::Udp,
            datagram.len(),
        );
        let packet = OutPacket::unreachable(
            GW_IP,
            &about,
            &datagram,
            Icmpv4DstUnreachable::PortUnreachable,
        );
        assert_eq!(packet.packet_bytes(0), hex(PORT_UNREACHABLE_PACKET));
    }

    #[test]
    fn headroom_packet_frames_like_frame_bytes() {
        let reply = Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 7,
            data: b"abcdefgh",
        };
        let packet = OutPacket::icmp(INTERNET, VM_IP, reply);
        let bare = packet.packet_bytes(HEADROOM);
        assert_eq!(&bare[HEADROOM..], &hex(ECHO_REPLY_PACKET)[..]);
        let framed = frame_packet(bare, GW_MAC, VM_MAC);
        assert_eq!(framed.len(), MIN_FRAME_LEN);
        assert_eq!(framed, packet.frame_bytes(GW_MAC, VM_MAC));
        let mut expected = hex("002215a1b2c35254001234560800");
        expected.extend(hex(ECHO_REPLY_PACKET));
        expected.resize(MIN_FRAME_LEN, 0);
        assert_eq!(framed, expected);
    }

    #[test]
    fn long_frames_are_not_padded() {
        let payload = [0x5a; 100];
        let from = SocketAddrV4::new(INTERNET, 7);
        let to = SocketAddrV4::new(VM_IP, 5000);
        let frame = OutPacket::udp(from, to, &payload).frame_bytes(GW_MAC, VM_MAC);
        assert_eq!(frame.len(), ETHERNET_HEADER_LEN + 20 + 8 + 100);
        assert_eq!(&frame[frame.len() - 100..], &payload[..]);
    }
}
