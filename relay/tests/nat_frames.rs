//! The egress policy seen from a VM that sends what a Linux guest cannot: a SYN to
//! 127.0.0.1 (Linux never routes loopback out of an interface). A WebSocket client plays
//! the VM with crafted frames; no root needed.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 99);
const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

fn syn_to(dst: Ipv4Addr, port: u16) -> Bytes {
    let caps = ChecksumCapabilities::default();
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 64240,
        window_scale: Some(7),
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: VM_IP,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut buffer = vec![0; (14 + 20 + tcp.buffer_len()).max(60)];
    let mut frame = EthernetFrame::new_unchecked(&mut buffer[..]);
    EthernetRepr {
        src_addr: EthernetAddress(mac(9)),
        dst_addr: GATEWAY_MAC,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(VM_IP),
        &IpAddress::Ipv4(dst),
        &caps,
    );
    Bytes::from(buffer)
}

/// The TCP control flags of the next TCP segment for the VM.
async fn next_tcp_control(ws: &mut Ws) -> Option<(TcpControl, bool)> {
    while let Some(frame) = recv(ws, Duration::from_secs(3)).await {
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            continue;
        };
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            continue;
        };
        if ip.next_header() != IpProtocol::Tcp {
            continue;
        }
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        let control = if tcp.rst() {
            TcpControl::Rst
        } else if tcp.syn() {
            TcpControl::Syn
        } else {
            TcpControl::None
        };
        return Some((control, tcp.ack()));
    }
    None
}

#[tokio::test]
async fn loopback_is_refused_unless_an_allow_rule_names_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();

    let relay = start(test_config()).await;
    let mut vm = connect(&relay, "/lan/lo").await;
    send(&mut vm, syn_to(Ipv4Addr::LOCALHOST, port)).await;
    assert_eq!(
        next_tcp_control(&mut vm).await,
        Some((TcpControl::Rst, true))
    );
    assert!(listener.accept().is_err(), "the host listener was reached");
    let text = scrape(&relay).await;
    assert_eq!(
        metric(&text, "v86_relay_nat_denied_total{reason=\"loopback\"}"),
        1
    );
    relay.shutdown().await;

    let mut config = test_config();
    config.nat.allow = vec![format!("127.0.0.1/32:{port}")];
    let relay = start(config).await;
    let mut vm = connect(&relay, "/lan/lo").await;
    send(&mut vm, syn_to(Ipv4Addr::LOCALHOST, port)).await;
    // The SYN-ACK comes once the relay's own connect to 127.0.0.1 succeeded.
    assert_eq!(
        next_tcp_control(&mut vm).await,
        Some((TcpControl::Syn, true))
    );
    assert!(
        listener.accept().is_ok(),
        "allowed, but the host listener saw nothing"
    );
    relay.shutdown().await;
}
