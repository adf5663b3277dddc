//! The device profiles shipped in `protocols/modbus/`, embedded in the binary so that
//! `simulate --serve-modbus` and `run` work from any directory; a config may name a
//! built-in profile or a map file of its own.

use super::registers::RegisterMap;
use crate::tomlfile::TomlError;
use std::path::Path;

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

/// Resolves a config's `profile`: a path ending in `.toml` (relative to `base`, the
/// config's directory), else the name of a built-in profile.
pub fn resolve(spec: &str, base: &Path) -> Result<RegisterMap, TomlError> {
    if spec.ends_with(".toml") {
        return RegisterMap::load(&base.join(spec));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_is_valid_and_named_after_its_file() {
        for (name, _) in BUILTIN {
            let m = builtin(name).unwrap().unwrap();
            assert_eq!(m.profile, name);
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols/modbus");
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(files, BUILTIN.len(), "every file in {dir:?} is built in");
    }

    #[test]
    fn the_simulators_kinds_have_profiles_covering_their_metrics() {
        for kind in ["ups", "chiller", "crah", "pdu", "env", "grid_meter"] {
            let m = builtin(for_kind(kind).unwrap()).unwrap().unwrap();
            assert_eq!(m.kind, kind);
        }
        assert!(resolve("nope", Path::new("."))
            .unwrap_err()
            .to_string()
            .contains("ups-generic"));
    }
}
