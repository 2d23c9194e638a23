//! Arbitrary frames into one LAN's gateway, mixed with timeouts and upstream DNS results,
//! draining every output after each step. Invariants: no panic, every emitted frame is a
//! well-formed Ethernet frame from the gateway MAC, and the queue and neighbour bounds hold.
//! NAT is on: some records become IPv4 packets with valid checksums from a LAN address to
//! outside or local addresses, and others answer the NAT's host actions as a driver would.
//! The NAT's buffer gauge matches what it took from its budget, and a NAT that goes gives
//! all of it back.
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcp::{DhcpConfig, DhcpServer};
use dns::hickory_proto::rr::RData;
use dns::hickory_proto::rr::rdata::A;
use dns::{DnsConfig, DnsProxy, Record, UpstreamResult};
use gateway::smoltcp::phy::ChecksumCapabilities;
use gateway::smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket,
    UdpPacket,
};
use gateway::{BufferBudget, ConnectFailure, Gateway, GatewayConfig, NatAction, NatConfig};
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
    let budget = BufferBudget::new(6 * 8192);
    gateway.enable_nat(
        NatConfig {
            tcp_rx_buffer: 8192,
            tcp_tx_buffer: 8192,
            buffer_budget: budget.clone(),
            max_flows: 16,
            ..NatConfig::default()
        },
        now,
    );

    // Each record: [control, length (u16, big-endian), bytes...].
    let mut rest = data;
    while let [control, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        match control % 10 {
            8 => gateway.handle_frame(now, &checksummed_ipv4(*hi, bytes)),
            9 => drive_nat(&mut gateway, now, *hi, bytes),
            0 | 1 => gateway.handle_frame(now, bytes),
            2 => gateway.handle_frame(now, &[&GATEWAY_IPV4[..], bytes].concat()),
            3 => gateway.handle_frame(now, &[&BROADCAST_ARP[..], bytes].concat()),
            4 => gateway.handle_frame(now, &[&BROADCAST_IPV4[..], bytes].concat()),
            5 => {
                now += Duration::from_secs(u64::from(*hi) * 60 + u64::from(*lo));
                gateway.handle_timeout(now);
            }
            6 | 7 => {
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
            _ => unreachable!(),
        }
        let _ = gateway.poll_timeout();
        while gateway.poll_lease_event().is_some() {}
        assert!(gateway.stats().queued_frames <= MAX_QUEUED);
        assert!(gateway.stats().neighbors <= MAX_NEIGHBORS);
        let nat = gateway.nat().expect("NAT is on");
        assert_eq!(nat.stats().buffer_bytes, budget.used());
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
    drop(gateway);
    assert_eq!(budget.used(), 0, "a NAT that goes gives its buffers back");
});

/// An IPv4 packet from 10.0.2.15 in a frame to the gateway, with valid IPv4, TCP and UDP
/// checksums, so the fuzzer reaches the NAT. `selector` picks the destination and
/// protocol; `bytes` is the transport header and payload.
fn checksummed_ipv4(selector: u8, bytes: &[u8]) -> Vec<u8> {
    let src = Ipv4Addr::new(10, 0, 2, 15);
    let dst = match selector % 4 {
        0 => Ipv4Addr::new(198, 18, 0, 2),
        1 => Ipv4Addr::new(10, 0, 2, 2),
        2 => Ipv4Addr::new(10, 0, 2, 3),
        _ => Ipv4Addr::new(127, 0, 0, 1),
    };
    let protocol = match (selector >> 2) % 3 {
        0 => IpProtocol::Tcp,
        1 => IpProtocol::Udp,
        _ => IpProtocol::Icmp,
    };
    let payload = &bytes[..bytes.len().min(1400)];
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut frame = GATEWAY_IPV4.to_vec();
    frame.resize(14 + 20 + payload.len(), 0);
    let mut packet = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    packet.payload_mut().copy_from_slice(payload);
    let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
    match protocol {
        IpProtocol::Tcp if payload.len() >= 20 => {
            TcpPacket::new_unchecked(packet.payload_mut()).fill_checksum(&s, &d);
        }
        IpProtocol::Udp if payload.len() >= 8 => {
            let mut udp = UdpPacket::new_unchecked(packet.payload_mut());
            udp.set_len(payload.len() as u16);
            udp.fill_checksum(&s, &d);
        }
        _ => {}
    }
    frame
}

/// Answers the NAT's next host action the way a driver could, or moves TCP data.
fn drive_nat(gateway: &mut Gateway, now: Instant, choice: u8, bytes: &[u8]) {
    let Some(nat) = gateway.nat_mut() else {
        return;
    };
    if let Some(status) = nat.poll_tcp_status() {
        let _ = nat.tcp_recv(now, status.flow, usize::from(choice) * 64);
        let _ = nat.tcp_send(now, status.flow, bytes);
        if choice & 1 == 1 {
            nat.tcp_host_eof(now, status.flow);
        }
        return;
    }
    match nat.poll_action() {
        Some(NatAction::TcpConnect { flow, .. }) => match choice % 4 {
            0 => {
                nat.handle_tcp_connected(now, flow);
            }
            1 => nat.handle_tcp_connect_failed(now, flow, ConnectFailure::Refused),
            2 => nat.handle_tcp_connect_failed(now, flow, ConnectFailure::TimedOut),
            _ => nat.close_flow(now, flow),
        },
        Some(NatAction::UdpSend { flow, to, .. }) => {
            nat.handle_udp_datagram(now, flow, to, bytes);
        }
        Some(NatAction::PingSend { flow, seq, .. }) => nat.handle_ping_reply(now, flow, seq, bytes),
        Some(NatAction::Close { .. } | NatAction::ForwardReply { .. }) | None => {
            let target = std::net::SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), u16::from(choice));
            if choice & 1 == 0 {
                let _ = nat.open_inbound_tcp(now, target);
            } else {
                let client = std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40000);
                let _ = nat.inbound_udp(now, client, target, bytes);
            }
        }
    }
}
