//! Feeds arbitrary text to `capture::Filter::parse`, then matches what parsed against the
//! same bytes as a frame: neither may panic, and a filter that parsed must parse again from
//! the same text to the same filter (parsing is pure).
#![no_main]

use capture::Filter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(filter) = Filter::parse(text) {
        let _ = filter.matches(data);
        assert_eq!(Filter::parse(text).ok(), Some(filter));
    }
});
