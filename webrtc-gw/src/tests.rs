//! A real str0m client against the gateway, datagrams carried in memory on a virtual clock.

use super::*;
use str0m::change::SdpAnswer;
use str0m::channel::{ChannelConfig, Reliability};

const GW: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
    8086,
);
const CLIENT: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    50000,
);

struct Client {
    rtc: Rtc,
    channel: Option<ChannelId>,
    open: bool,
    received: Vec<Vec<u8>>,
    next: Instant,
    out: Vec<Vec<u8>>,
}

impl Client {
    fn offer(now: Instant) -> (Client, str0m::change::SdpPendingOffer, String) {
        let mut rtc = Rtc::builder()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .build(now);
        rtc.add_local_candidate(Candidate::host(CLIENT, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let channel = api.add_channel_with_config(ChannelConfig {
            label: CHANNEL_LABEL.into(),
            ordered: false,
            reliability: Reliability::MaxRetransmits { retransmits: 0 },
            ..Default::default()
        });
        let (offer, pending) = api.apply().unwrap();
        let client = Client {
            rtc,
            channel: Some(channel),
            open: false,
            received: vec![],
            next: now,
            out: vec![],
        };
        (client, pending, offer.to_sdp_string())
    }

    fn drain(&mut self) {
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(t) => {
                    self.next = t;
                    return;
                }
                Output::Transmit(t) => {
                    assert_eq!(
                        t.destination, GW,
                        "the client sends to the announced candidate"
                    );
                    self.out.push(t.contents.into());
                }
                Output::Event(RtcEvent::ChannelOpen(..)) => self.open = true,
                Output::Event(RtcEvent::ChannelData(d)) => self.received.push(d.data),
                Output::Event(_) => {}
            }
        }
    }
}

/// Runs both sides until `done` holds, moving the clock to the next timer when idle.
fn run(
    gw: &mut Gateway,
    client: &mut Client,
    events: &mut Vec<Event>,
    now: &mut Instant,
    mut done: impl FnMut(&Gateway, &Client, &[Event]) -> bool,
) {
    for _ in 0..10_000 {
        client.drain();
        for d in std::mem::take(&mut client.out) {
            gw.handle_receive(*now, CLIENT, &d);
        }
        let mut moved = false;
        while let Some(t) = gw.poll_transmit() {
            assert_eq!(t.destination, CLIENT);
            let input = Input::Receive(
                *now,
                Receive::new(Protocol::Udp, GW, CLIENT, &t.contents).unwrap(),
            );
            client.rtc.handle_input(input).unwrap();
            client.drain();
            moved = true;
        }
        while let Some(e) = gw.poll_event() {
            events.push(e);
        }
        if done(gw, client, events) {
            return;
        }
        if !moved && client.out.is_empty() {
            let next = [Some(client.next), gw.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            *now = next.max(*now + Duration::from_millis(1));
            client.rtc.handle_input(Input::Timeout(*now)).unwrap();
            gw.handle_timeout(*now);
        }
    }
    panic!("did not converge; events so far: {events:?}");
}

fn connected() -> (Gateway, Client, PeerId, Instant) {
    let mut now = Instant::now();
    let mut gw = Gateway::new(GatewayConfig::default()).unwrap();
    let (mut client, pending, offer) = Client::offer(now);
    let (peer, answer) = gw.accept_offer(now, &offer, GW).unwrap();
    assert!(answer.contains("a=ice-lite"), "{answer}");
    client
        .rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    let mut events = vec![];
    run(&mut gw, &mut client, &mut events, &mut now, |_, c, e| {
        c.open && e.contains(&Event::Open(peer))
    });
    (gw, client, peer, now)
}

#[test]
fn frames_cross_a_datachannel_both_ways() {
    let (mut gw, mut client, peer, mut now) = connected();
    let channel = client.channel.unwrap();
    let mut events = vec![];
    for len in [60usize, 1211, 1400, 1514] {
        let frame = vec![len as u8; len];
        assert_eq!(gw.send_frame(peer, &frame), SendOutcome::Sent);
        assert!(
            client
                .rtc
                .channel(channel)
                .unwrap()
                .write(true, &frame)
                .unwrap()
        );
    }
    run(&mut gw, &mut client, &mut events, &mut now, |_, c, e| {
        c.received.len() == 4 && e.iter().filter(|e| matches!(e, Event::Frame(..))).count() == 4
    });
    let mut from_client: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Frame(p, f) if *p == peer => Some(f.len()),
            _ => None,
        })
        .collect();
    let mut to_client: Vec<usize> = client.received.iter().map(Vec::len).collect();
    from_client.sort();
    to_client.sort();
    assert_eq!(from_client, [60, 1211, 1400, 1514]);
    assert_eq!(to_client, [60, 1211, 1400, 1514]);

    // Text and garbage are dropped and counted; the peer lives on.
    assert!(
        client
            .rtc
            .channel(channel)
            .unwrap()
            .write(false, b"hello")
            .unwrap()
    );
    gw.handle_receive(
        now,
        "10.9.9.9:1".parse().unwrap(),
        &[0x17, 0xfe, 0xfd, 1, 2, 3],
    );
    gw.handle_receive(now, CLIENT, &[0x00, 0x01, 0x00]);
    gw.handle_receive(now, CLIENT, &[]);
    run(&mut gw, &mut client, &mut events, &mut now, |g, _, _| {
        g.stats.foreign_messages.load(Relaxed) == 1
    });
    assert!(gw.stats.unclaimed_datagrams.load(Relaxed) >= 2);
    assert_eq!(gw.peer_count(), 1);

    // The client closes: the gateway forgets the peer.
    client.rtc.close().unwrap();
    run(&mut gw, &mut client, &mut events, &mut now, |_, _, e| {
        e.iter()
            .any(|e| matches!(e, Event::Closed(p, _) if *p == peer))
    });
    assert_eq!(gw.peer_count(), 0);
    assert_eq!(gw.send_frame(peer, &[0; 60]), SendOutcome::NotOpen);
}

#[test]
fn frames_beyond_the_send_window_wait_and_all_arrive() {
    let (mut gw, mut client, peer, mut now) = connected();
    for i in 0..100u8 {
        assert_eq!(gw.send_frame(peer, &[i; 1400]), SendOutcome::Sent);
    }
    // Nothing is acknowledged yet: one window (and the frame that crossed it) went out, not
    // 140 KB at once into the browser's socket.
    let burst: Vec<Transmit> = std::iter::from_fn(|| gw.poll_transmit()).collect();
    let bytes: usize = burst.iter().map(|t| t.contents.len()).sum();
    let window = GatewayConfig::default().send_window;
    assert!(
        bytes < window + 4 * 1500,
        "{bytes} bytes in the first burst"
    );
    for t in burst {
        let input = Input::Receive(
            now,
            Receive::new(Protocol::Udp, GW, CLIENT, &t.contents).unwrap(),
        );
        client.rtc.handle_input(input).unwrap();
    }
    // Acknowledgements release the rest, every frame once.
    let mut events = vec![];
    run(&mut gw, &mut client, &mut events, &mut now, |_, c, _| {
        c.received.len() == 100
    });
    let mut got: Vec<u8> = client.received.iter().map(|f| f[0]).collect();
    got.sort();
    assert_eq!(got, (0..100).collect::<Vec<u8>>());
    assert_eq!(gw.stats.buffer_drops.load(Relaxed), 0);
}

#[test]
fn a_peer_that_never_connects_times_out() {
    let now = Instant::now();
    let mut gw = Gateway::new(GatewayConfig::default()).unwrap();
    let (_client, _pending, offer) = Client::offer(now);
    let (peer, _) = gw.accept_offer(now, &offer, GW).unwrap();
    assert_eq!(gw.peer_count(), 1);
    assert!(gw.poll_timeout().unwrap() <= now + Duration::from_secs(20));
    gw.handle_timeout(now + Duration::from_secs(21));
    while let Some(t) = gw.poll_transmit() {
        drop(t);
    }
    assert_eq!(
        gw.poll_event(),
        Some(Event::Closed(peer, CloseReason::ConnectTimeout))
    );
    assert_eq!(gw.peer_count(), 0);
    assert_eq!(gw.stats.connect_timeouts.load(Relaxed), 1);
}

#[test]
fn bad_offers_are_refused_with_a_reason() {
    let now = Instant::now();
    let mut gw = Gateway::new(GatewayConfig {
        max_pending: 1,
        ..Default::default()
    })
    .unwrap();
    assert!(matches!(
        gw.accept_offer(now, "hello", GW),
        Err(OfferError::BadSdp(_))
    ));
    assert!(matches!(
        gw.accept_offer(now, "", GW),
        Err(OfferError::BadSdp(_))
    ));
    let (_c, _p, offer) = Client::offer(now);
    assert!(matches!(
        gw.accept_offer(now, &offer, "0.0.0.0:1".parse().unwrap()),
        Err(OfferError::BadCandidate(_))
    ));
    gw.accept_offer(now, &offer, GW).unwrap();
    let (_c, _p, offer) = Client::offer(now);
    assert_eq!(
        gw.accept_offer(now, &offer, GW).unwrap_err(),
        OfferError::TooManyPending(1)
    );
    assert_eq!(gw.peer_count(), 1);
}
