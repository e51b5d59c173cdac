//! [`Secret`]: a value that must never be printed (client secrets, HMAC shared secrets,
//! cookie keys).
//!
//! Security notes: `Debug` prints `Secret(<redacted>)` and there is no `Display`, so a secret
//! can't reach a log line, `check-config` output or a `{:?}` of the config by accident; the
//! bytes are reachable only through [`Secret::expose`], which is easy to grep for. Equality is
//! constant-time in the contents (aws-lc-rs `CRYPTO_memcmp`). On drop the bytes are
//! overwritten with zeros (best effort: without `unsafe` or a new crate, copies made by
//! moves and by libraries the bytes were handed to are not covered).

use serde::{Deserialize, Deserializer};

/// Secret bytes with a redacting `Debug`.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

// === impl Secret ===

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into().into_boxed_slice())
    }

    /// The secret bytes, for the code that uses them (HMAC keys, token requests).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret: needed for minimum-length checks).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl Eq for Secret {}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// From a string (YAML or an environment override).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keeps the compiler from treating the writes as dead stores.
        std::hint::black_box(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_and_eq_compares_contents() {
        let s = Secret::from("hunter2-hunter2".to_string());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(<redacted>))");
        assert_eq!(s, Secret::new(b"hunter2-hunter2".to_vec()));
        assert_ne!(s, Secret::new(b"hunter2-hunter3".to_vec()));
        assert_ne!(s, Secret::new(b"hunter2".to_vec()));
        assert_eq!(s.expose(), b"hunter2-hunter2");
        assert_eq!(s.len(), 15);
    }
}
