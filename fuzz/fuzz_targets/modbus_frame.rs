//! Two ADUs back to back, as a request and its response off the wire: MBAP headers,
//! PDUs in both directions, and the request/response fit check. Each PDU is also tried
//! in the other direction.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::protocol::frame;

fn adu(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let h = frame::mbap(data).ok()??;
    let end = h.adu_len().min(data.len());
    Some((&data[frame::MBAP_LEN..end], &data[end..]))
}

fuzz_target!(|data: &[u8]| {
    let Some((req, rest)) = adu(data) else {
        let _ = (frame::parse_request(data), frame::parse_response(data));
        return;
    };
    let resp = adu(rest).map_or(rest, |(p, _)| p);
    let _ = (frame::parse_response(req), frame::parse_request(resp));
    if let Ok(r) = frame::parse_request(req) {
        let _ = (r.function(), r.address(), r.count(), r.written());
        if let Ok(p) = frame::parse_response(resp) {
            let _ = frame::check_pair(&r, &p);
        }
    }
});
