//! Arbitrary client messages and driver events, in any order, into one Wisp session. It must
//! never panic, and a v86-like client must never see DATA or CONTINUE for a stream the server
//! has closed (v86 throws on both). Also checked: every message parses, memory stays within
//! its bounds, DATA events only name live streams, and nothing follows the session's end.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wisp::wire::{ConnectPayload, Payload};
use wisp::{
    CloseReason, Event, Packet, PasswordAuth, Session, SessionConfig, StreamId, StreamType, Version,
};

const BUFFER: u32 = 4;
const BUDGET: usize = 512;

/// What the fuzzer knows, from the outside, about the session.
#[derive(Default)]
struct Model {
    /// Ids the server sent a CLOSE for, and no accepted CONNECT has reopened since.
    dead: HashSet<u32>,
    /// Streams per the event stream: Connect adds, Close removes. The value is how many DATA
    /// events were handed over and not yet reported written.
    live: HashMap<u32, (StreamType, u32)>,
    finished: bool,
}

impl Model {
    /// Checks one message the server sent.
    fn transmitted(&mut self, message: &[u8]) {
        let packet = Packet::parse(message).expect("server messages always parse");
        assert!(!self.finished, "nothing is queued after the session ends");
        let id = packet.stream_id.0;
        match packet.payload {
            Payload::Close(_) if id != 0 => {
                self.dead.insert(id);
            }
            Payload::Data(_) | Payload::Continue(_) if id != 0 => {
                assert!(!self.dead.contains(&id), "frame for closed stream {id}");
            }
            Payload::Connect(_) => panic!("the server never sends CONNECT"),
            _ => {}
        }
    }

    fn event(&mut self, event: Event) {
        assert!(!self.finished, "no events after Finished");
        match event {
            Event::Connect {
                id, stream_type, ..
            } => {
                assert!(self.live.insert(id.0, (stream_type, 0)).is_none());
                self.dead.remove(&id.0);
            }
            Event::Data { id, .. } => {
                let (kind, pending) = self.live.get_mut(&id.0).expect("DATA for a live stream");
                *pending += 1;
                let bound = if *kind == StreamType::Udp {
                    BUFFER
                } else {
                    2 * BUFFER
                };
                assert!(*pending <= bound, "pending data of a stream is bounded");
            }
            Event::Close { id, .. } => {
                assert!(self.live.remove(&id.0).is_some(), "Close for a live stream");
            }
            Event::Finished { .. } => self.finished = true,
            Event::Authenticate { .. } | Event::ProtocolError(_) => {}
        }
    }

    /// The driver closed a stream itself (failed connect, host EOF).
    fn driver_closed(&mut self, id: u32) {
        self.live.remove(&id);
    }
}

/// Transmits first: a finishing session's last CLOSE on stream 0 precedes its Finished event.
fn drain(s: &mut Session, m: &mut Model) {
    while let Some(t) = s.poll_transmit() {
        m.transmitted(&t);
    }
    while let Some(e) = s.poll_event() {
        m.event(e);
    }
}

fn client_message(op: u8, id: u32, arg: u8, tail: &[u8]) -> Vec<u8> {
    let id = StreamId(id);
    match op % 4 {
        0 => tail.to_vec(),
        1 => {
            let host = std::str::from_utf8(tail).unwrap_or("198.18.0.1");
            let stream_type = StreamType::from_u8(arg % 3 + 1);
            let c = ConnectPayload {
                stream_type,
                port: u16::from(arg) + 1,
                host,
            };
            Packet::new(id, Payload::Connect(c)).to_vec()
        }
        2 => Packet::new(id, Payload::Data(tail)).to_vec(),
        _ => Packet::new(id, Payload::Close(CloseReason::from_u8(arg))).to_vec(),
    }
}

/// Client messages with no draining in between, so the transmit queue can grow. Transmits are
/// matched to the message that queued them by their byte counts, to keep the model's order.
fn flood(s: &mut Session, m: &mut Model, now: Instant, messages: &[Vec<u8>]) {
    let mut queued = Vec::new();
    for msg in messages {
        let before = s.transmit_backlog();
        s.handle_message(now, msg);
        assert!(
            s.transmit_backlog() <= 2 * BUDGET,
            "transmit queue is bounded"
        );
        let mut events = Vec::new();
        while let Some(e) = s.poll_event() {
            events.push(e);
        }
        let added = s.transmit_backlog().saturating_sub(before);
        queued.push((added, events));
    }
    let mut frames = std::iter::from_fn(|| s.poll_transmit())
        .collect::<Vec<_>>()
        .into_iter();
    for (mut added, events) in queued {
        while added > 0 {
            let Some(frame) = frames.next() else {
                // A session that ended for its backlog dropped its queue.
                assert!(s.is_finished());
                break;
            };
            added = added.saturating_sub(frame.len());
            m.transmitted(&frame);
        }
        events.into_iter().for_each(|e| m.event(e));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let config = SessionConfig {
        version: if mode & 1 == 0 {
            Version::V1
        } else {
            Version::V2
        },
        buffer_packets: BUFFER,
        max_streams: 4,
        udp_enabled: mode & 2 == 0,
        password_auth: [
            PasswordAuth::Off,
            PasswordAuth::Optional,
            PasswordAuth::Required,
        ][usize::from(mode >> 2) % 3],
        motd: (mode & 0x20 != 0).then(|| "motd".into()),
        stream_confirmation: mode & 0x40 == 0,
        handshake_timeout: Duration::from_secs(10),
        transmit_budget: BUDGET,
        stream_transmit_budget: BUDGET / 4,
    };
    let start = Instant::now();
    let mut now = start;
    let mut s = Session::new(config, now);
    let mut m = Model::default();
    drain(&mut s, &mut m);
    // Each record: [op, id, arg, len, len bytes...].
    while let [op, id, arg, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        let id = u32::from(*id % 6);
        let sid = StreamId(id);
        let reason = CloseReason::from_u8(*arg);
        match op % 12 {
            0..=3 => s.handle_message(now, &client_message(*op / 12, id, *arg, bytes)),
            4 => s.handle_stream_opened(sid),
            5 => {
                s.handle_stream_failed(sid, reason);
                m.driver_closed(id);
            }
            6 => {
                let may_read = s.can_read_host(sid);
                let accepted = s.handle_host_data(sid, bytes).is_ok();
                assert!(!may_read || accepted || bytes.len() > BUDGET / 2);
            }
            7 => {
                s.handle_host_closed(sid, reason);
                m.driver_closed(id);
            }
            8 => {
                let n = u32::from(*arg % 8);
                if let Some((_, pending)) = m.live.get_mut(&id) {
                    let n = n.min(*pending);
                    *pending -= n;
                    s.handle_data_sent(sid, n);
                }
            }
            9 => s.handle_auth_result(*arg & 1 == 0),
            10 => {
                now += Duration::from_millis(u64::from(*arg) * 100);
                s.handle_timeout(now);
            }
            _ => {
                let msgs: Vec<_> = bytes
                    .chunks(4)
                    .map(|c| client_message(c[0], u32::from(c[0] % 6), *arg, c))
                    .collect();
                flood(&mut s, &mut m, now, &msgs);
            }
        }
        drain(&mut s, &mut m);
        assert!(s.stream_count() <= 4);
        assert!(!m.finished || (s.is_finished() && s.stream_count() == 0));
    }
});
