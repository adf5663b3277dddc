//! Sparkplug B (Eclipse Sparkplug 3.0): the protobuf payload, written from the published
//! `sparkplug_b.proto` field numbers with prost's derive (no code generator), and the
//! per-edge-node state a subscriber keeps.
//!
//! - NBIRTH/DBIRTH carry every metric with its name and alias; later NDATA/DDATA may
//!   send aliases only. A birth resets the node's (or device's) alias table.
//! - Every message of a node after its NBIRTH carries `seq`, counting 0..=255 and
//!   wrapping. A gap means lost messages: the subscriber counts it and asks the node to
//!   rebirth (NCMD `Node Control/Rebirth = true`), which resends the births.
//! - NDEATH/DDEATH (death certificates) and births become readings of the metric
//!   `online` (0/1), which the staleness detector turns into denial of view at once.
//!
//! Topics: `spBv1.0/<group>/<NBIRTH|NDATA|NDEATH|DBIRTH|DDATA|DDEATH|NCMD|DCMD>/<node>[/<device>]`.
//! A node's own metrics are reported as a device named after the node.

use super::topics::{PayloadError, SparkplugEntry};
use crate::model::{Quality, Reading, Ts};
use prost::Message;
use rustc_hash::FxHashMap;

/// `Payload` of sparkplug_b.proto (fields 1–5).
#[derive(Clone, PartialEq, Message)]
pub struct Payload {
    /// Milliseconds since the epoch.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// Metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// Sequence number, 0..=255.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    /// Payload UUID.
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    /// Opaque body.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric` (metadata, properties, datasets and templates are skipped).
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    /// Name (always in births).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Alias.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Milliseconds since the epoch.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// Data type (1 Int8 … 4 Int64, 5 UInt8 … 8 UInt64, 9 Float, 10 Double, 11 Boolean,
    /// 12 String, 13 DateTime, 14 Text).
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// Historical value.
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    /// Transient value.
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    /// Null value.
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// The value.
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Int8/16/32 (two's complement) and UInt8/16/32.
    #[prost(uint32, tag = "10")]
    Int(u32),
    /// Int64 (two's complement), UInt64, DateTime.
    #[prost(uint64, tag = "11")]
    Long(u64),
    /// Float.
    #[prost(float, tag = "12")]
    Float(f32),
    /// Double.
    #[prost(double, tag = "13")]
    Double(f64),
    /// Boolean.
    #[prost(bool, tag = "14")]
    Boolean(bool),
    /// String, Text.
    #[prost(string, tag = "15")]
    String(String),
}

impl Metric {
    /// A numeric metric (for publishers).
    pub fn number(name: Option<&str>, alias: Option<u64>, value: f64) -> Self {
        Self {
            name: name.map(str::to_owned),
            alias,
            datatype: Some(10),
            value: Some(MetricValue::Double(value)),
            ..Self::default()
        }
    }

    /// A string metric (for publishers).
    pub fn text(name: &str, value: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            datatype: Some(12),
            value: Some(MetricValue::String(value.to_owned())),
            ..Self::default()
        }
    }

    /// The value as a number, by data type; strings and nulls give `None`.
    pub fn as_f64(&self) -> Option<f64> {
        if self.is_null == Some(true) {
            return None;
        }
        let dt = self.datatype.unwrap_or(0);
        let v = match self.value.as_ref()? {
            MetricValue::Int(v) => match dt {
                1 => f64::from(*v as u8 as i8),
                2 => f64::from(*v as u16 as i16),
                3 => f64::from(*v as i32),
                _ => f64::from(*v),
            },
            MetricValue::Long(v) => match dt {
                4 => *v as i64 as f64,
                _ => *v as f64,
            },
            MetricValue::Float(v) => f64::from(*v),
            MetricValue::Double(v) => *v,
            MetricValue::Boolean(b) => f64::from(u8::from(*b)),
            MetricValue::String(_) => return None,
        };
        v.is_finite().then_some(v)
    }
}

/// The rebirth request for a node (NCMD `Node Control/Rebirth`).
pub fn rebirth_request(group: &str, node: &str, now: Ts) -> (String, Vec<u8>) {
    let payload = Payload {
        timestamp: Some(now.max(0) as u64),
        metrics: vec![Metric {
            name: Some("Node Control/Rebirth".into()),
            datatype: Some(11),
            value: Some(MetricValue::Boolean(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    };
    (
        format!("spBv1.0/{group}/NCMD/{node}"),
        payload.encode_to_vec(),
    )
}

/// Encodes a birth certificate for publishers: NBIRTH (`device` None, with `bdSeq`) or
/// DBIRTH, with the kind as `Properties/kind` and every value named, aliased 1, 2, … in
/// order.
#[allow(clippy::too_many_arguments)]
pub fn birth(
    group: &str,
    node: &str,
    device: Option<&str>,
    kind: &str,
    values: &[(&str, f64)],
    ts: Ts,
    seq: u8,
    bd_seq: Option<u64>,
) -> (String, Vec<u8>) {
    let mut metrics = Vec::with_capacity(values.len() + 2);
    if let Some(b) = bd_seq {
        metrics.push(Metric {
            name: Some("bdSeq".into()),
            datatype: Some(8),
            value: Some(MetricValue::Long(b)),
            ..Metric::default()
        });
    }
    metrics.push(Metric::text("Properties/kind", kind));
    for (i, (name, v)) in values.iter().enumerate() {
        metrics.push(Metric::number(Some(name), Some(i as u64 + 1), *v));
    }
    let topic = match device {
        None => format!("spBv1.0/{group}/NBIRTH/{node}"),
        Some(d) => format!("spBv1.0/{group}/DBIRTH/{node}/{d}"),
    };
    (topic, payload(ts, seq, metrics))
}

/// Encodes DDATA for publishers: `(alias, value)` pairs.
pub fn data(
    group: &str,
    node: &str,
    device: &str,
    values: &[(u64, f64)],
    ts: Ts,
    seq: u8,
) -> (String, Vec<u8>) {
    let metrics = values
        .iter()
        .map(|(a, v)| Metric::number(None, Some(*a), *v))
        .collect();
    (
        format!("spBv1.0/{group}/DDATA/{node}/{device}"),
        payload(ts, seq, metrics),
    )
}

/// Encodes the node's death certificate (its MQTT last will).
pub fn death(group: &str, node: &str, bd_seq: u64) -> (String, Vec<u8>) {
    let p = Payload {
        metrics: vec![Metric {
            name: Some("bdSeq".into()),
            datatype: Some(8),
            value: Some(MetricValue::Long(bd_seq)),
            ..Metric::default()
        }],
        ..Payload::default()
    };
    (format!("spBv1.0/{group}/NDEATH/{node}"), p.encode_to_vec())
}

fn payload(ts: Ts, seq: u8, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(ts.max(0) as u64),
        metrics,
        seq: Some(u64::from(seq)),
        ..Payload::default()
    }
    .encode_to_vec()
}

/// Sparkplug's own bookkeeping metrics, not telemetry.
fn is_control(name: &str) -> bool {
    name == "bdSeq" || name.starts_with("Node Control/") || name.starts_with("Device Control/")
}

#[derive(Debug, Default)]
struct DeviceState {
    aliases: FxHashMap<u64, String>,
    kind: String,
}

#[derive(Debug, Default)]
struct NodeState {
    seq: Option<u8>,
    born: bool,
    rebirth_asked: bool,
    node: DeviceState,
    devices: FxHashMap<String, DeviceState>,
}

/// What one message gave.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    /// Readings (including `online` transitions).
    pub readings: Vec<Reading>,
    /// A rebirth request to publish: `(topic, payload)`.
    pub rebirth: Option<(String, Vec<u8>)>,
    /// Sequence gaps seen.
    pub seq_gaps: u64,
    /// Metrics dropped (unknown alias, null, text).
    pub dropped: u64,
}

/// Sparkplug state of every edge node seen.
#[derive(Debug)]
pub struct SparkplugDecoder {
    cfg: SparkplugEntry,
    nodes: FxHashMap<(String, String), NodeState>,
}

impl SparkplugDecoder {
    /// A decoder with no node known.
    pub fn new(cfg: SparkplugEntry) -> Self {
        Self {
            cfg,
            nodes: FxHashMap::default(),
        }
    }

    /// Decodes one Sparkplug message; `now` stamps metrics without a timestamp.
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: Ts,
    ) -> Result<Decoded, PayloadError> {
        let parts: Vec<&str> = topic.split('/').collect();
        let (group, kind, node, device) = match parts.as_slice() {
            ["spBv1.0", g, k, n] => (*g, *k, *n, None),
            ["spBv1.0", g, k, n, d] => (*g, *k, *n, Some(*d)),
            ["spBv1.0", "STATE", _] => return Ok(Decoded::default()),
            _ => return Err(PayloadError::UnmappedTopic),
        };
        if matches!(kind, "NCMD" | "DCMD") {
            return Ok(Decoded::default()); // commands to nodes, ours included
        }
        let p = Payload::decode(payload)
            .map_err(|e| PayloadError::Undecodable(format!("Sparkplug B protobuf: {e}")))?;
        let site: crate::model::Name = self.cfg.site.as_deref().unwrap_or(group).into();
        let key = (group.to_owned(), node.to_owned());
        let (kind_metric, default_kind, rebirth) = (
            self.cfg.kind_metric.clone(),
            self.cfg.default_kind.clone(),
            self.cfg.rebirth,
        );
        let st = self.nodes.entry(key).or_default();
        let mut out = Decoded::default();
        let ts_of = |m: &Metric| {
            m.timestamp
                .or(p.timestamp)
                .and_then(|t| Ts::try_from(t).ok())
                .unwrap_or(now)
        };
        let online = |dev: &str, kind: &str, v: f64, ts: Ts| Reading {
            ts,
            site: site.clone(),
            device: dev.into(),
            kind: kind.into(),
            metric: "online".into(),
            value: v,
            quality: Quality::Good,
        };
        let msg_ts = p
            .timestamp
            .and_then(|t| Ts::try_from(t).ok())
            .unwrap_or(now);

        // Sequence: NBIRTH starts it; every later message but NDEATH continues it.
        let seq = p.seq.map(|s| (s & 0xFF) as u8);
        match kind {
            "NBIRTH" => {
                st.seq = seq;
                st.born = true;
                st.rebirth_asked = false;
            }
            "NDEATH" => {}
            _ => {
                let expected = st.seq.map(|s| s.wrapping_add(1));
                if st.born && seq.is_some() && expected.is_some() && seq != expected {
                    out.seq_gaps += 1;
                    if rebirth && !st.rebirth_asked {
                        st.rebirth_asked = true;
                        out.rebirth = Some(rebirth_request(group, node, now));
                    }
                }
                if seq.is_some() {
                    st.seq = seq;
                }
            }
        }

        match kind {
            "NBIRTH" | "DBIRTH" => {
                let dev_name = device.unwrap_or(node).to_owned();
                let mut fresh = DeviceState::default();
                for m in &p.metrics {
                    if let (Some(name), Some(alias)) = (&m.name, m.alias) {
                        fresh.aliases.insert(alias, name.clone());
                    }
                    if m.name.as_deref() == Some(kind_metric.as_str()) {
                        if let Some(MetricValue::String(k)) = &m.value {
                            fresh.kind = k.clone();
                        }
                    }
                }
                if fresh.kind.is_empty() {
                    fresh.kind = default_kind;
                }
                out.readings
                    .push(online(&dev_name, &fresh.kind, 1.0, msg_ts));
                let state = match device {
                    None => {
                        st.node = fresh;
                        st.devices.clear();
                        &st.node
                    }
                    Some(d) => st
                        .devices
                        .entry(d.to_owned())
                        .insert_entry(fresh)
                        .into_mut(),
                };
                for m in &p.metrics {
                    let name = m.name.as_deref().unwrap_or_default();
                    if name == kind_metric || is_control(name) {
                        continue;
                    }
                    match (m.name.as_deref(), m.as_f64()) {
                        (Some(name), Some(v)) => out.readings.push(Reading {
                            ts: ts_of(m),
                            site: site.clone(),
                            device: dev_name.as_str().into(),
                            kind: state.kind.as_str().into(),
                            metric: name.into(),
                            value: v,
                            quality: Quality::Good,
                        }),
                        _ => out.dropped += 1,
                    }
                }
            }
            "NDATA" | "DDATA" => {
                let dev_name = device.unwrap_or(node);
                let state = match device {
                    None if st.born => Some(&st.node),
                    None => None,
                    Some(d) => st.devices.get(d),
                };
                let Some(state) = state else {
                    // Data before its birth: ask for one.
                    out.dropped += p.metrics.len() as u64;
                    if rebirth && !st.rebirth_asked {
                        st.rebirth_asked = true;
                        out.rebirth = Some(rebirth_request(group, node, now));
                    }
                    return Ok(out);
                };
                for m in &p.metrics {
                    let name = m
                        .name
                        .clone()
                        .or_else(|| m.alias.and_then(|a| state.aliases.get(&a).cloned()));
                    if name.as_deref().is_some_and(is_control) {
                        continue;
                    }
                    match (name, m.as_f64()) {
                        (Some(name), Some(v)) => out.readings.push(Reading {
                            ts: ts_of(m),
                            site: site.clone(),
                            device: dev_name.into(),
                            kind: state.kind.as_str().into(),
                            metric: name.into(),
                            value: v,
                            quality: Quality::Good,
                        }),
                        (None, _) => {
                            out.dropped += 1;
                            if rebirth && !st.rebirth_asked {
                                st.rebirth_asked = true;
                                out.rebirth = Some(rebirth_request(group, node, now));
                            }
                        }
                        _ => out.dropped += 1,
                    }
                }
            }
            "DDEATH" => {
                if let Some(d) = device {
                    let kind = st.devices.remove(d).map(|s| s.kind).unwrap_or(default_kind);
                    out.readings.push(online(d, &kind, 0.0, msg_ts));
                }
            }
            "NDEATH" => {
                st.born = false;
                st.seq = None;
                out.readings.push(online(node, &st.node.kind, 0.0, msg_ts));
                for (d, s) in st.devices.drain() {
                    out.readings.push(online(&d, &s.kind, 0.0, msg_ts));
                }
            }
            _ => return Err(PayloadError::UnmappedTopic),
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(1_000),
            metrics,
            seq,
            ..Payload::default()
        }
        .encode_to_vec()
    }

    fn decoder() -> SparkplugDecoder {
        SparkplugDecoder::new(SparkplugEntry::default())
    }

    #[test]
    fn births_aliases_data_and_deaths() {
        let mut d = decoder();
        let r = d
            .handle(
                "spBv1.0/ams1/NBIRTH/gw1",
                &msg(Some(0), vec![Metric::number(Some("bdSeq"), Some(0), 3.0)]),
                5,
            )
            .unwrap();
        assert_eq!(&*r.readings[0].metric, "online");
        let birth = vec![
            Metric::text("Properties/kind", "chiller"),
            Metric::number(Some("supply_temp_c"), Some(7), 7.1),
        ];
        let r = d
            .handle("spBv1.0/ams1/DBIRTH/gw1/chiller-1", &msg(Some(1), birth), 5)
            .unwrap();
        assert_eq!(r.readings.len(), 2);
        assert_eq!(
            (r.readings[1].kind.as_ref(), r.readings[1].value),
            ("chiller", 7.1)
        );
        let r = d
            .handle(
                "spBv1.0/ams1/DDATA/gw1/chiller-1",
                &msg(Some(2), vec![Metric::number(None, Some(7), 7.4)]),
                5,
            )
            .unwrap();
        assert_eq!(
            (
                r.readings[0].metric.as_ref(),
                r.readings[0].site.as_ref(),
                r.readings[0].ts
            ),
            ("supply_temp_c", "ams1", 1_000)
        );
        assert_eq!((r.seq_gaps, r.rebirth.is_none()), (0, true));
        let r = d
            .handle("spBv1.0/ams1/NDEATH/gw1", &msg(None, vec![]), 5)
            .unwrap();
        let offline: Vec<(&str, f64)> = r
            .readings
            .iter()
            .map(|r| (r.device.as_ref(), r.value))
            .collect();
        assert_eq!(offline, vec![("gw1", 0.0), ("chiller-1", 0.0)]);
    }

    #[test]
    fn gaps_and_unknown_aliases_ask_for_one_rebirth() {
        let mut d = decoder();
        d.handle("spBv1.0/g/NBIRTH/n", &msg(Some(0), vec![]), 0)
            .unwrap();
        d.handle(
            "spBv1.0/g/DBIRTH/n/dev",
            &msg(Some(1), vec![Metric::number(Some("x"), Some(1), 1.0)]),
            0,
        )
        .unwrap();
        let r = d
            .handle(
                "spBv1.0/g/DDATA/n/dev",
                &msg(Some(5), vec![Metric::number(None, Some(1), 2.0)]),
                0,
            )
            .unwrap();
        assert_eq!(r.seq_gaps, 1);
        let (topic, payload) = r.rebirth.unwrap();
        assert_eq!(topic, "spBv1.0/g/NCMD/n");
        let p = Payload::decode(payload.as_slice()).unwrap();
        assert_eq!(p.metrics[0].name.as_deref(), Some("Node Control/Rebirth"));
        assert_eq!(r.readings.len(), 1, "data after a gap is still used");
        let r = d
            .handle(
                "spBv1.0/g/DDATA/n/dev",
                &msg(Some(6), vec![Metric::number(None, Some(9), 2.0)]),
                0,
            )
            .unwrap();
        assert_eq!(
            (r.dropped, r.rebirth.is_none()),
            (1, true),
            "one request until the rebirth"
        );
        // Wrap-around is not a gap.
        d.handle("spBv1.0/g/NBIRTH/n", &msg(Some(254), vec![]), 0)
            .unwrap();
        let r = d
            .handle("spBv1.0/g/NDATA/n", &msg(Some(255), vec![]), 0)
            .unwrap();
        assert_eq!(r.seq_gaps, 0);
        let r = d
            .handle("spBv1.0/g/NDATA/n", &msg(Some(0), vec![]), 0)
            .unwrap();
        assert_eq!(r.seq_gaps, 0);
    }

    #[test]
    fn typed_values_decode_by_datatype() {
        let m = |dt: u32, v: MetricValue| Metric {
            datatype: Some(dt),
            value: Some(v),
            ..Metric::default()
        };
        assert_eq!(m(1, MetricValue::Int(0xFF)).as_f64(), Some(-1.0));
        assert_eq!(m(2, MetricValue::Int(0xFFFE)).as_f64(), Some(-2.0));
        assert_eq!(m(3, MetricValue::Int(u32::MAX)).as_f64(), Some(-1.0));
        assert_eq!(
            m(7, MetricValue::Int(u32::MAX)).as_f64(),
            Some(4_294_967_295.0)
        );
        assert_eq!(m(4, MetricValue::Long(u64::MAX)).as_f64(), Some(-1.0));
        assert_eq!(m(9, MetricValue::Float(1.5)).as_f64(), Some(1.5));
        assert_eq!(m(11, MetricValue::Boolean(true)).as_f64(), Some(1.0));
        assert_eq!(m(12, MetricValue::String("x".into())).as_f64(), None);
        let mut null = m(10, MetricValue::Double(1.0));
        null.is_null = Some(true);
        assert_eq!(null.as_f64(), None);
    }

    #[test]
    fn data_before_birth_is_dropped_and_asks_for_birth() {
        let mut d = decoder();
        let r = d
            .handle(
                "spBv1.0/g/DDATA/n/dev",
                &msg(Some(3), vec![Metric::number(Some("x"), None, 1.0)]),
                0,
            )
            .unwrap();
        assert!(r.readings.is_empty());
        assert!(r.rebirth.is_some());
        assert!(matches!(
            d.handle("spBv1.0/g/NDATA/n", b"\xff\xff", 0),
            Err(PayloadError::Undecodable(_))
        ));
        assert_eq!(
            d.handle("other/topic", b"", 0),
            Err(PayloadError::UnmappedTopic)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..300), k in 0usize..6) {
            let kinds = ["NBIRTH", "NDATA", "DBIRTH/n/d", "DDATA/n/d", "DDEATH/n/d", "NDEATH"];
            let mut d = decoder();
            let topic = format!("spBv1.0/g/{}", kinds[k]).replace("/n/d", "");
            let _ = d.handle(&format!("{topic}/n"), &payload, 0);
        }
    }
}
