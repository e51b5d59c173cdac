//! Environment overrides: `PORTCULLIS_A__B__C=value` sets key `a.b.c`.
//!
//! The variables are passed in (not read from the process here) so tests can supply a map
//! instead of touching the process environment.

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

/// The prefix every override starts with.
pub const PREFIX: &str = "PORTCULLIS_";

/// A figment provider over a list of `(NAME, value)` pairs.
#[derive(Debug, Clone, Default)]
pub struct EnvOverrides {
    vars: Vec<(String, String)>,
}

// === impl EnvOverrides ===

impl EnvOverrides {
    /// Keeps the variables that start with [`PREFIX`].
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(PREFIX) && k.len() > PREFIX.len())
            .collect();
        Self { vars }
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
    fn nests_and_lowercases() {
        let env = EnvOverrides::new([
            (
                "PORTCULLIS_UPSTREAMS__APP__ADDRESSES".into(),
                "[\"http://127.0.0.1:1\"]".into(),
            ),
            ("PORTCULLIS_SERVER__MAX_CONNECTIONS".into(), "5".into()),
            ("OTHER".into(), "x".into()),
        ]);
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
