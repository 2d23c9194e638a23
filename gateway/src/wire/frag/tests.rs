//! Byte fixtures: UDP 10.0.2.15:40000 -> 198.18.0.2:7 with 32 bytes of payload, whole and
//! in three fragments of 16, 16 and 8 bytes (identification 0x4242, TTL 64, DF clear).
//! The bytes and checksums were computed independently of smoltcp (a Python script).

use super::*;

const WHOLE: &str = concat!(
    "4500003c424200004011664c0a00020fc6120002",
    "9c4000070028ee80",
    "303132333435363738396162636465666768696a6b6c6d6e6f70717273747576",
);
/// Offset 0, MF: the UDP header and "01234567".
const F0: &str = "4500002442422000401146640a00020fc61200029c4000070028ee803031323334353637";
/// Offset 16, MF.
const F1: &str = "4500002442422002401146620a00020fc612000238396162636465666768696a6b6c6d6e";
/// Offset 32, last.
const F2: &str = "4500001c42420004401166680a00020fc61200026f70717273747576";

const VM: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A fragment with its fields changed, checksum refilled.
fn edit(fixture: &str, change: impl FnOnce(&mut Ipv4Packet<&mut [u8]>)) -> Vec<u8> {
    let mut bytes = hex(fixture);
    let mut packet = Ipv4Packet::new_unchecked(&mut bytes[..]);
    change(&mut packet);
    packet.fill_checksum();
    bytes
}

/// A first fragment (offset 0, MF) of `len` payload bytes from `src` with `ident`.
fn first_fragment(src: Ipv4Addr, ident: u16, len: usize) -> Vec<u8> {
    let mut bytes = hex(&F0[..40]);
    bytes.resize(20 + len, 0x5a);
    let mut packet = Ipv4Packet::new_unchecked(&mut bytes[..]);
    packet.set_src_addr(src);
    packet.set_ident(ident);
    packet.set_total_len((20 + len) as u16);
    packet.fill_checksum();
    bytes
}

fn feed(r: &mut Reassembler, now: Instant, fixtures: &[&str]) -> Vec<Vec<u8>> {
    fixtures
        .iter()
        .filter_map(|f| r.handle(now, &hex(f)))
        .collect()
}

#[test]
fn in_order_fragments_make_the_datagram() {
    let mut r = Reassembler::new(FragLimits::default());
    let now = Instant::now();
    assert_eq!(feed(&mut r, now, &[F0, F1, F2]), vec![hex(WHOLE)]);
    assert_eq!(r.stats().reassembled, 1);
    assert_eq!((r.pending_bytes(), r.pending_datagrams()), (0, 0));
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn out_of_order_fragments_make_the_datagram() {
    for order in [[F2, F0, F1], [F1, F2, F0], [F2, F1, F0]] {
        let mut r = Reassembler::new(FragLimits::default());
        assert_eq!(feed(&mut r, Instant::now(), &order), vec![hex(WHOLE)]);
        assert_eq!(r.source_bytes(VM), 0);
    }
}

#[test]
fn a_whole_packet_passes_through() {
    let mut r = Reassembler::new(FragLimits::default());
    assert_eq!(r.handle(Instant::now(), &hex(WHOLE)), Some(hex(WHOLE)));
    assert_eq!(r.stats().reassembled, 0);
}

#[test]
fn exact_duplicates_are_ignored() {
    let mut r = Reassembler::new(FragLimits::default());
    let got = feed(&mut r, Instant::now(), &[F0, F1, F1, F0, F2]);
    assert_eq!(got, vec![hex(WHOLE)]);
    assert_eq!(r.stats().duplicates, 2);
    assert_eq!(r.stats().drops.total(), 0);
}

#[test]
fn overlapping_fragments_discard_the_datagram() {
    let mut r = Reassembler::new(FragLimits::default());
    let now = Instant::now();
    // 16 bytes at offset 8: overlaps the end of F0 and the start of F1.
    let overlap = edit(F1, |p| p.set_frag_offset(8));
    assert_eq!(r.handle(now, &hex(F0)), None);
    assert_eq!(r.handle(now, &overlap), None);
    assert_eq!(r.stats().drops.get(FragDrop::Overlap), 1);
    assert_eq!(r.pending_bytes(), 0, "pieces freed at once");
    // The rest of the datagram is dropped too, and not counted again at the timeout.
    assert!(feed(&mut r, now, &[F1, F2]).is_empty());
    r.handle_timeout(now + Duration::from_secs(30));
    assert_eq!(r.stats().drops.total(), 1);
    assert_eq!(r.pending_datagrams(), 0);
    // A new datagram with the same identification after that is fine.
    assert_eq!(feed(&mut r, now, &[F0, F1, F2]), vec![hex(WHOLE)]);
}

#[test]
fn a_last_fragment_that_disagrees_about_the_end_is_an_overlap() {
    let mut r = Reassembler::new(FragLimits::default());
    let now = Instant::now();
    let early_end = edit(F1, |p| p.set_more_frags(false));
    assert!(feed(&mut r, now, &[F2]).is_empty());
    assert_eq!(r.handle(now, &early_end), None);
    assert_eq!(r.stats().drops.get(FragDrop::Overlap), 1);
}

#[test]
fn datagrams_past_65535_bytes_are_discarded() {
    let mut r = Reassembler::new(FragLimits::default());
    let now = Instant::now();
    // 16 bytes at offset 65528: ends at 65544 + 20 header bytes.
    let beyond = edit(F1, |p| p.set_frag_offset(65528));
    assert_eq!(r.handle(now, &hex(F0)), None);
    assert_eq!(r.handle(now, &beyond), None);
    assert_eq!(r.stats().drops.get(FragDrop::Oversized), 1);
    assert_eq!(r.pending_bytes(), 0);
}

#[test]
fn middle_fragments_must_be_a_multiple_of_eight() {
    let mut r = Reassembler::new(FragLimits::default());
    let mut odd = hex(F0);
    odd.truncate(20 + 12);
    let mut packet = Ipv4Packet::new_unchecked(&mut odd[..]);
    packet.set_total_len(32);
    packet.fill_checksum();
    assert_eq!(r.handle(Instant::now(), &odd), None);
    assert_eq!(r.stats().drops.get(FragDrop::Malformed), 1);
    assert_eq!(r.pending_datagrams(), 0);
    assert_eq!(r.handle(Instant::now(), &[0x45, 0, 0]), None);
    assert_eq!(r.stats().drops.get(FragDrop::Malformed), 2);
}

#[test]
fn incomplete_datagrams_time_out() {
    let mut r = Reassembler::new(FragLimits::default());
    let now = Instant::now();
    assert!(feed(&mut r, now, &[F0, F2]).is_empty());
    assert_eq!(r.poll_timeout(), Some(now + Duration::from_secs(30)));
    r.handle_timeout(now + Duration::from_secs(29));
    assert_eq!(r.pending_datagrams(), 1);
    r.handle_timeout(now + Duration::from_secs(30));
    assert_eq!(r.stats().drops.get(FragDrop::Timeout), 1);
    assert_eq!((r.pending_bytes(), r.pending_datagrams()), (0, 0));
    assert_eq!(r.source_datagrams(VM), 0);
    assert_eq!(r.poll_timeout(), None);
    // F1 alone after the timeout starts a new datagram.
    assert!(feed(&mut r, now, &[F1]).is_empty());
}

#[test]
fn one_source_flooding_first_fragments_stays_within_its_bounds() {
    let limits = FragLimits::default();
    let mut r = Reassembler::new(limits);
    let now = Instant::now();
    for ident in 0..10_000u16 {
        assert_eq!(r.handle(now, &first_fragment(VM, ident, 1480)), None);
        assert!(r.source_bytes(VM) <= limits.max_bytes_per_source);
        assert!(r.source_datagrams(VM) <= limits.max_datagrams_per_source);
    }
    // The source's newest datagrams survive: its oldest were evicted.
    assert!(r.stats().drops.get(FragDrop::TooMany) >= 10_000 - 64);
    // A datagram of another source is unaffected.
    let other = edit(F2, |p| p.set_src_addr(Ipv4Addr::new(10, 0, 2, 16)));
    let first = edit(F0, |p| p.set_src_addr(Ipv4Addr::new(10, 0, 2, 16)));
    let middle = edit(F1, |p| p.set_src_addr(Ipv4Addr::new(10, 0, 2, 16)));
    assert_eq!(r.handle(now, &other), None);
    assert_eq!(r.handle(now, &first), None);
    assert!(r.handle(now, &middle).is_some());
}

#[test]
fn many_sources_flooding_stay_within_the_total() {
    let limits = FragLimits {
        max_bytes: 1024 * 1024,
        ..FragLimits::default()
    };
    let mut r = Reassembler::new(limits);
    let now = Instant::now();
    for host in 0..64u8 {
        let src = Ipv4Addr::new(10, 0, 2, host);
        for ident in 0..100u16 {
            r.handle(now, &first_fragment(src, ident, 1480));
            assert!(r.pending_bytes() <= limits.max_bytes);
        }
    }
    assert!(r.stats().drops.get(FragDrop::TooMany) > 0);
    r.handle_timeout(now + limits.timeout);
    assert_eq!((r.pending_bytes(), r.pending_datagrams()), (0, 0));
}

#[test]
fn fragment_splits_on_eight_byte_boundaries() {
    // MTU 36 leaves 16 bytes of payload per fragment: exactly the fixtures.
    let pieces = fragment(&hex(WHOLE), 36, 0);
    assert_eq!(pieces, vec![hex(F0), hex(F1), hex(F2)]);
    // MTU 43 also gives 16-byte pieces (23 rounded down to 8).
    assert_eq!(fragment(&hex(WHOLE), 43, 0), pieces);
}

#[test]
fn fragment_leaves_headroom_clears_df_and_round_trips() {
    let mut whole = hex(WHOLE);
    let mut packet = Ipv4Packet::new_unchecked(&mut whole[..]);
    packet.set_dont_frag(true);
    packet.fill_checksum();
    let pieces = fragment(&whole, 36, 14);
    assert_eq!(pieces.len(), 3);
    let mut r = Reassembler::new(FragLimits::default());
    let mut out = None;
    for piece in &pieces {
        assert_eq!(&piece[..14], &[0; 14]);
        let ip = Ipv4Packet::new_checked(&piece[14..]).unwrap();
        assert!(ip.verify_checksum() && !ip.dont_frag() && ip.total_len() <= 36);
        out = r.handle(Instant::now(), &piece[14..]);
    }
    assert_eq!(out, Some(hex(WHOLE)));
}

#[test]
fn fragment_keeps_what_fits_and_refuses_a_tiny_mtu() {
    assert_eq!(
        fragment(&hex(WHOLE), 60, 2),
        vec![[&[0, 0][..], &hex(WHOLE)].concat()]
    );
    assert!(fragment(&hex(WHOLE), 27, 0).is_empty());
    assert!(fragment(&[1, 2, 3], 1500, 0).is_empty());
}
