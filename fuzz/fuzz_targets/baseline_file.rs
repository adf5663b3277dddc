//! A protocol baseline file (`wattchdog learn`'s output, `replay --baseline`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::detect::baseline::Baseline;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(b) = Baseline::from_toml(text, "fuzz.toml") {
            // What parses writes back and reads again.
            let again = Baseline::from_toml(&b.to_toml(), "again.toml").expect("round trip");
            assert_eq!(again.talker, b.talker);
        }
    }
});
