//! Arbitrary frames from arbitrary ports into one switch: it must never panic and its table
//! must stay within the per-port bound.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switch::{PortId, Switch, SwitchConfig};

fuzz_target!(|data: &[u8]| {
    let config = SwitchConfig {
        mac_aging: Duration::from_secs(4),
        max_macs_per_port: 4,
    };
    let mut switch = Switch::new(config);
    for p in 0..4 {
        let _ = switch.add_port(PortId(p));
    }
    let start = Instant::now();
    // Each record: [port/control byte, length byte, frame bytes...].
    let mut rest = data;
    let mut step = 0u64;
    while let [control, len, tail @ ..] = rest {
        let len = (*len as usize).min(tail.len());
        let (frame, next) = tail.split_at(len);
        let now = start + Duration::from_millis(step * 500);
        match control % 8 {
            0..=4 => {
                switch.handle_frame(now, PortId(u64::from(control % 5)), frame);
            }
            5 => {
                switch.remove_port(PortId(u64::from(control / 8 % 4)));
            }
            6 => {
                let _ = switch.add_port(PortId(u64::from(control / 8 % 4)));
            }
            _ => switch.handle_timeout(now),
        }
        assert!(switch.mac_entries() <= 4 * 4);
        rest = next;
        step += 1;
    }
});
