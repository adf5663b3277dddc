//! TCP reassembly and ADU cutting: the input is a list of segments
//! (seq: 4 bytes, flags: 1 byte, length: 1 byte, payload).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::source::pcap::reassembly::Stream;

fuzz_target!(|data: &[u8]| {
    let mut s = Stream::default();
    let mut at = 0;
    while at + 6 <= data.len() {
        let seq = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let syn = data[at + 4] & 1 == 1;
        let len = usize::from(data[at + 5]).min(data.len() - at - 6);
        let payload = &data[at + 6..at + 6 + len];
        if data[at + 4] & 2 == 2 {
            s.lost(seq);
        } else {
            s.push(seq, syn, payload);
        }
        while s.next_adu().is_some() {}
        at += 6 + len;
    }
    s.finish();
    while s.next_adu().is_some() {}
});
