//! The device profiles shipped in `protocols/modbus/`, embedded in the binary so that
//! `simulate --serve-modbus` and `run` work from any directory; a config may name a
//! built-in profile or a map file of its own.

use super::registers::RegisterMap;
use super::topics::TopicMap;
use crate::tomlfile::TomlError;

/// Name and text of every shipped profile.
pub const BUILTIN: [(&str, &str); 7] = [
    (
        "ups-generic",
        include_str!("../../protocols/modbus/ups-generic.toml"),
    ),
    (
        "chiller-generic",
        include_str!("../../protocols/modbus/chiller-generic.toml"),
    ),
    (
        "crah-generic",
        include_str!("../../protocols/modbus/crah-generic.toml"),
    ),
    (
        "pdu-generic",
        include_str!("../../protocols/modbus/pdu-generic.toml"),
    ),
    (
        "env-sensor-generic",
        include_str!("../../protocols/modbus/env-sensor-generic.toml"),
    ),
    (
        "grid-interconnect-generic",
        include_str!("../../protocols/modbus/grid-interconnect-generic.toml"),
    ),
    (
        "grid-meter-eastron-sdm630",
        include_str!("../../protocols/modbus/grid-meter-eastron-sdm630.toml"),
    ),
];

/// The built-in profile the simulator serves for a device kind.
pub fn for_kind(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "ups" => "ups-generic",
        "chiller" => "chiller-generic",
        "crah" => "crah-generic",
        "pdu" => "pdu-generic",
        "env" => "env-sensor-generic",
        "grid_meter" => "grid-interconnect-generic",
        _ => return None,
    })
}

/// A built-in profile by name.
pub fn builtin(name: &str) -> Option<Result<RegisterMap, TomlError>> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, text)| RegisterMap::from_toml_str(text, &format!("<built-in profile {n}>")))
}

/// A config's `profile` that names a file rather than a built-in profile.
pub fn is_file(spec: &str) -> bool {
    spec.ends_with(".toml")
}

/// The built-in profile a config's `profile` names, or an error listing them (file
/// profiles, see [`is_file`], are read by the caller).
pub fn named(spec: &str) -> Result<RegisterMap, TomlError> {
    builtin(spec).unwrap_or_else(|| {
        Err(TomlError::Invalid {
            path: spec.to_owned(),
            key: "profile".into(),
            rule: format!(
                "is neither a .toml file nor a built-in profile ({})",
                BUILTIN.map(|(n, _)| n).join(", ")
            ),
        })
    })
}

/// Name and text of every shipped MQTT topic map.
pub const TOPIC_MAPS: [(&str, &str); 3] = [
    (
        "wattchdog-sim",
        include_str!("../../protocols/mqtt/wattchdog-sim.toml"),
    ),
    (
        "wattchdog-sim-sparkplug",
        include_str!("../../protocols/mqtt/wattchdog-sim-sparkplug.toml"),
    ),
    (
        "generic-json-gateway",
        include_str!("../../protocols/mqtt/generic-json-gateway.toml"),
    ),
];

/// The built-in topic map a config's `map` names, or an error listing them (file maps,
/// see [`is_file`], are read by the caller).
pub fn named_topic_map(spec: &str) -> Result<TopicMap, TomlError> {
    named_in(
        &TOPIC_MAPS,
        spec,
        ("map", "topic map"),
        TopicMap::from_toml_str,
    )
}

/// The shipped map `spec` names among `builtin` (name, text), parsed, or an error under
/// `key` listing them: `what` says which kind of map ("SNMP profile").
pub(crate) fn named_in<T>(
    builtin: &[(&str, &str)],
    spec: &str,
    (key, what): (&str, &str),
    parse: impl Fn(&str, &str) -> Result<T, TomlError>,
) -> Result<T, TomlError> {
    match builtin.iter().find(|(n, _)| *n == spec) {
        Some((n, text)) => parse(text, &format!("<built-in {what} {n}>")),
        None => Err(TomlError::Invalid {
            path: spec.to_owned(),
            key: key.into(),
            rule: format!(
                "is neither a .toml file nor a built-in {what} ({})",
                builtin
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_shipped_profile_is_valid_and_named_after_its_file() {
        for (name, _) in BUILTIN {
            let m = builtin(name).unwrap().unwrap();
            assert_eq!(m.profile, name);
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols/modbus");
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(files, BUILTIN.len(), "every file in {dir:?} is built in");
        for (name, _) in TOPIC_MAPS {
            assert_eq!(named_topic_map(name).unwrap().profile, name);
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols/mqtt");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), TOPIC_MAPS.len());
    }

    #[test]
    fn the_simulators_kinds_have_profiles_covering_their_metrics() {
        for kind in ["ups", "chiller", "crah", "pdu", "env", "grid_meter"] {
            let m = builtin(for_kind(kind).unwrap()).unwrap().unwrap();
            assert_eq!(&*m.kind, kind);
        }
        assert!(named("nope")
            .unwrap_err()
            .to_string()
            .contains("ups-generic"));
    }
}
