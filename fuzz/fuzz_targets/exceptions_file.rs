//! An analysts' exceptions file (`replay --exceptions`, `[[exception]]` tables).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::correlate::exceptions::Exceptions;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Exceptions::from_toml(text, "fuzz.toml");
    }
});
