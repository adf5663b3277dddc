//! A consumer group member's assignment, as a Kafka coordinator sends it (`wattchdog
//! kafka status`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::kafka::assignment;

fuzz_target!(|data: &[u8]| {
    if let Ok(topics) = assignment::decode(data) {
        // What decodes encodes to bytes that decode the same.
        let list: Vec<(&str, &[i32])> = topics
            .iter()
            .map(|(t, p)| (t.as_str(), p.as_slice()))
            .collect();
        let again = assignment::decode(&assignment::encode(0, &list)).expect("round trip");
        assert_eq!(again, topics);
    }
});
