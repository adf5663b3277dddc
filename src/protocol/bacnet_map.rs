//! BACnet object maps (`protocols/bacnet/*.toml`): which objects of a device carry which
//! metric of the vocabulary, with scale and units. Loaded and validated like register
//! maps; the shipped ones are embedded in the binary.

use super::bacnet::{object_type, ObjectId};
use crate::tomlfile::{self, check, TomlError};
use serde::Deserialize;

/// Object maps of configured devices, by (site, name).
pub type BacnetMaps = std::collections::BTreeMap<(String, String), std::sync::Arc<BacnetMap>>;

/// One `[[objects]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Object {
    /// Vocabulary metric.
    pub metric: crate::model::Name,
    /// The object (`analog-input:1`); its present value is the metric.
    #[serde(deserialize_with = "object_id")]
    pub object: ObjectId,
    /// value = present value × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default)]
    pub offset: f64,
    /// Unit of the value (after scaling).
    #[serde(default)]
    pub unit: String,
    /// Physical limits (the limits detector's).
    pub min: Option<f64>,
    /// See `min`.
    pub max: Option<f64>,
    /// The change (in the metric's unit) a simulated device notifies subscribers of.
    #[serde(default)]
    pub cov_increment: f64,
    /// Whether writing its present value is routine (a setpoint the BMS commands).
    #[serde(default)]
    pub writable: bool,
    /// Whether it is read as telemetry (a control point may not be).
    #[serde(default = "yes")]
    pub poll: bool,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

fn object_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectId, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A whole object map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacnetMap {
    /// The file's name.
    pub profile: String,
    /// Device kind of the vocabulary.
    pub kind: crate::model::Name,
    /// The document the map follows.
    pub source: String,
    /// The objects.
    pub objects: Vec<Object>,
}

/// Object types whose present value is a number or a state the collector reads.
const READABLE: [u16; 9] = [
    object_type::ANALOG_INPUT,
    object_type::ANALOG_OUTPUT,
    object_type::ANALOG_VALUE,
    object_type::BINARY_INPUT,
    object_type::BINARY_OUTPUT,
    object_type::BINARY_VALUE,
    object_type::MULTI_STATE_INPUT,
    object_type::MULTI_STATE_OUTPUT,
    object_type::MULTI_STATE_VALUE,
];

impl BacnetMap {
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
            self.objects.iter().any(|o| o.poll),
            "must list at least one polled object",
        )?;
        let mut metrics = std::collections::BTreeSet::new();
        let mut objects = std::collections::BTreeSet::new();
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
                metrics.insert(o.metric.as_ref()),
                "is mapped twice",
            )?;
            check(
                origin,
                &key("object"),
                objects.insert(o.object),
                "is mapped twice",
            )?;
            check(
                origin,
                &key("object"),
                READABLE.contains(&o.object.kind),
                "must be an analog, binary or multi-state input, output or value",
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
                &key("cov_increment"),
                o.cov_increment.is_finite() && o.cov_increment >= 0.0,
                "must be finite and not negative",
            )?;
            if let (Some(lo), Some(hi)) = (o.min, o.max) {
                check(origin, &key("min"), lo < hi, "must be below max")?;
            }
        }
        Ok(())
    }

    /// The object carrying `metric`.
    pub fn by_object(&self, object: ObjectId) -> Option<(usize, &Object)> {
        self.objects
            .iter()
            .enumerate()
            .find(|(_, o)| o.object == object)
    }
}

/// The maps shipped in `protocols/bacnet/`.
pub const BUILTIN: [(&str, &str); 2] = [
    (
        "chiller-bacnet",
        include_str!("../../protocols/bacnet/chiller-bacnet.toml"),
    ),
    (
        "crah-bacnet",
        include_str!("../../protocols/bacnet/crah-bacnet.toml"),
    ),
];

/// The shipped map the simulator serves for a device kind.
pub fn for_kind(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "chiller" => "chiller-bacnet",
        "crah" => "crah-bacnet",
        _ => return None,
    })
}

/// A shipped map by name, or an error listing them.
pub fn named(spec: &str) -> Result<BacnetMap, TomlError> {
    super::profiles::named_in(
        &BUILTIN,
        spec,
        ("profile", "BACnet profile"),
        BacnetMap::from_toml_str,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_map_is_valid_and_uses_the_vocabulary() {
        for (name, _) in BUILTIN {
            let m = named(name).unwrap();
            assert_eq!(m.profile, name);
            let kind = crate::model::DeviceKind::parse(&m.kind);
            for o in m.objects.iter().filter(|o| o.poll) {
                assert!(
                    crate::model::vocabulary::lookup(kind, &o.metric).is_some(),
                    "{name}: {} is not in the vocabulary",
                    o.metric
                );
            }
        }
    }

    #[test]
    fn broken_maps_name_what_is_wrong() {
        let head = "profile = \"x\"\nkind = \"chiller\"\nsource = \"s\"\n";
        for (objects, key) in [
            ("[[objects]]\nmetric = \"a\"\nobject = \"device:1\"\n", "object"),
            ("[[objects]]\nmetric = \"a\"\nobject = \"analog-input:1\"\n[[objects]]\nmetric = \"b\"\nobject = \"analog-input:1\"\n", "object"),
            ("[[objects]]\nmetric = \"a\"\nobject = \"analog-input:1\"\nscale = 0.0\n", "scale"),
            ("[[objects]]\nmetric = \"a\"\nobject = \"analog-input:1\"\npoll = false\n", "objects"),
        ] {
            let e = BacnetMap::from_toml_str(&format!("{head}{objects}"), "t").unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = BacnetMap::from_toml_str(
            &format!("{head}[[objects]]\nmetric = \"a\"\nobject = \"analog-input:99999999\"\n"),
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("type:instance"), "{e}");
    }
}
