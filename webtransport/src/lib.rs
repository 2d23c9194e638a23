//! Ethernet frames over WebTransport datagrams, sans-IO (docs/architecture.md, "Wire formats").
//!
//! A datagram's first byte says what follows:
//! - `0x00`, then a whole frame that fits in one datagram;
//! - `0x01`, frame id (u16 big-endian, per session and direction, wrapping), fragment index
//!   (u8), fragment count (u8, 2..=64), then that fragment's bytes; all fragments but the last
//!   carry the same length;
//! - anything else is dropped and counted (room for later versions).
//!
//! [`Fragmenter`] splits outgoing frames for the peer's *current* datagram limit, which the
//! driver reads from the session each time (Chromium's is 1211; it can change). [`Reassembler`]
//! puts incoming fragments back together with bounded memory: an incomplete frame is dropped
//! after [`REASSEMBLY_TIMEOUT`], or when more than [`MAX_PENDING_FRAMES`] frames (or more than
//! the byte budget) are pending. Time is passed in as `now`, in the style of `quinn-proto`.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// First byte of a datagram carrying a whole frame.
pub const WHOLE: u8 = 0x00;
/// First byte of a datagram carrying one fragment of a frame.
pub const FRAGMENT: u8 = 0x01;
/// Bytes before a fragment's payload: type, id (2), index, count.
pub const FRAGMENT_HEADER: usize = 5;
/// Fewest and most fragments of one frame.
pub const MIN_FRAGMENTS: u8 = 2;
pub const MAX_FRAGMENTS: u8 = 64;
/// An incomplete frame is dropped this long after its first fragment arrived.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many frames of one session may be incomplete at once.
pub const MAX_PENDING_FRAMES: usize = 64;

/// Why an outgoing frame could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Even [`MAX_FRAGMENTS`] datagrams of the peer's current size cannot carry the frame.
    TooLarge,
}

/// Splits outgoing frames into datagrams. One per session.
#[derive(Debug, Default)]
pub struct Fragmenter {
    next_id: u16,
}

impl Fragmenter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `frame` for datagrams of at most `max_datagram` bytes and appends them to `out`.
    /// Returns how many datagrams were added (1 for a whole frame).
    pub fn encode(
        &mut self,
        frame: &[u8],
        max_datagram: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<usize, SendError> {
        if frame.len() < max_datagram {
            let mut d = BytesMut::with_capacity(frame.len() + 1);
            d.put_u8(WHOLE);
            d.put_slice(frame);
            out.push(d.freeze());
            return Ok(1);
        }
        let chunk = max_datagram.saturating_sub(FRAGMENT_HEADER);
        if chunk == 0 {
            return Err(SendError::TooLarge);
        }
        let count = frame.len().div_ceil(chunk);
        if count > usize::from(MAX_FRAGMENTS) {
            return Err(SendError::TooLarge);
        }
        // frame.len() >= max_datagram > chunk, so count >= 2.
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        for (index, part) in frame.chunks(chunk).enumerate() {
            let mut d = BytesMut::with_capacity(FRAGMENT_HEADER + part.len());
            d.put_u8(FRAGMENT);
            d.put_u16(id);
            d.put_u8(index as u8);
            d.put_u8(count as u8);
            d.put_slice(part);
            out.push(d.freeze());
        }
        Ok(count)
    }
}

labels::label_enum! {
    /// Why an incoming datagram or a pending frame was dropped; a bounded metric label.
    pub enum DropReason {
        /// First byte neither `0x00` nor `0x01` (or an empty datagram).
        UnknownType => "unknown_type",
        /// A fragment header that cannot be right: too short, count outside 2..=64, index not
        /// below count, empty payload, or lengths/count that disagree with earlier fragments.
        Malformed => "malformed",
        /// The same fragment twice.
        Duplicate => "duplicate",
        /// The reassembled frame would exceed the frame size limit.
        TooLarge => "too_large",
        /// An incomplete frame outlived [`REASSEMBLY_TIMEOUT`].
        Timeout => "timeout",
        /// An incomplete frame was evicted because too many frames or bytes were pending.
        Overflow => "overflow",
    }
}

/// What one incoming datagram produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// A whole frame: a `0x00` datagram or the last missing fragment.
    Frame(Bytes),
    /// A fragment was stored; its frame is not complete yet.
    Stored,
    /// The datagram was dropped.
    Dropped(DropReason),
}

/// Limits of one session's reassembly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Largest frame accepted (the relay's `limits.max_frame_size`).
    pub max_frame_size: usize,
    /// Most payload bytes held for incomplete frames; the oldest frame goes first beyond it.
    pub max_pending_bytes: usize,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            max_frame_size: 65535 + 14,
            max_pending_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug)]
struct Pending {
    id: u16,
    count: u8,
    first_arrival: Instant,
    /// Length every fragment but the last carries, once known.
    part_len: Option<usize>,
    /// Length of the last fragment, once it arrived.
    last_len: Option<usize>,
    parts: Vec<Option<Bytes>>,
    have: usize,
    bytes: usize,
}

/// Reassembles incoming fragments of one session.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    /// Oldest first; at most [`MAX_PENDING_FRAMES`], so a scan is cheap.
    pending: Vec<Pending>,
    bytes: usize,
    drops: [u64; DropReason::ALL.len()],
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            limits,
            pending: Vec::new(),
            bytes: 0,
            drops: [0; DropReason::ALL.len()],
        }
    }

    /// Payload bytes held for incomplete frames.
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    pub fn pending_frames(&self) -> usize {
        self.pending.len()
    }

    /// Drops so far, by reason (cumulative; the driver takes differences).
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// When [`Reassembler::handle_timeout`] should next run, if anything is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .iter()
            .map(|p| p.first_arrival + REASSEMBLY_TIMEOUT)
            .min()
    }

    /// Drops incomplete frames older than [`REASSEMBLY_TIMEOUT`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.pending.len() {
            if now.saturating_duration_since(self.pending[i].first_arrival) >= REASSEMBLY_TIMEOUT {
                self.discard(i, DropReason::Timeout);
            } else {
                i += 1;
            }
        }
    }

    fn count(&mut self, reason: DropReason) -> Received {
        self.drops[reason.index()] += 1;
        Received::Dropped(reason)
    }

    fn discard(&mut self, index: usize, reason: DropReason) {
        let p = self.pending.remove(index);
        self.bytes -= p.bytes;
        self.drops[reason.index()] += 1;
    }

    /// Handles one datagram from the peer.
    pub fn receive(&mut self, now: Instant, datagram: Bytes) -> Received {
        self.handle_timeout(now);
        match datagram.first() {
            Some(&WHOLE) => {
                if datagram.len() - 1 > self.limits.max_frame_size {
                    return self.count(DropReason::TooLarge);
                }
                Received::Frame(datagram.slice(1..))
            }
            Some(&FRAGMENT) => self.fragment(now, datagram),
            _ => self.count(DropReason::UnknownType),
        }
    }

    fn fragment(&mut self, now: Instant, datagram: Bytes) -> Received {
        let [_, id_hi, id_lo, index, count, ..] = datagram[..] else {
            return self.count(DropReason::Malformed);
        };
        let id = u16::from_be_bytes([id_hi, id_lo]);
        let payload = datagram.slice(FRAGMENT_HEADER..);
        let len = payload.len();
        if !(MIN_FRAGMENTS..=MAX_FRAGMENTS).contains(&count) || index >= count || len == 0 {
            return self.count(DropReason::Malformed);
        }
        let is_last = index == count - 1;
        // A frame of `count` fragments is at least (count - 1) full parts plus one byte.
        if !is_last && (usize::from(count) - 1) * len + 1 > self.limits.max_frame_size {
            return self.count(DropReason::TooLarge);
        }
        let slot = match self.pending.iter().position(|p| p.id == id) {
            Some(slot) if self.pending[slot].count != count => {
                // A stale frame with a reused id, or a lying peer: keep neither.
                self.discard(slot, DropReason::Malformed);
                return Received::Dropped(DropReason::Malformed);
            }
            Some(slot) => slot,
            None => {
                self.pending.push(Pending {
                    id,
                    count,
                    first_arrival: now,
                    part_len: None,
                    last_len: None,
                    parts: vec![None; usize::from(count)],
                    have: 0,
                    bytes: 0,
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[slot];
        if p.parts[usize::from(index)].is_some() {
            return self.count(DropReason::Duplicate);
        }
        let consistent = if is_last {
            p.last_len = Some(len);
            p.part_len.is_none_or(|part| len <= part)
        } else {
            let part = *p.part_len.get_or_insert(len);
            part == len && p.last_len.is_none_or(|last| last <= part)
        };
        if !consistent {
            self.discard(slot, DropReason::Malformed);
            return Received::Dropped(DropReason::Malformed);
        }
        if let Some(part) = p.part_len {
            let last = p.last_len.unwrap_or(1);
            if (usize::from(count) - 1) * part + last > self.limits.max_frame_size {
                self.discard(slot, DropReason::TooLarge);
                return Received::Dropped(DropReason::TooLarge);
            }
        }
        p.parts[usize::from(index)] = Some(payload);
        p.have += 1;
        p.bytes += len;
        self.bytes += len;
        if p.have == usize::from(p.count) {
            let p = self.pending.remove(slot);
            self.bytes -= p.bytes;
            let mut frame = BytesMut::with_capacity(p.bytes);
            for part in p.parts.into_iter().flatten() {
                frame.put_slice(&part);
            }
            return Received::Frame(frame.freeze());
        }
        // Bound memory: evict the oldest frames (never the one just added to, if avoidable).
        while self.pending.len() > MAX_PENDING_FRAMES {
            self.discard(0, DropReason::Overflow);
        }
        while self.bytes > self.limits.max_pending_bytes && !self.pending.is_empty() {
            self.discard(0, DropReason::Overflow);
        }
        Received::Stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn limits() -> ReassemblyLimits {
        ReassemblyLimits::default()
    }

    #[test]
    fn small_frame_is_one_whole_datagram() {
        let mut out = Vec::new();
        let n = Fragmenter::new().encode(&[0xaa, 0xbb, 0xcc], 1211, &mut out);
        assert_eq!(n, Ok(1));
        assert_eq!(&out[0][..], &[0x00, 0xaa, 0xbb, 0xcc]);
    }

    #[test]
    fn frame_exactly_one_byte_short_of_the_limit_is_whole() {
        // 1210 bytes + the type byte = 1211, Chromium's limit.
        let mut out = Vec::new();
        assert_eq!(
            Fragmenter::new().encode(&frame(1210), 1211, &mut out),
            Ok(1)
        );
        assert_eq!(out[0].len(), 1211);
        out.clear();
        assert_eq!(
            Fragmenter::new().encode(&frame(1211), 1211, &mut out),
            Ok(2)
        );
        assert!(out.iter().all(|d| d.len() <= 1211));
    }

    #[test]
    fn fragment_byte_fixture() {
        // 10-byte frame, datagrams of at most 9 bytes: 4 payload bytes per fragment.
        let mut f = Fragmenter { next_id: 0x1234 };
        let mut out = Vec::new();
        assert_eq!(
            f.encode(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 9, &mut out),
            Ok(3)
        );
        assert_eq!(&out[0][..], &[0x01, 0x12, 0x34, 0, 3, 1, 2, 3, 4]);
        assert_eq!(&out[1][..], &[0x01, 0x12, 0x34, 1, 3, 5, 6, 7, 8]);
        assert_eq!(&out[2][..], &[0x01, 0x12, 0x34, 2, 3, 9, 10]);
        // The next frame takes the next id.
        out.clear();
        f.encode(&[0; 10], 9, &mut out).unwrap();
        assert_eq!(&out[0][..3], &[0x01, 0x12, 0x35]);
    }

    #[test]
    fn ids_wrap() {
        let mut f = Fragmenter { next_id: 0xffff };
        let mut out = Vec::new();
        f.encode(&[0; 10], 9, &mut out).unwrap();
        f.encode(&[0; 10], 9, &mut out).unwrap();
        assert_eq!(&out[0][1..3], &[0xff, 0xff]);
        assert_eq!(&out[3][1..3], &[0x00, 0x00]);
    }

    #[test]
    fn too_many_fragments_is_refused() {
        let mut out = Vec::new();
        let mut f = Fragmenter::new();
        // 64 fragments of 10 payload bytes carry 640 bytes at most.
        assert_eq!(f.encode(&frame(640), 15, &mut out), Ok(64));
        assert_eq!(
            f.encode(&frame(641), 15, &mut out),
            Err(SendError::TooLarge)
        );
        assert_eq!(f.encode(&frame(100), 5, &mut out), Err(SendError::TooLarge));
    }

    #[test]
    fn reassembles_fixture_in_any_order() {
        let now = Instant::now();
        let mut r = Reassembler::new(limits());
        let d = |b: &[u8]| Bytes::copy_from_slice(b);
        assert_eq!(
            r.receive(now, d(&[0x01, 0, 7, 2, 3, 9, 10])),
            Received::Stored
        );
        assert_eq!(r.pending_bytes(), 2);
        assert_eq!(
            r.receive(now, d(&[0x01, 0, 7, 0, 3, 1, 2, 3, 4])),
            Received::Stored
        );
        assert_eq!(
            r.receive(now, d(&[0x01, 0, 7, 1, 3, 5, 6, 7, 8])),
            Received::Frame(Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
        );
        assert_eq!(r.pending_bytes(), 0);
        assert_eq!(r.pending_frames(), 0);
    }

    #[test]
    fn round_trip_of_every_frame_size_the_tests_use() {
        let now = Instant::now();
        for max in [1211, 1200, 1500, 64] {
            let mut f = Fragmenter::new();
            let mut r = Reassembler::new(limits());
            for len in [14, 60, 1210, 1211, 1212, 1400, 1514, 3000] {
                let original = frame(len);
                let mut out = Vec::new();
                if f.encode(&original, max, &mut out).is_err() {
                    assert!(len > 64 * (max - FRAGMENT_HEADER));
                    continue;
                }
                assert!(out.iter().all(|d| d.len() <= max));
                let mut got = None;
                for d in out.into_iter().rev() {
                    if let Received::Frame(frame) = r.receive(now, d) {
                        got = Some(frame);
                    }
                }
                assert_eq!(got.as_deref(), Some(&original[..]), "len {len} max {max}");
            }
            assert_eq!(r.pending_bytes(), 0);
        }
    }

    #[test]
    fn hostile_headers_are_dropped_and_counted() {
        let now = Instant::now();
        let mut r = Reassembler::new(limits());
        let d = |b: &[u8]| Bytes::copy_from_slice(b);
        let cases: [(&[u8], DropReason); 8] = [
            (&[], DropReason::UnknownType),
            (&[0x02, 1, 2], DropReason::UnknownType),
            (&[0xff], DropReason::UnknownType),
            (&[0x01, 0, 1, 0], DropReason::Malformed), // header cut short
            (&[0x01, 0, 1, 0, 1, 9], DropReason::Malformed), // count 1
            (&[0x01, 0, 1, 0, 65, 9], DropReason::Malformed), // count 65
            (&[0x01, 0, 1, 3, 3, 9], DropReason::Malformed), // index == count
            (&[0x01, 0, 1, 0, 2], DropReason::Malformed), // empty payload
        ];
        for (bytes, reason) in cases {
            assert_eq!(
                r.receive(now, d(bytes)),
                Received::Dropped(reason),
                "{bytes:?}"
            );
        }
        assert_eq!(r.drops(DropReason::UnknownType), 3);
        assert_eq!(r.drops(DropReason::Malformed), 5);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn inconsistent_fragments_drop_the_frame() {
        let now = Instant::now();
        let mut r = Reassembler::new(limits());
        let d = |b: &[u8]| Bytes::copy_from_slice(b);
        assert_eq!(
            r.receive(now, d(&[0x01, 0, 1, 0, 3, 1, 2])),
            Received::Stored
        );
        // A middle fragment of another length.
        assert_eq!(
            r.receive(now, d(&[0x01, 0, 1, 1, 3, 1, 2, 3])),
            Received::Dropped(DropReason::Malformed)
        );
        assert_eq!(r.pending_bytes(), 0);
        // Same id, other count.
        assert_eq!(
            r.receive(now, d(&[0x01, 0, 2, 0, 3, 1, 2])),
            Received::Stored
        );
        assert_eq!(
            r.receive(now, d(&[0x01, 0, 2, 1, 4, 1, 2])),
            Received::Dropped(DropReason::Malformed)
        );
        // A last fragment longer than the others.
        assert_eq!(
            r.receive(now, d(&[0x01, 0, 3, 0, 2, 1, 2])),
            Received::Stored
        );
        assert_eq!(
            r.receive(now, d(&[0x01, 0, 3, 1, 2, 1, 2, 3])),
            Received::Dropped(DropReason::Malformed)
        );
        assert_eq!(r.pending_frames(), 0);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn duplicates_are_counted_not_stored() {
        let now = Instant::now();
        let mut r = Reassembler::new(limits());
        let d = Bytes::from_static(&[0x01, 0, 1, 0, 2, 1, 2]);
        assert_eq!(r.receive(now, d.clone()), Received::Stored);
        assert_eq!(r.receive(now, d), Received::Dropped(DropReason::Duplicate));
        assert_eq!(r.pending_bytes(), 2);
    }

    #[test]
    fn lost_fragment_times_out_and_frees_memory() {
        let start = Instant::now();
        let mut r = Reassembler::new(limits());
        let d = Bytes::from_static(&[0x01, 0, 1, 0, 2, 1, 2, 3]);
        assert_eq!(r.receive(start, d), Received::Stored);
        assert_eq!(r.poll_timeout(), Some(start + REASSEMBLY_TIMEOUT));
        r.handle_timeout(start + Duration::from_millis(999));
        assert_eq!(r.pending_bytes(), 3);
        r.handle_timeout(start + REASSEMBLY_TIMEOUT);
        assert_eq!(r.pending_bytes(), 0);
        assert_eq!(r.drops(DropReason::Timeout), 1);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn more_than_64_pending_frames_evicts_the_oldest() {
        let now = Instant::now();
        let mut r = Reassembler::new(limits());
        for id in 0..=64u16 {
            let [hi, lo] = id.to_be_bytes();
            let d = Bytes::copy_from_slice(&[0x01, hi, lo, 0, 2, 1, 2]);
            assert_eq!(r.receive(now, d), Received::Stored);
        }
        assert_eq!(r.pending_frames(), 64);
        assert_eq!(r.drops(DropReason::Overflow), 1);
        assert_eq!(r.pending_bytes(), 128);
        // Frame 0 was evicted: its last fragment now starts a new incomplete frame.
        let d = Bytes::from_static(&[0x01, 0, 0, 1, 2, 3]);
        assert_eq!(r.receive(now, d), Received::Stored);
    }

    #[test]
    fn byte_budget_evicts_the_oldest() {
        let now = Instant::now();
        let mut r = Reassembler::new(ReassemblyLimits {
            max_frame_size: 65549,
            max_pending_bytes: 10,
        });
        let d = |id: u8| Bytes::copy_from_slice(&[0x01, 0, id, 0, 2, 1, 2, 3, 4, 5, 6]);
        assert_eq!(r.receive(now, d(1)), Received::Stored);
        assert_eq!(r.receive(now, d(2)), Received::Stored);
        assert_eq!(r.pending_frames(), 1);
        assert!(r.pending_bytes() <= 10);
        assert_eq!(r.drops(DropReason::Overflow), 1);
    }

    #[test]
    fn frames_over_the_size_limit_are_dropped() {
        let now = Instant::now();
        let mut r = Reassembler::new(ReassemblyLimits {
            max_frame_size: 20,
            max_pending_bytes: 1000,
        });
        let mut whole = vec![0x00];
        whole.extend(frame(21));
        assert_eq!(
            r.receive(now, Bytes::from(whole)),
            Received::Dropped(DropReason::TooLarge)
        );
        // 3 fragments of 10: at least 21 bytes.
        let d = Bytes::copy_from_slice(&[&[0x01, 0, 1, 0, 3][..], &[0; 10]].concat());
        assert_eq!(r.receive(now, d), Received::Dropped(DropReason::TooLarge));
        // A last fragment first, then a middle one that makes it too big.
        let last = Bytes::copy_from_slice(&[&[0x01, 0, 2, 1, 2][..], &[0; 10]].concat());
        let first = Bytes::copy_from_slice(&[&[0x01, 0, 2, 0, 2][..], &[0; 11]].concat());
        assert_eq!(r.receive(now, last), Received::Stored);
        assert_eq!(
            r.receive(now, first),
            Received::Dropped(DropReason::TooLarge)
        );
        assert_eq!(r.pending_bytes(), 0);
    }
}
