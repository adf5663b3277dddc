//! The alert list's query string, then the store query it becomes (an error there would
//! be a 500).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::http::alert_query;
use wattchdog::sink::store::Store;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = alert_query(raw) {
        let store = Store::in_memory().expect("in-memory store");
        store.alerts(&q).expect("a checked query runs");
    }
});
