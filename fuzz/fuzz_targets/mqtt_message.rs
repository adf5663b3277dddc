//! One MQTT message (topic, a zero byte, payload) through a topic map with placeholders,
//! a JSON object of fields with a timestamp, and a bare number.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wattchdog::model::Names;
use wattchdog::protocol::topics::TopicMap;

const MAP: &str = r#"
profile = "fuzz"
source = "fuzz target"

[[topics]]
topic = "wattchdog/{site}/{kind}/{device}"
payload = "json"
timestamp = "ts"
fields_object = "values"

[[topics]]
topic = "plant/{device}/{metric}"
payload = "number"
kind = "ups"
"#;

fuzz_target!(|data: &[u8]| {
    static TOPICS: OnceLock<TopicMap> = OnceLock::new();
    let map = TOPICS.get_or_init(|| TopicMap::from_toml_str(MAP, "fuzz").expect("map"));
    let (topic, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let _ = map.decode(&String::from_utf8_lossy(topic), payload, 0, "site", &mut Names::default());
});
