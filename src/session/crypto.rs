//! Sealing for cookies and stored session records: AES-256-GCM from aws-lc-rs.
//!
//! A sealed value is `version (1) || key id (4) || nonce (12) || ciphertext || tag (16)`,
//! written as base64url without padding when it goes into a cookie. The key id is the first
//! four bytes of SHA-256 over the key, so opening picks the right key without trying each one;
//! it says nothing about the key itself.
//!
//! The associated data binds every value to a [`Purpose`] and a caller-chosen context (for a
//! stored record, its Redis key), so a login-state cookie cannot be replayed as a session
//! cookie and one session's record cannot be moved under another session's key.
//!
//! Security notes:
//! - The first key seals, every key opens: add a new key in front, and drop the old one once
//!   every cookie sealed under it has expired.
//! - Nonces are 96 random bits from `aws_lc_rs::rand` per seal. With random nonces, one key
//!   should seal fewer than 2^32 values; rotate keys long before that.
//! - Key bytes live only in [`KeyMaterial`] and inside aws-lc-rs; neither prints them.
//! - Opening never panics: anything truncated, tampered, sealed for another purpose or under
//!   an unknown key is an [`Error`].

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::secret::{KeyError, KeyMaterial};

/// Bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No keys were given.
    #[error("at least one key is required")]
    NoKeys,
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The value is too short, has another version, or is not base64url.
    #[error("the sealed value is malformed")]
    Malformed,
    /// The value names a key that is not configured (removed, or never ours).
    #[error("the sealed value was sealed under an unknown key")]
    UnknownKey,
    /// Authentication failed: tampered, another purpose or context, or a forged value.
    #[error("the sealed value does not authenticate")]
    Tampered,
    /// aws-lc-rs refused to seal (a value larger than AES-GCM allows).
    #[error("sealing failed")]
    Seal,
}

/// What a sealed value is for; part of the associated data, so values cannot cross over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The session cookie (holds a session id).
    SessionCookie,
    /// A login-state cookie (state, PKCE verifier, nonce, return URL).
    LoginState,
    /// A session record at rest in a store.
    StoreRecord,
}

/// Seals with the first key and opens with any of them.
pub struct Sealer {
    keys: Vec<SealKey>,
    rng: SystemRandom,
}

struct SealKey {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
    tag: hmac::Key,
}

// === impl Purpose ===

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::SessionCookie => b"portcullis session cookie v1",
            Purpose::LoginState => b"portcullis login state v1",
            Purpose::StoreRecord => b"portcullis store record v1",
        }
    }
}

// === impl Sealer ===

impl Sealer {
    /// Builds a sealer; `keys[0]` seals, all open.
    pub fn try_new(keys: &[KeyMaterial]) -> Result<Self, Error> {
        if keys.is_empty() {
            return Err(Error::NoKeys);
        }
        let keys = keys
            .iter()
            .map(|k| {
                let unbound = UnboundKey::new(&AES_256_GCM, k.expose())
                    .map_err(|_| KeyError::Length(k.expose().len()))?;
                let hash = digest(&SHA256, k.expose());
                let mut id = [0u8; KEY_ID_LEN];
                id.copy_from_slice(&hash.as_ref()[..KEY_ID_LEN]);
                // A separate key for index tags, derived so it never equals the AEAD key.
                let tag_key = hmac::sign(
                    &hmac::Key::new(hmac::HMAC_SHA256, k.expose()),
                    b"portcullis index tag v1",
                );
                Ok(SealKey {
                    id,
                    aead: LessSafeKey::new(unbound),
                    tag: hmac::Key::new(hmac::HMAC_SHA256, tag_key.as_ref()),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// A sealer with one fresh random key (memory store without configured keys: cookies do
    /// not survive a restart, which is fine because the sessions don't either).
    pub fn generate() -> Result<Self, Error> {
        Self::try_new(&[KeyMaterial::generate()?])
    }

    /// Seals `plaintext` for `purpose`, bound to `context`.
    pub fn seal(
        &self,
        purpose: Purpose,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let key = self.keys.first().ok_or(Error::NoKeys)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| Error::Random)?;
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let aad = associated_data(&out[..1 + KEY_ID_LEN], purpose, context);
        let mut body = plaintext.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut body,
            )
            .map_err(|_| Error::Seal)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a value sealed by [`Sealer::seal`] for the same purpose and context.
    pub fn open(&self, purpose: Purpose, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < OVERHEAD || sealed[0] != VERSION {
            return Err(Error::Malformed);
        }
        let (header, body) = sealed.split_at(HEADER_LEN);
        let id = &header[1..1 + KEY_ID_LEN];
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(Error::UnknownKey)?;
        let nonce = Nonce::try_assume_unique_for_key(&header[1 + KEY_ID_LEN..])
            .map_err(|_| Error::Malformed)?;
        let aad = associated_data(&header[..1 + KEY_ID_LEN], purpose, context);
        let mut buf = body.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(&aad), &mut buf)
            .map_err(|_| Error::Tampered)?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }

    /// [`Sealer::seal`] as base64url without padding (a cookie value).
    pub fn seal_text(
        &self,
        purpose: Purpose,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<String, Error> {
        self.seal(purpose, context, plaintext)
            .map(|v| URL_SAFE_NO_PAD.encode(v))
    }

    /// Opens the text form written by [`Sealer::seal_text`].
    pub fn open_text(
        &self,
        purpose: Purpose,
        context: &[u8],
        text: &str,
    ) -> Result<Vec<u8>, Error> {
        // A cookie can't legitimately be larger than a browser keeps; refuse work on more.
        if text.len() > 8192 {
            return Err(Error::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| Error::Malformed)?;
        self.open(purpose, context, &bytes)
    }

    /// A keyed tag over `data` with the sealing key: names an index (subject, `sid`) in a
    /// store without writing the value itself there.
    pub fn index_tag(&self, data: &[u8]) -> Option<String> {
        self.keys
            .first()
            .map(|k| URL_SAFE_NO_PAD.encode(&hmac::sign(&k.tag, data).as_ref()[..16]))
    }

    /// The tag of `data` under every key (to find entries written before a key rotation).
    pub fn index_tags(&self, data: &[u8]) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| URL_SAFE_NO_PAD.encode(&hmac::sign(&k.tag, data).as_ref()[..16]))
            .collect()
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

fn associated_data(header: &[u8], purpose: Purpose, context: &[u8]) -> Vec<u8> {
    let label = purpose.label();
    let mut aad = Vec::with_capacity(header.len() + label.len() + context.len() + 2);
    aad.extend_from_slice(header);
    aad.extend_from_slice(label);
    // A separator that can't be confused with the label's end (labels have no NUL).
    aad.push(0);
    aad.extend_from_slice(context);
    aad
}

/// Random bytes from the system generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| Error::Random)?;
    Ok(out)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> KeyMaterial {
        KeyMaterial::from_bytes(&[b; crate::secret::KEY_LEN]).unwrap()
    }

    #[test]
    fn round_trip_and_random_nonce() {
        let s = Sealer::try_new(&[key(1)]).unwrap();
        let a = s.seal(Purpose::SessionCookie, b"", b"hello").unwrap();
        let b = s.seal(Purpose::SessionCookie, b"", b"hello").unwrap();
        assert_ne!(a, b, "same plaintext must not give the same sealed value");
        assert_eq!(s.open(Purpose::SessionCookie, b"", &a).unwrap(), b"hello");
        let t = s.seal_text(Purpose::LoginState, b"ctx", b"x").unwrap();
        assert!(
            t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(s.open_text(Purpose::LoginState, b"ctx", &t).unwrap(), b"x");
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let s = Sealer::try_new(&[key(2)]).unwrap();
        let sealed = s
            .seal(Purpose::SessionCookie, b"c", b"session id bytes")
            .unwrap();
        for i in 0..sealed.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut t = sealed.clone();
                t[i] ^= flip;
                assert!(
                    s.open(Purpose::SessionCookie, b"c", &t).is_err(),
                    "byte {i} ^ {flip:#x} accepted"
                );
            }
        }
    }

    #[test]
    fn truncated_and_extended_are_refused() {
        let s = Sealer::try_new(&[key(3)]).unwrap();
        let sealed = s.seal(Purpose::SessionCookie, b"", b"abc").unwrap();
        for n in 0..sealed.len() {
            assert!(
                s.open(Purpose::SessionCookie, b"", &sealed[..n]).is_err(),
                "length {n} accepted"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(s.open(Purpose::SessionCookie, b"", &longer).is_err());
        for bad in ["", "!!!", "a", "AAAA", "====", &"A".repeat(9000)] {
            assert!(
                s.open_text(Purpose::SessionCookie, b"", bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn wrong_purpose_or_context_is_refused() {
        let s = Sealer::try_new(&[key(4)]).unwrap();
        let state = s.seal(Purpose::LoginState, b"", b"v").unwrap();
        assert!(matches!(
            s.open(Purpose::SessionCookie, b"", &state),
            Err(Error::Tampered)
        ));
        assert!(matches!(
            s.open(Purpose::StoreRecord, b"", &state),
            Err(Error::Tampered)
        ));
        let rec = s.seal(Purpose::StoreRecord, b"key-a", b"v").unwrap();
        assert!(matches!(
            s.open(Purpose::StoreRecord, b"key-b", &rec),
            Err(Error::Tampered)
        ));
    }

    #[test]
    fn rotation_first_seals_all_open() {
        let old = Sealer::try_new(&[key(5)]).unwrap();
        let sealed_old = old.seal(Purpose::SessionCookie, b"", b"old").unwrap();
        let rotated = Sealer::try_new(&[key(6), key(5)]).unwrap();
        assert_eq!(
            rotated
                .open(Purpose::SessionCookie, b"", &sealed_old)
                .unwrap(),
            b"old"
        );
        let sealed_new = rotated.seal(Purpose::SessionCookie, b"", b"new").unwrap();
        // The old sealer does not know the new key.
        assert!(matches!(
            old.open(Purpose::SessionCookie, b"", &sealed_new),
            Err(Error::UnknownKey)
        ));
        // After the old key is dropped, its values no longer open.
        let dropped = Sealer::try_new(&[key(6)]).unwrap();
        assert!(matches!(
            dropped.open(Purpose::SessionCookie, b"", &sealed_old),
            Err(Error::UnknownKey)
        ));
        assert_eq!(
            dropped
                .open(Purpose::SessionCookie, b"", &sealed_new)
                .unwrap(),
            b"new"
        );
        // Index tags: one per key, the first matching the sealing key's.
        let tags = rotated.index_tags(b"sub");
        assert_eq!(tags.len(), 2);
        assert_eq!(Some(tags[0].clone()), rotated.index_tag(b"sub"));
        assert_eq!(Some(tags[1].clone()), old.index_tag(b"sub"));
    }

    #[test]
    fn key_parsing() {
        let k = KeyMaterial::generate().unwrap();
        let text = k.to_base64();
        assert_eq!(KeyMaterial::from_base64(&text).unwrap(), k);
        let url = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert!(KeyMaterial::from_base64(&url).is_ok());
        assert!(matches!(
            KeyMaterial::from_base64("not base64!"),
            Err(KeyError::NotBase64)
        ));
        assert!(matches!(
            KeyMaterial::from_base64(&base64::engine::general_purpose::STANDARD.encode([1u8; 16])),
            Err(KeyError::Length(16))
        ));
        assert_eq!(format!("{k:?}"), "KeyMaterial(<redacted>)");
        assert!(!format!("{:?}", Sealer::try_new(&[k]).unwrap()).contains(&text));
        assert!(matches!(Sealer::try_new(&[]), Err(Error::NoKeys)));
    }
}
