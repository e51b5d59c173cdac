//! CEL rules: what the load-time checks refuse (with positions), what evaluation reads, and
//! that hostile expressions and values end in errors, never panics.

use std::sync::Arc;

use http::HeaderMap;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::claims::Identity;

fn compile(kind: Kind, src: &str) -> Result<CelRule, CelError> {
    CelRule::compile(Arc::from("r"), kind, Mode::Enforce, src, Limits::default())
}

/// An identity from `claims` (also the native evaluator's tests').
pub(super) fn id(claims: Value) -> Identity {
    Identity {
        issuer: Arc::from("corp"),
        subject: None,
        scopes: Vec::new(),
        groups: Vec::new(),
        roles: Vec::new(),
        expires: None,
        claims: claims.as_object().cloned().unwrap_or_default(),
        headers: Default::default(),
        cel: Default::default(),
    }
}

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in list {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    h
}

/// Evaluates `src` as an allow_if for a GET of app.example.com/api/x?a=1 from 10.1.2.3.
fn run(src: &str, claims: Value, hdrs: &[(&str, &str)]) -> RuleResult {
    let rule = match compile(Kind::AllowIf, src) {
        Ok(r) => r,
        Err(e) => panic!("{src}: {e}"),
    };
    let h = headers(hdrs);
    let facts = Facts {
        method: "GET",
        host: "app.example.com",
        path: "/api/x",
        query: "a=1",
        headers: &h,
        client_ip: IpAddr::from([10, 1, 2, 3]),
        now: 1_700_000_000,
    };
    let identity = id(claims);
    let eval = Evaluation::new(&facts, "api", &identity, std::slice::from_ref(&rule));
    rule.evaluate(&eval.context())
}

fn refused(src: &str) -> CelError {
    match compile(Kind::AllowIf, src) {
        Ok(_) => panic!("{src} compiled"),
        Err(e) => e,
    }
}

#[test]
fn a_syntax_error_names_its_position() {
    let e = refused("claims.email ==");
    assert_eq!((e.line, e.column), (1, 16), "{e}");
    assert!(e.message.starts_with("syntax error"), "{e}");
    let e = refused("true &&\n  (claims.a ==)");
    assert_eq!((e.line, e.column), (2, 15), "{e}");
    let e = refused("== 1");
    assert_eq!((e.line, e.column), (1, 1), "{e}");
}

#[test]
fn an_unknown_variable_is_refused_where_it_is() {
    let e = refused("claims.a == 1 && user.name == 'x'");
    assert_eq!((e.line, e.column), (1, 18), "{e}");
    assert!(e.message.contains("unknown variable \"user\""), "{e}");
    // Variables bound by a macro are known inside it only.
    assert!(compile(Kind::AllowIf, "claims.groups.exists(g, g == 'admin')").is_ok());
    let e = refused("claims.groups.exists(g, g == 'admin') && g == 'x'");
    assert!(e.message.contains("\"g\""), "{e}");
}

#[test]
fn a_result_that_can_never_be_boolean_is_refused() {
    for (src, what) in [
        ("1 + 2", "arithmetic"),
        ("'yes'", "a string"),
        ("request.path", "a string"),
        ("request.headers", "a map"),
        ("now", "an integer"),
        ("size(claims.groups)", "an integer"),
        ("[true]", "a list"),
        ("claims.groups.map(g, g == 'a')", "a list"),
        ("true ? 1 : 'x'", "an integer"),
    ] {
        let e = refused(src);
        assert!(e.message.contains(what), "{src}: {e}");
    }
    // A claim's type is known only per request: allowed, checked when it runs.
    assert!(compile(Kind::AllowIf, "claims.admin").is_ok());
    assert!(compile(Kind::AllowIf, "true ? claims.admin : false").is_ok());
}

#[test]
fn claims_are_read_by_name_and_the_names_are_collected() {
    let r = compile(
        Kind::AllowIf,
        "claims.email.endsWith('@x.com') && claims['cognito:groups'].exists(g, g == 'a') && has(claims.sub)",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.claims(), ["email", "cognito:groups", "sub"]);
    assert!(refused("'a' in claims").message.contains("by name"));
    assert!(refused("claims[request.path] == 'x'").message.contains("by name"));
    assert!(refused("request.nope == 'x'").message.contains("no field"));
}

#[test]
fn the_size_limits_are_enforced_with_the_key_to_raise() {
    let long = format!("claims.a == '{}'", "x".repeat(5000));
    let e = refused(&long);
    assert!(e.message.contains("auth.policy.max_expression_bytes (4096)"), "{e}");
    assert_eq!((e.line, e.column), (1, 4097));
    let small = Limits {
        max_bytes: 4096,
        max_nodes: 5,
    };
    let e = CelRule::compile(
        Arc::from("r"),
        Kind::AllowIf,
        Mode::Enforce,
        "claims.a == 1 && claims.b == 2",
        small,
    )
    .err()
    .unwrap_or_else(|| panic!("compiled"));
    assert!(e.message.contains("max_expression_nodes (5)"), "{e}");
}

#[test]
fn rules_read_claims_request_client_route_and_now() {
    let claims = json!({"email": "a@corp.com", "groups": ["dev", "ops"], "exp": 1_700_000_600_u64, "n": 5});
    let allow = |src: &str| run(src, claims.clone(), &[("x-tenant", "blue")]);
    assert_eq!(allow("claims.email.endsWith('@corp.com')"), RuleResult::Allow);
    assert_eq!(allow("'ops' in claims.groups"), RuleResult::Allow);
    assert_eq!(allow("'root' in claims.groups"), RuleResult::Deny);
    assert_eq!(allow("claims.exp > now && claims.n == 5"), RuleResult::Allow);
    assert_eq!(allow("request.method == 'GET' && request.path.startsWith('/api/')"), RuleResult::Allow);
    assert_eq!(allow("request.host == 'app.example.com' && request.query == 'a=1'"), RuleResult::Allow);
    assert_eq!(allow("request.headers['x-tenant'] == 'blue'"), RuleResult::Allow);
    assert_eq!(allow("client.ip.startsWith('10.')"), RuleResult::Allow);
    assert_eq!(allow("route == 'api'"), RuleResult::Allow);
    let deny = compile(Kind::DenyIf, "client.ip == '10.1.2.3'").unwrap_or_else(|e| panic!("{e}"));
    let h = HeaderMap::new();
    let facts = Facts {
        method: "GET",
        host: "h",
        path: "/",
        query: "",
        headers: &h,
        client_ip: IpAddr::from([10, 1, 2, 3]),
        now: 0,
    };
    let identity = id(json!({}));
    let eval = Evaluation::new(&facts, "api", &identity, std::slice::from_ref(&deny));
    assert_eq!(deny.evaluate(&eval.context()), RuleResult::Deny);
}

#[test]
fn only_the_headers_read_by_name_are_converted_unless_the_map_is_read() {
    let r = compile(
        Kind::AllowIf,
        "request.headers['x-a'] == '1' && 'x-b' in request.headers && has(request.headers.x_c)",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let names = ["x-a".to_string(), "x-b".into(), "x_c".into()];
    assert_eq!(r.header_names(), Some(&names[..]));
    let all = compile(Kind::AllowIf, "size(request.headers) == 2").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.header_names(), None);
    let h = [("x-a", "1"), ("x-b", "2")];
    assert_eq!(run("size(request.headers) == 2", json!({}), &h), RuleResult::Allow);
    assert_eq!(
        run("request.headers['x-a'] == '1' && 'x-b' in request.headers", json!({}), &h),
        RuleResult::Allow
    );
    assert_eq!(
        run("request.headers.exists(k, k == 'x-b')", json!({}), &h),
        RuleResult::Allow
    );
    let e = refused("request.headers['X-Tenant'] == 'a'");
    assert!(e.message.contains("write \"x-tenant\""), "{e}");
}

#[test]
fn several_copies_of_a_header_are_joined() {
    let r = run(
        "request.headers['x-a'] == '1, 2'",
        json!({}),
        &[("x-a", "1"), ("x-a", "2")],
    );
    assert_eq!(r, RuleResult::Allow);
}

#[test]
fn runtime_errors_are_errors_with_fixed_reasons() {
    let c = json!({"n": 9_223_372_036_854_775_807_i64, "s": "x", "admin": "yes"});
    assert_eq!(run("claims.missing == 'x'", c.clone(), &[]), RuleResult::Error("no such key"));
    assert_eq!(run("claims.n + 1 > 0", c.clone(), &[]), RuleResult::Error("overflow"));
    assert_eq!(run("claims.n / 0 > 0", c.clone(), &[]), RuleResult::Error("division by zero"));
    assert_eq!(run("claims.s > 1", c.clone(), &[]), RuleResult::Error("wrong type"));
    assert_eq!(run("claims.admin", c.clone(), &[]), RuleResult::Error("not a boolean"));
    assert_eq!(run("request.headers['nope'] == 'x'", c, &[]), RuleResult::Error("no such key"));
}

#[test]
fn large_unsigned_and_float_claims_keep_their_values() {
    let c = json!({"big": 18_446_744_073_709_551_615_u64, "f": 1.5});
    assert_eq!(run("claims.big == 18446744073709551615u", c.clone(), &[]), RuleResult::Allow);
    assert_eq!(run("claims.f > 1.0", c, &[]), RuleResult::Allow);
}

/// Pieces hostile expressions are made of.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "claims.n", "claims.s", "claims.l", "claims.m", "request.path", "request.headers",
        "now", "client.ip", "route", "9223372036854775807", "-9223372036854775808", "0", "1",
        "18446744073709551615u", "1.0e308", "'x'", "b'\\xff'", "[1, 'a']", "{'a': 1}", " + ",
        " - ", " * ", " / ", " % ", " == ", " < ", " && ", " || ", "!", "-", "(", ")", "[", "]",
        ".size()", "size(", ".exists(x, x", ".map(x, x", ".all(x, x", " in ", "has(", "int(",
        "string(", "double(", "uint(", ".matches('(a+)+$')", ".startsWith(", ", ", "?", ":",
        "'\\u0000'", "null", "true", "false", "dyn(", "type(",
    ])
}

/// Hostile claim values.
fn claim_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        Just(json!(f64::MAX)),
        Just(json!(null)),
        Just(json!("")),
        Just(json!("\u{0}\u{ffff}")),
        Just(json!([1, "a", null, [[]], {}])),
        Just(json!({"a": {"b": {"c": [1]}}})),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,20}".prop_map(|s| json!(s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever compiles evaluates to a result, never a panic, over hostile values.
    #[test]
    fn hostile_expressions_and_values_never_panic(
        parts in prop::collection::vec(piece(), 1..12),
        n in claim_value(), s in claim_value(), l in claim_value(), m in claim_value(),
        header in ".{0,16}",
    ) {
        let src: String = parts.concat();
        if let Ok(rule) = compile(Kind::DenyIf, &src) {
            let identity = id(json!({"n": n, "s": s, "l": l, "m": m}));
            let h = headers(&[("x-h", &header)]);
            let facts = Facts {
                method: "GET",
                host: "h",
                path: "/p",
                query: "",
                headers: &h,
                client_ip: IpAddr::from([0, 0, 0, 0]),
                now: i64::MAX,
            };
            let eval = Evaluation::new(&facts, "r", &identity, std::slice::from_ref(&rule));
            let _ = rule.evaluate(&eval.context());
        }
    }
}


#[test]
fn only_the_request_fields_read_are_built() {
    let r = compile(Kind::AllowIf, "request.method == 'GET' && request.headers['x-a'] == '1'")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.request_fields(), 0b1_0001);
    assert_eq!(r.header_names(), Some(&["x-a".to_string()][..]));
    let whole = compile(Kind::AllowIf, "'path' in request").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(whole.request_fields(), 0b1_1111);
    assert_eq!(whole.header_names(), None);
    assert_eq!(
        run("request.path == '/api/x' && request.method == 'GET'", json!({}), &[]),
        RuleResult::Allow
    );
}
