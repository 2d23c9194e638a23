//! IPv4 fragments through the gateway: VMs' fragments are reassembled before the NAT, large
//! datagrams to VMs leave in fragments, DF packets over the MTU get "fragmentation needed".

use super::*;
use crate::wire::frag::{FragLimits, Reassembler, fragment};

const INTERNET: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7);
const VM: SocketAddrV4 = SocketAddrV4::new(VM_IP, 40000);

fn nat_gateway(now: Instant) -> Gateway {
    let mut gateway = gateway();
    gateway.enable_nat(NatConfig::default(), now);
    gateway
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// A UDP datagram from the VM to the internet, as frames of at most `mtu` IP bytes.
fn vm_udp_fragments(data: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let whole = udp_frame(VM_MAC, GW_MAC, VM, INTERNET, data);
    let mut packet = whole[14..].to_vec();
    let mut ip = Ipv4Packet::new_unchecked(&mut packet[..]);
    ip.set_ident(0x7777);
    fragment(&packet, mtu, 14)
        .into_iter()
        .map(|mut frame| {
            frame[..14].copy_from_slice(&whole[..14]);
            frame.resize(frame.len().max(60), 0);
            frame
        })
        .collect()
}

#[test]
fn vm_fragments_are_reassembled_before_the_nat() {
    let now = Instant::now();
    let mut gateway = nat_gateway(now);
    let data = payload(4000);
    let frames = vm_udp_fragments(&data, 1500);
    assert_eq!(frames.len(), 3);
    // Out of order, as a LAN may deliver them.
    for frame in frames.iter().rev() {
        gateway.handle_frame(now, frame);
    }
    let nat = gateway.nat_mut().unwrap();
    let Some(NatAction::UdpSend { to, payload, .. }) = nat.poll_action() else {
        panic!("no UdpSend");
    };
    assert_eq!((to, payload), (INTERNET, data));
    let stats = gateway.stats();
    assert_eq!((stats.fragments, stats.fragments_reassembled), (3, 1));
    assert_eq!((stats.nat_packets, stats.fragment_bytes), (1, 0));
}

#[test]
fn large_datagrams_to_a_vm_leave_in_fragments() {
    let now = Instant::now();
    let mut gateway = nat_gateway(now);
    gateway.handle_frame(now, &udp_frame(VM_MAC, GW_MAC, VM, INTERNET, b"hi"));
    let nat = gateway.nat_mut().unwrap();
    let Some(NatAction::UdpSend { flow, .. }) = nat.poll_action() else {
        panic!("no UdpSend");
    };
    let data = payload(4000);
    nat.handle_udp_datagram(now, flow, INTERNET, &data);
    nat.handle_udp_datagram(now, flow, INTERNET, &data[..100]);
    let frames = drain(&mut gateway);
    assert_eq!(frames.len(), 4, "three fragments, then the small one");
    let mut vm = Reassembler::new(FragLimits::default());
    let mut idents = Vec::new();
    let mut whole = None;
    for frame in &frames[..3] {
        assert!(frame.len() <= 14 + 1500);
        assert_eq!(&frame[..6], &VM_MAC.0);
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum() && !ip.dont_frag());
        idents.push(ip.ident());
        whole = vm.handle(now, &frame[14..]).or(whole);
    }
    assert!(idents.iter().all(|&i| i == idents[0]));
    let whole = whole.expect("the fragments make a datagram");
    // Framed like the first fragment, the datagram parses with every checksum right.
    let framed = [&frames[0][..14], &whole[..]].concat();
    let (_, ip, udp, got) = parse_udp(&framed);
    assert_eq!(
        (ip.src_addr, udp.src_port, udp.dst_port),
        (*INTERNET.ip(), 7, 40000)
    );
    assert_eq!(got, data);
    assert_eq!(gateway.nat().unwrap().stats().fragmented, 1);
}

#[test]
fn df_packets_over_the_mtu_get_fragmentation_needed() {
    let now = Instant::now();
    let mut gateway = nat_gateway(now);
    // Ethernet frames larger than the LAN MTU arrive when a VM's MTU is larger.
    let frame = udp_frame(VM_MAC, GW_MAC, VM, INTERNET, &payload(2000));
    gateway.handle_frame(now, &frame);
    assert_eq!(gateway.nat_mut().unwrap().poll_action(), None);
    let (eth, ip, data) = parse_ipv4(&one_frame(&mut gateway));
    assert_eq!(eth.dst_addr, VM_MAC);
    assert_eq!(
        (ip.src_addr, ip.dst_addr, ip.next_header),
        (GW_IP, VM_IP, IpProtocol::Icmp)
    );
    // Type 3 code 4, next-hop MTU 1500, then the offending header and 8 bytes.
    assert_eq!(&data[..2], &[3, 4]);
    assert_eq!(&data[4..8], &[0, 0, 0x05, 0xdc]);
    assert_eq!(
        &data[8 + 12..8 + 20],
        &frame[14 + 12..14 + 20],
        "quoted addresses"
    );
    assert_eq!(&data[28..36], &frame[34..42], "quoted UDP header");
    let icmp = Icmpv4Packet::new_checked(&data[..]).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(gateway.stats().frag_needed, 1);
    // Without DF the same datagram goes through.
    let mut no_df = frame.clone();
    let mut packet = Ipv4Packet::new_unchecked(&mut no_df[14..]);
    packet.set_dont_frag(false);
    packet.fill_checksum();
    gateway.handle_frame(now, &no_df);
    assert!(matches!(
        gateway.nat_mut().unwrap().poll_action(),
        Some(NatAction::UdpSend { .. })
    ));
}

#[test]
fn a_fragment_flood_is_bounded_and_times_out() {
    let now = Instant::now();
    let mut gateway = nat_gateway(now);
    let data = payload(4000);
    for ident in 0..1000u16 {
        let mut first = vm_udp_fragments(&data, 1500).swap_remove(0);
        let mut packet = Ipv4Packet::new_unchecked(&mut first[14..]);
        packet.set_ident(ident);
        packet.fill_checksum();
        gateway.handle_frame(now, &first);
        assert!(gateway.stats().fragment_bytes <= FragLimits::default().max_bytes_per_source);
    }
    assert!(gateway.stats().fragment_drops.get(FragDrop::TooMany) >= 1000 - 64);
    let at = gateway.poll_timeout().expect("a reassembly timer");
    assert!(at <= now + FragLimits::default().timeout);
    gateway.handle_timeout(now + FragLimits::default().timeout);
    assert_eq!(gateway.stats().fragment_bytes, 0);
    assert_eq!(gateway.stats().fragment_drops.get(FragDrop::Timeout), 64);
}
