//! One typed builder for a running scenario, in the shape of linkerd2-proxy's integration
//! `proxy::new().inbound(srv).run()`:
//!
//! ```ignore
//! let proxy = Scenario::new()
//!     .issuer("corp", &idp, &["algorithms: [RS256]"])
//!     .upstream("app", &up)
//!     .route(Route::bearer("/api").name("api").scopes(["api:read"]))
//!     .clock(clock)
//!     .start()
//!     .await;
//! ```
//!
//! It writes the YAML a test would have written by hand (one plain listener on
//! `127.0.0.1:0`, access log off, upstreams, routes, `state_dir` and issuers, then any further
//! sections) and starts Portcullis from it with [`super::start_proxy`] and friends, so the
//! proxy binds port 0 and stops when the returned [`Proxy`] is dropped. Settings the typed
//! methods do not cover go in as raw YAML ([`Scenario::yaml`], [`Route::raw`],
//! [`Scenario::routes_yaml`]); tests/config_errors.rs keeps raw YAML on purpose.
//!
//! [`Env`] is the common case of the auth tests: one IdP with one RS256 key, the echo upstream
//! `app` and a proxy with issuer `corp`.

use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use portcullis::clock::ManualClock;

use super::idp::{AUDIENCE, CLIENT_ID, CLIENT_SECRET, MockIdp, SigningKey};
use super::upstream::{self, MockUpstream};
use super::{Proxy, metric_value, temp_dir};

/// A scenario to start: listeners, upstreams, routes, issuers, sessions and the clock.
#[derive(Clone)]
pub struct Scenario {
    listeners: Vec<String>,
    log: String,
    upstreams: Vec<String>,
    routes: Vec<String>,
    state_dir: Option<PathBuf>,
    issuers: Vec<String>,
    sections: Vec<String>,
    clock: Option<ManualClock>,
}

/// One entry of `routes:`.
#[derive(Clone)]
pub struct Route {
    fields: Vec<(String, String)>,
}

/// A started [`Env`]: the IdP, its key, the echo upstream and the proxy.
pub struct Env {
    pub idp: MockIdp,
    /// The RS256 key the IdP publishes.
    pub key: SigningKey,
    pub up: MockUpstream,
    pub proxy: Proxy,
    /// The clock the proxy (and the IdP) run on, when the scenario has one.
    pub clock: Option<ManualClock>,
}

// === impl Scenario ===

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    /// One plain listener on `127.0.0.1:0`, the access log off, nothing else.
    pub fn new() -> Self {
        Self {
            listeners: vec!["  plain: { address: \"127.0.0.1:0\" }".into()],
            log: "log: { access: false }".into(),
            upstreams: Vec::new(),
            routes: Vec::new(),
            state_dir: None,
            issuers: Vec::new(),
            sections: Vec::new(),
            clock: None,
        }
    }

    /// The plainest scenario: everything (`/`, no auth) to upstream `app` at `up`.
    pub fn pass_through(up: &MockUpstream) -> Self {
        Self::new()
            .upstream("app", up)
            .routes_yaml("  - { path: /, upstream: app }")
    }

    /// What [`super::process::spawn`] needs to find the real binary's addresses: the admin
    /// listener on `127.0.0.1:0` and a JSON log at `info` (access log off).
    pub fn for_binary(self) -> Self {
        self.section("admin", &["address: \"127.0.0.1:0\""])
            .log("log: { access: false, format: json, level: info }")
    }

    /// [`Scenario::for_binary`] with everything (`/`, no auth) to upstream `app` at `url`,
    /// which gets exactly `settings` (the proxy's own defaults for the rest).
    pub fn binary_pass_through(url: &str, settings: &[&str]) -> Self {
        Self::new()
            .for_binary()
            .upstream_exact("app", &[url.to_string()], settings)
            .routes_yaml("  - { path: /, upstream: app }")
    }

    /// Replaces the listeners with `name: { <settings> }` entries (e.g. a TLS one).
    pub fn listeners(mut self, entries: &[(&str, &str)]) -> Self {
        self.listeners = entries
            .iter()
            .map(|(name, settings)| format!("  {name}: {{ {settings} }}"))
            .collect();
        self
    }

    /// Adds listener `name` on `address` with TLS from `cert` and `key` plus `tls_extra`
    /// settings of the `tls:` block (`reload_interval: 1h`, ...).
    pub fn tls_listener(
        mut self,
        name: &str,
        address: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
        tls_extra: &[&str],
    ) -> Self {
        let mut s = format!(
            "  {name}:\n    address: \"{address}\"\n    tls:\n      cert: \"{}\"\n      key: \"{}\"",
            cert.display(),
            key.display()
        );
        for e in tls_extra {
            s.push_str(&format!("\n      {e}"));
        }
        self.listeners.push(s);
        self
    }

    /// Removes the default plain listener (for a scenario with only a TLS one).
    pub fn without_plain(mut self) -> Self {
        self.listeners.retain(|l| !l.starts_with("  plain:"));
        self
    }

    /// The whole `log:` line (default `log: { access: false }`).
    pub fn log(mut self, line: &str) -> Self {
        self.log = line.into();
        self
    }

    /// Upstream `name` at `up`, with the tests' usual timeouts (connect 1s, response 5s).
    pub fn upstream(self, name: &str, up: &MockUpstream) -> Self {
        self.upstream_at(name, &[up.url()], &[])
    }

    /// Upstream `name` at `addresses` with the usual timeouts plus `extra` settings
    /// (`key: value`; one with the key of a default replaces it).
    pub fn upstream_at(mut self, name: &str, addresses: &[String], extra: &[&str]) -> Self {
        let addrs: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        let mut s = format!("  {name}:\n    addresses: [{}]\n", addrs.join(", "));
        for (key, default) in [("connect_timeout", "1s"), ("response_timeout", "5s")] {
            if !extra.iter().any(|e| key_of(e) == key) {
                s.push_str(&format!("    {key}: {default}\n"));
            }
        }
        for e in extra {
            s.push_str(&format!("    {e}\n"));
        }
        self.upstreams.push(s.trim_end().to_string());
        self
    }

    /// Upstream `name` at `addresses` with exactly `settings` (no test defaults: the
    /// proxy's own defaults apply to what is not set).
    pub fn upstream_exact(mut self, name: &str, addresses: &[String], settings: &[&str]) -> Self {
        let addrs: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        let mut s = format!("  {name}:\n    addresses: [{}]", addrs.join(", "));
        for e in settings {
            s.push_str(&format!("\n    {e}"));
        }
        self.upstreams.push(s);
        self
    }

    /// Upstream `name` written as a flow mapping `name: { <settings> }`, nothing added.
    pub fn upstream_raw(mut self, name: &str, settings: &str) -> Self {
        self.upstreams.push(format!("  {name}: {{ {settings} }}"));
        self
    }

    /// Adds a route (after the ones already added: the first match wins).
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route.yaml());
        self
    }

    /// Issuer `name` at `idp` with the mock IdP's confidential client ([`CLIENT_ID`],
    /// [`CLIENT_SECRET`]), as browser sign-in needs, plus `extra` settings.
    pub fn sign_in_issuer(self, name: &str, idp: &MockIdp, extra: &[&str]) -> Self {
        let id = format!("client_id: {CLIENT_ID}");
        let secret = format!("client_secret: \"{CLIENT_SECRET}\"");
        let mut settings = vec![id.as_str(), secret.as_str()];
        settings.extend_from_slice(extra);
        self.issuer(name, idp, &settings)
    }

    /// Adds routes written as YAML list items indented by two spaces.
    pub fn routes_yaml(mut self, yaml: &str) -> Self {
        let yaml = yaml.trim_end();
        if !yaml.is_empty() {
            self.routes.push(yaml.to_string());
        }
        self
    }

    /// Issuer `name` for `idp` (audience `api`) with `extra` settings (`key: value`).
    pub fn issuer(self, name: &str, idp: &MockIdp, extra: &[&str]) -> Self {
        self.issuer_at(name, &idp.issuer(), extra)
    }

    /// Issuer `name` at the issuer URL `issuer` (audience `api`) with `extra` settings.
    pub fn issuer_at(mut self, name: &str, issuer: &str, extra: &[&str]) -> Self {
        let mut s = format!("  {name}:\n    issuer: \"{issuer}\"\n    audiences: [{AUDIENCE}]");
        for e in extra {
            s.push_str(&format!("\n    {e}"));
        }
        self.issuers.push(s);
        self
    }

    /// Where persisted state goes (default: a fresh temporary directory when there are
    /// issuers).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// `sessions:` with `lines` (each `key: value`, indented by two spaces here).
    pub fn sessions(self, lines: &[&str]) -> Self {
        self.section("sessions", lines)
    }

    /// `server:` with `lines`.
    pub fn server(self, lines: &[&str]) -> Self {
        self.section("server", lines)
    }

    /// `auth:` with `lines`.
    pub fn auth(self, lines: &[&str]) -> Self {
        self.section("auth", lines)
    }

    /// `auth: { allowed_redirect_domains: [...] }`: the hosts absolute return targets may name
    /// (`app.example.com`, or `.example.com` for its subdomains). It is an `auth:` section of
    /// its own, so use [`Scenario::auth`] with `allowed_redirect_domains:` among its lines
    /// instead when other `auth` keys are set too.
    pub fn allowed_redirect_domains(self, domains: &[&str]) -> Self {
        let list = domains
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ");
        self.auth(&[&format!("allowed_redirect_domains: [{list}]")])
    }

    /// A top-level section `name:` with `lines` (each indented by two spaces).
    pub fn section(mut self, name: &str, lines: &[&str]) -> Self {
        let mut s = format!("{name}:\n");
        for l in lines {
            s.push_str(&format!("  {l}\n"));
        }
        self.sections.push(s);
        self
    }

    /// Raw top-level YAML, appended as is (the escape hatch for rare settings).
    pub fn yaml(mut self, raw: &str) -> Self {
        if !raw.is_empty() {
            self.sections.push(raw.to_string());
        }
        self
    }

    /// Runs the proxy (and its IdP code) on `clock`.
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The configuration this scenario starts with.
    pub fn to_yaml(&self) -> String {
        let mut y = format!("listeners:\n{}\n{}\n", self.listeners.join("\n"), self.log);
        if !self.upstreams.is_empty() {
            y.push_str(&format!("upstreams:\n{}\n", self.upstreams.join("\n")));
        }
        y.push_str(&format!("routes:\n{}\n", self.routes.join("\n")));
        if !self.issuers.is_empty() {
            let dir = self
                .state_dir
                .clone()
                .unwrap_or_else(|| temp_dir("scenario"));
            y.push_str(&format!("state_dir: \"{}\"\n", dir.display()));
            y.push_str(&format!("issuers:\n{}\n", self.issuers.join("\n")));
        } else if let Some(dir) = &self.state_dir {
            y.push_str(&format!("state_dir: \"{}\"\n", dir.display()));
        }
        for s in &self.sections {
            y.push_str(s);
            if !s.ends_with('\n') {
                y.push('\n');
            }
        }
        y
    }

    /// Starts the proxy and waits until `/readyz` says ready.
    pub async fn start(self) -> Proxy {
        let yaml = self.to_yaml();
        match self.clock {
            Some(c) => super::start_proxy_with_clock(&yaml, c).await,
            None => super::start_proxy(&yaml).await,
        }
    }

    /// Starts the proxy without waiting for readiness (a [`ManualClock`] is made when the
    /// scenario has none).
    pub async fn start_unready(self) -> Proxy {
        let yaml = self.to_yaml();
        let clock = self.clock.unwrap_or_default();
        super::start_proxy_unready(&yaml, clock).await
    }
}

// === impl Route ===

impl Route {
    /// A route at `path` with `auth`, to upstream `app`, named after `auth` until
    /// [`Route::name`] says otherwise.
    pub fn new(auth: &str, path: &str) -> Self {
        Self {
            fields: vec![
                ("name".into(), auth.into()),
                ("path".into(), path.into()),
                ("upstream".into(), "app".into()),
                ("auth".into(), auth.into()),
            ],
        }
    }

    /// `auth: bearer` at `path`.
    pub fn bearer(path: &str) -> Self {
        Self::new("bearer", path)
    }

    /// `auth: session` at `path`.
    pub fn session(path: &str) -> Self {
        Self::new("session", path)
    }

    /// `auth: either` at `path`.
    pub fn either(path: &str) -> Self {
        Self::new("either", path)
    }

    /// `auth: none` at `path`.
    pub fn open(path: &str) -> Self {
        Self::new("none", path)
    }

    /// Sets (or adds) `key: value`, written as is.
    pub fn raw(mut self, key: &str, value: &str) -> Self {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(f) => f.1 = value.into(),
            None => self.fields.push((key.into(), value.into())),
        }
        self
    }

    /// The route's name.
    pub fn name(self, name: &str) -> Self {
        self.raw("name", name)
    }

    /// The upstream it forwards to.
    pub fn upstream(self, name: &str) -> Self {
        self.raw("upstream", name)
    }

    /// No upstream: a route of external authorization decisions only.
    pub fn decisions_only(mut self) -> Self {
        self.fields.retain(|(k, _)| k != "upstream");
        self
    }

    /// `host:`.
    pub fn host(self, host: &str) -> Self {
        self.raw("host", host)
    }

    /// `methods: [..]`.
    pub fn methods<'a>(self, methods: impl IntoIterator<Item = &'a str>) -> Self {
        self.raw("methods", &list(methods))
    }

    /// `issuer:`.
    pub fn issuer(self, issuer: &str) -> Self {
        self.raw("issuer", issuer)
    }

    /// `authorize: { scopes: [..] }`.
    pub fn scopes<'a>(self, scopes: impl IntoIterator<Item = &'a str>) -> Self {
        self.raw("authorize", &format!("{{ scopes: {} }}", list(scopes)))
    }

    /// A boolean flag (`forward_access_token`, `case_insensitive`, ...) set to true.
    pub fn flag(self, key: &str) -> Self {
        self.raw(key, "true")
    }

    fn yaml(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!("  - {{ {} }}", fields.join(", "))
    }
}

// === impl Env ===

impl Env {
    /// An IdP with one RS256 key `kid`, the echo upstream `app`, and the proxy that `build`
    /// makes from a scenario with issuer `corp` (`issuer_extra`) and upstream `app`. With a
    /// `clock`, the IdP stamps its requests with it and the proxy runs on it.
    pub async fn start(
        kid: &str,
        clock: Option<ManualClock>,
        issuer_extra: &[&str],
        build: impl FnOnce(Scenario) -> Scenario,
    ) -> Env {
        let idp = match &clock {
            Some(c) => MockIdp::start_with_clock(c.clone()).await,
            None => MockIdp::start().await,
        };
        Self::with_idp(idp, kid, clock, issuer_extra, build).await
    }

    /// Like [`Env::start`] with an IdP the caller started (on real time while the proxy runs
    /// on `clock`, say).
    pub async fn with_idp(
        idp: MockIdp,
        kid: &str,
        clock: Option<ManualClock>,
        issuer_extra: &[&str],
        build: impl FnOnce(Scenario) -> Scenario,
    ) -> Env {
        let key = idp.new_key(Algorithm::RS256, kid);
        let up = upstream::start("app").await;
        let mut scenario = Scenario::new()
            .upstream("app", &up)
            .issuer("corp", &idp, issuer_extra);
        if let Some(c) = &clock {
            scenario = scenario.clock(c.clone());
        }
        let proxy = build(scenario).start().await;
        Env {
            idp,
            key,
            up,
            proxy,
            clock,
        }
    }

    /// The clock (panics when the scenario has none).
    pub fn clock(&self) -> &ManualClock {
        self.clock.as_ref().expect("this Env has no ManualClock")
    }
}

/// The series `portcullis_auth_results_total` for `route`, `issuer` and `result`.
pub fn auth_series(route: &str, issuer: &str, result: &str) -> String {
    format!(
        "portcullis_auth_results_total{{issuer=\"{issuer}\",result=\"{result}\",route=\"{route}\"}}"
    )
}

/// The value of [`auth_series`] in `metrics` (panics when the series is missing).
pub fn auth_result(metrics: &str, route: &str, issuer: &str, result: &str) -> f64 {
    metric_value(metrics, &auth_series(route, issuer, result))
}

fn key_of(setting: &str) -> &str {
    setting.split(':').next().unwrap_or("").trim()
}

fn list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    format!("[{}]", items.join(", "))
}
