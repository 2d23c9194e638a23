//! Conversation tests: real DHCP bytes in, decoded replies and events checked.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable, Encoder};
use smoltcp::wire::EthernetAddress;

use crate::*;

/// A DHCPDISCOVER as busybox udhcpc 1.36 sends it (`udhcpc -x hostname:Debian`), from
/// 52:54:00:12:34:56, xid 0x3903f326, padded to 300 bytes.
fn udhcpc_discover() -> Vec<u8> {
    let header: [u8; 44] = [
        0x01, 0x01, 0x06, 0x00, // op BOOTREQUEST, htype Ethernet, hlen 6, hops 0
        0x39, 0x03, 0xf3, 0x26, // xid
        0x00, 0x00, 0x00, 0x00, // secs, flags (no broadcast)
        0x00, 0x00, 0x00, 0x00, // ciaddr
        0x00, 0x00, 0x00, 0x00, // yiaddr
        0x00, 0x00, 0x00, 0x00, // siaddr
        0x00, 0x00, 0x00, 0x00, // giaddr
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x00, 0x00, // chaddr
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let options: [u8; 64] = [
        0x63, 0x82, 0x53, 0x63, // magic cookie
        0x35, 0x01, 0x01, // 53 message type: DISCOVER
        0x3d, 0x07, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // 61 client id: 1 + MAC
        0x39, 0x02, 0x02, 0x40, // 57 max message size 576
        0x37, 0x07, 0x01, 0x03, 0x06, 0x0c, 0x0f, 0x1c, 0x2a, // 55 parameter request list
        0x3c, 0x0c, b'u', b'd', b'h', b'c', b'p', b' ', b'1', b'.', b'3', b'6', b'.',
        b'1', // 60 vendor class
        0x0c, 0x06, b'D', b'e', b'b', b'i', b'a', b'n', // 12 host name
        0xff, // end
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // pad
    ];
    let mut packet = header.to_vec();
    packet.extend_from_slice(&[0u8; 64 + 128]); // sname, file
    packet.extend_from_slice(&options);
    assert_eq!(packet.len(), 300);
    packet
}

const UDHCPC_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

fn mac(n: u8) -> EthernetAddress {
    EthernetAddress([0x52, 0x54, 0x00, 0xab, 0xcd, n])
}

fn lan(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, last)
}

fn server() -> DhcpServer {
    DhcpServer::new(DhcpConfig::default()).unwrap()
}

/// A client message built with dhcproto; `edit` adds options and addresses.
fn message(kind: MessageType, chaddr: EthernetAddress, edit: impl FnOnce(&mut Message)) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        0x1234_5678,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &chaddr.0,
    );
    msg.set_opcode(Opcode::BootRequest).set_htype(HType::Eth);
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    edit(&mut msg);
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

fn with_opt(opt: DhcpOption) -> impl FnOnce(&mut Message) {
    move |m| {
        m.opts_mut().insert(opt);
    }
}

fn decode(reply: &Reply) -> Message {
    Message::from_bytes(&reply.payload).unwrap()
}

fn send(
    server: &mut DhcpServer,
    now: Instant,
    chaddr: EthernetAddress,
    packet: &[u8],
) -> Option<Reply> {
    server.handle_message(now, chaddr, packet).unwrap()
}

fn discover(server: &mut DhcpServer, now: Instant, chaddr: EthernetAddress) -> Option<Ipv4Addr> {
    let packet = message(MessageType::Discover, chaddr, |_| {});
    send(server, now, chaddr, &packet).map(|reply| decode(&reply).yiaddr())
}

fn request_selecting(
    server: &mut DhcpServer,
    now: Instant,
    chaddr: EthernetAddress,
    ip: Ipv4Addr,
) -> Reply {
    let packet = message(MessageType::Request, chaddr, |m| {
        m.opts_mut().insert(DhcpOption::ServerIdentifier(lan(2)));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    });
    send(server, now, chaddr, &packet).unwrap()
}

/// DISCOVER + REQUEST; returns the bound address.
fn acquire(server: &mut DhcpServer, now: Instant, chaddr: EthernetAddress) -> Ipv4Addr {
    let offered = discover(server, now, chaddr).unwrap();
    let ack = request_selecting(server, now, chaddr, offered);
    assert_eq!(ack.kind, ReplyKind::Ack);
    offered
}

fn events(server: &mut DhcpServer) -> Vec<LeaseEvent> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

#[test]
fn udhcpc_discover_gets_offer_with_every_option() {
    let mut server = server();
    let now = Instant::now();
    let reply = send(&mut server, now, UDHCPC_MAC, &udhcpc_discover()).unwrap();
    assert_eq!(reply.kind, ReplyKind::Offer);
    assert_eq!(
        reply.to,
        ReplyTarget::Unicast {
            mac: UDHCPC_MAC,
            ip: lan(15)
        }
    );
    assert!(reply.payload.len() >= 300);
    let offer = decode(&reply);
    assert_eq!(offer.opcode(), Opcode::BootReply);
    assert_eq!(offer.xid(), 0x3903_f326);
    assert_eq!(offer.yiaddr(), lan(15));
    assert_eq!(offer.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.chaddr(), &UDHCPC_MAC.0);
    let opts = offer.opts();
    let expect = [
        DhcpOption::MessageType(MessageType::Offer),
        DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
        DhcpOption::Router(vec![lan(2)]),
        DhcpOption::DomainNameServer(vec![lan(3)]),
        DhcpOption::Hostname("debian".into()),
        DhcpOption::DomainName("default.lan".into()),
        DhcpOption::InterfaceMtu(1500),
        DhcpOption::BroadcastAddr(lan(255)),
        DhcpOption::AddressLeaseTime(3600),
        DhcpOption::ServerIdentifier(lan(2)),
        DhcpOption::Renewal(1800),
        DhcpOption::Rebinding(3150),
        DhcpOption::ClientIdentifier(vec![0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
    ];
    for option in expect {
        assert_eq!(opts.get(OptionCode::from(&option)), Some(&option));
    }
    // An offer is not a lease yet.
    assert_eq!(server.leases().count(), 0);
    assert_eq!(server.stats().received_discover, 1);
    assert_eq!(server.stats().sent_offer, 1);
}

#[test]
fn offer_honours_broadcast_flag() {
    let mut server = server();
    let packet = message(MessageType::Discover, mac(1), |m| {
        m.set_flags(Flags::default().set_broadcast());
    });
    let reply = send(&mut server, Instant::now(), mac(1), &packet).unwrap();
    assert_eq!(reply.to, ReplyTarget::Broadcast);
    assert!(decode(&reply).flags().broadcast());
}

#[test]
fn selecting_request_gets_ack_and_binds() {
    let mut server = server();
    let now = Instant::now();
    let offered = discover(&mut server, now, mac(1)).unwrap();
    let packet = message(MessageType::Request, mac(1), |m| {
        m.opts_mut().insert(DhcpOption::ServerIdentifier(lan(2)));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(offered));
        m.opts_mut()
            .insert(DhcpOption::Hostname("Web_Server.example".into()));
    });
    let reply = send(&mut server, now, mac(1), &packet).unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    assert_eq!(
        reply.to,
        ReplyTarget::Unicast {
            mac: mac(1),
            ip: offered
        }
    );
    let ack = decode(&reply);
    assert_eq!(ack.yiaddr(), offered);
    assert_eq!(
        ack.opts().get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(
        ack.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("web-server".into()))
    );

    let lease = server.lease_by_ip(offered).unwrap();
    assert_eq!(lease.mac, mac(1));
    assert_eq!(lease.host_name.as_deref(), Some("web-server"));
    assert_eq!(lease.expires, now + Duration::from_secs(3600));
    assert!(!lease.is_static);
    assert_eq!(server.lease_by_mac(mac(1)).unwrap().ip, offered);
    assert_eq!(server.lease_by_host_name("WEB-SERVER").unwrap().ip, offered);
    assert_eq!(server.stats().active_leases, 1);
    assert_eq!(
        events(&mut server),
        vec![LeaseEvent::Bound {
            mac: mac(1),
            ip: offered,
            host_name: Some("web-server".into())
        }]
    );
}

#[test]
fn invalid_host_name_is_dropped() {
    let mut server = server();
    let now = Instant::now();
    let packet = message(MessageType::Request, mac(1), |m| {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(lan(40)));
        m.opts_mut()
            .insert(DhcpOption::Hostname("bad name!".into()));
    });
    let reply = send(&mut server, now, mac(1), &packet).unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    assert_eq!(decode(&reply).opts().get(OptionCode::Hostname), None);
    assert_eq!(server.lease_by_ip(lan(40)).unwrap().host_name, None);
}

#[test]
fn init_reboot_acks_own_and_unknown_free_addresses() {
    let mut server = server();
    let now = Instant::now();
    let ip = acquire(&mut server, now, mac(1));
    // INIT-REBOOT: no server id, ciaddr 0, option 50.
    let reboot = |who, addr| {
        message(
            MessageType::Request,
            who,
            with_opt(DhcpOption::RequestedIpAddress(addr)),
        )
    };
    let reply = send(&mut server, now, mac(1), &reboot(mac(1), ip)).unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    assert_eq!(decode(&reply).yiaddr(), ip);

    // A client the server has never heard of (relay restarted without state) keeps its
    // free in-pool address.
    let reply = send(&mut server, now, mac(2), &reboot(mac(2), lan(77))).unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    assert_eq!(server.lease_by_ip(lan(77)).unwrap().mac, mac(2));
}

#[test]
fn init_reboot_naks_foreign_taken_and_reserved_addresses() {
    let mut server = server();
    let now = Instant::now();
    let taken = acquire(&mut server, now, mac(1));
    for bad in [
        Ipv4Addr::new(192, 168, 1, 50), // other subnet
        taken,                          // someone else's lease
        lan(2),                         // router
        lan(3),                         // DNS
        lan(10),                        // in the subnet but outside the pool
        lan(255),                       // broadcast
    ] {
        let packet = message(
            MessageType::Request,
            mac(2),
            with_opt(DhcpOption::RequestedIpAddress(bad)),
        );
        let reply = send(&mut server, now, mac(2), &packet).unwrap();
        assert_eq!(reply.kind, ReplyKind::Nak, "{bad}");
        assert_eq!(reply.to, ReplyTarget::Broadcast);
        let nak = decode(&reply);
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(nak.opts().get(OptionCode::AddressLeaseTime), None);
        assert!(nak.opts().get(OptionCode::Message).is_some());
    }
    assert_eq!(server.stats().sent_nak, 6);
    assert_eq!(server.lease_by_ip(taken).unwrap().mac, mac(1));
}

#[test]
fn renewing_is_unicast_to_ciaddr_and_extends_the_lease() {
    let mut server = server();
    let start = Instant::now();
    let ip = acquire(&mut server, start, mac(1));
    events(&mut server);
    let later = start + Duration::from_secs(1800);
    let packet = message(MessageType::Request, mac(1), |m| {
        m.set_ciaddr(ip);
    });
    let reply = send(&mut server, later, mac(1), &packet).unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    assert_eq!(reply.to, ReplyTarget::Unicast { mac: mac(1), ip });
    let ack = decode(&reply);
    assert_eq!(ack.ciaddr(), ip);
    assert_eq!(ack.yiaddr(), ip);
    assert_eq!(
        server.lease_by_ip(ip).unwrap().expires,
        later + Duration::from_secs(3600)
    );
    assert_eq!(
        server.poll_timeout(),
        Some(later + Duration::from_secs(3600))
    );
    // A plain renewal does not disturb DNS.
    assert_eq!(events(&mut server), vec![]);
}

#[test]
fn rebinding_with_broadcast_flag_still_answers_ciaddr() {
    let mut server = server();
    let now = Instant::now();
    let ip = acquire(&mut server, now, mac(1));
    let packet = message(MessageType::Request, mac(1), |m| {
        m.set_ciaddr(ip).set_flags(Flags::default().set_broadcast());
    });
    let reply = send(
        &mut server,
        now + Duration::from_secs(3200),
        mac(1),
        &packet,
    )
    .unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    assert_eq!(reply.to, ReplyTarget::Unicast { mac: mac(1), ip });

    // Rebinding an address that belongs to someone else is refused.
    let other = acquire(&mut server, now, mac(2));
    let packet = message(MessageType::Request, mac(1), |m| {
        m.set_ciaddr(other);
    });
    let reply = send(&mut server, now, mac(1), &packet).unwrap();
    assert_eq!(reply.kind, ReplyKind::Nak);
}

#[test]
fn release_then_rediscover_gets_the_same_address() {
    let mut server = server();
    let now = Instant::now();
    let first = acquire(&mut server, now, mac(1));
    let release = message(MessageType::Release, mac(1), |m| {
        m.set_ciaddr(first);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(lan(2)));
    });
    assert!(send(&mut server, now, mac(1), &release).is_none());
    assert!(server.lease_by_ip(first).is_none());
    assert_eq!(server.stats().active_leases, 0);
    assert!(matches!(
        events(&mut server).last(),
        Some(LeaseEvent::Released { ip, .. }) if *ip == first
    ));
    // A newcomer does not get the released address while others are free...
    let second = acquire(&mut server, now, mac(2));
    assert_ne!(second, first);
    // ...so the first client gets it back.
    assert_eq!(discover(&mut server, now, mac(1)), Some(first));
}

#[test]
fn release_mac_frees_the_address_for_the_next_client() {
    let mut server = DhcpServer::new(DhcpConfig {
        pool_start: lan(15),
        pool_end: lan(16),
        ..DhcpConfig::default()
    })
    .unwrap();
    let now = Instant::now();
    let first = acquire(&mut server, now, mac(1));
    let _second = acquire(&mut server, now, mac(2));
    assert_eq!(discover(&mut server, now, mac(3)), None, "the pool is full");
    events(&mut server);
    assert_eq!(server.release_mac(mac(1)), vec![first]);
    assert!(server.lease_by_mac(mac(1)).is_none());
    assert!(matches!(
        events(&mut server).last(),
        Some(LeaseEvent::Released { ip, .. }) if *ip == first
    ));
    assert_eq!(acquire(&mut server, now, mac(3)), first);
    assert!(server.release_mac(mac(9)).is_empty());
}

#[test]
fn release_from_another_client_is_ignored() {
    let mut server = server();
    let now = Instant::now();
    let ip = acquire(&mut server, now, mac(1));
    let release = message(MessageType::Release, mac(2), |m| {
        m.set_ciaddr(ip);
    });
    assert!(send(&mut server, now, mac(2), &release).is_none());
    assert!(server.lease_by_ip(ip).is_some());
}

#[test]
fn decline_quarantines_the_address() {
    let mut server = server();
    let now = Instant::now();
    let ip = acquire(&mut server, now, mac(1));
    events(&mut server);
    let decline = message(MessageType::Decline, mac(1), |m| {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(lan(2)));
    });
    assert!(send(&mut server, now, mac(1), &decline).is_none());
    assert_eq!(
        events(&mut server),
        vec![LeaseEvent::Declined { mac: mac(1), ip }]
    );
    assert!(server.lease_by_ip(ip).is_none());
    assert_eq!(server.stats().received_decline, 1);

    // Nobody gets it during the quarantine, not even by asking for it.
    let retry = discover(&mut server, now, mac(1)).unwrap();
    assert_ne!(retry, ip);
    let ask = message(
        MessageType::Request,
        mac(3),
        with_opt(DhcpOption::RequestedIpAddress(ip)),
    );
    assert_eq!(
        send(&mut server, now, mac(3), &ask).unwrap().kind,
        ReplyKind::Nak
    );

    let after = now + Duration::from_secs(601);
    server.handle_timeout(after);
    let ask = message(
        MessageType::Request,
        mac(3),
        with_opt(DhcpOption::RequestedIpAddress(ip)),
    );
    assert_eq!(
        send(&mut server, after, mac(3), &ask).unwrap().kind,
        ReplyKind::Ack
    );
}

#[test]
fn inform_gets_ack_without_lease() {
    let mut server = server();
    let now = Instant::now();
    let packet = message(MessageType::Inform, mac(1), |m| {
        m.set_ciaddr(lan(50));
    });
    let reply = send(&mut server, now, mac(1), &packet).unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    assert_eq!(
        reply.to,
        ReplyTarget::Unicast {
            mac: mac(1),
            ip: lan(50)
        }
    );
    let ack = decode(&reply);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.ciaddr(), lan(50));
    assert_eq!(ack.opts().get(OptionCode::AddressLeaseTime), None);
    assert_eq!(ack.opts().get(OptionCode::Renewal), None);
    assert_eq!(
        ack.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![lan(2)]))
    );
    assert_eq!(server.leases().count(), 0);
    assert_eq!(server.stats().received_inform, 1);
}

#[test]
fn pool_exhaustion_sends_nothing_and_reports() {
    let config = DhcpConfig {
        pool_start: lan(100),
        pool_end: lan(101),
        ..DhcpConfig::default()
    };
    let mut server = DhcpServer::new(config).unwrap();
    let now = Instant::now();
    assert_eq!(discover(&mut server, now, mac(1)), Some(lan(100)));
    assert_eq!(discover(&mut server, now, mac(2)), Some(lan(101)));
    assert_eq!(discover(&mut server, now, mac(3)), None);
    assert_eq!(server.stats().pool_exhausted, 1);
    assert_eq!(
        events(&mut server),
        vec![LeaseEvent::PoolExhausted { mac: mac(3) }]
    );
    // Unrequested offers time out and free the pool.
    assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(60)));
    let later = now + Duration::from_secs(61);
    server.handle_timeout(later);
    assert_eq!(server.poll_timeout(), None);
    assert_eq!(discover(&mut server, later, mac(3)), Some(lan(100)));
}

#[test]
fn static_lease_is_reserved_for_its_mac() {
    let config = DhcpConfig {
        static_leases: vec![StaticLease {
            mac: mac(9),
            ip: lan(9),
            host_name: Some("db".into()),
        }],
        ..DhcpConfig::default()
    };
    let mut server = DhcpServer::new(config).unwrap();
    let now = Instant::now();
    let packet = message(
        MessageType::Discover,
        mac(9),
        with_opt(DhcpOption::Hostname("other".into())),
    );
    let offer = decode(&send(&mut server, now, mac(9), &packet).unwrap());
    assert_eq!(offer.yiaddr(), lan(9));
    assert_eq!(
        offer.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("db".into()))
    );
    assert_eq!(
        request_selecting(&mut server, now, mac(9), lan(9)).kind,
        ReplyKind::Ack
    );
    let lease = server.lease_by_host_name("db").unwrap();
    assert!(lease.is_static);
    assert_eq!(lease.ip, lan(9));

    // Nobody else may have it; the static client may not have anything else.
    assert_eq!(
        request_selecting(&mut server, now, mac(1), lan(9)).kind,
        ReplyKind::Nak
    );
    assert_eq!(
        request_selecting(&mut server, now, mac(9), lan(20)).kind,
        ReplyKind::Nak
    );
    // Dynamic allocation skips static addresses inside the pool too.
    let config = DhcpConfig {
        static_leases: vec![StaticLease {
            mac: mac(9),
            ip: lan(15),
            host_name: None,
        }],
        ..DhcpConfig::default()
    };
    let mut server = DhcpServer::new(config).unwrap();
    assert_eq!(discover(&mut server, now, mac(1)), Some(lan(16)));
}

#[test]
fn lease_expires_via_handle_timeout_and_address_comes_back() {
    let mut server = server();
    let now = Instant::now();
    let ip = acquire(&mut server, now, mac(1));
    events(&mut server);
    let expiry = now + Duration::from_secs(3600);
    assert_eq!(server.poll_timeout(), Some(expiry));
    server.handle_timeout(expiry - Duration::from_millis(1));
    assert!(server.lease_by_ip(ip).is_some());
    server.handle_timeout(expiry);
    assert!(server.lease_by_ip(ip).is_none());
    assert_eq!(server.stats().active_leases, 0);
    assert_eq!(
        events(&mut server),
        vec![LeaseEvent::Expired {
            mac: mac(1),
            ip,
            host_name: None
        }]
    );
    assert_eq!(server.poll_timeout(), None);
    // Others come and go; the returning client still gets its old address.
    let later = expiry + Duration::from_secs(10);
    assert_ne!(acquire(&mut server, later, mac(2)), ip);
    assert_eq!(discover(&mut server, later, mac(1)), Some(ip));
}

#[test]
fn client_id_keys_leases_not_mac() {
    let mut server = server();
    let now = Instant::now();
    // Two tabs restored from one saved state: same MAC, different client ids.
    let acquire_with_id = |server: &mut DhcpServer, id: u8| {
        let id = DhcpOption::ClientIdentifier(vec![0xff, id, 1, 2, 3]);
        let packet = message(MessageType::Discover, mac(1), with_opt(id.clone()));
        let offered = decode(&send(server, now, mac(1), &packet).unwrap()).yiaddr();
        let packet = message(MessageType::Request, mac(1), |m| {
            m.opts_mut().insert(id);
            m.opts_mut().insert(DhcpOption::ServerIdentifier(lan(2)));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(offered));
        });
        assert_eq!(
            send(server, now, mac(1), &packet).unwrap().kind,
            ReplyKind::Ack
        );
        offered
    };
    let a = acquire_with_id(&mut server, 1);
    let b = acquire_with_id(&mut server, 2);
    assert_ne!(a, b);
    assert_eq!(server.leases().count(), 2);
    assert_eq!(acquire_with_id(&mut server, 1), a);
    // Without a client id the MAC is the key: a third, separate lease.
    let c = acquire(&mut server, now, mac(1));
    assert!(c != a && c != b);
    assert_eq!(
        server.lease_by_ip(a).unwrap().client_id.as_deref(),
        Some(&[0xff, 1, 1, 2, 3][..])
    );
}

#[test]
fn request_for_another_server_drops_the_offer() {
    let config = DhcpConfig {
        pool_start: lan(100),
        pool_end: lan(100),
        ..DhcpConfig::default()
    };
    let mut server = DhcpServer::new(config).unwrap();
    let now = Instant::now();
    assert_eq!(discover(&mut server, now, mac(1)), Some(lan(100)));
    let packet = message(MessageType::Request, mac(1), |m| {
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 99)));
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(lan(100)));
    });
    assert!(send(&mut server, now, mac(1), &packet).is_none());
    assert_eq!(server.stats().sent_nak, 0);
    // The single address is free again at once.
    assert_eq!(discover(&mut server, now, mac(2)), Some(lan(100)));
}

#[test]
fn snapshot_restore_round_trip_through_json() {
    let mut server = server();
    let start = Instant::now();
    let a = acquire(&mut server, start, mac(1));
    let packet = message(MessageType::Request, mac(2), |m| {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(lan(50)));
        m.opts_mut()
            .insert(DhcpOption::ClientIdentifier(vec![0, 1, 2]));
        m.opts_mut().insert(DhcpOption::Hostname("vm2".into()));
    });
    send(
        &mut server,
        start + Duration::from_secs(3000),
        mac(2),
        &packet,
    )
    .unwrap();
    let gone = acquire(&mut server, start, mac(3));
    let release = message(MessageType::Release, mac(3), |m| {
        m.set_ciaddr(gone);
    });
    send(&mut server, start, mac(3), &release);

    let now = start + Duration::from_secs(3500);
    let unix_now = 1_700_000_000;
    let snapshot = server.snapshot(now, unix_now);
    let json = serde_json::to_string_pretty(&snapshot).unwrap();
    assert!(json.contains("\"expires_unix_secs\": 1700000100"), "{json}");
    assert!(json.contains("\"client_id\": \"000102\""), "{json}");
    assert!(json.contains("52:54:00:ab:cd:01"), "{json}");
    let parsed: LeaseSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, snapshot);

    // Restart 200 s later: the first lease (100 s left) has expired, the second survives.
    let mut restarted = DhcpServer::new(DhcpConfig::default()).unwrap();
    let new_now = Instant::now() + Duration::from_secs(5);
    let report = restarted.restore(&parsed, new_now, unix_now + 200);
    assert_eq!(
        report,
        RestoreReport {
            restored: 1,
            expired: 1,
            rejected: 0
        }
    );
    let lease = restarted.lease_by_ip(lan(50)).unwrap();
    assert_eq!(lease.mac, mac(2));
    assert_eq!(lease.host_name.as_deref(), Some("vm2"));
    // Bound at start+3000, so 3100 s were left at the snapshot and 2900 s after restart.
    assert_eq!(lease.expires, new_now + Duration::from_secs(2900));
    assert!(restarted.lease_by_ip(a).is_none());
    assert!(matches!(restarted.poll_event(), Some(LeaseEvent::Bound { ip, .. }) if ip == lan(50)));
    // Remembered addresses survive too.
    assert_eq!(discover(&mut restarted, new_now, mac(3)), Some(gone));
    assert_eq!(discover(&mut restarted, new_now, mac(1)), Some(a));
    // Restoring the same snapshot again conflicts with what is held.
    assert_eq!(
        restarted.restore(&parsed, new_now, unix_now + 200).rejected,
        1
    );
}

#[test]
fn restore_rejects_leases_the_config_would_not_give() {
    let snapshot: LeaseSnapshot = serde_json::from_str(
        r#"{"leases": [
            {"ip": "192.168.1.5", "mac": "52:54:00:00:00:01", "chaddr": "52:54:00:00:00:01", "expires_unix_secs": 2000},
            {"ip": "10.0.2.2", "mac": "52:54:00:00:00:02", "chaddr": "52:54:00:00:00:02", "expires_unix_secs": 2000},
            {"ip": "10.0.2.20", "mac": "52:54:00:00:00:03", "chaddr": "52:54:00:00:00:03", "expires_unix_secs": 18446744073709551615, "host_name": "Ok_Name"}
        ]}"#,
    )
    .unwrap();
    let mut server = server();
    let now = Instant::now();
    let report = server.restore(&snapshot, now, 1000);
    assert_eq!(report.restored, 1);
    assert_eq!(report.rejected, 2);
    let lease = server.lease_by_ip(lan(20)).unwrap();
    // Capped at one lease time.
    assert_eq!(lease.expires, now + Duration::from_secs(3600));
    assert_eq!(lease.host_name.as_deref(), Some("ok-name"));
}

#[test]
fn malformed_packets_are_errors_not_panics() {
    let mut server = server();
    let now = Instant::now();
    let good = udhcpc_discover();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", good[..100].to_vec()),
        ("no cookie", good[..236].to_vec()),
    ];
    let mut bad_cookie = good.clone();
    bad_cookie[239] = 0;
    cases.push(("bad cookie", bad_cookie));
    let mut reply_op = good.clone();
    reply_op[0] = 2;
    cases.push(("BOOTREPLY", reply_op));
    let mut long_hlen = good.clone();
    long_hlen[2] = 200;
    cases.push(("hlen 200", long_hlen));
    let mut token_ring = good.clone();
    token_ring[1] = 6;
    cases.push(("htype 6", token_ring));
    let mut multicast_chaddr = good.clone();
    multicast_chaddr[28] = 0x01;
    cases.push(("multicast chaddr", multicast_chaddr));
    let mut no_type = good.clone();
    no_type[240] = 0xff; // END right after the cookie
    cases.push(("no message type", no_type));
    cases.push((
        "request without address",
        message(MessageType::Request, mac(1), |_| {}),
    ));
    for (name, packet) in &cases {
        assert!(
            server.handle_message(now, mac(1), packet).is_err(),
            "{name} should be rejected"
        );
    }
    assert_eq!(server.stats().malformed, cases.len() as u64);
    // Truncated options are cut short, not fatal: the message type still counts.
    let cut = &good[..245];
    assert!(
        server
            .handle_message(now, UDHCPC_MAC, cut)
            .unwrap()
            .is_some()
    );
    // Server-side message types are ignored and counted.
    let offer = message(MessageType::Offer, mac(1), |_| {});
    assert!(send(&mut server, now, mac(1), &offer).is_none());
    assert_eq!(server.stats().received_other, 1);
}

#[test]
fn options_that_crash_dhcproto_are_skipped() {
    // Each of these trips a debug_assert! or an underflow inside dhcproto 0.15's decoder.
    let hostile: [&[u8]; 5] = [
        &[80, 1, 0],     // rapid commit with a value
        &[81, 0],        // client FQDN shorter than 3
        &[94, 0],        // client network interface not 3 bytes
        &[151, 0],       // bulk lease query status with no code
        &[152, 2, 0, 0], // bulk lease query base time not 4 bytes
    ];
    let mut server = server();
    for option in hostile {
        let mut packet = udhcpc_discover();
        // Put the hostile option first, right after the cookie.
        packet.splice(240..240, option.iter().copied());
        let reply = server
            .handle_message(Instant::now(), UDHCPC_MAC, &packet)
            .unwrap();
        assert_eq!(reply.unwrap().kind, ReplyKind::Offer);
    }
}

#[test]
fn events_are_bounded() {
    let config = DhcpConfig {
        pool_start: lan(100),
        pool_end: lan(100),
        ..DhcpConfig::default()
    };
    let mut server = DhcpServer::new(config).unwrap();
    let now = Instant::now();
    discover(&mut server, now, mac(0));
    for n in 0..(MAX_PENDING_EVENTS + 10) {
        discover(&mut server, now, mac((n % 200) as u8 + 1));
    }
    assert_eq!(events(&mut server).len(), MAX_PENDING_EVENTS);
    assert_eq!(server.stats().events_dropped, 10);
}

#[test]
fn remembered_addresses_are_bounded() {
    let config = DhcpConfig {
        max_remembered_clients: 2,
        ..DhcpConfig::default()
    };
    let mut server = DhcpServer::new(config).unwrap();
    let now = Instant::now();
    for n in 1..=5 {
        let ip = acquire(&mut server, now, mac(n));
        let release = message(MessageType::Release, mac(n), |m| {
            m.set_ciaddr(ip);
        });
        send(&mut server, now, mac(n), &release);
    }
    assert_eq!(server.snapshot(now, 0).last_addresses.len(), 2);
}

/// xorshift64*, so the fuzz-like loop below is deterministic without a dependency.
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
fn random_and_mutated_packets_never_panic() {
    let config = DhcpConfig {
        pool_start: lan(100),
        pool_end: lan(107),
        static_leases: vec![StaticLease {
            mac: mac(3),
            ip: lan(50),
            host_name: None,
        }],
        ..DhcpConfig::default()
    };
    let mut server = DhcpServer::new(config).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut now = Instant::now();
    let seeds: Vec<Vec<u8>> = vec![
        udhcpc_discover(),
        message(MessageType::Request, mac(1), |m| {
            m.opts_mut().insert(DhcpOption::ServerIdentifier(lan(2)));
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(lan(100)));
        }),
        message(MessageType::Request, mac(3), |m| {
            m.set_ciaddr(lan(50));
        }),
        message(MessageType::Release, mac(2), |m| {
            m.set_ciaddr(lan(101));
        }),
        message(
            MessageType::Decline,
            mac(1),
            with_opt(DhcpOption::RequestedIpAddress(lan(100))),
        ),
        message(MessageType::Inform, mac(4), |_| {}),
    ];
    for round in 0..10_000 {
        let mut packet = seeds[rng.below(seeds.len())].clone();
        match rng.below(4) {
            // Pure noise, sometimes with a valid cookie.
            0 => {
                let len = rng.below(600);
                packet = (0..len).map(|_| rng.next() as u8).collect();
                if len >= 240 && rng.below(2) == 0 {
                    packet[236..240].copy_from_slice(&[99, 130, 83, 99]);
                }
            }
            // Flip bytes, mostly in the options.
            1 | 2 => {
                for _ in 0..=rng.below(8) {
                    let at = if rng.below(3) == 0 {
                        rng.below(packet.len())
                    } else {
                        240 + rng.below(packet.len() - 240)
                    };
                    packet[at] = rng.next() as u8;
                }
            }
            // Truncate, or insert a random option with a random length.
            _ if rng.below(2) == 0 => packet.truncate(rng.below(packet.len() + 1)),
            _ => {
                let option = [rng.next() as u8, rng.below(6) as u8, 0, 0, 0, 0, 0];
                packet.splice(240..240, option);
            }
        }
        let src = mac(rng.below(6) as u8);
        let _ = server.handle_message(now, src, &packet);
        if round % 97 == 0 {
            now += Duration::from_secs(rng.below(4000) as u64);
            server.handle_timeout(now);
        }
        while server.poll_event().is_some() {}
        assert!(server.stats().active_leases as usize == server.leases().count());
    }
}
