//! The OpenID Provider metadata browser sign-in needs, read from the discovery document.
//!
//! `jwks.rs` fetches (and persists) the discovery document for the keys; this module only
//! types the endpoints of the code flow out of it: `authorization_endpoint`,
//! `token_endpoint`, `end_session_endpoint`, `code_challenge_methods_supported` and
//! `token_endpoint_auth_methods_supported`.
//!
//! Security notes: the document's `issuer` must equal the configured issuer exactly (OpenID
//! Connect Discovery 1.0 §4.3), so a document served for another tenant is refused. Every
//! endpoint must be https, or http on a loopback host, as for `jwks_uri`
//! (`config::issuer::idp_url_allowed`): a discovery document cannot send codes, secrets or
//! refresh tokens over plain http to the network.

use http::Uri;
use serde_json::Value;

use crate::config::issuer::idp_url_allowed;

/// Why the discovery document cannot be used for browser sign-in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The document is not a JSON object.
    #[error("discovery document is not a JSON object")]
    NotAnObject,
    /// `issuer` is missing or differs from the configured issuer.
    #[error("discovery issuer does not match the configured issuer")]
    IssuerMismatch,
    /// A required endpoint is missing.
    #[error("discovery document has no {0}")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("discovery field {0} has the wrong type")]
    WrongType(&'static str),
    /// An endpoint is not a URL, or not https (http only on loopback).
    #[error("discovery field {0} must be an https URL (http only on loopback)")]
    BadUrl(&'static str),
}

/// The provider's endpoints and capabilities for the code flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    /// `issuer` (equal to the configured issuer).
    pub issuer: String,
    /// Where browsers are sent to sign in.
    pub authorization_endpoint: Uri,
    /// Where codes and refresh tokens are exchanged.
    pub token_endpoint: Uri,
    /// RP-initiated logout, when the provider offers it.
    pub end_session_endpoint: Option<Uri>,
    /// `code_challenge_methods_supported` (empty: not advertised).
    pub code_challenge_methods: Vec<String>,
    /// `token_endpoint_auth_methods_supported` (the spec's default, `client_secret_basic`, when
    /// not advertised).
    pub token_endpoint_auth_methods: Vec<String>,
}

// === impl ProviderMetadata ===

impl ProviderMetadata {
    /// Types `doc` (a discovery document) for the issuer `issuer`.
    pub fn from_json(doc: &Value, issuer: &str) -> Result<Self, MetadataError> {
        let obj = doc.as_object().ok_or(MetadataError::NotAnObject)?;
        match obj.get("issuer").and_then(Value::as_str) {
            Some(i) if i == issuer => {}
            _ => return Err(MetadataError::IssuerMismatch),
        }
        let url = |field: &'static str| -> Result<Option<Uri>, MetadataError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => {
                    let uri: Uri = s.parse().map_err(|_| MetadataError::BadUrl(field))?;
                    if uri.host().is_none_or(str::is_empty) || !idp_url_allowed(&uri) {
                        return Err(MetadataError::BadUrl(field));
                    }
                    Ok(Some(uri))
                }
                Some(_) => Err(MetadataError::WrongType(field)),
            }
        };
        let list = |field: &'static str| -> Result<Option<Vec<String>>, MetadataError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or(MetadataError::WrongType(field))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(MetadataError::WrongType(field)),
            }
        };
        Ok(Self {
            issuer: issuer.to_string(),
            authorization_endpoint: url("authorization_endpoint")?
                .ok_or(MetadataError::Missing("authorization_endpoint"))?,
            token_endpoint: url("token_endpoint")?
                .ok_or(MetadataError::Missing("token_endpoint"))?,
            end_session_endpoint: url("end_session_endpoint")?,
            code_challenge_methods: list("code_challenge_methods_supported")?.unwrap_or_default(),
            token_endpoint_auth_methods: list("token_endpoint_auth_methods_supported")?
                .unwrap_or_else(|| vec!["client_secret_basic".to_string()]),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ISS: &str = "https://login.example.com/t";

    fn doc() -> Value {
        json!({
            "issuer": ISS,
            "authorization_endpoint": "https://login.example.com/t/authorize",
            "token_endpoint": "https://login.example.com/t/token",
            "end_session_endpoint": "https://login.example.com/t/logout",
            "jwks_uri": "https://login.example.com/t/keys",
            "code_challenge_methods_supported": ["plain", "S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
        })
    }

    fn with(field: &str, v: Value) -> Value {
        let mut d = doc();
        d[field] = v;
        d
    }

    #[test]
    fn parses_the_code_flow_fields() {
        let m = ProviderMetadata::from_json(&doc(), ISS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.token_endpoint, "https://login.example.com/t/token");
        assert_eq!(
            m.end_session_endpoint.as_ref().map(ToString::to_string),
            Some("https://login.example.com/t/logout".to_string())
        );
        assert_eq!(m.code_challenge_methods, ["plain", "S256"]);
        assert_eq!(m.token_endpoint_auth_methods, ["client_secret_post"]);
    }

    #[test]
    fn defaults_when_not_advertised() {
        let mut d = doc();
        let o = d.as_object_mut().unwrap_or_else(|| panic!("object"));
        o.remove("end_session_endpoint");
        o.remove("code_challenge_methods_supported");
        o.remove("token_endpoint_auth_methods_supported");
        let m = ProviderMetadata::from_json(&d, ISS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.end_session_endpoint, None);
        assert!(m.code_challenge_methods.is_empty());
        assert_eq!(m.token_endpoint_auth_methods, ["client_secret_basic"]);
        let plain = with("code_challenge_methods_supported", json!(["plain"]));
        let m = ProviderMetadata::from_json(&plain, ISS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.code_challenge_methods, ["plain"]);
    }

    #[test]
    fn refuses_what_it_must() {
        use MetadataError::*;
        let cases: Vec<(Value, &str, MetadataError)> = vec![
            (json!([]), ISS, NotAnObject),
            (doc(), "https://login.example.com/other", IssuerMismatch),
            (with("issuer", json!(null)), ISS, IssuerMismatch),
            (
                with("token_endpoint", json!(null)),
                ISS,
                Missing("token_endpoint"),
            ),
            (
                with("authorization_endpoint", json!(null)),
                ISS,
                Missing("authorization_endpoint"),
            ),
            (
                with("token_endpoint", json!("http://idp.example.com/token")),
                ISS,
                BadUrl("token_endpoint"),
            ),
            (
                with("end_session_endpoint", json!("javascript:alert(1)")),
                ISS,
                BadUrl("end_session_endpoint"),
            ),
            (
                with("authorization_endpoint", json!("/relative")),
                ISS,
                BadUrl("authorization_endpoint"),
            ),
            (
                with("token_endpoint", json!(7)),
                ISS,
                WrongType("token_endpoint"),
            ),
            (
                with("code_challenge_methods_supported", json!("S256")),
                ISS,
                WrongType("code_challenge_methods_supported"),
            ),
            (
                with("token_endpoint_auth_methods_supported", json!([1])),
                ISS,
                WrongType("token_endpoint_auth_methods_supported"),
            ),
        ];
        for (d, iss, want) in cases {
            assert_eq!(
                ProviderMetadata::from_json(&d, iss),
                Err(want.clone()),
                "{d}"
            );
        }
        let loopback = with("token_endpoint", json!("http://127.0.0.1:8080/token"));
        assert!(ProviderMetadata::from_json(&loopback, ISS).is_ok());
    }
}
