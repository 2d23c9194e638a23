//! Feeds arbitrary bytes to `capture::Decoder::decode` as Ethernet frames, several per input
//! (split at 0xff 0xfe) so names learnt from one frame meet the next: no panic, and a line
//! stays short whatever the frame says.
#![no_main]

use capture::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new();
    decoder.name_ip(std::net::Ipv4Addr::new(10, 0, 2, 2), "gateway");
    for frame in data.split(|&b| b == 0xfe) {
        let line = decoder.decode(frame);
        assert!(line.to_string().len() < 1024, "{line}");
    }
});
