//! `portcullis explain`, run as the built binary: canonical host and path, the route (or
//! the proxy's 400 / 404 / 405), the authentication result, each rule with its result, and
//! the decision, in the words of the access log; a token is decoded and said to be
//! unverified; nothing is fetched (the issuer's URL is a closed port).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::idp::TokenBuilder;

const ISSUER: &str = "http://127.0.0.1:9/idp";

fn config(dir: &Path) -> PathBuf {
    let yaml = format!(
        r#"listeners:
  plain: {{ address: "127.0.0.1:0" }}
state_dir: "{state}"
upstreams:
  app: {{ addresses: ["http://127.0.0.1:9"] }}
  web: {{ addresses: ["http://127.0.0.1:9"] }}
issuers:
  corp:
    issuer: "{ISSUER}"
    audiences: ["{aud}"]
routes:
  - name: api
    host: app.example.com
    path: /api
    upstream: app
    auth: bearer
    methods: [GET, POST]
    authorize:
      scopes: ["api:read"]
      allow_if:
        - {{ name: corp-mail, expr: "claims.email.endsWith('@corp.com')" }}
        - {{ name: mfa, expr: "'mfa' in claims.amr", mode: shadow }}
      deny_if:
        - "'x-tenant' in request.headers && request.headers['x-tenant'] == 'red'"
  - {{ name: site, path: /, upstream: web }}
"#,
        state = dir.join("state").display(),
        aud = support::idp::AUDIENCE,
    );
    let p = dir.join("portcullis.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

fn explain(file: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("explain").arg("--config").arg(file).args(args);
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_token_is_explained_rule_by_rule_and_said_to_be_unverified() {
    let dir = support::temp_dir("explain-token");
    let file = config(&dir);
    // Signed with a key nobody knows: explain does not check signatures.
    let token = TokenBuilder::new(ISSUER)
        .claim("email", "bob@corp.com")
        .claim("amr", serde_json::json!(["pwd"]))
        .hmac(b"not-the-idps-key-not-the-idps-key")
        .build();
    let out = stdout(&explain(
        &file,
        &[
            "--url",
            "http://APP.example.com:8080/api/%69tems?x=1",
            "--token",
            &token,
            "--header",
            "X-Tenant: blue",
        ],
    ));
    assert!(out.contains("canonical host: app.example.com\n"), "{out}");
    assert!(out.contains("canonical path: /api/items\n"), "{out}");
    assert!(out.contains("route: api (routes[0])\n"), "{out}");
    assert!(
        out.contains("token decoded WITHOUT verifying its signature"),
        "{out}"
    );
    assert!(
        out.contains("identity: issuer=corp subject=alice\n"),
        "{out}"
    );
    assert!(out.contains("  rule=scopes result=allow\n"), "{out}");
    assert!(
        out.contains("  rule=deny_if[0] mode=enforce result=allow\n"),
        "{out}"
    );
    assert!(
        out.contains("  rule=corp-mail mode=enforce result=allow\n"),
        "{out}"
    );
    assert!(
        out.contains("  rule=mfa mode=shadow result=shadow_deny (would deny; not enforced)\n"),
        "{out}"
    );
    assert!(out.ends_with("decision: forward\n"), "{out}");
    assert!(!out.contains(&token), "the token is never printed");

    let out = stdout(&explain(
        &file,
        &[
            "--url",
            "https://app.example.com/api/items",
            "--token",
            &token,
            "-H",
            "x-tenant: red",
        ],
    ));
    assert!(
        out.contains("  rule=deny_if[0] mode=enforce result=deny\n"),
        "{out}"
    );
    assert!(
        out.ends_with("decision: 403 reason=forbidden rule=deny_if[0]\n"),
        "{out}"
    );
}

#[test]
fn claims_missing_credentials_and_refused_tokens() {
    let dir = support::temp_dir("explain-claims");
    let file = config(&dir);
    let claims =
        r#"{"iss": "ignored", "sub": "carol", "email": "carol@gmail.com", "scope": "api:read"}"#;
    let out = stdout(&explain(
        &file,
        &["--url", "http://app.example.com/api/x", "--claims", claims],
    ));
    // --claims are taken as verified, but still need an issuer the route accepts.
    assert!(out.contains("decision: 401 reason=unknown_issuer"), "{out}");
    let claims = format!(
        r#"{{"iss": "{ISSUER}", "aud": "{}", "exp": 9999999999, "sub": "carol", "email": "carol@gmail.com", "scope": "api:read"}}"#,
        support::idp::AUDIENCE
    );
    let out = stdout(&explain(
        &file,
        &["--url", "http://app.example.com/api/x", "--claims", &claims],
    ));
    assert!(out.contains("claims given (taken as verified)"), "{out}");
    assert!(
        out.contains("  rule=corp-mail mode=enforce result=deny\n"),
        "{out}"
    );
    // The missing amr is an error of the shadow rule: reported, not enforced.
    assert!(
        out.contains("  rule=mfa mode=shadow result=shadow_error reason=\"no such key\""),
        "{out}"
    );
    assert!(
        out.ends_with("decision: 403 reason=forbidden rule=corp-mail\n"),
        "{out}"
    );
    let out = stdout(&explain(&file, &["--url", "http://app.example.com/api/x"]));
    assert!(
        out.ends_with("authentication: bearer: no credentials\ndecision: 401 reason=missing\n"),
        "{out}"
    );
    let expired = TokenBuilder::new(ISSUER).exp_in(-600).unsigned().build();
    let out = stdout(&explain(
        &file,
        &["--url", "http://app.example.com/api/x", "--token", &expired],
    ));
    assert!(out.ends_with("decision: 401 reason=expired\n"), "{out}");
}

#[test]
fn routing_answers_as_the_proxy_would() {
    let dir = support::temp_dir("explain-routing");
    let file = config(&dir);
    let out = stdout(&explain(
        &file,
        &[
            "--url",
            "http://app.example.com/api/x",
            "--method",
            "DELETE",
        ],
    ));
    assert!(
        out.contains("route: none for this method (Allow: GET, POST)\ndecision: 405 reason=method_not_allowed"),
        "{out}"
    );
    let out = stdout(&explain(
        &file,
        &["--url", "http://app.example.com/api/./x"],
    ));
    assert!(out.contains("decision: 400 reason=bad_target"), "{out}");
    let out = stdout(&explain(
        &file,
        &["--url", "http://other.example.com/api/x"],
    ));
    assert!(out.contains("route: site (routes[1])"), "{out}");
    assert!(out.ends_with("decision: forward\n"), "{out}");
    // A bad question: exit 2.
    let o = explain(&file, &["--url", "/relative"]);
    assert_eq!(o.status.code(), Some(2));
    let o = explain(&file, &["--url", "http://a/", "--header", "no-colon"]);
    assert_eq!(o.status.code(), Some(2));
}
