//! Native evaluation (`native`) against the interpreter: each supported shape, and `&&` /
//! `||` over them and over clauses left to the interpreter, give the interpreter's result
//! (value or error reason) for random claims and requests.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn compile(src: &str) -> CelRule {
    CelRule::compile(
        Arc::from("r"),
        Kind::AllowIf,
        Mode::Enforce,
        src,
        Limits::default(),
    )
    .unwrap_or_else(|e| panic!("{src}: {e}"))
}

use super::tests::id as identity;

/// A request's strings, headers (raw bytes; several copies allowed), for `rule`: the
/// interpreter's result and the native one.
fn both(rule: &CelRule, claims: &Value, strings: [&str; 4], hdrs: &[(String, Vec<u8>)]) -> (RuleResult, RuleResult) {
    let mut h = HeaderMap::new();
    for (k, v) in hdrs {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(v)) {
            h.append(k, v);
        }
    }
    let [method, host, path, query] = strings;
    let facts = Facts {
        method,
        host,
        path,
        query,
        headers: &h,
        client_ip: IpAddr::from([10, 1, 2, 3]),
        now: 1_700_000_000,
    };
    let id = identity(claims.clone());
    let rules = std::slice::from_ref(rule);
    let interpreted = rule.evaluate(&Evaluation::new(&facts, "api", &id, rules).context());
    // A fresh identity: the native path converts the claims itself.
    let id = identity(claims.clone());
    let native = rule.evaluate_in(&Evaluation::new(&facts, "api", &id, rules));
    (interpreted, native)
}

const LITERALS: [&str; 12] = [
    "'x'", "''", "'GET'", "'@corp.com'", "'staff'", "'/api'", "1", "0", "-1", "1.0", "1u", "true",
];
const STRINGS: [&str; 8] = ["x", "", "GET", "@corp.com", "staff", "/api", "a@corp.com", "/api/x"];

fn lit() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&LITERALS[..]).prop_map(str::to_string),
        Just("null".to_string()),
    ]
}

fn string_lit() -> impl Strategy<Value = String> {
    prop::sample::select(&STRINGS[..]).prop_map(|s| format!("'{s}'"))
}

fn claim() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["a", "b", "g", "missing"][..])
}

/// One clause of a supported shape.
fn native_clause() -> impl Strategy<Value = String> {
    let field = prop::sample::select(&["method", "host", "path", "query"][..]);
    let op = prop::sample::select(&["==", "!="][..]);
    let method = prop::sample::select(&["startsWith", "endsWith", "contains"][..]);
    prop_oneof![
        (field.clone(), op.clone(), string_lit()).prop_map(|(f, o, l)| format!("request.{f} {o} {l}")),
        (field, method.clone(), string_lit()).prop_map(|(f, m, l)| format!("request.{f}.{m}({l})")),
        (prop::sample::select(&["['x-a']", "['x-b']", ".tenant"][..]), op.clone(), string_lit())
            .prop_map(|(h, o, l)| format!("request.headers{h} {o} {l}")),
        (claim(), op, lit()).prop_map(|(c, o, l)| format!("claims.{c} {o} {l}")),
        (claim(), method, string_lit()).prop_map(|(c, m, l)| format!("claims.{c}.{m}({l})")),
        (string_lit(), claim()).prop_map(|(l, c)| format!("{l} in claims.{c}")),
    ]
}

/// A clause the interpreter runs (some not boolean, some failing).
fn other_clause() -> impl Strategy<Value = String> {
    prop_oneof![
        claim().prop_map(|c| format!("claims.{c}")),
        claim().prop_map(|c| format!("size(claims.{c}) > 1")),
        claim().prop_map(|c| format!("claims.{c} + 1 == 2")),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("request.method".to_string()),
        Just("request.headers['x-a'].size() == 1".to_string()),
        (string_lit(), claim()).prop_map(|(l, c)| format!("{l} == claims.{c}")),
    ]
}

fn expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![3 => native_clause(), 1 => other_clause()];
    leaf.prop_recursive(3, 8, 2, |inner| {
        (inner.clone(), prop::sample::select(&["&&", "||"][..]), inner)
            .prop_map(|(l, o, r)| format!("({l}) {o} ({r})"))
    })
}

fn claim_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(&STRINGS[..]).prop_map(|s| json!(s)),
        prop::sample::select(&[0i64, 1, -1, 2][..]).prop_map(|n| json!(n)),
        Just(json!(1.0)),
        Just(json!(1.5)),
        Just(json!(u64::MAX)),
        Just(json!(true)),
        Just(json!(null)),
        Just(json!(["staff", "dev", 1])),
        Just(json!([])),
        Just(json!({"staff": 1, "x": "y"})),
    ]
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    (
        prop::sample::select(&["x-a", "x-b", "tenant"][..]).prop_map(str::to_string),
        prop_oneof![
            prop::sample::select(&STRINGS[..]).prop_map(|s| s.as_bytes().to_vec()),
            Just(b"caf\xe9".to_vec()),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// For random claims and requests, native evaluation gives the interpreter's result.
    #[test]
    fn native_evaluation_equals_the_interpreter(
        src in expression(),
        a in claim_value(), b in claim_value(), g in claim_value(),
        has_b in any::<bool>(),
        strings in prop::array::uniform4(prop::sample::select(&STRINGS[..])),
        hdrs in prop::collection::vec(header(), 0..4),
    ) {
        // A top that can never be boolean is refused at load: nothing to evaluate.
        let compiled = CelRule::compile(Arc::from("r"), Kind::AllowIf, Mode::Enforce, &src, Limits::default());
        prop_assume!(compiled.is_ok());
        let Ok(rule) = compiled else { return Ok(()) };
        let claims = if has_b { json!({"a": a, "b": b, "g": g}) } else { json!({"a": a, "g": g}) };
        let (interpreted, native) = both(&rule, &claims, strings, &hdrs);
        prop_assert_eq!(interpreted, native, "{} over {} and {:?}", src, claims, hdrs);
    }
}

#[test]
fn every_supported_shape_is_native() {
    for src in [
        "request.method == 'GET'",
        "request.path.startsWith('/api')",
        "request.host != 'a'",
        "request.query.contains('x')",
        "request.headers['x-tenant'] == 'blue'",
        "request.headers.tenant != 'blue'",
        "claims.email.endsWith('@corp.com')",
        "claims.sub == 'alice'",
        "claims.n == 1",
        "'staff' in claims.groups",
        "size(claims.groups) > 1 && request.method == 'GET'",
    ] {
        assert!(compile(src).is_native(), "{src}");
    }
    for src in ["size(claims.groups) > 1", "claims.a", "'GET' == request.method"] {
        assert!(!compile(src).is_native(), "{src}");
    }
}

#[test]
fn native_clauses_build_no_request_map() {
    let rule = compile(
        "claims.email.endsWith('@corp.com') && request.headers['x-tenant'] == 'blue' && request.method == 'GET'",
    );
    let h = HeaderMap::from_iter([(
        HeaderName::from_static("x-tenant"),
        HeaderValue::from_static("blue"),
    )]);
    let facts = Facts {
        method: "GET",
        host: "h",
        path: "/",
        query: "",
        headers: &h,
        client_ip: IpAddr::from([10, 1, 2, 3]),
        now: 0,
    };
    let id = identity(json!({"email": "a@corp.com"}));
    let scope = Evaluation::new(&facts, "api", &id, std::slice::from_ref(&rule));
    assert_eq!(rule.evaluate_in(&scope), RuleResult::Allow);
    assert!(scope.request.get().is_none(), "the request map was built");
    // A clause left to the interpreter that reads `request` builds it.
    let other = compile("claims.email.endsWith('@corp.com') && request.headers['x-tenant'].size() == 4");
    let scope = Evaluation::new(&facts, "api", &id, std::slice::from_ref(&other));
    assert_eq!(other.evaluate_in(&scope), RuleResult::Allow);
    assert!(scope.request.get().is_some());
}
