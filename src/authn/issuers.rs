//! The issuer set: every configured issuer with its settings, keys and validations, and its
//! lifecycle across reloads (slots, key refresh tasks, readiness).
//!
//! An issuer keeps its slot (a number) for the life of the process, so a route built under
//! one configuration never names another issuer under a later one. A reload builds a new
//! [`IssuerSet`] ([`Authenticator::prepare`]) and swaps it in whole
//! ([`PreparedIssuers::apply`]): the fetched keys of an issuer whose key source
//! ([`same_key_source`]) did not change are kept, added issuers start fetching, removed ones
//! stop.
//!
//! Security notes:
//! - Keys are reused only when the issuer URL, `jwks_uri` and `ca_file` are all unchanged:
//!   keys fetched from one place are never used for an issuer configured to take them from
//!   another.
//! - Every validation pins `iss`, the audiences and `exp`/`iss`/`aud` as required, and the
//!   algorithm it was chosen for ([`validations`]).
//! - Swapping the set drops every cached token (`token_cache`): nothing verified under the
//!   old settings is served under the new ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};

use super::jwks::IssuerKeys;
use super::keys::VerifyKey;
use super::{Authenticator, jwt};
use crate::claims::{ClaimSources, top_level_names};
use crate::config::{Config, IssuerConfig};
use crate::idp::IdpClient;

/// One configured issuer under one configuration.
pub(super) struct Issuer {
    /// This configuration's settings for the issuer (audiences, claims, ...); the keys may
    /// have been fetched under an earlier configuration with the same key source.
    pub(super) config: Arc<IssuerConfig>,
    /// Its name, shared by every identity it verifies.
    pub(super) name: Arc<str>,
    pub(super) keys: Arc<IssuerKeys>,
    /// One per accepted algorithm (see [`validations`]).
    pub(super) validations: Vec<(Algorithm, Validation)>,
    /// The shared secret as a key (HS* algorithms).
    pub(super) secret: Option<Arc<VerifyKey>>,
}

/// The issuers of one configuration, swapped whole on a reload.
pub(super) struct IssuerSet {
    pub(super) generation: u64,
    /// By slot; `None` for a slot whose issuer this configuration does not have.
    pub(super) issuers: Vec<Option<Issuer>>,
    pub(super) by_iss: HashMap<String, usize>,
    pub(super) max_token_bytes: usize,
    /// Top-level claims something reads (identity headers, `authorize` claim rules); a
    /// cached identity keeps only these, which is most of what keeps an entry small.
    pub(super) kept_claims: Arc<[String]>,
}

/// The key refresh task of each issuer, by name, so a reload can stop the ones it drops.
#[derive(Default)]
pub(super) struct KeyTasks {
    /// Whether [`Authenticator::start`] ran: before it, a reload starts nothing.
    started: bool,
    running: HashMap<String, (Arc<IssuerKeys>, tokio::task::AbortHandle)>,
}

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// TLS for an issuer could not be set up.
    #[error("issuers.{issuer}: {source}")]
    Tls {
        issuer: String,
        #[source]
        source: crate::tls_client::TlsClientError,
    },
}

/// A reload's issuers, built but not applied yet (see [`Authenticator::prepare`]).
pub struct PreparedIssuers<'a> {
    auth: &'a Authenticator,
    set: IssuerSet,
}

// === impl Issuer ===

impl Issuer {
    /// Where this issuer's identities read scopes, groups and roles.
    pub(super) fn sources(&self) -> ClaimSources<'_> {
        ClaimSources {
            scopes: &self.config.scope_claims,
            groups: &self.config.groups_claim,
            roles: &self.config.roles_claim,
        }
    }

    /// The validation for a token signed with `alg`, if the issuer accepts `alg`.
    pub(super) fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }
}

// === impl IssuerSet ===

impl IssuerSet {
    /// No issuers yet (what a new authenticator holds until its first set is built).
    pub(super) fn empty(max_token_bytes: usize) -> Self {
        Self {
            generation: 0,
            issuers: Vec::new(),
            by_iss: HashMap::new(),
            max_token_bytes,
            kept_claims: Arc::from(Vec::new()),
        }
    }

    /// The issuer in `slot`, if this configuration has it.
    pub(super) fn get(&self, slot: usize) -> Option<&Issuer> {
        self.issuers.get(slot).and_then(Option::as_ref)
    }
}

// === impl Authenticator ===

impl Authenticator {
    /// The slot of the issuer named `name`, assigned now if the name is new. A name keeps its
    /// slot for the life of the process (across reloads).
    pub fn issuer_index(&self, name: &str) -> usize {
        self.slot(name)
    }

    /// Issuer names by slot (for metric labels), including names a reload removed.
    pub fn slot_names(&self) -> Vec<Arc<str>> {
        lock(&self.slots).clone()
    }

    fn slot(&self, name: &str) -> usize {
        let mut slots = lock(&self.slots);
        match slots.iter().position(|n| &**n == name) {
            Some(i) => i,
            None => {
                slots.push(Arc::from(name));
                slots.len() - 1
            }
        }
    }

    /// The keys of every issuer of the running configuration.
    pub fn issuers(&self) -> Vec<Arc<IssuerKeys>> {
        self.set
            .load()
            .issuers
            .iter()
            .flatten()
            .map(|i| i.keys.clone())
            .collect()
    }

    /// The settings of the issuer in `slot` (see [`Authenticator::issuer_index`]).
    pub fn issuer_config(&self, slot: usize) -> Option<Arc<IssuerConfig>> {
        self.set.load().get(slot).map(|i| i.config.clone())
    }

    /// The keys of the issuer in `slot` (its discovery document, for the code flow).
    pub fn issuer_keys(&self, slot: usize) -> Option<Arc<IssuerKeys>> {
        self.set.load().get(slot).map(|i| i.keys.clone())
    }

    /// The slot of the configured issuer whose `iss` the (unverified) `token` names.
    pub fn slot_for_token(&self, token: &str) -> Option<usize> {
        let peeked = jwt::peek(token).ok()?;
        self.set.load().by_iss.get(&peeked.iss).copied()
    }

    /// Builds the issuer set for `config`, reusing the running keys of every issuer whose
    /// key source (issuer URL, `jwks_uri`, `ca_file`) is unchanged. Nothing is installed.
    pub(super) fn build_set(
        &self,
        config: &Config,
        generation: u64,
    ) -> Result<IssuerSet, BuildError> {
        let running: HashMap<String, Arc<IssuerKeys>> = self
            .set
            .load()
            .issuers
            .iter()
            .flatten()
            .map(|i| (i.config.name.clone(), i.keys.clone()))
            .collect();
        let mut issuers: Vec<Option<Issuer>> = Vec::new();
        let mut by_iss = HashMap::new();
        for ic in &config.issuers {
            let keys = match running.get(&ic.name) {
                Some(k) if same_key_source(&k.config, ic) => {
                    if !same_fetch_settings(&k.config, ic) {
                        tracing::warn!(
                            issuer = %ic.name,
                            "key refresh and IdP call settings of this issuer take effect after a restart"
                        );
                    }
                    k.clone()
                }
                _ => Arc::new(self.new_keys(config, ic)?),
            };
            let slot = self.slot(&ic.name);
            if issuers.len() <= slot {
                issuers.resize_with(slot + 1, || None);
            }
            issuers[slot] = Some(Issuer {
                config: ic.clone(),
                name: Arc::from(ic.name.as_str()),
                validations: validations(ic),
                secret: ic
                    .shared_secret
                    .as_ref()
                    .map(|s| Arc::new(VerifyKey::from_secret(s.expose()))),
                keys,
            });
            self.metrics.init_issuer(&ic.name);
            by_iss.insert(ic.issuer.clone(), slot);
        }
        Ok(IssuerSet {
            generation,
            issuers,
            by_iss,
            max_token_bytes: config.auth.max_token_bytes,
            kept_claims: kept_claims(config),
        })
    }

    fn new_keys(&self, config: &Config, ic: &Arc<IssuerConfig>) -> Result<IssuerKeys, BuildError> {
        let tls =
            crate::tls_client::config(ic.ca_file.as_deref()).map_err(|source| BuildError::Tls {
                issuer: ic.name.clone(),
                source,
            })?;
        let idp = IdpClient::new(
            &ic.name,
            tls,
            ic.idp.clone(),
            self.clock.clone(),
            self.metrics.clone(),
        );
        Ok(IssuerKeys::new(
            ic.clone(),
            idp,
            self.clock.clone(),
            self.metrics.clone(),
            Some(config.state_dir.as_path()),
        ))
    }

    /// Prepares `config`'s issuers (TLS set up, keys reused or created) without applying
    /// them; [`PreparedIssuers::apply`] swaps them in.
    pub fn prepare(&self, config: &Config) -> Result<PreparedIssuers<'_>, BuildError> {
        let generation = self.set.load().generation + 1;
        Ok(PreparedIssuers {
            auth: self,
            set: self.build_set(config, generation)?,
        })
    }

    /// Applies `config`'s issuers at once (what a reload does): changed settings take effect
    /// for the next request, added issuers start fetching keys, removed ones stop, and every
    /// cached token is verified again under the new settings.
    pub fn reload(&self, config: &Config) -> Result<(), BuildError> {
        self.prepare(config)?.apply();
        Ok(())
    }

    fn install(&self, set: IssuerSet) {
        let keep: Vec<(String, Arc<IssuerKeys>)> = set
            .issuers
            .iter()
            .flatten()
            .map(|i| (i.config.name.clone(), i.keys.clone()))
            .collect();
        let old = self.set.swap(Arc::new(set));
        // Entries of the old generation are never served again; this frees their memory.
        self.cache.clear();
        for gone in old.issuers.iter().flatten() {
            if !keep.iter().any(|(n, _)| *n == gone.config.name) {
                let name = [gone.config.name.as_str()];
                let _ = self.metrics.jwks_age.remove_label_values(&name);
                let _ = self.metrics.jwks_keys.remove_label_values(&name);
            }
        }
        self.restart_key_tasks(keep);
    }

    /// Stops the key tasks of issuers not in `keep` (or whose keys were replaced) and, once
    /// [`Authenticator::start`] ran, starts one for each issuer in `keep` without one.
    fn restart_key_tasks(&self, keep: Vec<(String, Arc<IssuerKeys>)>) {
        let mut tasks = lock(&self.tasks);
        tasks.running.retain(|name, (keys, handle)| {
            let kept = keep.iter().any(|(n, k)| n == name && Arc::ptr_eq(k, keys));
            if !kept {
                handle.abort();
            }
            kept
        });
        if !tasks.started {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to fetch the keys of added issuers on");
            return;
        };
        for (name, keys) in keep {
            if tasks.running.contains_key(&name) {
                continue;
            }
            let k = keys.clone();
            let handle = rt
                .spawn(async move {
                    k.load_persisted().await;
                    k.run(Duration::ZERO).await;
                })
                .abort_handle();
            tasks.running.insert(name, (keys, handle));
        }
    }

    /// Loads persisted keys, then fetches every issuer now and keeps refreshing in the
    /// background. The tasks stop when the returned set is dropped, or when a reload removes
    /// their issuer.
    pub async fn start(&self) -> tokio::task::JoinSet<()> {
        let mut tasks = tokio::task::JoinSet::new();
        let set = self.set.load_full();
        for issuer in set.issuers.iter().flatten() {
            issuer.keys.load_persisted().await;
            let handle = tasks.spawn(issuer.keys.clone().run(Duration::ZERO));
            lock(&self.tasks)
                .running
                .insert(issuer.config.name.clone(), (issuer.keys.clone(), handle));
        }
        lock(&self.tasks).started = true;
        tasks
    }

    /// True when every issuer has had usable keys since start (fetched or persisted); keys
    /// going stale later do not undo it (see `health::Readiness`).
    pub fn ready(&self) -> bool {
        self.set
            .load()
            .issuers
            .iter()
            .flatten()
            .all(|i| i.keys.had_usable_keys())
    }

    /// Updates gauges that depend on time (key age); called before /metrics renders.
    pub fn update_gauges(&self) {
        for i in self.set.load().issuers.iter().flatten() {
            let age = i.keys.age().map_or(-1.0, |a| a.as_secs_f64());
            self.metrics
                .jwks_age
                .with_label_values(&[&i.config.name])
                .set(age);
            i.keys.publish_usable();
        }
    }
}

// === impl PreparedIssuers ===

impl PreparedIssuers<'_> {
    /// Swaps the issuers in.
    pub fn apply(self) {
        self.auth.install(self.set);
    }
}

/// Where the keys come from: when this is unchanged, a reload keeps the fetched keys.
fn same_key_source(a: &IssuerConfig, b: &IssuerConfig) -> bool {
    a.issuer == b.issuer && a.jwks_uri == b.jwks_uri && a.ca_file == b.ca_file
}

/// How the keys are fetched and for how long they stay usable (fixed for reused keys).
fn same_fetch_settings(a: &IssuerConfig, b: &IssuerConfig) -> bool {
    (
        a.refresh_interval,
        a.refresh_min,
        a.refresh_max,
        a.unknown_kid_cooldown,
        a.max_stale,
    ) == (
        b.refresh_interval,
        b.refresh_min,
        b.refresh_max,
        b.unknown_kid_cooldown,
        b.max_stale,
    ) && a.idp == b.idp
}

/// One validation per accepted algorithm: `iss`, the audiences, `exp`/`nbf` with the
/// issuer's clock skew, and `exp`, `iss` and `aud` required.
fn validations(ic: &IssuerConfig) -> Vec<(Algorithm, Validation)> {
    ic.algorithms
        .iter()
        .map(|alg| {
            let mut v = Validation::new(*alg);
            v.leeway = ic.clock_skew.as_secs();
            v.validate_nbf = true;
            v.set_audience(&ic.audiences);
            v.set_issuer(&[&ic.issuer]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            (*alg, v)
        })
        .collect()
}

/// The top-level claims the configuration reads from `Identity::claims`: identity headers
/// (the profile's too), the assertion's `email` and configured claims, routes' `authorize`
/// claim rules and the claims their CEL rules read (scopes, groups, roles and `sub` have
/// their own fields).
fn kept_claims(config: &Config) -> Arc<[String]> {
    let mapped = config.auth.mapped_headers();
    let email = crate::claims::ClaimPath(vec!["email".into()]);
    let asserted = config.auth.assertion.iter().flat_map(|a| {
        std::iter::once(&email).chain(a.claims.iter().map(|(_, path)| path))
    });
    let headers = mapped.iter().map(|m| &m.claim).chain(asserted).cloned();
    let rules = config
        .routes
        .iter()
        .flat_map(|r| r.policy.rules.iter())
        .filter_map(|rule| match rule {
            crate::authz::Rule::Claim(path, _) => Some(path.clone()),
            _ => None,
        });
    let cel = config
        .routes
        .iter()
        .flat_map(|r| r.policy.cel.iter())
        .flat_map(|rule| rule.claims().iter())
        .map(|name| crate::claims::ClaimPath(vec![name.clone()]));
    let paths: Vec<_> = headers.chain(rules).chain(cel).collect();
    top_level_names(&paths)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{SharedClock, TokioClock};
    use crate::metrics::Metrics;

    /// A configuration with the issuers `corp` (with `corp_extra` lines) and `b`, or only
    /// `b` when `corp_extra` is `None`.
    fn config(corp_extra: Option<&str>, top_extra: &str) -> Config {
        let dir = std::env::temp_dir().join("portcullis-issuers-unit");
        let corp = corp_extra.map_or(String::new(), |extra| {
            format!(
                "  corp:\n    issuer: \"https://corp\"\n    audiences: [api]\n    \
                 algorithms: [HS256, HS384]\n    clock_skew: 7s\n    \
                 shared_secret: \"a-shared-secret-for-issuer-unit-tests-0123456\"\n{extra}"
            )
        });
        let yaml = format!(
            "listeners:\n  plain: {{ address: \"127.0.0.1:0\" }}\n\
             upstreams:\n  app: {{ addresses: [\"http://127.0.0.1:9\"] }}\n\
             routes:\n  - path: /\n    upstream: app\n    auth: bearer\n{top_extra}\
             state_dir: \"{}\"\n\
             issuers:\n{corp}  b:\n    issuer: \"https://b\"\n    audiences: [api]\n",
            dir.display()
        );
        Config::from_yaml(&yaml, []).unwrap_or_else(|e| panic!("{e}"))
    }

    fn corp(extra: &str) -> Arc<IssuerConfig> {
        let c = config(Some(extra), "");
        c.issuers
            .iter()
            .find(|i| i.name == "corp")
            .cloned()
            .unwrap()
    }

    fn auth(config: &Config) -> Authenticator {
        let clock: SharedClock = Arc::new(TokioClock);
        Authenticator::try_new(config, Metrics::try_new().unwrap(), clock).unwrap()
    }

    #[test]
    fn the_key_source_is_the_issuer_url_and_jwks_uri() {
        let base = corp("");
        // Settings that do not say where keys come from keep them.
        assert!(same_key_source(
            &base,
            &corp("    required_claims: [email]\n")
        ));
        assert!(same_key_source(&base, &corp("    refresh_interval: 1m\n")));
        // A fixed JWKS location, or another one, is another source.
        let fixed = corp("    jwks_uri: \"https://corp/keys\"\n");
        assert!(!same_key_source(&base, &fixed));
        let moved = corp("    jwks_uri: \"https://corp/other-keys\"\n");
        assert!(!same_key_source(&fixed, &moved));
        let mut other_iss = (*base).clone();
        other_iss.issuer = "https://corp.example".into();
        assert!(!same_key_source(&base, &other_iss));
        let mut other_ca = (*base).clone();
        other_ca.ca_file = Some("/etc/ssl/other.pem".into());
        assert!(!same_key_source(&base, &other_ca));
    }

    #[test]
    fn fetch_settings_are_refresh_staleness_and_idp_calls() {
        let base = corp("");
        assert!(same_fetch_settings(&base, &corp("")));
        assert!(same_fetch_settings(
            &base,
            &corp("    required_claims: [email]\n")
        ));
        for changed in [
            "    refresh_interval: 1m\n",
            "    refresh_min: 1s\n",
            "    refresh_max: 2h\n",
            "    unknown_kid_cooldown: 1m\n",
            "    max_stale: 1h\n",
            "    timeout: 1s\n",
            "    retries: 9\n",
        ] {
            assert!(!same_fetch_settings(&base, &corp(changed)), "{changed}");
        }
    }

    #[test]
    fn a_reload_keeps_unchanged_key_sources_and_every_slot() {
        let a = auth(&config(Some(""), ""));
        let slot = a.issuer_index("corp");
        let keys = a.issuer_keys(slot).unwrap();
        a.reload(&config(Some("    required_claims: [email]\n"), ""))
            .unwrap();
        assert!(Arc::ptr_eq(&keys, &a.issuer_keys(slot).unwrap()), "kept");
        assert_eq!(a.issuer_config(slot).unwrap().required_claims, ["email"]);
        a.reload(&config(Some("    jwks_uri: \"https://corp/keys\"\n"), ""))
            .unwrap();
        assert!(!Arc::ptr_eq(&keys, &a.issuer_keys(slot).unwrap()), "new");
        // Removed, then back: the same slot, never another issuer's.
        a.reload(&config(None, "")).unwrap();
        assert!(a.issuer_config(slot).is_none());
        assert_eq!(a.issuers().len(), 1);
        a.reload(&config(Some(""), "")).unwrap();
        assert_eq!(a.issuer_index("corp"), slot);
        assert_eq!(a.slot_names().len(), 2);
        assert_eq!(a.issuer_config(slot).unwrap().name, "corp");
    }

    #[test]
    fn a_validation_per_algorithm_pins_issuer_audience_and_skew() {
        let v = validations(&corp(""));
        let algs: Vec<Algorithm> = v.iter().map(|(a, _)| *a).collect();
        assert_eq!(algs, [Algorithm::HS256, Algorithm::HS384]);
        for (alg, v) in &v {
            assert_eq!(v.algorithms, [*alg]);
            assert_eq!(v.leeway, 7);
            assert!(v.validate_nbf && v.validate_exp);
            let set = |s: &[&str]| Some(s.iter().map(|s| s.to_string()).collect());
            assert_eq!(v.iss, set(&["https://corp"]));
            assert_eq!(v.aud, set(&["api"]));
            for claim in ["exp", "iss", "aud"] {
                assert!(v.required_spec_claims.contains(claim), "{claim}");
            }
        }
    }

    #[test]
    fn kept_claims_are_what_headers_and_claim_rules_read() {
        let rules = "    authorize:\n      claims:\n        - { claim: org.id, equals: acme }\n        \
                     - { claim: email, equals: a }\n";
        let c = config(
            Some(""),
            &format!("{rules}auth:\n  identity_headers:\n    email: X-Email\n    sub: X-User\n"),
        );
        assert_eq!(&*kept_claims(&c), ["email", "sub", "org"]);
    }
}
