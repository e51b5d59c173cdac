//! [`Secret`]: a value that must never be printed (client secrets, HMAC shared secrets), and
//! [`KeyMaterial`]: a sealing key parsed from configuration (cookie keys).
//!
//! Security notes: `Debug` prints `Secret(<redacted>)` and there is no `Display`, so a secret
//! can't reach a log line, `check-config` output or a `{:?}` of the config by accident; the
//! bytes are reachable only through [`Secret::expose`], which is easy to grep for. Equality is
//! constant-time in the contents (aws-lc-rs `CRYPTO_memcmp`). On drop the bytes are
//! overwritten with zeros (best effort: without `unsafe` or a new crate, copies made by
//! moves and by libraries the bytes were handed to are not covered).

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
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

/// Length of a sealing key, in bytes.
pub const KEY_LEN: usize = 32;

/// A sealing key (session cookies, login state, store records): exactly [`KEY_LEN`] bytes,
/// never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial(Box<[u8; KEY_LEN]>);

/// Why key material is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not valid base64.
    #[error("the key is not valid base64")]
    NotBase64,
    /// Not [`KEY_LEN`] bytes.
    #[error("the key is {0} bytes, but must be {KEY_LEN}")]
    Length(usize),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

// === impl KeyMaterial ===

impl KeyMaterial {
    /// Parses a key written as base64 (standard or URL-safe, padding optional).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let unpadded = text.trim_end_matches('=');
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(unpadded))
            .map_err(|_| KeyError::NotBase64)?;
        Self::from_bytes(&bytes)
    }

    /// Takes exactly [`KEY_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        Ok(Self(Box::new(arr)))
    }

    /// A fresh random key (the memory store's default when none is configured).
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(Self(Box::new(bytes)))
    }

    /// The key as standard base64 (for `portcullis` tooling that prints a new key).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_slice())
    }

    /// The key bytes, for the code that seals with them.
    pub fn expose(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
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
