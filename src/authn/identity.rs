//! Identity headers to the upstream.
//!
//! Security notes: the headers Portcullis owns are removed from every request, on every
//! route (authenticated or not), before any are set from verified claims — an upstream can
//! trust them only because a client can never send them through.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use serde_json::Value;

use super::Identity;
use crate::claims::ClaimPath;

/// Which headers are stripped and which claims are sent as which headers.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    strip_exact: Vec<HeaderName>,
    strip_prefixes: Vec<String>,
    map: Vec<(ClaimPath, HeaderName)>,
}

// === impl IdentityHeaders ===

impl IdentityHeaders {
    /// `strip` entries are header names or prefixes ending in `*`; every mapped header is
    /// stripped too.
    pub fn new(strip: &[String], map: Vec<(ClaimPath, HeaderName)>) -> Self {
        let mut strip_exact = Vec::new();
        let mut strip_prefixes = Vec::new();
        for s in strip {
            let lower = s.to_ascii_lowercase();
            match lower.strip_suffix('*') {
                Some(prefix) => strip_prefixes.push(prefix.to_string()),
                None => {
                    if let Ok(h) = HeaderName::from_bytes(lower.as_bytes()) {
                        strip_exact.push(h);
                    }
                }
            }
        }
        for (_, h) in &map {
            if !strip_exact.contains(h) {
                strip_exact.push(h.clone());
            }
        }
        Self {
            strip_exact,
            strip_prefixes,
            map,
        }
    }

    /// Removes every owned header.
    pub fn strip(&self, headers: &mut HeaderMap) {
        for h in &self.strip_exact {
            headers.remove(h);
        }
        if !self.strip_prefixes.is_empty()
            && headers.keys().any(|k| {
                self.strip_prefixes
                    .iter()
                    .any(|p| k.as_str().starts_with(p.as_str()))
            })
        {
            let names: Vec<HeaderName> = headers
                .keys()
                .filter(|k| {
                    self.strip_prefixes
                        .iter()
                        .any(|p| k.as_str().starts_with(p.as_str()))
                })
                .cloned()
                .collect();
            for n in names {
                headers.remove(n);
            }
        }
    }

    /// Sets the mapped headers from `identity`'s claims. Arrays become comma-separated;
    /// values that are not valid header values (e.g. with control characters) are skipped.
    pub fn apply(&self, headers: &mut HeaderMap, identity: &Identity) {
        for (path, header) in &self.map {
            let value = match path.get(&identity.claims) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => continue,
            };
            match HeaderValue::from_str(&value) {
                Ok(v) => {
                    headers.insert(header.clone(), v);
                }
                Err(_) => {
                    tracing::debug!(claim = %path, "claim value is not a valid header value; not sent")
                }
            }
        }
    }
}
