//! Environment overrides: `PORTCULLIS_A__B__C=value` sets key `a.b.c`.
//!
//! The variables are passed in (not read from the process here) so tests can supply a map
//! instead of touching the process environment.
//!
//! A variable whose first segment is not a top-level key of the file (`listeners`, `server`,
//! ...) is ignored with a warning: Kubernetes injects `PORTCULLIS_PORT=tcp://...`,
//! `PORTCULLIS_SERVICE_HOST` and friends into every pod when the Service is named
//! `portcullis`, and those must not stop start-up. `PORTCULLIS_CONFIG` (the file's path, read
//! by the command line) is skipped silently. A variable for a known section with an unknown
//! subkey (`PORTCULLIS_SERVER__MAX_CONECTIONS`) is still an error: that is a typo in an
//! override someone meant to set, and unknown keys inside the file stay errors too.

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

/// The prefix every override starts with.
pub const PREFIX: &str = "PORTCULLIS_";

/// The variable the command line reads the config path from; never an override.
pub const CONFIG_VAR: &str = "PORTCULLIS_CONFIG";

/// A figment provider over a list of `(NAME, value)` pairs.
#[derive(Debug, Clone, Default)]
pub struct EnvOverrides {
    vars: Vec<(String, String)>,
    /// Names of `PORTCULLIS_*` variables that map to no top-level key (values never kept).
    ignored: Vec<String>,
}

// === impl EnvOverrides ===

impl EnvOverrides {
    /// Keeps the variables that start with [`PREFIX`] and name a top-level key; remembers
    /// the names of the others (see [`EnvOverrides::ignored`]).
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let known = top_level_keys();
        let mut kept = Vec::new();
        let mut ignored = Vec::new();
        for (k, v) in vars {
            if !k.starts_with(PREFIX) || k.len() <= PREFIX.len() || k == CONFIG_VAR {
                continue;
            }
            let path = key_path(&k);
            let first = path.split('.').next().unwrap_or_default();
            if known.contains(&first) {
                kept.push((k, v));
            } else {
                ignored.push(k);
            }
        }
        Self {
            vars: kept,
            ignored,
        }
    }

    /// `PORTCULLIS_*` variables that were ignored because they map to no configuration key
    /// (for a warning; names only).
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// The key paths overridden, for the config summary (values are never shown: they may be secrets).
    pub fn keys(&self) -> Vec<String> {
        self.vars.iter().map(|(k, _)| key_path(k)).collect()
    }
}

fn key_path(name: &str) -> String {
    name[PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// The top-level keys of the file, as the raw struct declares them (so the list cannot drift).
fn top_level_keys() -> &'static [&'static str] {
    use serde::Deserialize;
    let mut fields: &'static [&'static str] = &[];
    let _ = super::file::RawConfig::deserialize(FieldProbe(&mut fields));
    fields
}

/// A deserializer that only records the field names a struct asks for, then gives up.
struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldProbe<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("field probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Lists and maps are parsed (`["a", "b"]`); everything else stays a string, and the raw
/// structs accept numbers and booleans written as strings.
fn parse_value(raw: &str) -> Value {
    let t = raw.trim_start();
    if t.starts_with('[') || t.starts_with('{') {
        let Ok(v) = raw.parse::<Value>();
        if matches!(v, Value::Array(..) | Value::Dict(..)) {
            return v;
        }
    }
    Value::from(raw.to_string())
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (name, value) in &self.vars {
            let path = key_path(name);
            if let Some(nested) = figment::util::nest(&path, parse_value(value)).into_dict() {
                merge(&mut dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

fn merge(into: &mut Dict, from: Dict) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Dict(_, a)), Value::Dict(_, b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Serde helpers so that numeric and boolean keys accept strings (as env overrides are).
pub mod lenient {
    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrStr {
        Bool(bool),
        Str(String),
    }

    /// `Option<u64>` from a number or a numeric string.
    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<NumOrStr>::deserialize(d)? {
            None => Ok(None),
            Some(NumOrStr::Num(n)) => Ok(Some(n)),
            Some(NumOrStr::Str(s)) => {
                s.trim().parse().map(Some).map_err(|_| {
                    D::Error::custom(format!("expected a whole number, found \"{s}\""))
                })
            }
        }
    }

    /// `Option<bool>` from a boolean or `"true"`/`"false"`.
    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        match Option::<BoolOrStr>::deserialize(d)? {
            None => Ok(None),
            Some(BoolOrStr::Bool(b)) => Ok(Some(b)),
            Some(BoolOrStr::Str(s)) => match s.trim() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(D::Error::custom(format!(
                    "expected true or false, found \"{s}\""
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_keys_come_from_the_raw_struct() {
        assert_eq!(
            top_level_keys(),
            [
                "listeners",
                "admin",
                "log",
                "server",
                "state_dir",
                "upstreams",
                "routes",
                "issuers",
                "auth",
                "sessions",
                "external_auth"
            ]
        );
    }

    #[test]
    fn nests_and_lowercases() {
        let env = EnvOverrides::new([
            (
                "PORTCULLIS_UPSTREAMS__APP__ADDRESSES".into(),
                "[\"http://127.0.0.1:1\"]".into(),
            ),
            ("PORTCULLIS_SERVER__MAX_CONNECTIONS".into(), "5".into()),
            ("OTHER".into(), "x".into()),
            ("PORTCULLIS_SERVICE_HOST".into(), "10.0.0.1".into()),
            ("PORTCULLIS_CONFIG".into(), "/etc/portcullis.yaml".into()),
        ]);
        assert_eq!(env.ignored(), ["PORTCULLIS_SERVICE_HOST"]);
        assert_eq!(
            env.keys(),
            ["upstreams.app.addresses", "server.max_connections"]
        );
        let data = env.data().unwrap_or_default();
        let dict = &data[&Profile::Default];
        let v = dict["server"]
            .find_ref("max_connections")
            .and_then(|v| v.as_str().map(str::to_owned));
        assert_eq!(v.as_deref(), Some("5"));
        assert!(
            dict["upstreams"]
                .find_ref("app.addresses")
                .and_then(Value::as_array)
                .is_some()
        );
    }
}
