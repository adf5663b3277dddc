//! SNMP object maps (`protocols/snmp/*.toml`): which OIDs a device answers, how each
//! becomes a metric of the vocabulary, and which traps say what. Loaded and validated
//! like register maps; the shipped ones are embedded in the binary.

use crate::tomlfile::{self, check, TomlError};
use serde::Deserialize;
use std::fmt;
use std::str::FromStr;

/// An object identifier, as arcs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Oid(pub Vec<u32>);

/// Longest OID accepted (RFC 2578 allows 128 sub-identifiers).
pub const MAX_ARCS: usize = 128;

impl Oid {
    /// Whether `self` lies under `prefix` (or is it).
    pub fn starts_with(&self, prefix: &Oid) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// `self` with one more arc.
    pub fn child(&self, arc: u32) -> Oid {
        let mut v = self.0.clone();
        v.push(arc);
        Oid(v)
    }

    /// The arcs as `u64`, for the BER codec.
    pub fn arcs(&self) -> Vec<u64> {
        self.0.iter().map(|&a| u64::from(a)).collect()
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

/// Why a dotted OID could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a dotted OID of 2..=128 numbers starting 0, 1 or 2")]
pub struct BadOid(pub String);

impl FromStr for Oid {
    type Err = BadOid;

    fn from_str(s: &str) -> Result<Self, BadOid> {
        let bad = || BadOid(s.chars().take(64).collect());
        let t = s.strip_prefix('.').unwrap_or(s);
        let arcs = t
            .split('.')
            .map(|a| a.parse::<u32>().map_err(|_| bad()))
            .collect::<Result<Vec<_>, _>>()?;
        if arcs.len() < 2 || arcs.len() > MAX_ARCS || arcs[0] > 2 || (arcs[0] < 2 && arcs[1] > 39) {
            return Err(bad());
        }
        Ok(Oid(arcs))
    }
}

impl<'de> Deserialize<'de> for Oid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How the rows of a walked table column become one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// Total over rows (power per phase or line).
    Sum,
    /// Mean over rows (voltage per line).
    Mean,
    /// Largest row.
    Max,
    /// Smallest row.
    Min,
}

impl Aggregate {
    /// The rows reduced; `None` for no rows.
    pub fn apply(self, rows: &[f64]) -> Option<f64> {
        if rows.is_empty() {
            return None;
        }
        Some(match self {
            Self::Sum => rows.iter().sum(),
            Self::Mean => rows.iter().sum::<f64>() / rows.len() as f64,
            Self::Max => rows.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Self::Min => rows.iter().copied().fold(f64::INFINITY, f64::min),
        })
    }
}

/// One `[[objects]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Object {
    /// Vocabulary metric.
    pub metric: crate::model::Name,
    /// An instance read with GET (a scalar's `.0`, or a table cell).
    pub oid: Option<Oid>,
    /// A table column walked with GETBULK; its rows reduced by `aggregate`.
    pub column: Option<Oid>,
    /// How a column's rows become one value.
    pub aggregate: Option<Aggregate>,
    /// value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default)]
    pub offset: f64,
    /// Unit of the value (after scaling).
    #[serde(default)]
    pub unit: String,
    /// An enumeration read as a flag: 1 when the raw value is one of these, else 0.
    #[serde(default)]
    pub equals: Vec<i64>,
    /// With `equals`: the raw value when none of the flags sharing this OID is set
    /// (`upsOutputSource` normal(3)); what a simulated agent serves.
    pub otherwise: Option<i64>,
    /// Raw values meaning "no value" (reported with bad quality).
    #[serde(default)]
    pub not_available: Vec<i64>,
    /// Physical limits (the limits detector's).
    pub min: Option<f64>,
    /// See `min`.
    pub max: Option<f64>,
}

fn one() -> f64 {
    1.0
}

/// One `[[traps]]` entry: a notification that sets a metric.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrapRule {
    /// The notification's `snmpTrapOID.0` (v1 traps: enterprise.0.specific).
    pub trap: Oid,
    /// Only when a varbind under this OID ...
    pub varbind: Option<Oid>,
    /// ... has this OID as its value (e.g. `upsAlarmDescr` = `upsAlarmOnBypass`).
    pub is: Option<Oid>,
    /// The metric set.
    pub metric: crate::model::Name,
    /// Its value.
    pub value: f64,
}

/// A whole object map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectMap {
    /// The file's name.
    pub profile: String,
    /// Device kind of the vocabulary.
    pub kind: crate::model::Name,
    /// The document the map follows.
    pub source: String,
    /// Polled objects.
    #[serde(default)]
    pub objects: Vec<Object>,
    /// Notifications understood.
    #[serde(default)]
    pub traps: Vec<TrapRule>,
}

impl ObjectMap {
    /// Parses and validates a map.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, TomlError> {
        let m: Self = tomlfile::parse(text, origin)?;
        m.validate(origin)?;
        Ok(m)
    }

    fn validate(&self, origin: &str) -> Result<(), TomlError> {
        check(
            origin,
            "profile",
            !self.profile.is_empty(),
            "must not be empty",
        )?;
        check(
            origin,
            "source",
            !self.source.is_empty(),
            "must cite the document the map follows",
        )?;
        check(
            origin,
            "objects",
            !self.objects.is_empty(),
            "must list at least one object",
        )?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, o) in self.objects.iter().enumerate() {
            let key = |k: &str| format!("objects[{i}] ({}).{k}", o.metric);
            check(
                origin,
                &key("metric"),
                !o.metric.is_empty(),
                "must not be empty",
            )?;
            check(
                origin,
                &key("metric"),
                seen.insert(o.metric.as_ref()),
                "is mapped twice",
            )?;
            check(
                origin,
                &key("oid"),
                o.oid.is_some() != o.column.is_some(),
                "give oid (an instance) or column (a table column), exactly one",
            )?;
            check(
                origin,
                &key("aggregate"),
                o.column.is_some() == o.aggregate.is_some(),
                "is given with column, and only with it",
            )?;
            check(
                origin,
                &key("scale"),
                o.scale.is_finite() && o.scale != 0.0,
                "must be finite and non-zero",
            )?;
            check(
                origin,
                &key("offset"),
                o.offset.is_finite(),
                "must be finite",
            )?;
            check(
                origin,
                &key("otherwise"),
                o.otherwise.is_none() || !o.equals.is_empty(),
                "is given with equals, and only with it",
            )?;
            if let (Some(lo), Some(hi)) = (o.min, o.max) {
                check(origin, &key("min"), lo < hi, "must be below max")?;
            }
        }
        for (i, t) in self.traps.iter().enumerate() {
            let key = |k: &str| format!("traps[{i}] ({}).{k}", t.metric);
            check(
                origin,
                &key("metric"),
                !t.metric.is_empty(),
                "must not be empty",
            )?;
            check(
                origin,
                &key("is"),
                t.varbind.is_some() == t.is.is_some(),
                "is given with varbind, and only with it",
            )?;
            check(origin, &key("value"), t.value.is_finite(), "must be finite")?;
        }
        Ok(())
    }

    /// The objects read with GET.
    pub fn scalars(&self) -> impl Iterator<Item = (usize, &Oid)> {
        self.objects
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.oid.as_ref().map(|oid| (i, oid)))
    }

    /// The columns walked with GETBULK.
    pub fn columns(&self) -> impl Iterator<Item = (usize, &Oid, Aggregate)> {
        self.objects.iter().enumerate().filter_map(|(i, o)| {
            Some((i, o.column.as_ref()?, o.aggregate.unwrap_or(Aggregate::Sum)))
        })
    }

    /// What a notification says: the metrics it sets. `trap` is its `snmpTrapOID.0`,
    /// `varbinds` its variable bindings whose values are OIDs.
    pub fn trap_readings<'a>(
        &'a self,
        trap: &'a Oid,
        varbinds: &'a [(Oid, Oid)],
    ) -> impl Iterator<Item = (&'a crate::model::Name, f64)> + 'a {
        self.traps.iter().filter_map(move |r| {
            if !same_notification(&r.trap, trap) {
                return None;
            }
            if let (Some(vb), Some(is)) = (&r.varbind, &r.is) {
                if !varbinds.iter().any(|(n, v)| n.starts_with(vb) && v == is) {
                    return None;
                }
            }
            Some((&r.metric, r.value))
        })
    }
}

/// Whether two notification OIDs name the same notification: equal, or one is the
/// other as an SNMPv1 trap converts it (RFC 3584 §3.1: enterprise.0.specific, so that
/// `upsTrapOnBattery` = upsTraps.1 arrives from a v1 agent as upsTraps.0.1).
fn same_notification(a: &Oid, b: &Oid) -> bool {
    let v1_form = |long: &[u32], short: &[u32]| {
        long.len() == short.len() + 1
            && long.len() >= 2
            && long[long.len() - 2] == 0
            && long[..long.len() - 2] == short[..short.len() - 1]
            && long.last() == short.last()
    };
    a == b || v1_form(&a.0, &b.0) || v1_form(&b.0, &a.0)
}

/// Name and text of every shipped object map.
pub const BUILTIN: [(&str, &str); 3] = [
    ("ups-mib", include_str!("../../protocols/snmp/ups-mib.toml")),
    (
        "pdu-apc-rpdu2",
        include_str!("../../protocols/snmp/pdu-apc-rpdu2.toml"),
    ),
    (
        "env-entity-sensor",
        include_str!("../../protocols/snmp/env-entity-sensor.toml"),
    ),
];

/// The shipped map the simulator serves for a device kind.
pub fn for_kind(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "ups" => "ups-mib",
        "pdu" => "pdu-apc-rpdu2",
        "env" => "env-entity-sensor",
        _ => return None,
    })
}

/// A shipped map by name, or an error listing them.
pub fn named(spec: &str) -> Result<ObjectMap, TomlError> {
    super::profiles::named_in(
        &BUILTIN,
        spec,
        ("profile", "SNMP profile"),
        ObjectMap::from_toml_str,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_shipped_map_is_valid_and_uses_the_vocabulary() {
        for (name, _) in BUILTIN {
            let m = named(name).unwrap();
            assert_eq!(m.profile, name);
            let kind = crate::model::DeviceKind::parse(&m.kind);
            for o in &m.objects {
                assert!(
                    crate::model::vocabulary::lookup(kind, &o.metric).is_some(),
                    "{name}: {} is not in the vocabulary",
                    o.metric
                );
            }
        }
    }

    #[test]
    fn bad_maps_are_refused_with_the_key() {
        let text = r#"
profile = "x"
kind = "ups"
source = "test"
[[objects]]
metric = "load_pct"
oid = "1.3.6.1.2.1.33.1.4.4.1.5.1"
column = "1.3.6.1.2.1.33.1.4.4.1.5"
"#;
        let e = ObjectMap::from_toml_str(text, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("objects[0] (load_pct).oid"), "{e}");
        let e = ObjectMap::from_toml_str(&text.replace("oid = ", "# "), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("aggregate"), "{e}");
        assert!("1.3.x".parse::<Oid>().is_err());
        assert!("3.1".parse::<Oid>().is_err());
        assert!("1".parse::<Oid>().is_err());
    }

    #[test]
    fn a_ups_alarm_trap_sets_the_metric_its_descr_names() {
        let m = named("ups-mib").unwrap();
        let added: Oid = "1.3.6.1.2.1.33.2.3".parse().unwrap();
        let descr: Oid = "1.3.6.1.2.1.33.1.6.2.1.2.7".parse().unwrap();
        let on_bypass: Oid = "1.3.6.1.2.1.33.1.6.3.9".parse().unwrap();
        let vbs = [(descr.clone(), on_bypass)];
        let got: Vec<_> = m
            .trap_readings(&added, &vbs)
            .map(|(m, v)| (&**m, v))
            .collect();
        assert_eq!(got, [("bypass_active", 1.0)]);
        let other = [(descr, "1.3.6.1.2.1.33.1.6.3.5".parse().unwrap())];
        assert_eq!(m.trap_readings(&added, &other).count(), 0);
        // upsTrapOnBattery from a v1 agent: enterprise upsTraps, specific 1.
        let v1: Oid = "1.3.6.1.2.1.33.2.0.1".parse().unwrap();
        let got: Vec<_> = m.trap_readings(&v1, &[]).map(|(m, v)| (&**m, v)).collect();
        assert_eq!(got, [("on_battery", 1.0)]);
        let not: Oid = "1.3.6.1.2.1.33.2.0.9".parse().unwrap();
        assert_eq!(m.trap_readings(&not, &[]).count(), 0);
    }

    proptest! {
        #[test]
        fn oids_print_and_parse_back(arcs in proptest::collection::vec(any::<u32>(), 0..20)) {
            let mut v = vec![1, 3];
            v.extend(arcs);
            let o = Oid(v);
            prop_assert_eq!(o.to_string().parse::<Oid>().unwrap(), o);
        }

        #[test]
        fn any_text_parses_or_fails_without_panic(s in ".{0,80}") {
            let _ = s.parse::<Oid>();
        }
    }
}
