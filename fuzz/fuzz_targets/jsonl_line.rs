//! One line of a JSONL capture.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::model::points::Registry;
use wattchdog::source::jsonl::parse_line;

fuzz_target!(|data: &[u8]| {
    let _ = parse_line(data, &mut Registry::new(100));
});
