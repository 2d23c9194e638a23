//! Frames through the NAT: TCP connects, policy denials, UDP flows and pings.

use super::*;
use crate::QUIET_AFTER;

const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn nat_gateway(now: Instant) -> Gateway {
    let mut gateway = gateway();
    gateway.enable_nat(NatConfig::default(), now);
    gateway
}

/// A TCP segment from the VM, built with smoltcp (checksums filled).
fn tcp_frame(to: SocketAddrV4, control: TcpControl, seq: u32, ack: Option<u32>) -> Vec<u8> {
    tcp_data_frame(to, control, seq, ack, &[])
}

fn tcp_data_frame(
    to: SocketAddrV4,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
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
        payload,
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
    // The paused SYN-ACK is no timer: the driver's loop must not spin while it connects.
    assert!(
        nat.poll_timeout()
            .is_some_and(|at| at > now + Duration::from_secs(1))
    );
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
fn nat_internet_off_resets_at_once_and_on_again_connects() {
    let now = Instant::now();
    let mut gateway = nat_gateway(now);
    let to = SocketAddrV4::new(INTERNET, 80);
    gateway.nat_mut().unwrap().set_internet(false);
    gateway.handle_frame(now, &tcp_frame(to, TcpControl::Syn, 1, None));
    let (_, rst) = parse_tcp(&one_frame(&mut gateway));
    assert_eq!(rst.control, TcpControl::Rst);
    let nat = gateway.nat_mut().unwrap();
    assert_eq!(nat.poll_action(), None, "no host socket is opened");
    assert_eq!(nat.stats().denied.get(DenyReason::InternetOff), 1);
    assert!(!nat.internet());
    nat.set_internet(true);
    gateway.handle_frame(now, &tcp_frame(to, TcpControl::Syn, 1, None));
    let action = gateway.nat_mut().unwrap().poll_action();
    assert!(
        matches!(action, Some(NatAction::TcpConnect { .. })),
        "{action:?}"
    );
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

/// Each flow ends at its own deadline: a timer per flow, not a periodic scan. A flow that
/// stays active re-arms when its old deadline fires.
#[test]
fn nat_flows_time_out_at_their_own_deadlines() {
    let t0 = Instant::now();
    let idle = NatConfig::default().udp_idle_timeout;
    let mut gateway = nat_gateway(t0);
    let send = |gateway: &mut Gateway, at: Instant, port: u16| {
        let from = SocketAddrV4::new(VM_IP, port);
        let to = SocketAddrV4::new(INTERNET, 7);
        gateway.handle_frame(at, &udp_frame(VM_MAC, GW_MAC, from, to, b"x"));
        match gateway.nat_mut().unwrap().poll_action() {
            Some(NatAction::UdpSend { flow, .. }) => flow,
            other => panic!("expected a UDP send, got {other:?}"),
        }
    };
    let a = send(&mut gateway, t0, 5000);
    let b = send(&mut gateway, t0 + Duration::from_secs(30), 5001);
    assert_eq!(gateway.nat_mut().unwrap().poll_timeout(), Some(t0 + idle));
    // `a` is used again: its first deadline finds it active and re-arms.
    send(&mut gateway, t0 + Duration::from_secs(60), 5000);
    gateway.handle_timeout(t0 + idle);
    let nat = gateway.nat_mut().unwrap();
    assert_eq!(nat.poll_action(), None);
    assert_eq!(
        nat.poll_timeout(),
        Some(t0 + Duration::from_secs(30) + idle)
    );
    gateway.handle_timeout(t0 + Duration::from_secs(30) + idle);
    let nat = gateway.nat_mut().unwrap();
    assert_eq!(nat.poll_action(), Some(NatAction::Close { flow: b }));
    assert_eq!(
        nat.poll_timeout(),
        Some(t0 + Duration::from_secs(60) + idle)
    );
    gateway.handle_timeout(t0 + Duration::from_secs(60) + idle);
    let nat = gateway.nat_mut().unwrap();
    assert_eq!(nat.poll_action(), Some(NatAction::Close { flow: a }));
    assert_eq!(nat.stats().flows_active, [0, 0, 0]);
}

/// Opens a TCP flow from VM port 41234 to `to` and establishes it; returns its id.
fn open_tcp(gateway: &mut Gateway, now: Instant, to: SocketAddrV4) -> FlowId {
    gateway.handle_frame(now, &tcp_frame(to, TcpControl::Syn, 1000, None));
    let nat = gateway.nat_mut().unwrap();
    let action = nat.poll_action();
    let Some(NatAction::TcpConnect { flow, .. }) = action else {
        panic!(
            "expected a connect to {to}, got {action:?}: {:?}",
            nat.stats()
        );
    };
    assert!(nat.handle_tcp_connected(now, flow));
    // The VM's ACK of the SYN-ACK: established.
    let (_, syn_ack) = parse_tcp(&one_frame(gateway));
    let ack = (syn_ack.seq_number + 1).0 as u32;
    gateway.handle_frame(now, &tcp_frame(to, TcpControl::None, 1001, Some(ack)));
    drain(gateway);
    flow
}

/// A flow that moved bytes and then none for `QUIET_AFTER`, with nothing in its buffers,
/// has both buffers' pages released and its charge back at two pages; one holding a
/// segment that came out of order (past the receive queue, where only the acknowledgement
/// shows it) keeps them until the hole is filled and the bytes are taken.
#[test]
fn nat_quiet_flows_give_their_buffer_pages_back() {
    use std::sync::{Arc, Mutex};
    let t0 = Instant::now();
    let released = Arc::new(Mutex::new(Vec::new()));
    let record = released.clone();
    let budget = BufferBudget::default().with_release(Arc::new(move |addr, len| {
        record.lock().unwrap().push((addr, len));
    }));
    let mut gateway = gateway();
    let config = NatConfig {
        buffer_budget: budget.clone(),
        ..NatConfig::default()
    };
    gateway.enable_nat(config, t0);
    let to = SocketAddrV4::new(INTERNET, 80);
    let flow = open_tcp(&mut gateway, t0, to);
    let nat = gateway.nat_mut().unwrap();
    // Host bytes for the VM, each segment acknowledged by the VM as it comes.
    assert_eq!(nat.tcp_send(t0, flow, &[7; 10_000]), 10_000);
    let mut their_end = 0;
    let mut taken = 0;
    while taken < 10_000 {
        let sent = drain(&mut gateway);
        assert!(!sent.is_empty(), "smoltcp stopped after {taken} bytes");
        for frame in sent {
            let (_, _, segment) = parse_ipv4(&frame);
            let packet = TcpPacket::new_checked(&segment[..]).unwrap();
            taken += packet.payload().len();
            their_end = (packet.seq_number() + packet.payload().len()).0 as u32;
        }
        gateway.handle_frame(t0, &tcp_frame(to, TcpControl::None, 1001, Some(their_end)));
    }
    // The VM's bytes, in order and then one segment past a hole.
    let t1 = t0 + Duration::from_millis(10);
    gateway.handle_frame(
        t1,
        &tcp_data_frame(to, TcpControl::Psh, 1001, Some(their_end), &[1; 100]),
    );
    gateway.handle_frame(
        t1,
        &tcp_data_frame(to, TcpControl::Psh, 1201, Some(their_end), &[3; 100]),
    );
    let nat = gateway.nat_mut().unwrap();
    assert_eq!(nat.tcp_recv(t1, flow, 1 << 20), vec![1; 100]);
    assert!(nat.stats().buffer_bytes > 2 * 4096);
    // Quiet, but the out-of-order bytes wait in the receive buffer: nothing released.
    let mut now = t1;
    for _ in 0..3 {
        now += QUIET_AFTER;
        gateway.handle_timeout(now);
        drain(&mut gateway);
    }
    assert!(
        released.lock().unwrap().is_empty(),
        "a buffer holding out-of-order bytes was released"
    );
    // The hole is filled and everything taken: after a quiet second the pages go back.
    gateway.handle_frame(
        now,
        &tcp_data_frame(to, TcpControl::Psh, 1101, Some(their_end), &[2; 100]),
    );
    let nat = gateway.nat_mut().unwrap();
    let mut expected = vec![2; 100];
    expected.extend([3; 100]);
    assert_eq!(nat.tcp_recv(now, flow, 1 << 20), expected);
    drain(&mut gateway);
    let quiet_at = gateway.nat_mut().unwrap().poll_timeout().unwrap();
    assert!(
        quiet_at <= now + QUIET_AFTER,
        "the check is armed: {quiet_at:?}"
    );
    gateway.handle_timeout(now + QUIET_AFTER);
    let released = released.lock().unwrap().clone();
    assert_eq!(released.len(), 2, "both buffers: {released:?}");
    assert!(released.iter().all(|&(_, len)| len == 256 * 1024));
    let nat = gateway.nat_mut().unwrap();
    assert_eq!(nat.stats().buffer_bytes, 2 * 4096);
    assert_eq!(nat.stats().buffer_releases, 1);
    assert_eq!(budget.used(), 2 * 4096);
    // The flow still works, into the released pages.
    assert_eq!(nat.tcp_send(now + QUIET_AFTER, flow, b"again"), 5);
    let (_, again) = parse_tcp(&one_frame(&mut gateway));
    assert_eq!(again.seq_number.0 as u32, their_end);
}

/// Flows are charged for the buffer pages their bytes can have touched, not for the
/// buffers' size; once the charges near the relay-wide limit, new flows get smaller
/// buffers (windows). Every charge comes back when flows and LANs go.
#[test]
fn nat_buffers_are_charged_by_the_bytes_through_them() {
    let now = Instant::now();
    let full = 256 * 1024;
    let budget = BufferBudget::new(4 * 2 * full);
    let config = NatConfig {
        buffer_budget: budget.clone(),
        ..NatConfig::default()
    };
    let mut gateway = gateway();
    gateway.enable_nat(config.clone(), now);
    let mut other_lan = self::gateway();
    other_lan.enable_nat(config, now);
    // Ten idle flows: a page each way each, full-size windows all the same.
    let flows: Vec<FlowId> = (0..10)
        .map(|i| open_tcp(&mut gateway, now, SocketAddrV4::new(INTERNET, 80 + i)))
        .collect();
    let nat = gateway.nat_mut().unwrap();
    assert_eq!(nat.stats().buffer_bytes, 10 * 2 * 4096);
    assert_eq!(nat.tcp_status(flows[9]).unwrap().send_space, full);
    // Bytes for the VM: the charge follows them, up to the buffer's size.
    assert_eq!(nat.tcp_send(now, flows[0], &[7; 10_000]), 10_000);
    assert_eq!(nat.stats().buffer_bytes, 9 * 2 * 4096 + 4096 + 12_288);
    // Memory near the limit (other LANs' flows): the next flow's window is smaller.
    budget.charge(7 * full);
    let small = open_tcp(&mut other_lan, now, SocketAddrV4::new(INTERNET, 80));
    let nat = other_lan.nat_mut().unwrap();
    assert!(nat.tcp_status(small).unwrap().send_space <= 64 * 1024);
    nat.tcp_abort(now, small);
    assert_eq!(nat.stats().buffer_bytes, 0);
    budget.give(7 * full);
    drop(gateway);
    drop(other_lan);
    assert_eq!(budget.used(), 0, "a LAN that goes gives its charges back");
}

/// An idle connection whose VM answers every keep-alive lives on, however long it idles.
/// The VM sends last (the NAT's ACK follows): smoltcp counts its timeout from the VM's last
/// packet and its keep-alive from its own, so a probe as far apart as the timeout came
/// after it and every such connection was reset a minute into its silence.
#[test]
fn nat_idle_connections_whose_vm_answers_keep_alives_live_on() {
    let t0 = Instant::now();
    let mut gateway = nat_gateway(t0);
    let to = SocketAddrV4::new(INTERNET, 80);
    let flow = open_tcp(&mut gateway, t0, to);
    // The VM's request, taken by the driver; the NAT's delayed ACK goes out after it.
    let ack = {
        let nat = gateway.nat_mut().unwrap();
        assert_eq!(nat.tcp_send(t0, flow, b"hello"), 5);
        let (_, hello) = parse_tcp(&one_frame(&mut gateway));
        (hello.seq_number + 5).0 as u32
    };
    gateway.handle_frame(
        t0,
        &tcp_data_frame(to, TcpControl::Psh, 1001, Some(ack), b"GET"),
    );
    assert_eq!(gateway.nat_mut().unwrap().tcp_recv(t0, flow, 100), b"GET");
    let vm_timeout = NatConfig::default().tcp_vm_timeout;
    let mut now = t0;
    while now < t0 + 5 * vm_timeout {
        now = gateway.poll_timeout().unwrap().max(now);
        gateway.handle_timeout(now);
        for frame in drain(&mut gateway) {
            let (_, segment) = parse_tcp(&frame);
            assert_ne!(
                segment.control,
                TcpControl::Rst,
                "reset after {:?} of silence",
                now - t0
            );
            // The VM answers each probe at once, as a live one does.
            gateway.handle_frame(now, &tcp_frame(to, TcpControl::None, 1004, Some(ack)));
        }
    }
    let nat = gateway.nat_mut().unwrap();
    assert!(nat.tcp_status(flow).is_some(), "the flow is gone");
}
