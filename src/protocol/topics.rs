//! MQTT topic maps (`protocols/mqtt/<profile>.toml`): which topics carry which points,
//! and how their payloads decode. Pure: a topic and a payload in, readings out.
//!
//! A topic template is a topic whose segments may be placeholders — `{site}`,
//! `{kind}`, `{device}`, `{metric}`, or `{_}` for a segment to ignore — each matching
//! one segment (subscribed as `+`). Payloads are a plain number, JSON (a value path, or
//! several fields, or every member of an object; optional timestamp and quality paths),
//! or Sparkplug B (see [`super::sparkplug`]).

use crate::model::{Name, Names, Quality, Reading, Ts};
use crate::time::TimeFormat;
use crate::tomlfile::{self, check, TomlError};
use serde::Deserialize;
use serde_json::Value as Json;
use thiserror::Error;

/// How a message's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// UTF-8 text of one number (or `true`/`false`).
    Number,
    /// A JSON object.
    Json,
}

/// One field of a JSON payload.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Dot path to the value (`data.temp`, `values.0`).
    pub path: String,
    /// Metric it reports.
    pub metric: Name,
}

/// One `[[topics]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicEntry {
    /// Template (placeholders `{site}` `{kind}` `{device}` `{metric}` `{_}`).
    pub topic: String,
    /// Payload encoding.
    pub payload: PayloadFormat,
    /// JSON: path of the value, when the message carries one metric.
    pub value: Option<String>,
    /// JSON: several metrics per message.
    #[serde(default)]
    pub fields: Vec<Field>,
    /// JSON: every numeric or boolean member of this object is a metric named by its key
    /// (`""` for the top level).
    pub fields_object: Option<String>,
    /// JSON: path of the event time (RFC 3339 or epoch s/ms); absent = time of receipt.
    pub timestamp: Option<String>,
    /// JSON: path of a quality string (`good`, `bad`, `stale`).
    pub quality: Option<String>,
    /// Site when the template has no `{site}`.
    pub site: Option<String>,
    /// Kind when the template has no `{kind}`.
    pub kind: Option<String>,
    /// Device when the template has no `{device}`.
    pub device: Option<String>,
    /// Metric when the template has no `{metric}` (single-value payloads).
    pub metric: Option<String>,
}

/// `[sparkplug]`: subscribe to Sparkplug B.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparkplugEntry {
    /// Group id to subscribe to (`+` for all).
    pub group: String,
    /// Site of the readings; default the group id.
    pub site: Option<String>,
    /// A birth metric whose string value is the device kind.
    pub kind_metric: String,
    /// Kind of devices whose birth does not say.
    pub default_kind: String,
    /// Ask the edge node to rebirth (NCMD `Node Control/Rebirth`) after a sequence gap
    /// or data for an unknown alias. The one message wattchdog ever publishes.
    pub rebirth: bool,
}

impl Default for SparkplugEntry {
    fn default() -> Self {
        Self {
            group: "+".into(),
            site: None,
            kind_metric: "Properties/kind".into(),
            default_kind: "other".into(),
            rebirth: true,
        }
    }
}

/// A topic map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMap {
    /// Profile name.
    pub profile: String,
    /// What the map follows.
    pub source: String,
    /// Plain and JSON topics.
    #[serde(default)]
    pub topics: Vec<TopicEntry>,
    /// Sparkplug B.
    pub sparkplug: Option<SparkplugEntry>,
}

/// Why a message gave no readings.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// No entry's template matches the topic.
    #[error("no topic template matches")]
    UnmappedTopic,
    /// Not UTF-8, not a number, not JSON, or not a protobuf.
    #[error("undecodable payload: {0}")]
    Undecodable(String),
    /// A path the map names is absent or not a number.
    #[error("{0}")]
    Missing(String),
}

const PLACEHOLDERS: [&str; 5] = ["{site}", "{kind}", "{device}", "{metric}", "{_}"];

impl TopicMap {
    /// Parses and validates a map.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, TomlError> {
        let m: Self = tomlfile::parse(text, origin)?;
        check(
            origin,
            "source",
            !m.source.is_empty(),
            "must cite what the map follows",
        )?;
        check(
            origin,
            "topics",
            !m.topics.is_empty() || m.sparkplug.is_some(),
            "must list a topic or a [sparkplug] section",
        )?;
        for (i, t) in m.topics.iter().enumerate() {
            let key = |k: &str| format!("topics[{i}].{k}");
            let segs: Vec<&str> = t.topic.split('/').collect();
            check(
                origin,
                &key("topic"),
                !t.topic.is_empty()
                    && segs.iter().all(|s| {
                        !s.contains(['+', '#'])
                            && (!s.contains(['{', '}']) || PLACEHOLDERS.contains(s))
                    }),
                "segments are literals or one of {site} {kind} {device} {metric} {_}",
            )?;
            let has = |p: &str| segs.contains(&p);
            check(
                origin,
                &key("device"),
                has("{device}") != t.device.is_some(),
                "give `device` exactly when the topic has no {device}",
            )?;
            check(
                origin,
                &key("kind"),
                has("{kind}") != t.kind.is_some(),
                "give `kind` exactly when the topic has no {kind}",
            )?;
            let several = !t.fields.is_empty() || t.fields_object.is_some();
            match t.payload {
                PayloadFormat::Number => check(
                    origin,
                    &key("payload"),
                    !several && t.value.is_none() && t.timestamp.is_none(),
                    "a number payload has no paths",
                )?,
                PayloadFormat::Json => check(
                    origin,
                    &key("value"),
                    t.value.is_some() != several,
                    "a JSON payload needs `value` or `fields`/`fields_object`, not both",
                )?,
            }
            check(
                origin,
                &key("metric"),
                several || has("{metric}") != t.metric.is_some(),
                "give `metric` exactly when the topic has no {metric}",
            )?;
        }
        Ok(m)
    }

    /// The subscription filters (placeholders as `+`).
    pub fn filters(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .topics
            .iter()
            .map(|t| {
                t.topic
                    .split('/')
                    .map(|s| if s.starts_with('{') { "+" } else { s })
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        if let Some(sp) = &self.sparkplug {
            out.push(format!("spBv1.0/{}/#", sp.group));
        }
        out.sort();
        out.dedup();
        out
    }

    /// Decodes a plain or JSON message. `now` stamps payloads without a timestamp;
    /// `default_site` is used when neither the topic nor the entry names one.
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        now: Ts,
        default_site: &str,
        names: &mut Names,
    ) -> Result<Vec<Reading>, PayloadError> {
        let segs: Vec<&str> = topic.split('/').collect();
        let (entry, captured) = self
            .topics
            .iter()
            .find_map(|t| matches(&t.topic, &segs).map(|c| (t, c)))
            .ok_or(PayloadError::UnmappedTopic)?;
        let get = |name: &str| captured.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let site = names.get(
            get("site")
                .or(entry.site.as_deref())
                .unwrap_or(default_site),
        );
        let device = names.get(
            get("device")
                .or(entry.device.as_deref())
                .unwrap_or_default(),
        );
        let kind = names.get(get("kind").or(entry.kind.as_deref()).unwrap_or_default());
        // Only a single-value payload names its metric here.
        let metric = get("metric")
            .or(entry.metric.as_deref())
            .unwrap_or_default();
        let reading = |metric: Name, value: f64, ts: Ts, quality: Quality| Reading {
            ts,
            site: site.clone(),
            device: device.clone(),
            kind: kind.clone(),
            metric,
            value,
            quality,
        };
        let text = std::str::from_utf8(payload)
            .map_err(|_| PayloadError::Undecodable("not UTF-8".into()))?;
        match entry.payload {
            PayloadFormat::Number => {
                let v = number(&Json::String(text.trim().to_owned())).ok_or_else(|| {
                    PayloadError::Undecodable(format!("{:.40?} is not a number", text))
                })?;
                Ok(vec![reading(names.get(metric), v, now, Quality::Good)])
            }
            PayloadFormat::Json => {
                let doc: Json = serde_json::from_str(text)
                    .map_err(|e| PayloadError::Undecodable(format!("JSON: {e}")))?;
                let ts = match &entry.timestamp {
                    None => now,
                    Some(p) => timestamp(lookup(&doc, p).ok_or_else(|| missing(p))?)
                        .ok_or_else(|| PayloadError::Missing(format!("`{p}` is not a time")))?,
                };
                let quality = match &entry.quality {
                    None => Quality::Good,
                    Some(p) => lookup(&doc, p)
                        .and_then(Json::as_str)
                        .and_then(Quality::parse)
                        .unwrap_or(Quality::Bad),
                };
                let obj = entry
                    .fields_object
                    .as_ref()
                    .map(|p| lookup(&doc, p).and_then(Json::as_object).ok_or(p));
                let mut out = Vec::with_capacity(
                    usize::from(entry.value.is_some())
                        + entry.fields.len()
                        + obj.and_then(Result::ok).map_or(0, |o| o.len()),
                );
                if let Some(p) = &entry.value {
                    let v = lookup(&doc, p).and_then(number).ok_or_else(|| missing(p))?;
                    out.push(reading(names.get(metric), v, ts, quality));
                }
                for f in &entry.fields {
                    // Absent fields are normal for gateways that send what changed.
                    if let Some(v) = lookup(&doc, &f.path).and_then(number) {
                        out.push(reading(f.metric.clone(), v, ts, quality));
                    }
                }
                if let Some(obj) = obj {
                    for (k, v) in obj.map_err(|p| missing(p))? {
                        if let Some(v) = number(v) {
                            out.push(reading(names.get(k), v, ts, quality));
                        }
                    }
                }
                if out.is_empty() {
                    return Err(PayloadError::Missing("no metric in the payload".into()));
                }
                Ok(out)
            }
        }
    }
}

fn missing(path: &str) -> PayloadError {
    PayloadError::Missing(format!("`{path}` is absent or not a number"))
}

/// Matches topic segments against a template; returns the placeholders' values.
fn matches<'t>(template: &str, segs: &[&'t str]) -> Option<Vec<(&'static str, &'t str)>> {
    let tpl: Vec<&str> = template.split('/').collect();
    if tpl.len() != segs.len() {
        return None;
    }
    let mut captured = Vec::new();
    for (t, s) in tpl.iter().zip(segs) {
        match *t {
            "{site}" => captured.push(("site", *s)),
            "{kind}" => captured.push(("kind", *s)),
            "{device}" => captured.push(("device", *s)),
            "{metric}" => captured.push(("metric", *s)),
            "{_}" => {}
            lit if lit == *s => {}
            _ => return None,
        }
        if s.is_empty() && t.starts_with('{') {
            return None;
        }
    }
    Some(captured)
}

/// Follows a dot path (`a.b.0`); `""` is the document itself.
fn lookup<'j>(doc: &'j Json, path: &str) -> Option<&'j Json> {
    if path.is_empty() {
        return Some(doc);
    }
    path.split('.').try_fold(doc, |v, k| match v {
        Json::Object(m) => m.get(k),
        Json::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// A finite number from a JSON number, boolean or numeric string.
fn number(v: &Json) -> Option<f64> {
    let x = match v {
        Json::Number(n) => n.as_f64()?,
        Json::Bool(b) => f64::from(u8::from(*b)),
        Json::String(s) => match s.as_str() {
            "true" | "on" | "online" => 1.0,
            "false" | "off" | "offline" => 0.0,
            s => s.parse().ok()?,
        },
        _ => return None,
    };
    x.is_finite().then_some(x)
}

fn timestamp(v: &Json) -> Option<Ts> {
    match v {
        Json::String(s) => TimeFormat::Auto.parse(s).ok(),
        Json::Number(n) => crate::time::epoch_auto(n.as_f64()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(body: &str) -> TopicMap {
        TopicMap::from_toml_str(
            &format!("profile = \"p\"\nsource = \"s\"\n{body}"),
            "m.toml",
        )
        .unwrap()
    }

    #[test]
    fn templates_capture_names_and_become_filters() {
        let m = map(
            "[[topics]]\ntopic = \"dc/{site}/{kind}/{device}/{metric}\"\npayload = \"number\"\n",
        );
        assert_eq!(m.filters(), vec!["dc/+/+/+/+"]);
        let r = m
            .decode(
                "dc/ams1/ups/ups-1/load_pct",
                b" 41.5 ",
                7,
                "x",
                &mut Names::default(),
            )
            .unwrap();
        assert_eq!(
            (
                r[0].site.as_ref(),
                r[0].kind.as_ref(),
                r[0].device.as_ref(),
                r[0].metric.as_ref(),
                r[0].value,
                r[0].ts
            ),
            ("ams1", "ups", "ups-1", "load_pct", 41.5, 7)
        );
        assert_eq!(
            m.decode("dc/ams1/ups/ups-1", b"1", 0, "x", &mut Names::default()),
            Err(PayloadError::UnmappedTopic)
        );
        assert!(matches!(
            m.decode("dc/a/b/c/d", b"warm", 0, "x", &mut Names::default()),
            Err(PayloadError::Undecodable(_))
        ));
    }

    #[test]
    fn json_payloads_one_value_several_fields_or_an_object() {
        let m = map(
            "\
             [[topics]]\ntopic = \"gw/{device}/temp\"\npayload = \"json\"\nkind = \"crah\"\nmetric = \"supply_air_temp_c\"\nvalue = \"v\"\ntimestamp = \"t\"\nquality = \"q\"\n\
             [[topics]]\ntopic = \"gw/{device}/all\"\npayload = \"json\"\nkind = \"chiller\"\ntimestamp = \"t\"\nfields_object = \"data\"\n\
             [[topics]]\ntopic = \"gw/{device}/two\"\npayload = \"json\"\nkind = \"ups\"\n[[topics.fields]]\npath = \"in.kw\"\nmetric = \"input_power_kw\"\n[[topics.fields]]\npath = \"flags.1\"\nmetric = \"on_battery\"\n",
        );
        let r = m
            .decode(
                "gw/crah-1/temp",
                br#"{"v": "18.25", "t": "2026-07-07T00:00:01Z", "q": "bad"}"#,
                0,
                "site",
                &mut Names::default(),
            )
            .unwrap();
        assert_eq!(
            (r[0].value, r[0].ts, r[0].quality, r[0].site.as_ref()),
            (18.25, 1_783_382_401_000, Quality::Bad, "site")
        );
        let r = m
            .decode(
                "gw/chiller-1/all",
                br#"{"t": 1783382401, "data": {"flow_lps": 40.1, "running": true, "note": "x"}}"#,
                0,
                "site",
                &mut Names::default(),
            )
            .unwrap();
        let got: Vec<(&str, f64)> = r.iter().map(|r| (r.metric.as_ref(), r.value)).collect();
        assert_eq!(got, vec![("flow_lps", 40.1), ("running", 1.0)]);
        assert_eq!(r[0].ts, 1_783_382_401_000);
        let r = m
            .decode(
                "gw/ups-1/two",
                br#"{"in": {"kw": 300}, "flags": [false, true]}"#,
                5,
                "s",
                &mut Names::default(),
            )
            .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].value, 1.0);
        assert!(matches!(
            m.decode(
                "gw/crah-1/temp",
                br#"{"v": null}"#,
                0,
                "s",
                &mut Names::default()
            ),
            Err(PayloadError::Missing(_))
        ));
        assert!(matches!(
            m.decode("gw/crah-1/temp", b"{", 0, "s", &mut Names::default()),
            Err(PayloadError::Undecodable(_))
        ));
    }

    #[test]
    fn maps_are_validated() {
        let e = |body: &str| {
            TopicMap::from_toml_str(
                &format!("profile = \"p\"\nsource = \"s\"\n{body}"),
                "m.toml",
            )
            .unwrap_err()
            .to_string()
        };
        assert!(e("[[topics]]\ntopic = \"a/+/{device}\"\npayload = \"number\"\nkind = \"ups\"\nmetric = \"m\"\n").contains("segments"));
        assert!(
            e("[[topics]]\ntopic = \"a/{device}\"\npayload = \"number\"\nmetric = \"m\"\n")
                .contains("kind")
        );
        assert!(e("[[topics]]\ntopic = \"a/{device}\"\npayload = \"json\"\nkind = \"ups\"\nmetric = \"m\"\n").contains("value"));
        assert!(e("").contains("topic"));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(topic in "[a-z0-9/{}+#]{0,30}", payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let m = map("[[topics]]\ntopic = \"a/{device}/{metric}\"\npayload = \"json\"\nkind = \"ups\"\nvalue = \"v.0\"\ntimestamp = \"t\"\n");
            let _ = m.decode(&topic, &payload, 0, "s", &mut Names::default());
        }
    }
}
