//! The mock IdP: signing keys and their JWKs.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// A signing key with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    /// Its `kid`.
    pub kid: String,
    /// The algorithm it signs with (and declares in its JWK).
    pub alg: Algorithm,
    /// The private key.
    pub encoding: EncodingKey,
    /// The public JWK (with `kid` and `alg`).
    pub jwk: Value,
    /// The public key as PEM (SubjectPublicKeyInfo), e.g. for algorithm-confusion tokens.
    pub public_pem: String,
}

impl SigningKey {
    /// A fresh key for `alg` (RS*/PS* use RSA 2048, ES256 P-256, EdDSA Ed25519).
    pub fn generate(alg: Algorithm, kid: &str) -> Self {
        let (rcgen_alg, from_pem): (&'static rcgen::SignatureAlgorithm, fn(&[u8]) -> _) = match alg
        {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
            Algorithm::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, EncodingKey::from_ec_pem),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, EncodingKey::from_ed_pem),
            other => panic!("no key generation for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let encoding = if alg == Algorithm::EdDSA {
            // aws-lc writes PKCS#8 v2 (with the public key); `Jwk::from_encoding_key` wants
            // the 48-byte v1 form, so rebuild it from the seed.
            let der = pair.serialized_der();
            let at = der
                .windows(4)
                .position(|w| w == [0x04, 0x22, 0x04, 0x20])
                .unwrap()
                + 4;
            let mut v1 = vec![
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20,
            ];
            v1.extend_from_slice(&der[at..at + 32]);
            EncodingKey::from_ed_der(&v1)
        } else {
            from_pem(pair.serialize_pem().as_bytes()).unwrap()
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        Self {
            kid: kid.to_string(),
            alg,
            jwk: serde_json::to_value(&jwk).unwrap(),
            encoding,
            public_pem: pair.public_key_pem(),
        }
    }

    /// The same key under another `kid`.
    pub fn with_kid(&self, kid: &str) -> Self {
        let mut k = self.clone();
        k.kid = kid.to_string();
        k.jwk["kid"] = json!(kid);
        k
    }

    /// The same key with no `alg` in its JWK (usable with every algorithm of its family).
    pub fn without_jwk_alg(&self) -> Self {
        let mut k = self.clone();
        if let Some(o) = k.jwk.as_object_mut() {
            o.remove("alg");
        }
        k
    }
}
