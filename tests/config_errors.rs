//! Bad configuration: the exact message for each mistake (naming the key path), environment
//! overrides, and what the `portcullis` binary does with good and bad files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portcullis::Config;

/// A small valid configuration that the cases below break one way each.
const BASE: &str = "\
listeners:
  plain: { address: \"127.0.0.1:8080\" }
upstreams:
  app: { addresses: [\"http://127.0.0.1:9000\"] }
routes:
  - { path: /, upstream: app }
";

fn with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

fn error(yaml: &str) -> String {
    error_with_env(yaml, &[])
}

fn error_with_env(yaml: &str, env: &[(&str, &str)]) -> String {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    match Config::from_yaml(yaml, env) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn base_is_valid() {
    let c = Config::from_yaml(BASE, []).unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.server.max_connections, 10_000);
}

#[test]
fn unknown_keys_name_their_path() {
    assert_eq!(
        error(&format!("{BASE}listner: {{}}\n")),
        "listner: unknown key \"listner\" (expected one of: listeners, admin, log, server, \
         state_dir, upstreams, routes, issuers, auth, sessions, external_auth)"
    );
    assert_eq!(
        error(&format!("{BASE}server: {{ max_conections: 5 }}\n")),
        "server.max_conections: unknown key \"max_conections\" (expected one of: \
         tls_handshake_timeout, header_read_timeout, body_read_timeout, idle_timeout, \
         max_header_bytes, \
         max_connections, shutdown_grace, trust_forwarded_headers, \
         untrusted_forwarded_headers, path_normalization, upgraded_idle_timeout, workers)"
    );
    assert_eq!(
        error(&with("addresses: [", "adresses: [")),
        "upstreams.app.adresses: unknown key \"adresses\" (expected one of: addresses, \
         connect_timeout, response_timeout, ca_file, unhealthy_cooldown, pool_idle_timeout, \
         pool_max_idle, client)"
    );
    assert_eq!(
        error(&with(
            "{ address: \"127.0.0.1:8080\" }",
            "{ address: \"127.0.0.1:8080\", tls: { cert: a, key: b, reload: 1s } }"
        )),
        "listeners.plain.tls.reload: unknown key \"reload\" (expected one of: cert, key, \
         reload_interval)"
    );
    // List positions read as in every other message: routes[0], not routes.0.
    let e = error(&with(
        "{ path: /, upstream: app }",
        "{ path: /, upstream: app, methds: [GET] }",
    ));
    assert!(
        e.starts_with(
            "routes[0].methds: unknown key \"methds\" (expected one of: name, host, path, methods,"
        ),
        "{e}"
    );
}

#[test]
fn listener_errors() {
    assert_eq!(
        error(&with("127.0.0.1:8080", "localhost:8080")),
        "listeners.plain.address: \"localhost:8080\" is not an IP address and port (e.g. \"0.0.0.0:8080\")"
    );
    assert_eq!(
        error(&with("127.0.0.1:8080", "127.0.0.1")),
        "listeners.plain.address: \"127.0.0.1\" is not an IP address and port (e.g. \"0.0.0.0:8080\")"
    );
    assert_eq!(
        error(&with("{ address: \"127.0.0.1:8080\" }", "{ }")),
        "listeners.plain.address: is required"
    );
    assert_eq!(
        error(&with(
            "  plain: { address: \"127.0.0.1:8080\" }\n",
            "  plain: { address: \"127.0.0.1:8080\" }\n  public: { address: \"127.0.0.1:8080\" }\n"
        )),
        "listeners.public.address: 127.0.0.1:8080 is also used by listeners.plain"
    );
    assert_eq!(
        error(&with(
            "listeners:\n  plain: { address: \"127.0.0.1:8080\" }\n",
            ""
        )),
        "listeners: at least one listener is required"
    );
}

#[test]
fn duration_errors() {
    assert_eq!(
        error(&format!("{BASE}server: {{ idle_timeout: 5w }}\n")),
        "server.idle_timeout: \"5w\" has an unknown unit \"w\" (use ms, s, m, h or d)"
    );
    assert_eq!(
        error(&format!("{BASE}server: {{ idle_timeout: 0s }}\n")),
        "server.idle_timeout: must be greater than zero"
    );
    assert_eq!(
        error(&format!("{BASE}server: {{ idle_timeout: soon }}\n")),
        "server.idle_timeout: \"soon\" is not a duration (e.g. \"500ms\", \"30s\", \"1h\")"
    );
    // A bare number is the usual mistake: the message says what is missing.
    assert_eq!(
        error(&format!("{BASE}server: {{ idle_timeout: 30 }}\n")),
        "server.idle_timeout: expected text, found the number 30 (a duration needs a unit, e.g. \"30s\")"
    );
    assert_eq!(
        error(&with(
            "{ addresses: [\"http://127.0.0.1:9000\"] }",
            "{ addresses: [\"http://127.0.0.1:9000\"], response_timeout: \"0ms\" }"
        )),
        "upstreams.app.response_timeout: must be greater than zero"
    );
}

#[test]
fn upstream_errors() {
    assert_eq!(
        error(&with("http://127.0.0.1:9000", "127.0.0.1:9000")),
        "upstreams.app.addresses[0]: \"127.0.0.1:9000\" must start with http:// or https://"
    );
    assert_eq!(
        error(&with("http://127.0.0.1:9000", "http://127.0.0.1:9000/api")),
        "upstreams.app.addresses[0]: \"http://127.0.0.1:9000/api\" must not have a path or query (use scheme://host:port)"
    );
    assert_eq!(
        error(&with("[\"http://127.0.0.1:9000\"]", "[]")),
        "upstreams.app.addresses: at least one address is required"
    );
    assert_eq!(
        error(&with("addresses: [", "client: hyper2, addresses: [")),
        "upstreams.app.client: \"hyper2\" is not one of codec, hyper"
    );
    for ok in ["codec", "hyper"] {
        let yaml = with("addresses: [", &format!("client: {ok}, addresses: ["));
        assert!(Config::from_yaml(&yaml, []).is_ok(), "{ok}");
    }
}

#[test]
fn route_errors() {
    assert_eq!(
        error(&with("upstream: app }", "upstream: ap }")),
        "routes[0].upstream: no upstream named \"ap\""
    );
    assert_eq!(
        error(&with("path: /,", "path: api,")),
        "routes[0].path: \"api\" must start with /"
    );
    assert_eq!(
        error(&with("routes:\n  - { path: /, upstream: app }\n", "")),
        "routes: at least one route is required"
    );
    assert_eq!(
        error(&with(
            "routes:\n  - { path: /, upstream: app }\n",
            "routes: []\n"
        )),
        "routes: at least one route is required"
    );
    assert_eq!(
        error(&with(
            "{ path: /,",
            "{ host: \"app.*.example.com\", path: /,"
        )),
        "routes[0].host: \"app.*.example.com\" is not a host name (e.g. \"app.example.com\" or \"*.example.com\")"
    );
    assert_eq!(
        error(&with("{ path: /,", "{ host: \"*example.com\", path: /,")),
        "routes[0].host: \"*example.com\" is not a host name (e.g. \"app.example.com\" or \"*.example.com\")"
    );
    assert_eq!(
        error(&with(
            "upstream: app }",
            "upstream: app, methods: [GET, \"PO ST\"] }"
        )),
        "routes[0].methods[1]: \"PO ST\" is not a method a request can have (letters, - and _; CONNECT is always refused)"
    );
    for m in ["connect", "GET2", "M.SEARCH"] {
        assert_eq!(
            error(&with(
                "upstream: app }",
                &format!("upstream: app, methods: [\"{m}\"] }}")
            )),
            format!(
                "routes[0].methods[0]: \"{m}\" is not a method a request can have (letters, - and _; CONNECT is always refused)"
            )
        );
    }
    assert_eq!(
        error(&with("upstream: app }", "upstream: app, auth: bearer }")),
        "routes[0].auth: bearer needs at least one entry in issuers"
    );
    assert_eq!(
        error(&with("upstream: app }", "upstream: app, auth: session }")),
        "routes[0].auth: session needs an entry in issuers (with a client_id)"
    );
    assert_eq!(
        error(&with("upstream: app }", "upstream: app, auth: magic }")),
        "routes[0].auth: \"magic\" is not one of bearer, session, either, none"
    );
}

#[test]
fn server_and_log_errors() {
    assert_eq!(
        error(&format!("{BASE}log: {{ format: xml }}\n")),
        "log.format: \"xml\" is not one of auto, json, human"
    );
    assert_eq!(
        error(&format!("{BASE}server: {{ max_header_bytes: 4096 }}\n")),
        "server.max_header_bytes: must be at least 8192"
    );
    assert_eq!(
        error(&format!("{BASE}server: {{ max_connections: 0 }}\n")),
        "server.max_connections: must be at least 1"
    );
    assert_eq!(
        error(&format!("{BASE}server: {{ max_connections: many }}\n")),
        "server.max_connections: expected a whole number, found \"many\""
    );
    assert_eq!(
        error(&format!("{BASE}server: {{ body_read_timeout: 0s }}\n")),
        "server.body_read_timeout: must be greater than zero"
    );
    assert_eq!(
        error(&format!("{BASE}admin: {{ max_connections: 0 }}\n")),
        "admin.max_connections: must be at least 1"
    );
}

#[test]
fn body_read_timeout_and_admin_connections_default_and_parse() {
    let c = Config::from_yaml(BASE, []).unwrap();
    assert_eq!(
        c.server.body_read_timeout,
        std::time::Duration::from_secs(60)
    );
    assert_eq!(c.admin.max_connections, 64);
    let c = Config::from_yaml(
        &format!(
            "{BASE}server: {{ body_read_timeout: 250ms }}\n\
             admin: {{ address: \"127.0.0.1:0\", max_connections: 3 }}\n"
        ),
        [],
    )
    .unwrap();
    assert_eq!(
        c.server.body_read_timeout,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.admin.max_connections, 3);
}

#[test]
fn yaml_syntax_error_names_the_line() {
    let e = error(&with(
        "routes:\n  - { path: /, upstream: app }\n",
        "routes:\n  - { path: /, upstream: app\n  - x: [\n",
    ));
    assert!(e.contains("line 7"), "{e}");
    let e = error("listeners:\n  plain: { address: \"127.0.0.1:8080\" }\n   bad indent: 1\n");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn env_overrides_take_effect() {
    let env = [
        ("PORTCULLIS_SERVER__MAX_CONNECTIONS", "7"),
        (
            "PORTCULLIS_UPSTREAMS__APP__ADDRESSES",
            "[\"http://127.0.0.1:9\", \"http://127.0.0.1:10\"]",
        ),
        ("PORTCULLIS_LOG__ACCESS", "false"),
        ("PORTCULLIS_SERVER__IDLE_TIMEOUT", "90s"),
        ("NOT_PORTCULLIS", "ignored"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let c = Config::from_yaml(BASE, env).unwrap();
    assert_eq!(c.server.max_connections, 7);
    let addrs: Vec<String> = c.upstreams[0]
        .addresses
        .iter()
        .map(|u| u.to_string())
        .collect();
    assert_eq!(addrs, ["http://127.0.0.1:9/", "http://127.0.0.1:10/"]);
    assert!(!c.log.access);
    assert_eq!(c.server.idle_timeout, std::time::Duration::from_secs(90));
    assert_eq!(
        c.env_overrides,
        [
            "server.max_connections",
            "upstreams.app.addresses",
            "log.access",
            "server.idle_timeout"
        ]
    );
    // A listener can be added from the environment alone.
    let c = Config::from_yaml(
        BASE,
        [(
            "PORTCULLIS_LISTENERS__EXTRA__ADDRESS".to_string(),
            "127.0.0.1:8081".to_string(),
        )],
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
}

#[test]
fn bad_env_overrides_name_their_key() {
    assert_eq!(
        error_with_env(BASE, &[("PORTCULLIS_SERVER__MAX_CONNECTIONS", "lots")]),
        "server.max_connections: expected a whole number, found \"lots\""
    );
    assert_eq!(
        error_with_env(BASE, &[("PORTCULLIS_SERVER__IDLE_TIMEOUT", "30")]),
        "server.idle_timeout: \"30\" has no unit (use ms, s, m, h or d, e.g. \"30s\")"
    );
    assert_eq!(
        error_with_env(
            BASE,
            &[("PORTCULLIS_UPSTREAMS__APP__ADDRESSES", "[\"127.0.0.1:9\"]")]
        ),
        "upstreams.app.addresses[0]: \"127.0.0.1:9\" must start with http:// or https://"
    );
    assert!(
        error_with_env(BASE, &[("PORTCULLIS_SERVER__MAX_CONECTIONS", "5")])
            .starts_with("server.max_conections: unknown key \"max_conections\""),
    );
    assert_eq!(
        error_with_env(BASE, &[("PORTCULLIS_LOG__ACCESS", "yes")]),
        "log.access: expected true or false, found \"yes\""
    );
}

/// What Kubernetes injects into every pod of the namespace for a Service named `portcullis`
/// with ports `http` (80) and `admin` (9090).
const K8S_SERVICE_VARS: &[(&str, &str)] = &[
    ("PORTCULLIS_SERVICE_HOST", "10.0.0.1"),
    ("PORTCULLIS_SERVICE_PORT", "80"),
    ("PORTCULLIS_SERVICE_PORT_HTTP", "80"),
    ("PORTCULLIS_SERVICE_PORT_ADMIN", "9090"),
    ("PORTCULLIS_PORT", "tcp://10.0.0.1:80"),
    ("PORTCULLIS_PORT_80_TCP", "tcp://10.0.0.1:80"),
    ("PORTCULLIS_PORT_80_TCP_PROTO", "tcp"),
    ("PORTCULLIS_PORT_80_TCP_PORT", "80"),
    ("PORTCULLIS_PORT_80_TCP_ADDR", "10.0.0.1"),
    ("PORTCULLIS_PORT_9090_TCP", "tcp://10.0.0.1:9090"),
    ("PORTCULLIS_PORT_9090_TCP_PROTO", "tcp"),
    ("PORTCULLIS_PORT_9090_TCP_PORT", "9090"),
    ("PORTCULLIS_PORT_9090_TCP_ADDR", "10.0.0.1"),
];

#[test]
fn kubernetes_service_variables_are_ignored() {
    let mut env: Vec<(String, String)> = K8S_SERVICE_VARS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push((
        "PORTCULLIS_CONFIG".into(),
        "/etc/portcullis/portcullis.yaml".into(),
    ));
    env.push(("PORTCULLIS_SERVER__MAX_CONNECTIONS".into(), "9".into()));
    let c = Config::from_yaml(BASE, env).unwrap();
    assert_eq!(c.server.max_connections, 9);
    assert_eq!(c.env_overrides, ["server.max_connections"]);
    // Every injected name is reported (for the warning); PORTCULLIS_CONFIG is the CLI's own.
    let names: Vec<&str> = K8S_SERVICE_VARS.iter().map(|(k, _)| *k).collect();
    assert_eq!(c.env_ignored, names);
    assert!(
        c.summary().contains(
            "ignored environment variables (no such configuration key): PORTCULLIS_SERVICE_HOST, "
        ),
        "{}",
        c.summary()
    );
    // A known section with an unknown subkey is still a typo worth stopping for, and a known
    // key with a bad value is still an error.
    assert!(
        error_with_env(BASE, &[("PORTCULLIS_SERVER__HOST", "x")])
            .starts_with("server.host: unknown key \"host\""),
    );
    assert_eq!(
        error_with_env(BASE, &[("PORTCULLIS_STATE_DIR", "[1, 2]")]),
        "state_dir: invalid type: found sequence, expected a string"
    );
}

#[test]
fn url_errors_name_their_key() {
    let up = |addr: &str| error(&with("http://127.0.0.1:9000", addr));
    assert_eq!(
        up("http://127.0.0.1:abc"),
        "upstreams.app.addresses[0]: \"http://127.0.0.1:abc\" has a port that is not a number from 1 to 65535"
    );
    assert_eq!(
        up("http://127.0.0.1:99999"),
        "upstreams.app.addresses[0]: \"http://127.0.0.1:99999\" has a port that is not a number from 1 to 65535"
    );
    assert_eq!(
        up("http://127.0.0.1:0"),
        "upstreams.app.addresses[0]: \"http://127.0.0.1:0\" has a port that is not a number from 1 to 65535"
    );
    assert_eq!(
        up("http://app:"),
        "upstreams.app.addresses[0]: \"http://app:\" has a port that is not a number from 1 to 65535"
    );
    assert_eq!(
        up("http://[::1]:70000"),
        "upstreams.app.addresses[0]: \"http://[::1]:70000\" has a port that is not a number from 1 to 65535"
    );
    assert_eq!(
        up("http://user:pw@127.0.0.1:9000"),
        "upstreams.app.addresses[0]: \"http://user:pw@127.0.0.1:9000\" must not contain a user name or password"
    );
    assert_eq!(
        up("http://:9000"),
        "upstreams.app.addresses[0]: \"http://:9000\" has no host"
    );
    assert_eq!(
        up("ftp://127.0.0.1:9000"),
        "upstreams.app.addresses[0]: \"ftp://127.0.0.1:9000\" must start with http:// or https://"
    );
    assert_eq!(
        up("http://127.0.0.1:9000/?a=1"),
        "upstreams.app.addresses[0]: \"http://127.0.0.1:9000/?a=1\" must not have a path or query (use scheme://host:port)"
    );
    assert_eq!(
        up("http://127.0.0.1:9000#top"),
        "upstreams.app.addresses[0]: \"http://127.0.0.1:9000#top\" must not have a path or query (use scheme://host:port)"
    );
    // IPv6 literals and default ports stay fine.
    Config::from_yaml(&with("http://127.0.0.1:9000", "http://[::1]:9000"), []).unwrap();
    Config::from_yaml(&with("http://127.0.0.1:9000", "https://app.internal"), []).unwrap();

    let iss = |field: &str| {
        error(&format!(
            "{BASE}issuers:\n  corp: {{ issuer: \"https://idp.example.com\", audiences: [api], {field} }}\n"
        ))
    };
    let bad_issuer = |issuer: &str| {
        error(&format!(
            "{BASE}issuers:\n  corp: {{ issuer: \"{issuer}\", audiences: [api] }}\n"
        ))
    };
    assert_eq!(
        bad_issuer("https://idp.example.com:443x"),
        "issuers.corp.issuer: \"https://idp.example.com:443x\" has a port that is not a number from 1 to 65535"
    );
    assert_eq!(
        bad_issuer("https://admin:pw@idp.example.com"),
        "issuers.corp.issuer: \"https://admin:pw@idp.example.com\" must not contain a user name or password"
    );
    assert_eq!(
        bad_issuer("https://idp.example.com/realms/a?x=1"),
        "issuers.corp.issuer: \"https://idp.example.com/realms/a?x=1\" must not have a query"
    );
    assert_eq!(
        bad_issuer("https://idp.example.com/#frag"),
        "issuers.corp.issuer: \"https://idp.example.com/#frag\" must not have a fragment"
    );
    assert_eq!(
        iss("jwks_uri: \"https://idp.example.com:0/keys\""),
        "issuers.corp.jwks_uri: \"https://idp.example.com:0/keys\" has a port that is not a number from 1 to 65535"
    );
    assert_eq!(
        iss("jwks_uri: \"http://idp.example.com/keys\""),
        "issuers.corp.jwks_uri: \"http://idp.example.com/keys\" must use https:// (http:// is allowed only on loopback addresses)"
    );
}

// === the binary ===

fn portcullis(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    // Only the variables a test sets: none leak in from the environment running the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    let out = cmd.output().unwrap();
    assert!(out.status.code().is_some(), "killed by a signal: {out:?}");
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_config_accepts_the_example_file() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.yaml");
    // check-config opens the certificate the file names (/etc/portcullis/tls.crt): point it at
    // a generated one, the way a deployment overrides paths from the environment.
    let out = portcullis(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("listeners.public.tls.cert: /etc/portcullis/tls.crt: "),
        "{}",
        stderr(&out)
    );
    let dir = support::temp_dir("example-file");
    let cert = support::certs::generate(&dir, "tls", "localhost");
    let out = portcullis(
        &["check-config", file.to_str().unwrap()],
        &[
            (
                "PORTCULLIS_LISTENERS__PUBLIC__TLS__CERT",
                cert.cert.to_str().unwrap(),
            ),
            (
                "PORTCULLIS_LISTENERS__PUBLIC__TLS__KEY",
                cert.key.to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(": ok\n"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("listener plain on"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_config_reports_bad_files_with_exit_2() {
    let dir = support::temp_dir("check-config");
    let bad = write(
        &dir,
        "bad.yaml",
        &format!("{BASE}server: {{ max_conections: 5 }}\n"),
    );
    let out = portcullis(&["check-config", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("invalid configuration"), "{err}");
    assert!(err.contains(bad.to_str().unwrap()), "{err}");
    assert!(err.contains("server.max_conections: unknown key"), "{err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));

    // A good file is accepted; a bad environment override makes it bad, naming the key.
    let good = write(&dir, "good.yaml", BASE);
    let out = portcullis(
        &["check-config", good.to_str().unwrap()],
        &[("PORTCULLIS_SERVER__MAX_CONNECTIONS", "12")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("overridden from the environment: server.max_connections"),
        "{}",
        stdout(&out)
    );
    let out = portcullis(
        &["check-config", good.to_str().unwrap()],
        &[("PORTCULLIS_SERVER__MAX_CONNECTIONS", "lots")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("server.max_connections: expected a whole number"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_with_a_bad_file_exits_2_before_binding() {
    let dir = support::temp_dir("run-bad");
    // The listener's port is held here: a binary that tried to bind it would fail with a
    // bind error (exit 1), so exit 2 with a config error shows validation came first.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    held.set_nonblocking(true).unwrap();
    let port = held.local_addr().unwrap();
    let admin = support::closed_port();
    let bad = write(
        &dir,
        "bad.yaml",
        &format!(
            "listeners:\n  plain: {{ address: \"{port}\" }}\nadmin: {{ address: \"{admin}\" }}\n\
             upstreams:\n  app: {{ addresses: [\"http://127.0.0.1:9000\"] }}\n\
             routes:\n  - {{ path: api, upstream: app }}\n"
        ),
    );
    let out = portcullis(&["run", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("routes[0].path: \"api\" must start with /"),
        "{err}"
    );
    assert!(!err.contains("cannot listen"), "{err}");
    // Nothing connected to the held port, and the admin port was never taken.
    assert!(held.accept().is_err());
    drop(TcpListener::bind(admin).expect("admin port was left bound"));

    // The same with `--config` alone.
    let out = portcullis(&["--config", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // By contrast a valid file whose port is taken is a runtime failure: exit 1.
    let good = write(
        &dir,
        "good.yaml",
        &format!(
            "listeners:\n  plain: {{ address: \"{port}\" }}\nadmin: {{ address: \"{admin}\" }}\n\
             upstreams:\n  app: {{ addresses: [\"http://127.0.0.1:9000\"] }}\n\
             routes:\n  - {{ path: /, upstream: app }}\n"
        ),
    );
    let out = portcullis(&["run", "--config", good.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot listen on {port}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_file_exits_2() {
    let missing = support::temp_dir("missing").join("nope.yaml");
    for args in [
        vec!["check-config", missing.to_str().unwrap()],
        vec!["run", "--config", missing.to_str().unwrap()],
    ] {
        let out = portcullis(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
        assert!(stderr(&out).contains("nope.yaml"), "{}", stderr(&out));
    }
}

#[test]
fn version_and_usage() {
    let out = portcullis(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
    // No command and no file is a usage error.
    let out = portcullis(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--config"), "{}", stderr(&out));
    let out = portcullis(&["no-such-command"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unknown_kid_wait_is_a_positive_duration() {
    let issuer = |wait: &str| {
        format!(
            "{BASE}issuers:\n  corp:\n    issuer: https://idp.example.com\n    audiences: [api]\n    unknown_kid_wait: {wait}\n"
        )
    };
    assert_eq!(
        error(&issuer("0s")),
        "issuers.corp.unknown_kid_wait: must be greater than zero"
    );
    assert_eq!(
        error(&issuer("soon")),
        "issuers.corp.unknown_kid_wait: \"soon\" is not a duration (e.g. \"500ms\", \"30s\", \"1h\")"
    );
    let ok = Config::from_yaml(&issuer("250ms"), []).unwrap();
    assert_eq!(
        ok.issuers[0].unknown_kid_wait,
        std::time::Duration::from_millis(250)
    );
    let default =
        Config::from_yaml(&issuer("1s").replace("    unknown_kid_wait: 1s\n", ""), []).unwrap();
    assert_eq!(
        default.issuers[0].unknown_kid_wait,
        std::time::Duration::from_secs(1)
    );
}

/// BASE with one issuer and a bearer route whose `authorize.claims` is `rule`.
fn claim_rule(rule: &str) -> String {
    format!(
        "{}issuers:\n  corp: {{ issuer: \"https://login.example.com\", audiences: [api] }}\n",
        with(
            "upstream: app }",
            &format!("upstream: app, auth: bearer, authorize: {{ claims: [{rule}] }} }}"),
        )
    )
}

#[test]
fn claim_rule_errors() {
    Config::from_yaml(
        &claim_rule("{ claim: email, email_domain: Corp.Example }"),
        [],
    )
    .unwrap();
    Config::from_yaml(&claim_rule("{ claim: amr, contains: mfa }"), []).unwrap();
    let k = "routes[0].authorize.claims[0]";
    assert_eq!(
        error(&claim_rule("{ claim: email, ends_with: \"\" }")),
        format!("{k}.ends_with: must not be empty (it would match every string)")
    );
    assert_eq!(
        error(&claim_rule("{ claim: email, starts_with: \"\" }")),
        format!("{k}.starts_with: must not be empty (it would match every string)")
    );
    assert_eq!(
        error(&claim_rule("{ claim: email, email_domain: \"\" }")),
        format!("{k}.email_domain: must not be empty (it would match every string)")
    );
    assert_eq!(
        error(&claim_rule("{ claim: email, email_domain: \"@corp.com\" }")),
        format!(
            "{k}.email_domain: \"@corp.com\" is not a domain (e.g. corp.example.com, without @)"
        )
    );
    assert_eq!(
        error(&claim_rule("{ claim: groups, contains: [a, b] }")),
        format!(
            "{k}.contains: must be one string, number or boolean (an array claim must have an \
             element equal to it; for several values use one rule each, or one_of for a \
             single-valued claim)"
        )
    );
    assert_eq!(
        error(&claim_rule("{ claim: email, equals: a, ends_with: b }")),
        format!(
            "{k}: needs exactly one of equals, one_of, contains, starts_with, ends_with, email_domain"
        )
    );
    assert_eq!(
        error(&claim_rule("{ claim: email, one_of: [] }")),
        format!("{k}.one_of: must list at least one value")
    );
}

/// BASE with one issuer and a bearer route whose `authorize` is `authorize`, and `extra`.
fn cel_rule(authorize: &str, extra: &str) -> String {
    format!(
        "{}issuers:\n  corp: {{ issuer: \"https://login.example.com\", audiences: [api] }}\n{extra}",
        with(
            "upstream: app }",
            &format!("upstream: app, auth: bearer, authorize: {authorize} }}"),
        )
    )
}

#[test]
fn cel_rule_errors_name_the_key_and_the_position() {
    let ok = Config::from_yaml(
        &cel_rule(
            r#"{ allow_if: ["claims.email.endsWith('@corp.com')"], deny_if: [{ name: no-bots, expr: "request.headers['user-agent'].contains('bot')", mode: shadow }] }"#,
            "",
        ),
        [],
    )
    .unwrap();
    assert_eq!(ok.routes[0].policy.cel.len(), 2);
    let k = "routes[0].authorize";
    assert_eq!(
        error(&cel_rule(r#"{ allow_if: ["claims.email =="] }"#, "")),
        format!(
            "{k}.allow_if[0]: at 1:16: syntax error: mismatched input '<EOF>' expecting {{'[', '{{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}}"
        )
    );
    assert_eq!(
        error(&cel_rule(
            r#"{ allow_if: ["true", { expr: "user.admin == true" }] }"#,
            ""
        )),
        format!(
            "{k}.allow_if[1].expr: at 1:1: unknown variable \"user\" (known: claims, request, route, client, now)"
        )
    );
    assert_eq!(
        error(&cel_rule(r#"{ deny_if: ["1 + 2"] }"#, "")),
        format!(
            "{k}.deny_if[0]: at 1:3: the result is a number or string (arithmetic), never a boolean (true or false)"
        )
    );
    assert_eq!(
        error(&cel_rule(r#"{ allow_if: ["'admin'"] }"#, "")),
        format!("{k}.allow_if[0]: at 1:1: the result is a string, never a boolean (true or false)")
    );
    assert_eq!(
        error(&cel_rule(
            r#"{ allow_if: ["claims.a == 'xxxxxxxxxx'"] }"#,
            "auth: { policy: { max_expression_bytes: 20 } }\n"
        )),
        format!(
            "{k}.allow_if[0]: at 1:21: the expression is 24 bytes, longer than auth.policy.max_expression_bytes (20)"
        )
    );
    assert_eq!(
        error(&cel_rule(
            r#"{ allow_if: ["claims.a == 1 && claims.b == 2"] }"#,
            "auth: { policy: { max_expression_nodes: 4 } }\n"
        )),
        format!(
            "{k}.allow_if[0]: at 1:1: the expression has 9 nodes, more than auth.policy.max_expression_nodes (4)"
        )
    );
    assert_eq!(
        error(&cel_rule(
            r#"{ allow_if: [{ expr: "true", mode: dry-run }] }"#,
            ""
        )),
        format!("{k}.allow_if[0].mode: \"dry-run\" is not enforce or shadow")
    );
    assert_eq!(
        error(&cel_rule(
            r#"{ allow_if: [{ name: a, expr: "true" }], deny_if: [{ name: a, expr: "false" }] }"#,
            ""
        )),
        format!("{k}.allow_if[0].name: \"a\" names another rule of this route")
    );
    assert_eq!(
        error(&cel_rule(r#"{ allow_if: [] }"#, "")),
        format!("{k}.allow_if: must list at least one expression")
    );
    assert_eq!(
        error(&cel_rule(
            r#"{ allow_if: ["true"] }"#,
            "auth: { policy: { max_expression_bytes: 0 } }\n"
        )),
        "auth.policy.max_expression_bytes: must be between 1 and 65536"
    );
}

#[test]
fn path_normalization_keys_name_their_path() {
    let c = Config::from_yaml(BASE, []).unwrap();
    let d = c.server.path_normalization;
    assert!(d.merge_slashes);
    assert_eq!(
        d.escaped_slashes,
        portcullis::config::EscapedSlashes::Reject
    );
    assert_eq!(d.backslashes, portcullis::config::Backslashes::Reject);
    assert_eq!(
        d.path_parameters,
        portcullis::config::PathParameters::Reject
    );
    assert_eq!(
        d.double_encoding,
        portcullis::config::DoubleEncoding::Reject
    );
    let server = |v: &str| format!("{BASE}server: {{ path_normalization: {{ {v} }} }}\n");
    assert_eq!(
        error(&server("escaped_slashes: decode")),
        "server.path_normalization.escaped_slashes: \"decode\" is not one of reject, \
         unescape_and_forward, keep"
    );
    assert_eq!(
        error(&server("backslashes: slash")),
        "server.path_normalization.backslashes: \"slash\" is not one of reject, to_slash, keep"
    );
    assert_eq!(
        error(&server("path_parameters: drop")),
        "server.path_normalization.path_parameters: \"drop\" is not one of reject, strip, keep"
    );
    assert_eq!(
        error(&server("double_encoding: strip")),
        "server.path_normalization.double_encoding: \"strip\" is not one of reject, keep"
    );
    assert_eq!(
        error(&server("merge_slash: true")),
        "server.path_normalization.merge_slash: unknown key \"merge_slash\" (expected one of: \
         merge_slashes, escaped_slashes, backslashes, path_parameters, double_encoding)"
    );
    let c = Config::from_yaml(
        &server("merge_slashes: false, escaped_slashes: keep, path_parameters: strip"),
        [],
    )
    .unwrap();
    assert!(!c.server.path_normalization.merge_slashes);
    assert_eq!(
        c.server.path_normalization.path_parameters,
        portcullis::config::PathParameters::Strip
    );
    let env = [(
        "PORTCULLIS_SERVER__PATH_NORMALIZATION__BACKSLASHES",
        "to_slash",
    )];
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let c = Config::from_yaml(BASE, env).unwrap();
    assert_eq!(
        c.server.path_normalization.backslashes,
        portcullis::config::Backslashes::ToSlash
    );
}

#[test]
fn token_endpoint_auth_is_checked() {
    let issuer = "issuers:\n  corp:\n    issuer: https://login.example.com\n    audiences: [api]\n";
    let yaml = |extra: &str| format!("{BASE}{issuer}{extra}");
    let ok = Config::from_yaml(&yaml("    token_endpoint_auth: client_secret_post\n"), []).unwrap();
    assert_eq!(
        ok.issuers[0].token_endpoint_auth.as_str(),
        "client_secret_post"
    );
    let default = Config::from_yaml(&yaml(""), []).unwrap();
    assert_eq!(
        default.issuers[0].token_endpoint_auth.as_str(),
        "client_secret_basic"
    );
    assert_eq!(
        error(&yaml("    token_endpoint_auth: private_key_jwt\n")),
        "issuers.corp.token_endpoint_auth: \"private_key_jwt\" is not client_secret_basic or \
         client_secret_post"
    );
}

#[test]
fn untrusted_forwarded_headers_errors() {
    assert_eq!(
        error(&format!(
            "{BASE}server: {{ untrusted_forwarded_headers: [X-Real-IP, \"bad name\"] }}\n"
        )),
        "server.untrusted_forwarded_headers[1]: \"bad name\" is not a header name or prefix ending in *"
    );
    assert_eq!(
        error(&format!(
            "{BASE}server: {{ untrusted_forwarded_headers: [\"*\"] }}\n"
        )),
        "server.untrusted_forwarded_headers[0]: \"*\" is not a header name or prefix ending in *"
    );
}

#[test]
fn secrets_are_never_printed() {
    const SHARED: &str = "shared-secret-0123456789-abcdefghij";
    const CLIENT: &str = "client-secret-from-the-file";
    const CLIENT_ENV: &str = "client-secret-from-the-env";
    let yaml = format!(
        "{BASE}issuers:\n  corp:\n    issuer: \"https://login.example.com\"\n    audiences: [api]\n    \
         algorithms: [HS256]\n    shared_secret: \"{SHARED}\"\n    client_id: portcullis\n    \
         client_secret: \"{CLIENT}\"\n"
    );
    // Text, and the byte-list form a `Vec<u8>` would print.
    let leaks = |text: &str| {
        [SHARED, CLIENT, CLIENT_ENV]
            .iter()
            .flat_map(|s| {
                [
                    s.to_string(),
                    format!("{:?}", s.as_bytes())
                        .trim_matches(['[', ']'])
                        .to_string(),
                ]
            })
            .filter(|s| text.contains(s.as_str()))
            .collect::<Vec<_>>()
    };
    let c = Config::from_yaml(&yaml, []).unwrap();
    assert_eq!(
        c.issuers[0]
            .shared_secret
            .as_ref()
            .map(|s| s.expose().to_vec()),
        Some(SHARED.as_bytes().to_vec())
    );
    let debug = format!("{c:?}");
    assert!(debug.contains("Secret(<redacted>)"), "{debug}");
    assert_eq!(leaks(&debug), Vec::<String>::new(), "{debug}");
    assert_eq!(leaks(&c.summary()), Vec::<String>::new());

    let dir = support::temp_dir("secrets");
    let file = write(&dir, "secrets.yaml", &yaml);
    let out = portcullis(
        &["check-config", file.to_str().unwrap()],
        &[("PORTCULLIS_ISSUERS__CORP__CLIENT_SECRET", CLIENT_ENV)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("client secret set"),
        "{}",
        stdout(&out)
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(leaks(&all), Vec::<String>::new(), "{all}");

    // Refused for another reason: the error names the key, never the secret.
    let bad = write(
        &dir,
        "bad.yaml",
        &yaml.replace("algorithms: [HS256]", "algorithms: [HS999]"),
    );
    let out = portcullis(&["check-config", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("algorithms[0]"), "{all}");
    assert_eq!(leaks(&all), Vec::<String>::new(), "{all}");
}

#[test]
fn route_paths_must_be_normalised() {
    for p in [
        "//admin", "/admin;x", "/a%2Fb", "/a%2fb", "/%61dmin", "/a%3b", "/a\\\\b", "/a%", "/a b",
    ] {
        let e = error(&with(
            "{ path: /, upstream: app }",
            &format!("{{ path: \"{p}\", upstream: app }}"),
        ));
        assert!(
            e.starts_with("routes[0].path: ") && e.contains("must be in normalised form"),
            "{p}: {e}"
        );
    }
    for p in ["/admin", "/a%3B", "/caf%C3%A9", "/a:b@c", "/static/"] {
        let y = with(
            "{ path: /, upstream: app }",
            &format!("{{ path: \"{p}\", upstream: app }}"),
        );
        Config::from_yaml(&y, []).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    let y = with(
        "{ path: /, upstream: app }",
        "{ path: /Files, upstream: app, case_insensitive: true }",
    );
    assert!(Config::from_yaml(&y, []).unwrap().routes[0].case_insensitive);
}

#[test]
fn portcullis_config_names_the_file() {
    let dir = support::temp_dir("env-config");
    let good = write(&dir, "good.yaml", BASE);
    let good = good.to_str().unwrap();
    // check-config without an argument reads the path from PORTCULLIS_CONFIG.
    let out = portcullis(&["check-config"], &[("PORTCULLIS_CONFIG", good)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("{good}: ok\n")),
        "{}",
        stdout(&out)
    );

    // With the Kubernetes Service variables too, the file is still good (and they are listed).
    let mut env = K8S_SERVICE_VARS.to_vec();
    env.push(("PORTCULLIS_CONFIG", good));
    let out = portcullis(&["check-config"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .contains("ignored environment variables (no such configuration key): PORTCULLIS_")
            && stdout(&out).contains("PORTCULLIS_SERVICE_HOST"),
        "{}",
        stdout(&out)
    );

    // `portcullis` and `portcullis run` with only PORTCULLIS_CONFIG get past loading: the
    // listener's port is held here, so getting as far as binding is exit 1 "cannot listen".
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap();
    let admin = support::closed_port();
    let busy = write(
        &dir,
        "busy.yaml",
        &format!(
            "listeners:\n  plain: {{ address: \"{port}\" }}\nadmin: {{ address: \"{admin}\" }}\n\
             upstreams:\n  app: {{ addresses: [\"http://127.0.0.1:9000\"] }}\n\
             routes:\n  - {{ path: /, upstream: app }}\n"
        ),
    );
    let mut env = K8S_SERVICE_VARS.to_vec();
    env.push(("PORTCULLIS_CONFIG", busy.to_str().unwrap()));
    for args in [vec![], vec!["run"]] {
        let out = portcullis(&args, &env);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("cannot listen on {port}")),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn check_config_opens_certificate_key_and_ca_files() {
    let dir = support::temp_dir("check-files");
    let certs = support::certs::generate(&dir, "server", "localhost");
    let garbage = write(&dir, "garbage.pem", "not a certificate\n");
    let missing = dir.join("missing.pem");
    let tls = |cert: &Path, key: &Path| {
        with(
            "{ address: \"127.0.0.1:8080\" }",
            &format!(
                "{{ address: \"127.0.0.1:8080\", tls: {{ cert: \"{}\", key: \"{}\" }} }}",
                cert.display(),
                key.display()
            ),
        )
    };
    let check = |yaml: &str| {
        let f = write(&dir, "c.yaml", yaml);
        portcullis(&["check-config", f.to_str().unwrap()], &[])
    };
    let out = check(&tls(&certs.cert, &certs.key));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    for (yaml, key) in [
        (tls(&missing, &certs.key), "listeners.plain.tls.cert: "),
        (tls(&garbage, &certs.key), "listeners.plain.tls.cert: "),
        (tls(&certs.cert, &missing), "listeners.plain.tls.key: "),
        (tls(&certs.cert, &garbage), "listeners.plain.tls.key: "),
        (
            with(
                "{ addresses: [\"http://127.0.0.1:9000\"] }",
                &format!(
                    "{{ addresses: [\"http://127.0.0.1:9000\"], ca_file: \"{}\" }}",
                    garbage.display()
                ),
            ),
            "upstreams.app.ca_file: ",
        ),
        (
            format!(
                "{BASE}issuers:\n  corp: {{ issuer: \"https://idp.example.com\", audiences: [api], ca_file: \"{}\" }}\n",
                missing.display()
            ),
            "issuers.corp.ca_file: ",
        ),
    ] {
        let out = check(&yaml);
        assert_eq!(out.status.code(), Some(2), "{yaml}\n{}", stderr(&out));
        assert!(stderr(&out).contains(key), "{key}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    }
}

#[test]
fn session_errors_name_their_key() {
    let key16 = "AAAAAAAAAAAAAAAAAAAAAA==";
    let key32 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let cases: Vec<(String, &str)> = vec![
        (
            "sessions: { store: disk }\n".into(),
            "sessions.store: \"disk\" is not one of memory, redis",
        ),
        (
            format!("sessions: {{ store: redis, cookie: {{ keys: [\"{key32}\"] }} }}\n"),
            "sessions.redis: is required when sessions.store is redis",
        ),
        (
            format!(
                "sessions:\n  store: redis\n  cookie: {{ keys: [\"{key32}\"] }}\n  redis:\n    url: redis://127.0.0.1:1\n    cluster: {{ addresses: [\"redis://127.0.0.1:2\"] }}\n"
            ),
            "sessions.redis: set only one of url, sentinel, cluster",
        ),
        (
            format!(
                "sessions: {{ store: redis, cookie: {{ keys: [\"{key32}\"] }}, redis: {{ timeout: 1s }} }}\n"
            ),
            "sessions.redis: one of url, sentinel, cluster is required",
        ),
        (
            "sessions: { store: redis, redis: { url: \"redis://127.0.0.1:1\" } }\n".into(),
            "sessions.cookie.keys: at least one key is required with store: redis (every replica \
             must open the others' cookies and records)",
        ),
        (
            "sessions: { cookie: { keys: [\"not base64!\"] } }\n".into(),
            "sessions.cookie.keys[0]: is not base64 (e.g. `openssl rand -base64 32`)",
        ),
        (
            format!("sessions: {{ cookie: {{ keys: [\"{key32}\", \"{key16}\"] }} }}\n"),
            "sessions.cookie.keys[1]: is 16 bytes, must be 32 (e.g. `openssl rand -base64 32`)",
        ),
        (
            "sessions: { refresh_fraction: 1.5 }\n".into(),
            "sessions.refresh_fraction: 1.5 must be between 0 and 1 (both excluded)",
        ),
        (
            "sessions: { refresh_fraction: 0 }\n".into(),
            "sessions.refresh_fraction: 0 must be between 0 and 1 (both excluded)",
        ),
        (
            "sessions: { idle_timeout: 0s }\n".into(),
            "sessions.idle_timeout: must be greater than zero",
        ),
        (
            "sessions: { redis: { url: \"http://user:pw@x\" } }\n".into(),
            "sessions.redis.url: must start with redis://, rediss://, redis+unix://, unix://",
        ),
        (
            "sessions: { redis: { sentinel: { addresses: [\"redis://127.0.0.1:26379\"] } } }\n"
                .into(),
            "sessions.redis.sentinel.master: is required",
        ),
        (
            "sessions: { redis: { cluster: { addresses: [] } } }\n".into(),
            "sessions.redis.cluster.addresses: at least one address is required",
        ),
        (
            "sessions: { redis: { cluster: { addresses: [\"10.0.0.1:6379\"] } } }\n".into(),
            "sessions.redis.cluster.addresses[0]: must start with redis://, rediss://",
        ),
        (
            "sessions: { redis: { url: \"redis://127.0.0.1:1\", timeout: 250 } }\n".into(),
            "sessions.redis.timeout: expected text, found the number 250 (a duration needs a unit, e.g. \"250s\")",
        ),
        (
            "sessions: { cookie: { name: \"bad name\" } }\n".into(),
            "sessions.cookie.name: \"bad name\" is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            "sessions: { cookie: { name: __Host-s, domain: example.com } }\n".into(),
            "sessions.cookie.name: a __Host- cookie needs secure: true and no domain",
        ),
        (
            "sessions: { degraded_header: \"bad header\" }\n".into(),
            "sessions.degraded_header: \"bad header\" is not a header name",
        ),
        (
            "sessions: { cookie: { secret: x } }\n".into(),
            "sessions.cookie.secret: unknown key \"secret\" (expected one of: name, secure, domain, keys)",
        ),
        (
            "auth: { callback_path: oauth2/callback }\n".into(),
            "auth.callback_path: \"oauth2/callback\" must be a path starting with /",
        ),
        (
            "auth: { sign_out_path: /oauth2/callback }\n".into(),
            "auth.sign_out_path: is the same as auth.callback_path",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(error(&format!("{BASE}{extra}")), want, "for {extra}");
    }
}

#[test]
fn allowed_redirect_domains_are_host_names() {
    let bad = [
        "https://app.example.com",
        "app.example.com:8443",
        "app.example.com/x",
        "*.example.com",
        "App.Example.com",
        "example.com.",
        "..example.com",
        "",
        "user@app.example.com",
        "bücher.example",
    ];
    for entry in bad {
        let yaml =
            format!("{BASE}auth: {{ allowed_redirect_domains: [ok.example, \"{entry}\"] }}\n");
        assert_eq!(
            error(&yaml),
            format!(
                "auth.allowed_redirect_domains[1]: \"{entry}\" must be a lower-case host name \
                 (app.example.com) or a suffix (.example.com): letters, digits, hyphens and dots \
                 only, no scheme, port, path or *"
            ),
            "for {entry:?}"
        );
    }
    for entry in [".10.0.0.1", "10.1", "010.0.0.1", "1.2.3.0x4"] {
        let yaml = format!("{BASE}auth: {{ allowed_redirect_domains: [\"{entry}\"] }}\n");
        assert_eq!(
            error(&yaml),
            format!(
                "auth.allowed_redirect_domains[0]: \"{entry}\" is an IP address: list it \
                 exactly, in dotted-decimal form (10.0.0.1), never as a suffix"
            ),
            "for {entry:?}"
        );
    }
    assert_eq!(
        error(&format!(
            "{BASE}auth: {{ allowed_redirect_domains: app.example.com }}\n"
        )),
        "auth.allowed_redirect_domains: invalid type: found string \"app.example.com\", expected a sequence"
    );
    let c = Config::from_yaml(BASE, []).unwrap();
    assert!(c.auth.allowed_redirect_domains.is_empty());
    let c = Config::from_yaml(
        &format!(
            "{BASE}auth: {{ allowed_redirect_domains: [.example.com, app.example.org, 10.0.0.1, .example.com] }}\n"
        ),
        [],
    )
    .unwrap();
    use portcullis::config::RedirectDomain;
    assert_eq!(
        c.auth.allowed_redirect_domains,
        vec![
            RedirectDomain::Suffix(".example.com".into()),
            RedirectDomain::Exact("app.example.org".into()),
            RedirectDomain::Exact("10.0.0.1".into()),
        ]
    );
}

#[test]
fn session_defaults_and_overrides() {
    let c = Config::from_yaml(BASE, []).unwrap();
    let s = &c.sessions;
    assert_eq!(s.store, portcullis::config::StoreKind::Memory);
    assert!(s.redis.is_none() && s.cookie.keys.is_empty());
    assert_eq!(s.cookie.name, "portcullis_session");
    assert!(s.cookie.secure);
    assert_eq!(s.idle_timeout, std::time::Duration::from_secs(8 * 3600));
    assert_eq!(s.lifetime, std::time::Duration::from_secs(24 * 3600));
    assert_eq!(s.refresh_fraction, 0.5);
    assert_eq!(s.outage_grace, std::time::Duration::from_secs(3600));
    assert_eq!(
        s.degraded_header.as_ref().map(|h| h.as_str()),
        Some("x-auth-degraded")
    );
    assert_eq!(s.paths.callback, "/oauth2/callback");
    assert_eq!(s.paths.sign_out, "/oauth2/sign_out");
    assert_eq!(s.paths.backchannel_logout, "/oauth2/backchannel_logout");

    // Redis from the file, its password and the fraction from the environment; neither the
    // password nor the URL is printed by Debug.
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let yaml = format!(
        "{BASE}sessions:\n  store: redis\n  redis: {{ url: \"redis://:urlpass@127.0.0.1:6390/0\" }}\n  cookie: {{ keys: [\"{key}\"] }}\n  degraded_header: \"\"\n"
    );
    let c = Config::from_yaml(
        &yaml,
        [
            (
                "PORTCULLIS_SESSIONS__REDIS__PASSWORD".to_string(),
                "envpass".to_string(),
            ),
            (
                "PORTCULLIS_SESSIONS__REFRESH_FRACTION".to_string(),
                "0.75".to_string(),
            ),
        ],
    )
    .unwrap();
    let s = &c.sessions;
    assert_eq!(s.refresh_fraction, 0.75);
    assert!(s.degraded_header.is_none());
    let r = s.redis.as_ref().unwrap();
    assert_eq!(r.password.as_ref().map(|p| p.expose()), Some("envpass"));
    assert_eq!(r.timeout, std::time::Duration::from_millis(250));
    assert_eq!(r.cache_ttl, std::time::Duration::from_secs(5));
    assert_eq!(s.cookie.keys.len(), 1);
    let debug = format!("{c:?}");
    for secret in ["envpass", "urlpass", key] {
        assert!(!debug.contains(secret), "{secret} in Debug output");
    }
    assert!(!c.summary().contains("envpass"));
}

#[test]
fn session_route_errors_name_their_key() {
    let issuer = |extra: &str| {
        format!(
            "issuers:\n  corp:\n    issuer: https://login.example.com\n    audiences: [api]\n{extra}"
        )
    };
    let route = |r: &str| with("{ path: /, upstream: app }", r);
    // A session route signs in through its issuer, which needs a client_id.
    assert_eq!(
        error(&format!(
            "{}{}",
            route("{ path: /, upstream: app, auth: session }"),
            issuer("")
        )),
        "issuers.corp.client_id: required: routes[0] signs browsers in through this issuer"
    );
    assert_eq!(
        error(&format!(
            "{}{}",
            route("{ path: /, upstream: app, auth: either }"),
            issuer("")
        )),
        "issuers.corp.client_id: required: routes[0] signs browsers in through this issuer"
    );
    let two = format!(
        "{}    client_id: a\n  other:\n    issuer: https://other.example.com\n    audiences: [api]\n    client_id: b\n",
        issuer("")
    );
    assert_eq!(
        error(&format!(
            "{}{two}",
            route("{ path: /, upstream: app, auth: session }")
        )),
        "routes[0].issuer: required with auth: session or either when several issuers are configured"
    );
    assert_eq!(
        error(&format!(
            "{}{}",
            route("{ path: /, upstream: app, auth: bearer, forward_access_token: true }"),
            issuer("")
        )),
        "routes[0].forward_access_token: needs auth: session or either"
    );
    assert_eq!(
        error(&format!(
            "{}{}",
            route("{ path: /, upstream: app, auth: session }"),
            issuer("    client_id: a\n    scopes: [openid, \"bad scope\"]\n")
        )),
        "issuers.corp.scopes[1]: \"bad scope\" is not a scope token (printable ASCII, no space, quote or backslash)"
    );
    assert_eq!(
        error(&format!(
            "{}{}",
            route("{ path: /, upstream: app, auth: session }"),
            issuer("    client_id: a\n    redirect_url: http://app.example.com/oauth2/callback\n")
        )),
        "issuers.corp.redirect_url: \"http://app.example.com/oauth2/callback\" must be an absolute https URL (http only on loopback), without a fragment"
    );
    // Valid: scopes get openid first, defaults apply, the route's issuer is the only one.
    let ok = Config::from_yaml(
        &format!(
            "{}{}",
            route("{ path: /, upstream: app, auth: session, forward_access_token: true }"),
            issuer("    client_id: a\n    scopes: [email, offline_access]\n")
        ),
        [],
    )
    .unwrap();
    assert_eq!(ok.issuers[0].scopes, ["openid", "email", "offline_access"]);
    assert_eq!(ok.routes[0].issuer, Some(0));
    assert!(ok.routes[0].forward_access_token);
    let defaults = Config::from_yaml(
        &format!(
            "{}{}",
            route("{ path: /, upstream: app, auth: either }"),
            issuer("    client_id: a\n")
        ),
        [],
    )
    .unwrap();
    assert_eq!(defaults.issuers[0].scopes, ["openid", "profile", "email"]);
    assert!(!defaults.routes[0].forward_access_token);
}

#[test]
fn check_config_refuses_a_weaker_route_to_a_protected_upstream() {
    // The shape config/portcullis.yaml had: a protected exact-host route and a public
    // any-host catch-all on the same upstream. check-config names both routes and the way.
    let dir = support::temp_dir("check-config-overlap");
    let routes = "routes:\n  - { name: api, host: app.example.com, path: /api, methods: [GET, POST], upstream: app, auth: bearer }\n  - { name: public, path: /, upstream: app }\n";
    let issuers = "issuers:\n  corp: { issuer: \"https://idp.example\", audiences: [x] }\n";
    let base = BASE.replace("routes:\n  - { path: /, upstream: app }\n", "");
    let bad = write(&dir, "bad.yaml", &format!("{base}{issuers}{routes}"));
    let out = portcullis(&["check-config", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("routes[1]: route \"public\" (auth none)"),
        "{err}"
    );
    assert!(
        err.contains("paths of route \"api\" (auth bearer)"),
        "{err}"
    );
    assert!(err.contains("another Host"), "{err}");
    assert!(err.contains("no Host (HTTP/1.0)"), "{err}");
    // Acknowledged, it is accepted; the same host on both routes is accepted too.
    let acknowledged = routes.replace(
        "upstream: app }\n",
        "upstream: app, acknowledge_overlap: [api] }\n",
    );
    let ok = write(&dir, "ack.yaml", &format!("{base}{issuers}{acknowledged}"));
    let out = portcullis(&["check-config", ok.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let same_host = routes.replace("{ name: public,", "{ name: public, host: app.example.com,");
    let ok = write(
        &dir,
        "same-host.yaml",
        &format!("{base}{issuers}{same_host}"),
    );
    let out = portcullis(&["check-config", ok.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn external_auth_paths_and_peers_are_checked() {
    assert_eq!(
        error(&format!(
            "{BASE}external_auth: {{ nginx_path: \"auth\" }}\n"
        )),
        "external_auth.nginx_path: \"auth\" must be an absolute path in canonical form, like \
         /_portcullis/auth (letters, digits, - _ . ~ between single slashes, no dot segments, no \
         trailing slash)"
    );
    assert!(
        error(&format!(
            "{BASE}external_auth: {{ forward_auth_path: \"/a/../b\" }}\n"
        ))
        .starts_with("external_auth.forward_auth_path: \"/a/../b\" must be")
    );
    assert_eq!(
        error(&format!(
            "{BASE}external_auth: {{ nginx_path: /_auth/x, envoy_path_prefix: /_auth }}\n"
        )),
        "external_auth: the decision paths /_auth/x and /_auth overlap"
    );
    assert_eq!(
        error(&format!(
            "{BASE}external_auth: {{ trusted_peers: [\"10.0.0.0/33\"] }}\n"
        )),
        "external_auth.trusted_peers[0]: \"10.0.0.0/33\" is not an address or a CIDR block \
         (10.0.0.0/8, fd00::/8)"
    );
    assert_eq!(
        error(&format!("{BASE}external_auth: {{ envoy_grpc: maybe }}\n")),
        "external_auth.envoy_grpc: invalid type: found string \"maybe\", expected a boolean"
    );
}

#[test]
fn decision_cache_max_age_is_a_duration_of_a_second_or_more() {
    assert_eq!(
        error(&format!(
            "{BASE}external_auth: {{ cache_max_age: 500ms }}\n"
        )),
        "external_auth.cache_max_age: must be at least 1s (leave it out to make every answer no-store)"
    );
    assert!(
        error(&format!("{BASE}external_auth: {{ cache_max_age: soon }}\n"))
            .starts_with("external_auth.cache_max_age: \"soon\" is not a duration")
    );
}

#[test]
fn a_route_without_an_upstream_needs_the_external_authorization_mode() {
    let no_upstream = with("- { path: /, upstream: app }", "- { path: /, auth: none }");
    assert_eq!(
        error(&no_upstream),
        "routes[0].upstream: is required (only a route of the external authorization mode, \
         with an external_auth decision path set, may go without one)"
    );
    // A start path alone decides nothing.
    assert!(
        error(&format!(
            "{no_upstream}external_auth: {{ start_path: /start }}\n"
        ))
        .starts_with("routes[0].upstream: is required")
    );
    let decided = format!("{no_upstream}external_auth: {{ forward_auth_path: /_auth }}\n");
    let config = Config::from_yaml(&decided, std::iter::empty()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.routes[0].upstream, None);
    assert!(
        config.summary().contains("-> (decisions only)"),
        "{}",
        config.summary()
    );
}

#[test]
fn assertion_and_header_profile_errors() {
    let auth = |s: &str| format!("{BASE}auth:\n  {s}\n");
    assert_eq!(
        error(&auth("header_profile: traefik")),
        "auth.header_profile: \"traefik\" is not one of portcullis, oauth2-proxy, iap, alb, pomerium"
    );
    assert_eq!(
        error(&auth("header_profile: iap")),
        "auth.header_profile: iap sends a signed assertion (x-goog-iap-jwt-assertion): set \
         auth.assertion (at least its issuer)"
    );
    assert_eq!(
        error(&auth("assertion: { lifetime: 1m }")),
        "auth.assertion.issuer: is required"
    );
    assert_eq!(
        error(&auth("assertion: { issuer: x, lifetime: 2h }")),
        "auth.assertion.lifetime: must be between 1s and 1h"
    );
    assert_eq!(
        error(&auth("assertion: { issuer: x, algorithm: RS256 }")),
        "auth.assertion.algorithm: \"RS256\" is not one of ES256, EdDSA"
    );
    assert_eq!(
        error(&auth("assertion: { issuer: x, claims: { sub: oid } }")),
        "auth.assertion.claims.sub: is a claim Portcullis sets itself (iss, sub, aud, iat, \
         exp, email, groups) or leaves out (nbf, jti)"
    );
    assert_eq!(
        error(&auth("assertion: { issuer: x, claims: { \"a b\": oid } }")),
        "auth.assertion.claims.a b: a claim name must be letters, digits, _ and -"
    );
    assert_eq!(
        error(&auth("assertion: { issuer: x, jwks_path: \"/a/../jwks\" }")),
        "auth.assertion.jwks_path: \"/a/../jwks\" must be a plain path starting with / (no \
         query, escapes or dot segments)"
    );
    assert_eq!(
        error(&auth(
            "header_profile: alb\n  assertion: { issuer: x, header: X-Mine }"
        )),
        "auth.assertion.header: auth.header_profile alb names the assertion's header; remove \
         this key"
    );
    assert!(
        error(&auth("assertion: { issuer: x, keyz: [] }"))
            .starts_with("auth.assertion.keyz: unknown key \"keyz\""),
    );
    // The budget must hold the fixed claims (the longest sub, and a host-name aud for a
    // route whose aud is the request's host); the check names the first route it fails.
    let issuers = "issuers:\n  corp: { issuer: \"https://idp.example\", audiences: [api] }\n";
    let bearer = BASE.replace(
        "{ path: /, upstream: app }",
        "{ path: /, upstream: app, auth: bearer }",
    );
    assert_eq!(
        error(&format!(
            "{bearer}{issuers}auth:\n  assertion: {{ issuer: x, max_bytes: 700 }}\n"
        )),
        "auth.assertion.max_bytes: 700 bytes cannot hold the fixed claims of routes[0]'s \
         assertion (995 bytes with the longest sub and aud)"
    );
    assert!(
        Config::from_yaml(
            &format!("{bearer}{issuers}auth:\n  assertion: {{ issuer: x, max_bytes: 1000 }}\n"),
            []
        )
        .is_ok()
    );
    // A route's assertion needs auth.assertion, and authentication.
    let route = |r: &str| BASE.replace("{ path: /, upstream: app }", r);
    assert_eq!(
        error(&format!(
            "{}{issuers}",
            route("{ path: /, upstream: app, auth: bearer, assertion: { audience: a } }")
        )),
        "routes[0].assertion: needs auth.assertion (at least its issuer)"
    );
    assert_eq!(
        error(&route(
            "{ path: /, upstream: app, assertion: { audience: a } }"
        )),
        "routes[0].assertion: needs authentication (auth: bearer, session or either): a route \
         without it has no identity to assert"
    );
    assert_eq!(
        error(&format!(
            "{}{issuers}",
            route("{ path: /, upstream: app, auth: bearer, assertion: maybe }")
        )),
        "routes[0].assertion: \"maybe\" is not off, on or { audience: ... }"
    );
}

#[test]
fn assertion_key_files_are_checked_by_check_config() {
    let dir = support::temp_dir("assertion-keys");
    let bad = dir.join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let yaml = format!(
        "{BASE}auth:\n  assertion: {{ issuer: x, keys: [\"{}\"] }}\n",
        bad.display()
    );
    let config = Config::from_yaml(&yaml, []).unwrap();
    let e = portcullis::server::check_files(&config)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("auth.assertion.keys[0]: {}: ", bad.display())),
        "{e}"
    );
    let missing = format!(
        "{BASE}auth:\n  assertion: {{ issuer: x, keys: [\"{}\"] }}\n",
        dir.join("none.pem").display()
    );
    let e = portcullis::server::check_files(&Config::from_yaml(&missing, []).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("auth.assertion.keys[0]: "), "{e}");
}
