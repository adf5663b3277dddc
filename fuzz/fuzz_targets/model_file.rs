//! An isolation-forest model file (`models/*.iforest.json`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::detect::iforest::file::ModelFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ModelFile::from_json(text, "fuzz.json");
    }
});
