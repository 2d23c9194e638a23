//! Arbitrary IPv4 fragments at arbitrary times into one LAN's reassembler: it must never
//! panic, its memory must stay within its per-source and total bounds, every datagram it
//! returns must be a valid IPv4 packet of at most 65535 bytes, and after the timeout it
//! must hold nothing. Records are mostly well-formed fragments (so reassembly is
//! reached), sometimes raw bytes.
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use gateway::smoltcp::wire::Ipv4Packet;
use gateway::wire::frag::{FragLimits, MAX_DATAGRAM, Reassembler, fragment};
use libfuzzer_sys::fuzz_target;

/// Small bounds, so a short input reaches them.
const LIMITS: FragLimits = FragLimits {
    timeout: Duration::from_secs(30),
    max_bytes_per_source: 4096,
    max_datagrams_per_source: 4,
    max_bytes: 8192,
};

/// A fragment from record bytes: [source, ident, offset/8 hi, lo, flags, len, data...].
fn build(record: &[u8]) -> Vec<u8> {
    let [src, ident, off_hi, off_lo, flags, len, data @ ..] = record else {
        return record.to_vec();
    };
    let len = usize::from(*len).min(data.len());
    let mut bytes = vec![0; 20 + len];
    bytes[20..].copy_from_slice(&data[..len]);
    let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len((20 + len) as u16);
    ip.set_ident(u16::from(*ident % 4));
    ip.set_more_frags(flags & 1 != 0);
    ip.set_frag_offset(u16::from_be_bytes([*off_hi, *off_lo]) << 3);
    ip.set_hop_limit(64);
    ip.set_next_header(17.into());
    ip.set_src_addr(Ipv4Addr::new(10, 0, 2, 10 + src % 4));
    ip.set_dst_addr(Ipv4Addr::new(198, 18, 0, 2));
    ip.fill_checksum();
    bytes
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(LIMITS);
    let start = Instant::now();
    let mut clock = Duration::ZERO;
    // Each record: [time step, kind, length, bytes...].
    let mut rest = data;
    while let [step, kind, len, tail @ ..] = rest {
        clock += Duration::from_millis(u64::from(*step) * 64);
        let now = start + clock;
        let len = usize::from(*len).min(tail.len());
        let (record, next) = tail.split_at(len);
        let packet = if kind % 8 == 0 {
            record.to_vec()
        } else {
            build(record)
        };
        if let Some(whole) = r.handle(now, &packet) {
            // (smoltcp skips checksum checks under cfg(fuzzing): nothing to assert there.)
            let ip = Ipv4Packet::new_checked(&whole[..]).expect("a valid packet");
            assert!(whole.len() <= MAX_DATAGRAM);
            assert!(!ip.more_frags() && ip.frag_offset() == 0);
            // It fragments and reassembles back to itself at a small MTU (fragmenting
            // clears DF, so only packets without it come back byte for byte).
            if !ip.dont_frag() {
                let mut back = Reassembler::new(FragLimits::default());
                let pieces = fragment(&whole, 68, 0);
                let out = pieces.into_iter().filter_map(|f| back.handle(now, &f));
                // A packet that was not a fragment comes back as it was (reserved flag,
                // checksum); a reassembled one always has flags cleared, checksum filled.
                let mut expected = whole.clone();
                let mut normal = Ipv4Packet::new_unchecked(&mut expected[..]);
                normal.clear_flags();
                normal.fill_checksum();
                let mut got = out.last().expect("reassembled");
                Ipv4Packet::new_unchecked(&mut got[..]).fill_checksum();
                assert_eq!(got, expected);
            }
        }
        assert!(r.pending_bytes() <= LIMITS.max_bytes);
        for host in 10..14 {
            let source = Ipv4Addr::new(10, 0, 2, host);
            assert!(r.source_bytes(source) <= LIMITS.max_bytes_per_source);
            assert!(r.source_datagrams(source) <= LIMITS.max_datagrams_per_source);
        }
        if step % 5 == 0 {
            r.handle_timeout(now);
        }
        rest = next;
    }
    r.handle_timeout(start + clock + LIMITS.timeout);
    assert_eq!((r.pending_bytes(), r.pending_datagrams()), (0, 0));
});
