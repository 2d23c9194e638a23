//! The cluster bus decoder on hostile bytes: never panics, and what it accepts encodes
//! back to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(message) = bus::wire::decode(&bytes) {
        let mut builder =
            bus::wire::Builder::new(message.kind, message.epoch, &message.node, &message.lan);
        for entry in &message.entries {
            builder.push(entry.port, &entry.frame);
        }
        assert_eq!(builder.finish(), bytes);
    }
});
