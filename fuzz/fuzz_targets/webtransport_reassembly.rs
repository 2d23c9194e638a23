//! Arbitrary datagrams at arbitrary times into one session's reassembler: it must never
//! panic, its memory must stay within its bounds, and what it delivers must be a frame that
//! the limits allow. Every whole frame it is also fed round-trips through the fragmenter.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use webtransport::{
    Fragmenter, MAX_PENDING_FRAMES, Reassembler, ReassemblyLimits, Received,
};

fuzz_target!(|data: &[u8]| {
    let limits = ReassemblyLimits {
        max_frame_size: 2000,
        max_pending_bytes: 4096,
    };
    let mut r = Reassembler::new(limits);
    let start = Instant::now();
    let mut clock = Duration::ZERO;
    // Each record: [time step byte, length byte, datagram bytes...].
    let mut rest = data;
    while let [step, len, tail @ ..] = rest {
        clock += Duration::from_millis(u64::from(*step) * 8);
        let now = start + clock;
        let len = (*len as usize).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        if let Received::Frame(frame) = r.receive(now, Bytes::copy_from_slice(datagram)) {
            assert!(frame.len() <= limits.max_frame_size);
            // Whatever arrives must survive a round trip at a small datagram size.
            let mut out = Vec::new();
            let mut back = Reassembler::new(limits);
            if Fragmenter::new().encode(&frame, 64, &mut out).is_ok() {
                let last = out.into_iter().map(|d| back.receive(now, d)).last();
                assert_eq!(last, Some(Received::Frame(frame)));
            }
        }
        assert!(r.pending_bytes() <= limits.max_pending_bytes);
        assert!(r.pending_frames() <= MAX_PENDING_FRAMES);
        if step % 7 == 0 {
            r.handle_timeout(now);
        }
        rest = next;
    }
    r.handle_timeout(start + clock + Duration::from_secs(2));
    assert_eq!(r.pending_bytes(), 0);
});
