//! Policy evaluation and claim operators: exact comparisons, types, missing and nested
//! claims, arrays of mixed types, case.

use std::sync::Arc;

use serde_json::json;

use super::*;

fn id(claims: Value) -> Identity {
    let claims = claims.as_object().cloned().unwrap_or_default();
    Identity {
        issuer: Arc::from("corp"),
        subject: None,
        scopes: vec!["api:read".into(), "api:write".into()],
        groups: vec!["staff".into()],
        roles: vec!["reader".into()],
        expires: None,
        claims,
        headers: Default::default(),
        cel: Default::default(),
    }
}

fn path(s: &str) -> ClaimPath {
    ClaimPath::parse(s).unwrap_or(ClaimPath(vec![]))
}

#[test]
fn scopes_need_all_groups_need_one() {
    let i = id(json!({}));
    let p = |rules| Policy {
        mode: Match::All,
        rules,
        ..Policy::default()
    };
    assert_eq!(
        p(vec![Rule::Scopes(vec!["api:read".into()])]).evaluate(&i),
        Decision::Allow
    );
    assert_eq!(
        p(vec![Rule::Scopes(vec!["api:read".into(), "admin".into()])]).evaluate(&i),
        Decision::Deny {
            scope: Some("api:read admin".into()),
            rule: Decider::Fixed("scopes"),
        }
    );
    assert_eq!(
        p(vec![Rule::Groups(vec!["x".into(), "staff".into()])]).evaluate(&i),
        Decision::Allow
    );
    assert!(matches!(
        p(vec![Rule::Roles(vec!["admin".into()])]).evaluate(&i),
        Decision::Deny { .. }
    ));
}

#[test]
fn claims_and_nested_paths() {
    let i = id(
        json!({"tenant": "acme", "amr": ["pwd", "mfa"], "realm_access": {"roles": ["ops"]}, "email": "a@acme.com"}),
    );
    let holds = |r: Rule| r.holds(&i);
    assert!(holds(Rule::Claim(
        path("tenant"),
        ClaimOp::Equals(json!("acme"))
    )));
    assert!(!holds(Rule::Claim(
        path("tenant"),
        ClaimOp::Equals(json!("evil"))
    )));
    assert!(holds(Rule::Claim(
        path("amr"),
        ClaimOp::Contains(json!("mfa"))
    )));
    // Never a substring test.
    assert!(!holds(Rule::Claim(
        path("email"),
        ClaimOp::Contains(json!("@acme.com"))
    )));
    assert!(holds(Rule::Claim(
        path("realm_access.roles"),
        ClaimOp::Contains(json!("ops"))
    )));
    assert!(holds(Rule::Claim(
        path("tenant"),
        ClaimOp::OneOf(vec![json!("x"), json!("acme")])
    )));
    assert!(!holds(Rule::Claim(
        path("missing"),
        ClaimOp::Equals(json!("x"))
    )));
}

#[test]
fn any_vs_all() {
    let i = id(json!({}));
    let rules = vec![
        Rule::Roles(vec!["admin".into()]),
        Rule::Groups(vec!["staff".into()]),
    ];
    assert!(matches!(
        Policy {
            mode: Match::All,
            rules: rules.clone(),
            ..Policy::default()
        }
        .evaluate(&i),
        Decision::Deny { .. }
    ));
    assert_eq!(
        Policy {
            mode: Match::Any,
            rules,
            ..Policy::default()
        }
        .evaluate(&i),
        Decision::Allow
    );
    assert_eq!(Policy::default().evaluate(&i), Decision::Allow);
}

fn op(claims: Value, claim: &str, op: ClaimOp) -> bool {
    Rule::Claim(path(claim), op).holds(&id(claims))
}

#[test]
fn contains_is_membership_never_substring() {
    let c = json!({"email": "x@corp.com.evil.com", "amr": ["pwd", "mfa"], "mixed": [1, "1", true, null, {"a": 1}], "n": 5});
    let contains = |claim: &str, v: Value| op(c.clone(), claim, ClaimOp::Contains(v));
    assert!(!contains("email", json!("@corp.com")));
    assert!(!contains("email", json!("corp.com")));
    // A single claim is a list of one.
    assert!(contains("email", json!("x@corp.com.evil.com")));
    assert!(contains("n", json!(5)));
    assert!(contains("amr", json!("mfa")));
    assert!(!contains("amr", json!("mf")));
    // Mixed arrays: element type must match.
    assert!(contains("mixed", json!(1)));
    assert!(contains("mixed", json!("1")));
    assert!(contains("mixed", json!(true)));
    assert!(!contains("mixed", json!("true")));
    assert!(contains("mixed", json!({"a": 1})));
    assert!(!contains("missing", json!("x")));
}

#[test]
fn numbers_and_strings_never_mix() {
    let c = json!({"level": 5, "f": 5.0, "s": "5", "big": 9_007_199_254_740_993_u64, "neg": -1});
    let eq = |claim: &str, v: Value| op(c.clone(), claim, ClaimOp::Equals(v));
    assert!(eq("level", json!(5)));
    assert!(eq("level", json!(5.0)));
    assert!(eq("f", json!(5)));
    assert!(!eq("level", json!("5")));
    assert!(!eq("s", json!(5)));
    assert!(eq("s", json!("5")));
    // Integers compare exactly, beyond f64 precision too.
    assert!(eq("big", json!(9_007_199_254_740_993_u64)));
    assert!(!eq("big", json!(9_007_199_254_740_992_u64)));
    assert!(eq("neg", json!(-1)));
    assert!(!eq("neg", json!(u64::MAX)));
    assert!(op(
        c.clone(),
        "level",
        ClaimOp::OneOf(vec![json!("5"), json!(5)])
    ));
    assert!(!op(c, "s", ClaimOp::OneOf(vec![json!(5), json!(true)])));
}

#[test]
fn prefix_and_suffix_are_exact_and_case_sensitive() {
    let c = json!({"email": "x@corp.com.evil.com", "groups": ["team-a", 3, "ops"], "name": "Émile", "n": 12});
    let ends = |claim: &str, s: &str| op(c.clone(), claim, ClaimOp::EndsWith(s.into()));
    let starts = |claim: &str, s: &str| op(c.clone(), claim, ClaimOp::StartsWith(s.into()));
    assert!(!ends("email", "@corp.com"));
    assert!(ends("email", ".evil.com"));
    assert!(!ends("email", ".EVIL.com"));
    assert!(starts("groups", "team-"));
    assert!(!starts("groups", "Team-"));
    assert!(ends("groups", "ps"));
    assert!(starts("name", "Émile"));
    assert!(!starts("name", "émile"));
    // Not a string: never matches.
    assert!(!starts("n", "1"));
    assert!(!ends("missing", "x"));
}

#[test]
fn email_domain_needs_the_exact_domain() {
    let dom = |email: Value| {
        op(
            json!({ "email": email }),
            "email",
            ClaimOp::EmailDomain("corp.com".into()),
        )
    };
    assert!(dom(json!("a@corp.com")));
    assert!(dom(json!("a@CORP.Com")));
    assert!(dom(json!("\"a@b\"@corp.com")));
    assert!(!dom(json!("x@corp.com.evil.com")));
    assert!(!dom(json!("x@evilcorp.com")));
    assert!(!dom(json!("x@sub.corp.com")));
    assert!(!dom(json!("corp.com")));
    assert!(!dom(json!("@corp.com")));
    assert!(!dom(json!("a@corp.com.")));
    assert!(!dom(json!("a@corp.com\u{0}")));
    assert!(!dom(json!(42)));
    assert!(dom(json!(["x@evil.com", "a@corp.com"])));
    // ASCII case only: no Unicode case folding (K is U+212A KELVIN SIGN, not k).
    let unicode = |email: &str, domain: &str| {
        op(
            json!({ "email": email }),
            "email",
            ClaimOp::EmailDomain(domain.into()),
        )
    };
    assert!(unicode("a@\u{e7}orp.com", "\u{e7}orp.com"));
    assert!(!unicode("a@\u{c7}ORP.com", "\u{e7}orp.com"));
    assert!(!unicode("a@\u{212a}orp.com", "korp.com"));
}

#[test]
fn nested_paths_and_missing_claims() {
    let c = json!({"realm_access": {"roles": ["ops"], "tier": "gold"}, "flat.key": "x"});
    assert!(op(
        c.clone(),
        "realm_access.roles",
        ClaimOp::Contains(json!("ops"))
    ));
    assert!(op(
        c.clone(),
        "realm_access.tier",
        ClaimOp::Equals(json!("gold"))
    ));
    // A dotted path walks objects; it never reads a key that contains a dot.
    assert!(!op(c.clone(), "flat.key", ClaimOp::Equals(json!("x"))));
    assert!(!op(
        c.clone(),
        "realm_access.missing",
        ClaimOp::Equals(json!(null))
    ));
    assert!(!op(
        c,
        "realm_access.tier.deeper",
        ClaimOp::StartsWith("g".into())
    ));
}
