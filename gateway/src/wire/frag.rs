//! IPv4 fragments: reassembly of the datagrams VMs send in pieces (RFC 791), and
//! fragmentation of the datagrams we send VMs that exceed the LAN's MTU.
//!
//! Sans-IO: IPv4 packet bytes and `now` in, whole datagrams out; nothing reads a clock.
//!
//! # Reassembly rules
//!
//! - A datagram is keyed by source, destination, protocol and identification (RFC 791).
//! - Overlapping fragments discard the whole datagram, and later fragments of it until its
//!   timeout (RFC 5722's rule; Linux does the same). An exact duplicate (same offset and
//!   length) is ignored, as Linux does since 4.19: retransmitted fragments are not attacks.
//! - A datagram whose end would pass 65535 bytes (header included) is discarded.
//! - A fragment with more fragments to follow must carry a non-empty multiple of 8 bytes.
//! - Memory is charged per piece (its bytes plus [`PIECE_OVERHEAD`]), bounded per source
//!   (a VM) and in total (a LAN). A source over its bound loses its own oldest datagrams;
//!   a fragment that would pass the total bound is refused with its datagram, so one VM
//!   cannot evict another's.
//! - A datagram not complete within [`FragLimits::timeout`] is discarded. No ICMP "time
//!   exceeded" is sent: the sender's transport retries, and an error would only help a
//!   scanner.
//!
//! Every discarded datagram (or refused lone fragment) is counted once, by [`FragDrop`].

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::wire::{IPV4_HEADER_LEN, Ipv4Packet};

/// Largest IPv4 datagram, header included.
pub const MAX_DATAGRAM: usize = 65535;
/// Bytes charged per stored piece on top of its payload: the allocation and bookkeeping a
/// piece costs, so a flood of 8-byte fragments is bounded too.
pub const PIECE_OVERHEAD: usize = 64;

labels::label_enum! {
    /// Why a datagram under reassembly (or a lone fragment) was discarded.
    pub enum FragDrop {
        /// Not complete within the timeout.
        Timeout => "timeout",
        /// A fragment overlapped another one (or disagreed about the datagram's end).
        Overlap => "overlap",
        /// The datagram would exceed 65535 bytes.
        Oversized => "oversized",
        /// Over the per-source or total bound of pending datagrams.
        TooMany => "too_many",
        /// A middle fragment whose length is zero or not a multiple of 8, or bad header.
        Malformed => "malformed",
    }
}

/// Counts per [`FragDrop`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FragDropCounts([u64; FragDrop::COUNT]);

impl FragDropCounts {
    pub fn add(&mut self, reason: FragDrop) {
        self.0[reason.index()] += 1;
    }

    pub fn get(&self, reason: FragDrop) -> u64 {
        self.0[reason.index()]
    }

    pub fn merge(&mut self, other: &FragDropCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Bounds of one reassembler (one LAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragLimits {
    /// How long a datagram may wait for its missing fragments (Linux: `ipfrag_time`, 30 s).
    pub timeout: Duration,
    /// Bytes charged to one source's pending datagrams.
    pub max_bytes_per_source: usize,
    /// Pending datagrams of one source.
    pub max_datagrams_per_source: usize,
    /// Bytes charged to all pending datagrams (Linux: `ipfrag_high_thresh`, 4 MiB).
    pub max_bytes: usize,
}

impl Default for FragLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            // Room for a few maximal datagrams in 1480-byte fragments.
            max_bytes_per_source: 256 * 1024,
            max_datagrams_per_source: 64,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Reassembly counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FragStats {
    /// Whole datagrams put back together.
    pub reassembled: u64,
    /// Exact duplicate fragments ignored.
    pub duplicates: u64,
    pub drops: FragDropCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ident: u16,
}

#[derive(Debug)]
struct Pending {
    /// The first fragment's header (options included), once it arrived.
    header: Option<Vec<u8>>,
    /// Payload pieces by offset, never overlapping.
    pieces: Vec<(usize, Vec<u8>)>,
    /// Payload bytes held.
    received: usize,
    /// Payload length, known once the last fragment (MF clear) arrived.
    total: Option<usize>,
    /// Bytes charged to the source and the total.
    charge: usize,
    /// Where this datagram sits in `Reassembler::deadlines`.
    deadline: (Instant, u64),
    /// Discarded (overlap, oversized): later fragments are dropped until the deadline.
    poisoned: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    bytes: usize,
    datagrams: usize,
}

/// One fragment, parsed.
struct Fragment<'a> {
    key: Key,
    header: &'a [u8],
    offset: usize,
    payload: &'a [u8],
    more: bool,
}

/// Reassembles the fragmented IPv4 datagrams of one LAN within [`FragLimits`].
#[derive(Debug)]
pub struct Reassembler {
    limits: FragLimits,
    pending: HashMap<Key, Pending>,
    /// Pending datagrams by deadline (and a serial, for uniqueness): oldest first.
    deadlines: BTreeMap<(Instant, u64), Key>,
    usage: HashMap<Ipv4Addr, Usage>,
    bytes: usize,
    next_serial: u64,
    stats: FragStats,
}

/// True when `packet` (a valid IPv4 packet) is a fragment: MF set or a non-zero offset.
pub fn is_fragment(packet: &Ipv4Packet<&[u8]>) -> bool {
    packet.more_frags() || packet.frag_offset() != 0
}

impl Reassembler {
    pub fn new(limits: FragLimits) -> Self {
        Self {
            limits,
            pending: HashMap::new(),
            deadlines: BTreeMap::new(),
            usage: HashMap::new(),
            bytes: 0,
            next_serial: 0,
            stats: FragStats::default(),
        }
    }

    pub fn limits(&self) -> &FragLimits {
        &self.limits
    }

    pub fn stats(&self) -> &FragStats {
        &self.stats
    }

    /// Bytes charged to all pending datagrams.
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// Datagrams waiting for fragments (discarded ones included until their deadline).
    pub fn pending_datagrams(&self) -> usize {
        self.pending.len()
    }

    /// Bytes charged to `source`'s pending datagrams.
    pub fn source_bytes(&self, source: Ipv4Addr) -> usize {
        self.usage.get(&source).map_or(0, |u| u.bytes)
    }

    /// Datagrams of `source` waiting for fragments.
    pub fn source_datagrams(&self, source: Ipv4Addr) -> usize {
        self.usage.get(&source).map_or(0, |u| u.datagrams)
    }

    /// When [`Self::handle_timeout`] has a datagram to discard.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|&(at, _)| at)
    }

    /// Discards the datagrams whose time is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((&(at, _), &key)) = self.deadlines.iter().next() {
            if at > now {
                break;
            }
            if let Some(pending) = self.remove(key)
                && !pending.poisoned
            {
                self.stats.drops.add(FragDrop::Timeout);
            }
        }
    }

    /// One IPv4 packet (bytes up to at least its total length). A fragment is stored, and
    /// the datagram it completes is returned as one IPv4 packet: the first fragment's
    /// header with the flags, offset, total length and checksum rewritten. A packet that
    /// is not a fragment comes back as it is.
    pub fn handle(&mut self, now: Instant, packet: &[u8]) -> Option<Vec<u8>> {
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            self.stats.drops.add(FragDrop::Malformed);
            return None;
        };
        let total_len = usize::from(ip.total_len());
        if !is_fragment(&ip) {
            return Some(packet[..total_len].to_vec());
        }
        let header_len = usize::from(ip.header_len());
        let fragment = Fragment {
            key: Key {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
                protocol: ip.next_header().into(),
                ident: ip.ident(),
            },
            header: &packet[..header_len],
            offset: usize::from(ip.frag_offset()),
            payload: &packet[header_len..total_len],
            more: ip.more_frags(),
        };
        if fragment.more
            && (fragment.payload.is_empty() || !fragment.payload.len().is_multiple_of(8))
        {
            self.stats.drops.add(FragDrop::Malformed);
            return None;
        }
        self.insert(now, fragment)
    }

    fn insert(&mut self, now: Instant, fragment: Fragment) -> Option<Vec<u8>> {
        let key = fragment.key;
        let end = fragment.offset + fragment.payload.len();
        if !self.pending.contains_key(&key) && !self.admit(now, key) {
            return None;
        }
        let pending = self.pending.get_mut(&key)?;
        if pending.poisoned {
            return None;
        }
        if fragment.header.len() + end > MAX_DATAGRAM {
            return self.poison(key, FragDrop::Oversized);
        }
        let Some(at) = place(pending, fragment.offset, end, fragment.more) else {
            return self.poison(key, FragDrop::Overlap);
        };
        let Placement::At(index) = at else {
            self.stats.duplicates += 1;
            return None;
        };
        let mut charge = fragment.payload.len() + PIECE_OVERHEAD;
        if fragment.offset == 0 {
            charge += fragment.header.len();
        }
        if !self.charge(key, charge) {
            return None;
        }
        let pending = self.pending.get_mut(&key)?;
        pending
            .pieces
            .insert(index, (fragment.offset, fragment.payload.to_vec()));
        pending.received += fragment.payload.len();
        if fragment.offset == 0 {
            pending.header = Some(fragment.header.to_vec());
        }
        if !fragment.more {
            pending.total = Some(end);
        }
        self.complete(key)
    }

    /// Makes room for a new datagram of `key.src` and starts it; false if refused.
    fn admit(&mut self, now: Instant, key: Key) -> bool {
        while self.source_datagrams(key.src) >= self.limits.max_datagrams_per_source.max(1) {
            if !self.evict_oldest_of(key.src, key) {
                break;
            }
        }
        if self.source_datagrams(key.src) >= self.limits.max_datagrams_per_source.max(1) {
            self.stats.drops.add(FragDrop::TooMany);
            return false;
        }
        let deadline = (now + self.limits.timeout, self.next_serial);
        self.next_serial += 1;
        self.deadlines.insert(deadline, key);
        self.pending.insert(
            key,
            Pending {
                header: None,
                pieces: Vec::new(),
                received: 0,
                total: None,
                charge: 0,
                deadline,
                poisoned: false,
            },
        );
        self.usage.entry(key.src).or_default().datagrams += 1;
        true
    }

    /// Charges `bytes` to `key`'s datagram, evicting its source's older datagrams if the
    /// source is over its bound. False (and the datagram discarded) when it cannot fit.
    fn charge(&mut self, key: Key, bytes: usize) -> bool {
        while self.source_bytes(key.src) + bytes > self.limits.max_bytes_per_source {
            if !self.evict_oldest_of(key.src, key) {
                break;
            }
        }
        if self.source_bytes(key.src) + bytes > self.limits.max_bytes_per_source
            || self.bytes + bytes > self.limits.max_bytes
        {
            self.poison(key, FragDrop::TooMany);
            return false;
        }
        if let Some(pending) = self.pending.get_mut(&key) {
            pending.charge += bytes;
        }
        self.usage.entry(key.src).or_default().bytes += bytes;
        self.bytes += bytes;
        true
    }

    /// Discards `source`'s oldest datagram other than `keep`; false if it has none.
    fn evict_oldest_of(&mut self, source: Ipv4Addr, keep: Key) -> bool {
        let victim = self
            .deadlines
            .values()
            .find(|key| key.src == source && **key != keep)
            .copied();
        let Some(victim) = victim else {
            return false;
        };
        if let Some(pending) = self.remove(victim)
            && !pending.poisoned
        {
            self.stats.drops.add(FragDrop::TooMany);
        }
        true
    }

    /// Frees `key`'s pieces and drops its later fragments until its deadline.
    fn poison(&mut self, key: Key, reason: FragDrop) -> Option<Vec<u8>> {
        let pending = self.pending.get_mut(&key)?;
        if pending.poisoned {
            return None;
        }
        self.stats.drops.add(reason);
        pending.poisoned = true;
        pending.pieces = Vec::new();
        pending.header = None;
        let charge = std::mem::take(&mut pending.charge);
        self.uncharge(key.src, charge);
        None
    }

    fn uncharge(&mut self, source: Ipv4Addr, bytes: usize) {
        self.bytes -= bytes;
        if let Some(usage) = self.usage.get_mut(&source) {
            usage.bytes -= bytes;
        }
    }

    /// Forgets `key` entirely and returns what it held.
    fn remove(&mut self, key: Key) -> Option<Pending> {
        let pending = self.pending.remove(&key)?;
        self.deadlines.remove(&pending.deadline);
        self.uncharge(key.src, pending.charge);
        if let Some(usage) = self.usage.get_mut(&key.src) {
            usage.datagrams -= 1;
            if usage.datagrams == 0 {
                self.usage.remove(&key.src);
            }
        }
        Some(pending)
    }

    /// The whole datagram, if `key` has every piece and its header.
    fn complete(&mut self, key: Key) -> Option<Vec<u8>> {
        let pending = self.pending.get(&key)?;
        let total = pending.total?;
        if pending.header.is_none() || pending.received != total {
            return None;
        }
        let header_len = pending.header.as_ref().map_or(0, Vec::len);
        if header_len + total > MAX_DATAGRAM {
            // Each fragment fit, but the first one's options push the whole over the limit.
            return self.poison(key, FragDrop::Oversized);
        }
        let pending = self.remove(key)?;
        let mut packet = pending.header.unwrap_or_default();
        packet.reserve(total);
        for (_, piece) in pending.pieces {
            packet.extend_from_slice(&piece);
        }
        let mut ip = Ipv4Packet::new_unchecked(&mut packet[..]);
        ip.clear_flags();
        ip.set_frag_offset(0);
        ip.set_total_len((header_len + total) as u16);
        ip.fill_checksum();
        self.stats.reassembled += 1;
        Some(packet)
    }
}

/// Where a new piece goes.
enum Placement {
    /// Insert at this index of `pieces`.
    At(usize),
    /// The same range is held already.
    Duplicate,
}

/// Where `[offset, end)` fits among `pending`'s pieces, or `None` if it overlaps one or
/// contradicts the datagram's known end. Pieces do not overlap and the end is checked, so
/// `received == total` means the datagram is whole.
fn place(pending: &Pending, offset: usize, end: usize, more: bool) -> Option<Placement> {
    let index = pending.pieces.partition_point(|(start, _)| *start < offset);
    if let Some((start, piece)) = pending.pieces.get(index)
        && *start == offset
        && piece.len() == end - offset
    {
        return Some(Placement::Duplicate);
    }
    match pending.total {
        Some(total) if end > total || (!more && end != total) => return None,
        _ => {}
    }
    if !more
        && pending
            .pieces
            .last()
            .is_some_and(|(s, p)| s + p.len() > end)
    {
        return None;
    }
    if index > 0
        && let Some((start, piece)) = pending.pieces.get(index - 1)
        && start + piece.len() > offset
    {
        return None;
    }
    if let Some((start, _)) = pending.pieces.get(index)
        && *start < end
    {
        return None;
    }
    Some(Placement::At(index))
}

/// Splits an IPv4 packet longer than `mtu` into fragments of at most `mtu` bytes, each
/// after `headroom` free bytes (for the Ethernet header). DF is cleared: we are the
/// sender of what we fragment. Fragments after the first carry the basic 20-byte header
/// (no options: ours never have any). A packet that fits comes back alone; an `mtu` too
/// small to carry 8 bytes of payload gives nothing.
pub fn fragment(packet: &[u8], mtu: usize, headroom: usize) -> Vec<Vec<u8>> {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else {
        return Vec::new();
    };
    let total_len = usize::from(ip.total_len());
    let mut whole = vec![0; headroom];
    whole.extend_from_slice(&packet[..total_len]);
    if total_len <= mtu {
        return vec![whole];
    }
    let header_len = usize::from(ip.header_len());
    let base_offset = usize::from(ip.frag_offset());
    let last_more = ip.more_frags();
    let payload = &packet[header_len..total_len];
    let mut out = Vec::new();
    let mut done = 0;
    while done < payload.len() {
        let header = if done == 0 {
            &packet[..header_len]
        } else {
            &packet[..IPV4_HEADER_LEN]
        };
        let room = mtu.saturating_sub(header.len()) & !7;
        if room == 0 {
            return Vec::new();
        }
        let take = room.min(payload.len() - done);
        let mut bytes = vec![0; headroom];
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&payload[done..done + take]);
        let mut frag = Ipv4Packet::new_unchecked(&mut bytes[headroom..]);
        frag.set_header_len(header.len() as u8);
        frag.set_total_len((header.len() + take) as u16);
        frag.clear_flags();
        frag.set_more_frags(last_more || done + take < payload.len());
        frag.set_frag_offset((base_offset + done) as u16);
        frag.fill_checksum();
        out.push(bytes);
        done += take;
    }
    out
}

#[cfg(test)]
mod tests;
