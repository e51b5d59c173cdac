//! Identity headers to the upstream, and the client headers that must not reach it.
//!
//! This is header policy of every route, authenticated or not (the request path runs
//! [`IdentityHeaders::sanitize`] before it authenticates), so it lives with the other header
//! rules; authentication only hands over the [`Identity`] that [`IdentityHeaders::apply`]
//! reads.
//!
//! Security notes:
//! - The headers Portcullis owns (`auth.strip_headers` and every `auth.identity_headers`
//!   target) are removed from every request, on every route (authenticated or not), before
//!   any are set from verified claims: an upstream can trust them only because a client can
//!   never send them through. Names are compared as CGI, WSGI, Rack and PHP see them: any
//!   ASCII case, `_` equal to `-` (`X_Auth_Request_User` becomes the same
//!   `HTTP_X_AUTH_REQUEST_USER` as `X-Auth-Request-User`).
//! - `server.untrusted_forwarded_headers` (client address, scheme, host, URL rewrite and
//!   method override headers that frameworks act on) are removed unless
//!   `server.trust_forwarded_headers` is on; even then their `_` spellings, and those of
//!   `X-Forwarded-*` and `Forwarded`, are removed: a trusted proxy in front sends the `-`
//!   spelling, and a second `_` copy would reach the application under the same name.
//! - Hop-by-hop removal runs first ([`IdentityHeaders::sanitize`]), and a `Connection` token
//!   naming a header Portcullis reads, sets or polices ([`IdentityHeaders::protects`]) is
//!   ignored, so a client can't make the proxy drop a header it sets.
//! - Claim values are percent-encoded where they could be ambiguous or break the header
//!   (see [`encode_claim`]): a value can't inject a header or a list element.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use serde_json::Value;

use super::{NameSet, remove_hop_by_hop_except};
use crate::claims::{HeaderMapping, Identity, MappedHeader, ReadyHeaders};
use crate::config::Config;

/// Headers a client's `Connection` may never remove, and whose `_` spellings are always
/// removed: what Portcullis reads (`Authorization`, `Cookie`, `Host`, `Content-Length`) or sets
/// (`X-Forwarded-*`, `Forwarded`).
pub const PROTECTED_HEADERS: [&str; 6] = [
    "Host",
    "Authorization",
    "Cookie",
    "Content-Length",
    "X-Forwarded-*",
    "Forwarded",
];

/// Which client headers are removed, and which claims are sent as which headers.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// Removed in any spelling, always.
    owned: NameSet,
    /// `server.untrusted_forwarded_headers`: removed unless trusted.
    untrusted: NameSet,
    /// [`PROTECTED_HEADERS`].
    protected: NameSet,
    trust_forwarded: bool,
    map: HeaderMapping,
    /// The owned headers named exactly, in their `-` and `_` spellings: what an ext_authz
    /// allow always removes ([`IdentityHeaders::to_remove`]), built once.
    removable: Vec<String>,
}

// === impl IdentityHeaders ===

impl IdentityHeaders {
    /// `strip` entries are header names or prefixes ending in `*`; every mapped header is
    /// stripped too. No untrusted forwarded headers; see [`IdentityHeaders::from_config`].
    pub fn new(strip: &[String], map: Vec<MappedHeader>) -> Self {
        let owned = NameSet::new(
            strip
                .iter()
                .map(String::as_str)
                .chain(map.iter().map(|m| m.header.as_str())),
        );
        let mut removable: Vec<String> = Vec::new();
        for name in owned.names() {
            for spelling in [name.to_string(), name.replace('-', "_")] {
                if !removable.contains(&spelling) {
                    removable.push(spelling);
                }
            }
        }
        Self {
            owned,
            untrusted: NameSet::default(),
            protected: NameSet::new(PROTECTED_HEADERS),
            trust_forwarded: false,
            map: map.into(),
            removable,
        }
    }

    /// From `auth.strip_headers`, `auth.identity_headers`, the headers of
    /// `auth.header_profile` and `auth.assertion` (all owned),
    /// `server.trust_forwarded_headers` and `server.untrusted_forwarded_headers`.
    pub fn from_config(config: &Config) -> Self {
        let mut strip = config.auth.strip_headers.clone();
        strip.extend(config.auth.profile.owned.iter().cloned());
        // The grace marker is the proxy's to set: a client's copy never passes.
        if let Some(h) = &config.sessions.degraded_header {
            strip.push(h.as_str().to_string());
        }
        let mut me = Self::new(&strip, config.auth.mapped_headers());
        me.untrusted = NameSet::new(
            config
                .server
                .untrusted_forwarded_headers
                .iter()
                .map(String::as_str),
        );
        me.trust_forwarded = config.server.trust_forwarded_headers;
        me
    }

    /// Prepares a client's request headers: hop-by-hop headers out (a `Connection` token that
    /// names a [protected](IdentityHeaders::protects) header is ignored), then
    /// [`strip`](IdentityHeaders::strip). Run it before authentication sets identity headers.
    pub fn sanitize(&self, headers: &mut HeaderMap, upgrade: bool) {
        remove_hop_by_hop_except(headers, upgrade, |token| self.protects(token));
        self.strip(headers);
    }

    /// Whether a `Connection` token naming `name` is ignored: an owned header, an untrusted
    /// forwarded header, or one of [`PROTECTED_HEADERS`] (any case, `_` or `-`).
    pub fn protects(&self, name: &str) -> bool {
        self.owned.matches(name) || self.untrusted.matches(name) || self.protected.matches(name)
    }

    /// Removes every owned header, every untrusted forwarded header (unless trusted) and the
    /// `_` spellings of forwarded and protected headers. Allocates only when it removes.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if headers.keys().any(|k| self.strips(k)) {
            let names: Vec<HeaderName> =
                headers.keys().filter(|k| self.strips(k)).cloned().collect();
            for n in names {
                headers.remove(n);
            }
        }
    }

    /// The client's own copies of the headers [`strip`](IdentityHeaders::strip) removes, in
    /// the spellings `headers` has them (usually none: no allocation).
    pub fn client_copies(&self, headers: &HeaderMap) -> Vec<HeaderName> {
        headers.keys().filter(|k| self.strips(k)).cloned().collect()
    }

    /// The request headers an ext_authz allow asks the gateway to remove before the request
    /// goes upstream: every owned header named exactly (in its `-` and its `_` spelling, as
    /// the gateway may not have shown us the client's copy) and the client's own copies
    /// (`client`, from [`client_copies`](IdentityHeaders::client_copies)); minus the names of
    /// `set`, the headers the answer sets (the gateway overwrites those, and Envoy removes
    /// after it sets, so a removal would undo the value).
    pub fn to_remove<'a>(&'a self, client: &'a [HeaderName], set: &HeaderMap) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        let names = self
            .removable
            .iter()
            .map(String::as_str)
            .chain(client.iter().map(HeaderName::as_str));
        for n in names {
            if !set.contains_key(n) && !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    fn strips(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        if self.owned.matches(name) {
            return true;
        }
        if name.contains('_') {
            return self.untrusted.matches(name) || self.protected.matches(name);
        }
        !self.trust_forwarded && self.untrusted.matches(name)
    }

    /// Sets the mapped headers from `identity`'s claims, encoded by [`encode_claim`]. A claim
    /// that is missing, null or an object sends no header. The values are built once per
    /// identity and mapping and kept in the identity ([`crate::claims::HeaderCache`]): a
    /// cached token or session reuses them on its next request.
    pub fn apply(&self, headers: &mut HeaderMap, identity: &Identity) {
        let insert = |headers: &mut HeaderMap, ready: &[(HeaderName, HeaderValue)]| {
            for (name, value) in ready {
                headers.insert(name.clone(), value.clone());
            }
        };
        if let Some(ready) = identity.headers.get(&self.map) {
            insert(headers, ready);
            return;
        }
        let built = self.build(identity);
        insert(headers, &built);
        identity.headers.set(&self.map, built);
    }

    fn build(&self, identity: &Identity) -> ReadyHeaders {
        let mut out = Vec::with_capacity(self.map.len());
        for m in self.map.iter() {
            let Some(value) = m.claim.get(&identity.claims).and_then(encode_claim) else {
                continue;
            };
            let value = if m.prefix.is_empty() {
                value
            } else {
                format!("{}{value}", m.prefix)
            };
            match HeaderValue::try_from(value) {
                Ok(v) => out.push((m.header.clone(), v)),
                // Not reachable (the encoding leaves only visible ASCII and inner spaces);
                // kept so a mistake there drops the header instead of panicking.
                Err(_) => {
                    tracing::warn!(claim = %m.claim, "claim value is not a valid header value; not sent")
                }
            }
        }
        out.into_boxed_slice()
    }
}

/// A claim as an identity header value, or `None` for null and objects.
///
/// Every value reads as a comma-separated list of percent-encoded items (a single claim is a
/// list of one): split on `,`, then percent-decode each part, and the values come back
/// exactly. A value without special characters is sent unchanged.
///
/// - A string: `%`, `,`, control characters (CR, LF, NUL, TAB...), DEL, every non-ASCII byte
///   (UTF-8) and a leading or trailing space are percent-encoded (`%25`, `%2C`, `%0D`,
///   `%C3%A9`, `%20`); everything else (including `"` and `\`) is sent as is.
/// - A number or boolean: its JSON text (`42`, `true`).
/// - An array: its elements joined with `,` (no space), strings encoded as above, other
///   elements as their JSON text encoded the same way. An empty array sends an empty value.
pub fn encode_claim(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(escape(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match item {
                    Value::String(s) => out.push_str(&escape(s)),
                    other => out.push_str(&escape(&other.to_string())),
                }
            }
            Some(out)
        }
        Value::Null | Value::Object(_) => None,
    }
}

/// Percent-encodes what can't be sent or would be ambiguous (see [`encode_claim`]); returns
/// the text unchanged (one copy) when there is nothing to encode.
fn escape(s: &str) -> String {
    let bytes = s.as_bytes();
    let last = bytes.len().saturating_sub(1);
    let needs = |i: usize, b: u8| {
        !(0x20..0x7f).contains(&b) || b == b'%' || b == b',' || (b == b' ' && (i == 0 || i == last))
    };
    if !bytes.iter().enumerate().any(|(i, &b)| needs(i, b)) {
        return s.to_string();
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + 8);
    for (i, &b) in bytes.iter().enumerate() {
        if needs(i, b) {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.append(k, v);
            }
        }
        h
    }

    fn owned() -> IdentityHeaders {
        let map = vec![mapped("sub", "x-user")];
        IdentityHeaders::new(
            &["X-Auth-Request-*".into(), "X-Forwarded-Email".into()],
            map,
        )
    }

    #[test]
    fn strips_every_spelling() {
        let id = owned();
        let mut h = headers(&[
            ("x_user", "a"),
            ("X_USER", "b"),
            ("x-user", "c"),
            ("x_auth_request_user", "d"),
            ("x-auth_request-groups", "e"),
            ("X_Forwarded_Email", "f"),
            ("x_forwarded_for", "g"),
            ("x-userx", "keep"),
            ("x-auth-reques", "keep"),
        ]);
        id.strip(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-auth-reques", "x-userx"]);
    }

    #[test]
    fn an_ext_authz_allow_removes_every_owned_spelling_but_the_ones_it_sets() {
        let id = owned();
        let client = headers(&[
            ("x_auth_request_user", "d"),
            ("x-auth_request-groups", "e"),
            ("x-user", "c"),
            ("x-userx", "keep"),
            ("accept", "keep"),
        ]);
        let set = headers(&[("x-user", "alice")]);
        let copies = id.client_copies(&client);
        let mut removed = id.to_remove(&copies, &set);
        removed.sort_unstable();
        assert_eq!(
            removed,
            [
                "x-auth_request-groups",
                "x-forwarded-email",
                "x_auth_request_user",
                "x_forwarded_email",
                "x_user",
            ]
        );
    }

    #[test]
    fn connection_cannot_name_protected_headers() {
        let id = owned();
        for token in [
            "authorization",
            "Host",
            "x-forwarded-for",
            "X_User",
            "cookie",
        ] {
            assert!(id.protects(token), "{token}");
        }
        assert!(!id.protects("x-debug"));
        let mut h = headers(&[
            ("connection", "Authorization, x-debug, cookie"),
            ("authorization", "Bearer t"),
            ("cookie", "a=b"),
            ("x-debug", "1"),
        ]);
        id.sanitize(&mut h, false);
        assert!(h.contains_key("authorization") && h.contains_key("cookie"));
        assert!(!h.contains_key("x-debug") && !h.contains_key("connection"));
    }

    #[test]
    fn claim_encoding() {
        let cases = [
            (json!("alice"), "alice"),
            (json!("a,b \"q\" \\x"), "a%2Cb \"q\" \\x"),
            (json!("100%"), "100%25"),
            (json!("José"), "Jos%C3%A9"),
            (json!("a\r\nX-Evil: 1"), "a%0D%0AX-Evil: 1"),
            (json!("nul\0tab\t"), "nul%00tab%09"),
            (json!(" padded "), "%20padded%20"),
            (json!(42), "42"),
            (json!(true), "true"),
            (json!(["staff", "dev"]), "staff,dev"),
            (json!(["a,b", "c"]), "a%2Cb,c"),
            (
                json!(["x", 1, null, {"k": "v,w"}]),
                "x,1,null,{\"k\":\"v%2Cw\"}",
            ),
            (json!([]), ""),
        ];
        for (value, want) in cases {
            assert_eq!(encode_claim(&value).as_deref(), Some(want), "{value}");
            assert!(HeaderValue::from_str(want).is_ok());
        }
        assert_eq!(encode_claim(&json!(null)), None);
        assert_eq!(encode_claim(&json!({"a": 1})), None);
    }

    fn identity(claims: serde_json::Value) -> Identity {
        Identity {
            issuer: std::sync::Arc::from("corp"),
            subject: None,
            claims: claims.as_object().cloned().unwrap_or_default(),
            scopes: vec![],
            groups: vec![],
            roles: vec![],
            expires: None,
            headers: Default::default(),
            cel: Default::default(),
        }
    }

    fn mapping(pairs: &[(&str, &'static str)]) -> IdentityHeaders {
        let map = pairs.iter().map(|(c, h)| mapped(c, h)).collect();
        IdentityHeaders::new(&[], map)
    }

    fn mapped(claim: &str, header: &'static str) -> MappedHeader {
        MappedHeader {
            claim: crate::claims::ClaimPath::parse(claim)
                .unwrap_or(crate::claims::ClaimPath(vec![])),
            header: HeaderName::from_static(header),
            prefix: "",
        }
    }

    fn sent(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn kept_headers_are_the_ones_built_and_follow_the_mapping() {
        let id = identity(json!({"sub": "alice", "email": "a@x", "groups": ["a", "b,c"]}));
        let first = mapping(&[
            ("sub", "x-user"),
            ("groups", "x-groups"),
            ("nope", "x-nope"),
        ]);
        let mut a = HeaderMap::new();
        first.apply(&mut a, &id);
        let expected = vec![
            ("x-groups".to_string(), "a,b%2Cc".to_string()),
            ("x-user".to_string(), "alice".to_string()),
        ];
        assert_eq!(sent(&a), expected);
        // The second request with this identity gets the kept values: the same headers.
        let mut b = HeaderMap::new();
        first.apply(&mut b, &id);
        assert_eq!(sent(&b), expected);
        // An equal mapping built again (a reload that did not change it) uses them too.
        let same = mapping(&[
            ("sub", "x-user"),
            ("groups", "x-groups"),
            ("nope", "x-nope"),
        ]);
        let mut c = HeaderMap::new();
        same.apply(&mut c, &id);
        assert_eq!(sent(&c), expected);
        // A changed mapping never gets the values kept for the old one.
        let changed = mapping(&[("email", "x-user")]);
        for _ in 0..2 {
            let mut d = HeaderMap::new();
            changed.apply(&mut d, &id);
            assert_eq!(sent(&d), vec![("x-user".to_string(), "a@x".to_string())]);
        }
        // Existing values of a mapped header are replaced, as before.
        let mut e = headers(&[("x-user", "mallory")]);
        first.apply(&mut e, &id);
        assert_eq!(e.get_all("x-user").iter().count(), 1);
        assert_eq!(e.get("x-user").map(|v| v.as_bytes()), Some(&b"alice"[..]));
    }

    fn profile(name: &str) -> IdentityHeaders {
        let yaml = format!(
            "listeners: {{ plain: {{ address: \"127.0.0.1:0\" }} }}\n\
             upstreams: {{ app: {{ addresses: [\"http://127.0.0.1:1\"] }} }}\n\
             routes: [{{ path: /, upstream: app }}]\n\
             auth: {{ header_profile: {name}, assertion: {{ issuer: x }} }}\n"
        );
        let config = crate::config::Config::from_yaml(&yaml, Vec::<(String, String)>::new())
            .unwrap_or_else(|e| panic!("{e}"));
        IdentityHeaders::from_config(&config)
    }

    #[test]
    fn a_profiles_headers_are_owned_and_listed_for_envoy_in_both_spellings() {
        let iap = profile("iap");
        let none = HeaderMap::new();
        let removed = iap.to_remove(&[], &none);
        for name in [
            "x-goog-iap-jwt-assertion",
            "x_goog_iap_jwt_assertion",
            "x-goog-authenticated-user-email",
            "x_goog_authenticated_user_id",
        ] {
            assert!(removed.contains(&name), "{name}: {removed:?}");
        }
        let mut h = headers(&[
            ("X_Goog_Iap_Jwt_Assertion", "forged"),
            ("x-goog-iap-anything", "forged"),
            ("x-goog-authenticated-user-whatever", "forged"),
        ]);
        iap.strip(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let pomerium = profile("pomerium");
        let mut h = headers(&[("x_pomerium_claim_admin", "1"), ("x-pomerium-jwt-assertion", "f")]);
        pomerium.strip(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn iap_user_headers_carry_their_prefix() {
        let iap = profile("iap");
        let id = identity(json!({"sub": "1234", "email": "a@x"}));
        let mut h = HeaderMap::new();
        iap.apply(&mut h, &id);
        assert_eq!(
            sent(&h),
            vec![
                (
                    "x-goog-authenticated-user-email".to_string(),
                    "accounts.google.com:a@x".to_string()
                ),
                (
                    "x-goog-authenticated-user-id".to_string(),
                    "accounts.google.com:1234".to_string()
                ),
            ]
        );
    }
}
