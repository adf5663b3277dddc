//! Telemetry records on the wire: the key is the site (so a site's readings land in one
//! partition, in order), the value a chunk of capture JSONL (the design's reading lines),
//! so anything that reads captures can read the topic and the record is parsed by the
//! same, fuzzed, line parser. A record from another producer is untrusted: each bad
//! line is counted with its reason and skipped; the rest of the record is kept.

use crate::model::event::Event;
use crate::model::points::Registry;
use crate::model::Reading;
use crate::source::jsonl::parse_line;
use crate::source::BadReason;

/// The value of one telemetry record: one JSON reading per line.
pub fn encode(batch: &[&Reading]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.len() * 128);
    for r in batch {
        // A `Reading` always serialises (plain strings and numbers).
        if serde_json::to_writer(&mut out, r).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// The events of one record's value, and its bad lines (1-based line, reason, detail).
pub fn decode(value: &[u8], reg: &mut Registry) -> (Vec<Event>, Vec<(usize, BadReason, String)>) {
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in value.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(line, reg) {
            Ok(e) => events.push(e),
            Err((reason, detail)) => bad.push((i + 1, reason, detail)),
        }
    }
    (events, bad)
}

/// Groups a batch by site, in first-seen order: one record per site.
pub fn by_site(batch: &[Reading]) -> Vec<(&str, Vec<&Reading>)> {
    let mut out: Vec<(&str, Vec<&Reading>)> = Vec::new();
    for r in batch {
        match out.iter_mut().find(|(s, _)| *s == &*r.site) {
            Some((_, v)) => v.push(r),
            None => out.push((&r.site, vec![r])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;
    use proptest::prelude::*;

    fn reading(site: &str, metric: &str, value: f64) -> Reading {
        Reading {
            ts: 1_783_382_400_000,
            site: site.into(),
            device: "ups-1".into(),
            kind: "ups".into(),
            metric: metric.into(),
            value,
            quality: Quality::Good,
        }
    }

    #[test]
    fn a_batch_round_trips_site_by_site_and_bad_lines_are_counted_not_fatal() {
        let batch = vec![
            reading("ams1", "load_pct", 41.5),
            reading("fra2", "load_pct", 12.0),
            reading("ams1", "output_power_kw", 300.25),
        ];
        let sites = by_site(&batch);
        assert_eq!(sites.len(), 2);
        assert_eq!((sites[0].0, sites[0].1.len()), ("ams1", 2));
        let mut value = encode(&sites[0].1);
        value.extend_from_slice(b"{\"ts\": 1}\nnot json\n\n");
        let mut reg = Registry::new(1000);
        let (events, bad) = decode(&value, &mut reg);
        assert_eq!(events.len(), 2);
        let values: Vec<f64> = events
            .iter()
            .map(|e| match e {
                Event::Sample { value, .. } => *value,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(values, [41.5, 300.25]);
        assert_eq!(bad.len(), 2);
        assert_eq!((bad[0].0, bad[0].1), (3, BadReason::MissingField));
        assert_eq!((bad[1].0, bad[1].1), (4, BadReason::InvalidJson));
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder; every non-blank line is an event or
        /// a counted bad line.
        #[test]
        fn decoding_never_panics_and_loses_no_line(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut reg = Registry::new(100);
            let (events, bad) = decode(&bytes, &mut reg);
            let lines = bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.strip_suffix(b"\r").unwrap_or(l).iter().all(u8::is_ascii_whitespace))
                .count();
            prop_assert_eq!(events.len() + bad.len(), lines);
        }

        /// Any finite reading survives the trip.
        #[test]
        fn readings_round_trip(value in -1e12f64..1e12, metric in "[a-z_]{1,20}", site in "[a-z0-9-]{1,12}") {
            let r = reading(&site, &metric, value);
            let mut reg = Registry::new(100);
            let (events, bad) = decode(&encode(&[&r]), &mut reg);
            prop_assert!(bad.is_empty());
            match &events[..] {
                [Event::Sample { value: v, ts, .. }] => {
                    prop_assert_eq!(*v, value);
                    prop_assert_eq!(*ts, r.ts);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
