//! A simulated device as an SNMPv2c agent (`simulate --serve-snmp`): its object map
//! (`protocols/snmp/`) turned around. The agent answers GET, GETNEXT and GETBULK from
//! the plant's present values, refuses SET (`notWritable`: the served devices are
//! read-only over SNMP), and sends a notification when a flag the map's `[[traps]]`
//! rules speak of changes (a UPS going to bypass sends `upsTrapAlarmEntryAdded` with
//! `upsAlarmOnBypass`), as a UPS network card does.

use crate::protocol::ber::{self, tag, Value};
use crate::protocol::mib::{Aggregate, ObjectMap, Oid};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// `sysDescr.0`.
const SYS_DESCR: [u32; 9] = [1, 3, 6, 1, 2, 1, 1, 1, 0];
/// Varbinds one response may carry (a GETBULK asking for more gets this many).
const MAX_VARBINDS: usize = 256;

/// Requests an agent received, by PDU type.
#[derive(Debug, Default)]
pub struct AgentCounts {
    /// GetRequest.
    pub get: AtomicU64,
    /// GetNextRequest.
    pub get_next: AtomicU64,
    /// GetBulkRequest.
    pub get_bulk: AtomicU64,
    /// SetRequest (refused).
    pub set: AtomicU64,
    /// Wrong community, another version, or not SNMP.
    pub refused: AtomicU64,
    /// Notifications sent.
    pub notifications: AtomicU64,
}

impl AgentCounts {
    /// `(get, get_next, get_bulk, set, refused, notifications)`.
    pub fn snapshot(&self) -> [u64; 6] {
        [
            &self.get,
            &self.get_next,
            &self.get_bulk,
            &self.set,
            &self.refused,
            &self.notifications,
        ]
        .map(|a| a.load(Ordering::Relaxed))
    }
}

/// One served device.
#[derive(Debug)]
pub struct Agent {
    /// Device name.
    pub name: String,
    map: ObjectMap,
    community: Vec<u8>,
    /// Rows of each table (lines of a three-phase UPS).
    rows: u32,
    /// Flags as last notified.
    flags: BTreeMap<String, f64>,
    next_alarm: u32,
    next_request: i32,
}

fn raw(value: f64, scale: f64, offset: f64) -> i64 {
    ((value - offset) / scale).round() as i64
}

impl Agent {
    /// An agent for `map`, answering `community`.
    pub fn new(name: &str, map: ObjectMap, community: &str) -> Self {
        let rows = if &*map.kind == "ups" { 3 } else { 1 };
        Self {
            name: name.to_owned(),
            map,
            community: community.as_bytes().to_vec(),
            rows,
            flags: BTreeMap::new(),
            next_alarm: 1,
            next_request: 1,
        }
    }

    /// The whole MIB view from the plant's present: `value` of each metric.
    pub fn tree(&self, value: &dyn Fn(&str) -> Option<f64>, uptime: u32) -> BTreeMap<Oid, Value> {
        let mut t = BTreeMap::new();
        let descr = format!("wattchdog simulated {} {}", self.map.kind, self.name);
        t.insert(Oid(SYS_DESCR.to_vec()), Value::Octets(descr.into_bytes()));
        t.insert(Oid(ber::SYS_UPTIME.to_vec()), Value::TimeTicks(uptime));
        for o in &self.map.objects {
            let Some(v) = value(&o.metric) else { continue };
            if let Some(oid) = &o.oid {
                if o.equals.is_empty() {
                    t.insert(oid.clone(), Value::Integer(raw(v, o.scale, o.offset)));
                } else if v >= 0.5 {
                    // A flag: the enumeration value it stands for (the first set flag of
                    // an OID wins), else what the OID holds when no flag is set.
                    t.insert(oid.clone(), Value::Integer(o.equals[0]));
                } else if let Some(idle) = o.otherwise {
                    t.entry(oid.clone()).or_insert(Value::Integer(idle));
                }
            }
            if let (Some(col), Some(agg)) = (&o.column, o.aggregate) {
                let share = if agg == Aggregate::Sum {
                    v / f64::from(self.rows)
                } else {
                    v
                };
                for row in 1..=self.rows {
                    let r = raw(share, o.scale, o.offset);
                    t.insert(col.child(row), Value::Integer(r));
                }
            }
        }
        t
    }

    /// The response to one request datagram, if it deserves one.
    pub fn answer(
        &self,
        request: &[u8],
        tree: &BTreeMap<Oid, Value>,
        counts: &AgentCounts,
    ) -> Option<Vec<u8>> {
        let bump = |a: &AtomicU64| {
            a.fetch_add(1, Ordering::Relaxed);
        };
        let Ok(pdu) = snmp2::Pdu::from_bytes(request) else {
            bump(&counts.refused);
            return None;
        };
        if pdu.version().ok() != Some(snmp2::Version::V2C) || pdu.community != self.community {
            bump(&counts.refused);
            return None;
        }
        let names: Vec<Oid> = pdu
            .varbinds
            .clone()
            .take(MAX_VARBINDS)
            .map(|(o, _)| crate::source::snmp::oid_of(&o).unwrap_or_default())
            .collect();
        let next = |o: &Oid| {
            use std::ops::Bound::{Excluded, Unbounded};
            tree.range((Excluded(o.clone()), Unbounded))
                .next()
                .map_or((o.clone(), Value::EndOfMibView), |(k, v)| {
                    (k.clone(), v.clone())
                })
        };
        let (status, index, vbs) = match pdu.message_type {
            snmp2::MessageType::GetRequest => {
                bump(&counts.get);
                let vbs = names
                    .iter()
                    .map(|o| {
                        let v = tree.get(o).cloned().unwrap_or(Value::NoSuchObject);
                        (o.clone(), v)
                    })
                    .collect();
                (ber::status::NO_ERROR, 0, vbs)
            }
            snmp2::MessageType::GetNextRequest => {
                bump(&counts.get_next);
                (ber::status::NO_ERROR, 0, names.iter().map(next).collect())
            }
            snmp2::MessageType::GetBulkRequest => {
                bump(&counts.get_bulk);
                // RFC 3416 §4.2.3: non-repeaters once, then max-repetitions rounds over
                // the rest, each from where the last round ended.
                let non_rep = (pdu.error_status as usize).min(names.len());
                let reps = pdu.error_index as usize;
                let mut vbs: Vec<(Oid, Value)> = names[..non_rep].iter().map(next).collect();
                let mut cursor: Vec<Oid> = names[non_rep..].to_vec();
                'rounds: for _ in 0..reps {
                    for c in &mut cursor {
                        if vbs.len() >= MAX_VARBINDS {
                            break 'rounds;
                        }
                        let (k, v) = next(c);
                        c.clone_from(&k);
                        vbs.push((k, v));
                    }
                    if cursor.is_empty() {
                        break;
                    }
                }
                (ber::status::NO_ERROR, 0, vbs)
            }
            snmp2::MessageType::SetRequest => {
                bump(&counts.set);
                let echo = names.iter().map(|o| (o.clone(), Value::Null)).collect();
                (ber::status::NOT_WRITABLE, 1, echo)
            }
            _ => {
                bump(&counts.refused);
                return None;
            }
        };
        Some(ber::message_v2c(
            &self.community,
            tag::RESPONSE,
            pdu.req_id,
            status,
            index,
            &vbs,
        ))
    }

    /// Notifications for flags that changed since the last call: for each, the first
    /// `[[traps]]` rule that sets that metric to its new value, turned around.
    pub fn notifications(
        &mut self,
        value: &dyn Fn(&str) -> Option<f64>,
        uptime: u32,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let metrics: Vec<String> = self
            .map
            .traps
            .iter()
            .map(|r| r.metric.to_string())
            .collect();
        for metric in metrics {
            let Some(now) = value(&metric).map(|v| f64::from(u8::from(v >= 0.5))) else {
                continue;
            };
            let before = self.flags.insert(metric.clone(), now);
            // The first sight of a flag is its state, not a change.
            if before.is_none_or(|b| b == now) {
                continue;
            }
            let Some(rule) = self
                .map
                .traps
                .iter()
                .find(|r| *r.metric == *metric && r.value == now)
            else {
                continue;
            };
            let mut vbs = Vec::new();
            if let (Some(vb), Some(is)) = (&rule.varbind, &rule.is) {
                vbs.push((vb.child(self.next_alarm), Value::Oid(is.clone())));
                self.next_alarm += 1;
            }
            out.push(ber::notification_v2c(
                &self.community,
                tag::TRAP,
                self.next_request,
                uptime,
                &rule.trap,
                &vbs,
            ));
            self.next_request = self.next_request.wrapping_add(1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mib;
    use crate::source::snmp::{notification, oid_of, raw_of, Raw};

    fn ups() -> Agent {
        Agent::new("ups-1", mib::named("ups-mib").unwrap(), "public")
    }

    fn values(bypass: f64) -> impl Fn(&str) -> Option<f64> {
        move |m| {
            Some(match m {
                "battery_charge_pct" => 97.0,
                "battery_voltage_v" => 271.26,
                "output_power_kw" => 300.0,
                "load_pct" => 61.0,
                "bypass_active" => bypass,
                "on_battery" => 0.0,
                _ => return None,
            })
        }
    }

    fn request(t: u8, id: i32, a: u32, b: u32, oids: &[&str]) -> Vec<u8> {
        let vbs: Vec<_> = oids
            .iter()
            .map(|o| (o.parse::<Oid>().unwrap(), Value::Null))
            .collect();
        ber::message_v2c(b"public", t, id, a, b, &vbs)
    }

    fn decoded(bytes: &[u8]) -> (u32, Vec<(Oid, Raw)>) {
        let p = snmp2::Pdu::from_bytes(bytes).unwrap();
        let vbs = p
            .varbinds
            .clone()
            .map(|(o, v)| (oid_of(&o).unwrap(), raw_of(&v)))
            .collect();
        (p.error_status, vbs)
    }

    #[test]
    fn the_ups_answers_get_and_walks_what_the_collector_reads_back() {
        let a = ups();
        let counts = AgentCounts::default();
        let tree = a.tree(&values(0.0), 100);
        let get = request(
            tag::GET,
            9,
            0,
            0,
            &[
                "1.3.6.1.2.1.33.1.2.5.0",
                "1.3.6.1.2.1.33.1.4.1.0",
                "1.3.6.1.2.1.33.9.9.0",
            ],
        );
        let (status, vbs) = decoded(&a.answer(&get, &tree, &counts).unwrap());
        assert_eq!(status, 0);
        assert_eq!(vbs[0].1, Raw::Number(2713.0)); // 0.1 V
        assert_eq!(vbs[1].1, Raw::Number(3.0)); // upsOutputSource normal(3)
        assert_eq!(vbs[2].1, Raw::Missing);
        // Output power (W) over three lines, walked with GETBULK.
        let bulk = request(tag::GET_BULK, 10, 0, 8, &["1.3.6.1.2.1.33.1.4.4.1.4"]);
        let (_, vbs) = decoded(&a.answer(&bulk, &tree, &counts).unwrap());
        let col: Oid = "1.3.6.1.2.1.33.1.4.4.1.4".parse().unwrap();
        let watts: f64 = vbs
            .iter()
            .filter(|(o, _)| o.starts_with(&col))
            .map(|(_, r)| match r {
                Raw::Number(x) => *x,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(watts, 300_000.0);
        assert_eq!(vbs.len(), 8);
        let tree = a.tree(&values(1.0), 200);
        let (_, vbs) = decoded(&a.answer(&get, &tree, &counts).unwrap());
        assert_eq!(vbs[1].1, Raw::Number(4.0)); // bypass(4)
    }

    proptest::proptest! {
        /// The fuzz target `snmp_agent_request` under `cargo test`: any datagram, and
        /// net-snmp's requests with bytes changed or cut, get a readable answer or none.
        #[test]
        fn any_request_is_answered_readably_or_not_at_all(
            seed in 0usize..3,
            flips in proptest::collection::vec((0usize..64, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..64,
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            const SEEDS: [&[u8]; 3] = [
                include_bytes!("../../fuzz/seeds/snmp_agent_request/get"),
                include_bytes!("../../fuzz/seeds/snmp_agent_request/getbulk"),
                include_bytes!("../../fuzz/seeds/snmp_agent_request/set"),
            ];
            let a = ups();
            let tree = a.tree(&values(0.0), 7);
            let counts = AgentCounts::default();
            let mut b = SEEDS[seed].to_vec();
            for (at, x) in flips {
                let n = b.len();
                b[at % n] = x;
            }
            b.truncate(cut.max(1));
            for req in [&noise[..], &b[..], SEEDS[seed]] {
                if let Some(reply) = a.answer(req, &tree, &counts) {
                    proptest::prop_assert!(snmp2::Pdu::from_bytes(&reply).is_ok());
                }
            }
        }
    }

    #[test]
    fn set_is_refused_and_the_wrong_community_unanswered() {
        let a = ups();
        let counts = AgentCounts::default();
        let tree = a.tree(&values(0.0), 0);
        let set = request(tag::SET, 1, 0, 0, &["1.3.6.1.2.1.33.1.4.1.0"]);
        let (status, _) = decoded(&a.answer(&set, &tree, &counts).unwrap());
        assert_eq!(status, ber::status::NOT_WRITABLE);
        let wrong = ber::message_v2c(b"private", tag::GET, 1, 0, 0, &[]);
        assert!(a.answer(&wrong, &tree, &counts).is_none());
        assert!(a.answer(b"\x30\x03garbage", &tree, &counts).is_none());
        assert_eq!(counts.snapshot(), [0, 0, 0, 1, 2, 0]);
    }

    #[test]
    fn a_bypass_sends_the_alarm_the_receiver_maps_back() {
        let mut a = ups();
        assert!(a.notifications(&values(0.0), 1).is_empty());
        assert!(a.notifications(&values(0.0), 2).is_empty());
        let sent = a.notifications(&values(1.0), 3);
        assert_eq!(sent.len(), 1);
        let n = notification(&sent[0]).unwrap();
        let map = mib::named("ups-mib").unwrap();
        let got: Vec<_> = map
            .trap_readings(&n.trap, &n.oids)
            .map(|(m, v)| (&**m, v))
            .collect();
        assert_eq!(got, [("bypass_active", 1.0)]);
        let cleared = a.notifications(&values(0.0), 4);
        let n = notification(&cleared[0]).unwrap();
        let got: Vec<_> = map
            .trap_readings(&n.trap, &n.oids)
            .map(|(m, v)| (&**m, v))
            .collect();
        assert_eq!(got, [("bypass_active", 0.0)]);
    }
}
