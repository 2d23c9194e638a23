//! One bus message: a batch of frames of remote ports, or a remote port's hello or bye.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! version u8 (1) | kind u8 | epoch u64 | node_len u8 | node | lan_len u8 | lan | count u16
//! then `count` entries: port u64 [| frame_len u32 | frame]   (frames only in kind 1)
//! ```
//!
//! `kind` 1 carries frames (ingress to the owner, or egress to one remote port), 2 is a
//! hello listing live remote ports (so the owner keeps a port for each, even one that only
//! listens), 3 is a bye of ports that left. `epoch` is the owner's claim revision: a node
//! drops egress from an older owner. Node and LAN names are short tokens
//! (`[A-Za-z0-9_-]`, 1..=64 bytes), which also keeps them safe in NATS subjects.
//!
//! The decoder checks the whole message before it returns anything: a malformed message
//! is dropped whole and never panics (fuzzed by `fuzz/fuzz_targets/bus_message.rs`).

use bytes::{BufMut, Bytes, BytesMut};

/// The only version this decoder speaks; another is dropped (room for later ones).
pub const VERSION: u8 = 1;
/// Longest node or LAN name on the bus.
pub const MAX_NAME_LEN: usize = 64;
/// Most entries in one message.
pub const MAX_ENTRIES: usize = 4096;
/// Largest message accepted (NATS' default `max_payload`).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// A batch is closed once it holds this many bytes of frames (a larger single frame still
/// goes alone): big enough to amortise a publish, small enough not to add latency.
pub const BATCH_BYTES: usize = 60 * 1024;

const HEADER_MIN: usize = 1 + 1 + 8 + 1 + 1 + 1 + 1 + 2;

/// What a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Frames,
    Hello,
    Bye,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Frames => 1,
            Kind::Hello => 2,
            Kind::Bye => 3,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Frames),
            2 => Some(Kind::Hello),
            3 => Some(Kind::Bye),
            _ => None,
        }
    }
}

/// Why a message was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message too short")]
    Truncated,
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("unknown version {0}")]
    Version(u8),
    #[error("unknown kind {0}")]
    Kind(u8),
    #[error("a node or LAN name is empty, too long or has characters outside [A-Za-z0-9_-]")]
    Name,
    #[error("more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("an empty frame")]
    EmptyFrame,
    #[error("{0} bytes after the last entry")]
    Trailing(usize),
}

/// One entry: a remote port and, in a `Frames` message, one of its frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub port: u64,
    /// Empty in hellos and byes.
    pub frame: Bytes,
}

/// A decoded message; names borrow nothing (they are copied, a few bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub epoch: u64,
    pub node: String,
    pub lan: String,
    pub entries: Vec<Entry>,
}

/// Whether `name` may travel on the bus (and in a NATS subject).
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Builds one message; entries are appended until [`Builder::is_full`].
#[derive(Debug)]
pub struct Builder {
    buf: BytesMut,
    kind: Kind,
    count: u16,
    count_at: usize,
}

impl Builder {
    /// Panics never: names are checked by the caller with [`valid_name`]; an invalid one
    /// is cut to [`MAX_NAME_LEN`] and the receiver drops the message.
    pub fn new(kind: Kind, epoch: u64, node: &str, lan: &str) -> Builder {
        let mut buf = BytesMut::with_capacity(256);
        buf.put_u8(VERSION);
        buf.put_u8(kind.code());
        buf.put_u64(epoch);
        for name in [node, lan] {
            let bytes = &name.as_bytes()[..name.len().min(MAX_NAME_LEN)];
            buf.put_u8(bytes.len() as u8);
            buf.put_slice(bytes);
        }
        let count_at = buf.len();
        buf.put_u16(0);
        Builder {
            buf,
            kind,
            count: 0,
            count_at,
        }
    }

    /// Adds a port (hello, bye) or a port's frame (frames).
    pub fn push(&mut self, port: u64, frame: &[u8]) {
        self.buf.put_u64(port);
        if self.kind == Kind::Frames {
            self.buf.put_u32(frame.len() as u32);
            self.buf.put_slice(frame);
        }
        self.count += 1;
    }

    /// Whether the next entry should go in a new message.
    pub fn is_full(&self) -> bool {
        self.count as usize >= MAX_ENTRIES || self.buf.len() >= BATCH_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn finish(mut self) -> Bytes {
        let count = self.count.to_be_bytes();
        self.buf[self.count_at..self.count_at + 2].copy_from_slice(&count);
        self.buf.freeze()
    }
}

/// Checks and splits a whole message; frames are slices of `buf` (no copy).
pub fn decode(buf: &Bytes) -> Result<Message, WireError> {
    if buf.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge);
    }
    if buf.len() < HEADER_MIN {
        return Err(WireError::Truncated);
    }
    let mut r = Reader { buf, at: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let code = r.u8()?;
    let kind = Kind::from_code(code).ok_or(WireError::Kind(code))?;
    let epoch = r.u64()?;
    let node = r.name()?;
    let lan = r.name()?;
    let count = r.u16()? as usize;
    if count > MAX_ENTRIES {
        return Err(WireError::TooManyEntries);
    }
    let mut entries = Vec::with_capacity(count.min(buf.len() / 8));
    for _ in 0..count {
        let port = r.u64()?;
        let frame = if kind == Kind::Frames {
            let len = r.u32()? as usize;
            if len == 0 {
                return Err(WireError::EmptyFrame);
            }
            r.bytes(len)?
        } else {
            Bytes::new()
        };
        entries.push(Entry { port, frame });
    }
    if r.at != buf.len() {
        return Err(WireError::Trailing(buf.len() - r.at));
    }
    Ok(Message {
        kind,
        epoch,
        node,
        lan,
        entries,
    })
}

struct Reader<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, len: usize) -> Result<Bytes, WireError> {
        let end = self.at.checked_add(len).ok_or(WireError::Truncated)?;
        if end > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let out = self.buf.slice(self.at..end);
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let b = self.bytes(N)?;
        let mut out = [0; N];
        out.copy_from_slice(&b);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn name(&mut self) -> Result<String, WireError> {
        let len = self.u8()? as usize;
        let bytes = self.bytes(len)?;
        let name = std::str::from_utf8(&bytes).map_err(|_| WireError::Name)?;
        if !valid_name(name) {
            return Err(WireError::Name);
        }
        Ok(name.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frames message of node "n1", LAN "lab", epoch 7: port 5 sends 0xaa 0xbb.
    const FRAMES: [u8; 33] = [
        1, 1, // version, kind frames
        0, 0, 0, 0, 0, 0, 0, 7, // epoch
        2, b'n', b'1', // node
        3, b'l', b'a', b'b', // LAN
        0, 1, // one entry
        0, 0, 0, 0, 0, 0, 0, 5, // port
        0, 0, 0, 2, // frame length
        0xaa, 0xbb,
    ];

    #[test]
    fn frames_encode_to_the_fixture_and_back() {
        let mut b = Builder::new(Kind::Frames, 7, "n1", "lab");
        b.push(5, &[0xaa, 0xbb]);
        let bytes = b.finish();
        assert_eq!(&bytes[..], &FRAMES[..]);
        let m = decode(&bytes).unwrap();
        assert_eq!(m.kind, Kind::Frames);
        assert_eq!((m.epoch, m.node.as_str(), m.lan.as_str()), (7, "n1", "lab"));
        assert_eq!(
            m.entries,
            vec![Entry {
                port: 5,
                frame: Bytes::from_static(&[0xaa, 0xbb])
            }]
        );
    }

    #[test]
    fn hello_carries_ports_only() {
        let mut b = Builder::new(Kind::Hello, 0, "n2", "default");
        b.push(1, &[]);
        b.push(u64::MAX, &[9, 9]);
        let bytes = b.finish();
        assert_eq!(bytes.len(), HEADER_MIN - 2 + 2 + 7 + 16);
        let m = decode(&bytes).unwrap();
        assert_eq!(m.kind, Kind::Hello);
        let ports: Vec<u64> = m.entries.iter().map(|e| e.port).collect();
        assert_eq!(ports, [1, u64::MAX]);
        assert!(m.entries.iter().all(|e| e.frame.is_empty()));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = Bytes::from_static(&FRAMES);
        for len in 0..FRAMES.len() {
            assert!(decode(&bytes.slice(..len)).is_err(), "length {len}");
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let mut v = FRAMES;
        v[0] = 2;
        assert_eq!(
            decode(&Bytes::copy_from_slice(&v)),
            Err(WireError::Version(2))
        );
        let mut v = FRAMES;
        v[1] = 9;
        assert_eq!(decode(&Bytes::copy_from_slice(&v)), Err(WireError::Kind(9)));
        let mut v = FRAMES;
        v[11] = b'.';
        assert_eq!(decode(&Bytes::copy_from_slice(&v)), Err(WireError::Name));
        let mut v = FRAMES.to_vec();
        v.push(0);
        assert_eq!(decode(&Bytes::from(v)), Err(WireError::Trailing(1)));
        let mut v = FRAMES;
        v[30] = 0;
        assert_eq!(
            decode(&Bytes::copy_from_slice(&v)),
            Err(WireError::EmptyFrame)
        );
        // A length that claims 4 GiB.
        let mut v = FRAMES;
        v[27..31].copy_from_slice(&[0xff; 4]);
        assert_eq!(
            decode(&Bytes::copy_from_slice(&v)),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn builder_says_when_a_batch_is_full() {
        let mut b = Builder::new(Kind::Frames, 1, "n", "l");
        let frame = [0u8; 1514];
        let mut n = 0;
        while !b.is_full() {
            b.push(n, &frame);
            n += 1;
        }
        assert_eq!(n as usize, BATCH_BYTES.div_ceil(1514 + 12));
        assert_eq!(decode(&b.finish()).unwrap().entries.len(), n as usize);
    }

    #[test]
    fn names_are_subject_safe() {
        assert!(valid_name("node-1_a"));
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    /// What the fuzz target checks, on mutations of the fixture: no panic, and what
    /// decodes encodes back to the same bytes.
    #[test]
    fn mutated_messages_never_panic_and_round_trip() {
        let mut x = 0x9e37_79b9u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..50_000 {
            let mut v = FRAMES.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = next() as usize % v.len();
                match next() % 3 {
                    0 => v[at] = next() as u8,
                    1 => v.truncate(at),
                    _ => v.insert(at, next() as u8),
                }
                if v.is_empty() {
                    break;
                }
            }
            let bytes = Bytes::from(v);
            if let Ok(m) = decode(&bytes) {
                let mut b = Builder::new(m.kind, m.epoch, &m.node, &m.lan);
                for e in &m.entries {
                    b.push(e.port, &e.frame);
                }
                assert_eq!(b.finish(), bytes);
            }
        }
    }
}
