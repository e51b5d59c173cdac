//! Mints a signing key, writes its JWKS, and prints a token, for load tests:
//!
//! ```sh
//! cargo run --release --example bench_token -- ISSUER AUDIENCE JWKS_FILE [ALG]
//! ```
//!
//! ALG is RS256 (default) or ES256. The token is valid for 24 hours with `sub`, `email`,
//! `groups` and `scope` claims. For benchmarks only: the key is thrown away.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [issuer, audience, jwks_file, rest @ ..] = args.as_slice() else {
        eprintln!("usage: bench_token ISSUER AUDIENCE JWKS_FILE [RS256|ES256]");
        return ExitCode::from(2);
    };
    match mint(
        issuer,
        audience,
        jwks_file,
        rest.first().map_or("RS256", String::as_str),
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench_token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mint(
    issuer: &str,
    audience: &str,
    jwks_file: &str,
    alg: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let (alg, key) = match alg {
        "ES256" => {
            use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?;
            (
                Algorithm::ES256,
                EncodingKey::from_ec_der(pair.to_pkcs8v1()?.as_ref()),
            )
        }
        _ => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes())?,
            )
        }
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg)?;
    jwk.common.key_id = Some("bench-1".into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    std::fs::write(jwks_file, serde_json::json!({ "keys": [jwk] }).to_string())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "iss": issuer, "aud": audience, "sub": "bench-user", "email": "bench@example.com",
        "groups": ["staff"], "scope": "api:read", "iat": now, "exp": now + 86_400,
    });
    let mut header = Header::new(alg);
    header.kid = Some("bench-1".into());
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}
