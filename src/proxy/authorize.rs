//! The authorization step: a route's `authorize` rules over the identity and the request,
//! with each CEL rule's result counted (`portcullis_authz_rule_results_total`) and a shadow
//! rule that would deny logged.
//!
//! Security notes: the log lines name the route, the rule and a fixed reason, never a claim
//! or header value; the 403 itself says nothing about which rule refused.

use std::net::IpAddr;

use http::{HeaderValue, request};
use prometheus::IntCounter;

use crate::authn::Identity;
use crate::authz::cel::{CelRule, Facts, Mode, RuleResult};
use crate::authz::{Decision, Policy, Thoroughness};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::routing::Route;
use crate::routing::target::Target;

/// The `result` labels, enforced then shadow: allow, deny, error.
const RESULTS: [&str; 6] = [
    "allow",
    "deny",
    "error",
    "shadow_allow",
    "shadow_deny",
    "shadow_error",
];

/// What authorization reads of a request besides its head.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    /// The canonical target (host, path, query).
    pub target: &'a Target,
    /// The client's address (`client.ip`).
    pub client_ip: IpAddr,
    /// The request's id, for the log lines of its rules.
    pub request_id: &'a HeaderValue,
}

/// The rule series of every route, resolved once per handler: by route index, by the rule's
/// index in its policy, by result.
#[derive(Default)]
pub struct RuleSeries(Vec<Vec<[IntCounter; 6]>>);

// === impl RuleSeries ===

impl RuleSeries {
    /// The series of `routes` (names and policies in configuration order): bounded by the
    /// configured rules.
    pub fn new<'a>(metrics: &Metrics, routes: impl Iterator<Item = (&'a str, &'a Policy)>) -> Self {
        Self(
            routes
                .map(|(route, policy)| {
                    policy
                        .cel
                        .iter()
                        .map(|rule| {
                            RESULTS.map(|result| {
                                metrics.authz_rule_results.with_label_values(&[
                                    route,
                                    &*rule.name,
                                    result,
                                ])
                            })
                        })
                        .collect()
                })
                .collect(),
        )
    }

    /// Counts `result` of rule `i` of `route`.
    fn count(&self, route: &Route, i: usize, rule: &CelRule, result: RuleResult) {
        let slot = result_slot(rule.mode, result);
        if let Some(counter) = self
            .0
            .get(route.index)
            .and_then(|r| r.get(i))
            .and_then(|c| c.get(slot))
        {
            counter.inc();
        }
    }
}

/// The index in [`RESULTS`] of `result` for a rule in `mode`.
fn result_slot(mode: Mode, result: RuleResult) -> usize {
    let base = match result {
        RuleResult::Allow => 0,
        RuleResult::Deny => 1,
        RuleResult::Error(_) => 2,
    };
    if mode == Mode::Shadow { base + 3 } else { base }
}

/// The metric and log word of `result` for a rule in `mode` (`shadow_deny`, ...).
pub fn result_label(mode: Mode, result: RuleResult) -> &'static str {
    RESULTS[result_slot(mode, result)]
}

/// Authorizes `id` for `route`: `Ok` to go on, or the 403 with the rule that refused.
pub fn authorize(
    series: &RuleSeries,
    route: &Route,
    id: &Identity,
    head: &request::Parts,
    view: &RequestView<'_>,
    now: impl FnOnce() -> i64,
) -> Result<(), ProxyError> {
    let decision = if route.policy.cel.is_empty() {
        route.policy.evaluate(id)
    } else {
        let facts = Facts {
            method: head.method.as_str(),
            host: view.target.host(),
            path: view.target.path(),
            query: view.target.path_and_query().query().unwrap_or(""),
            headers: &head.headers,
            client_ip: view.client_ip,
            // Read only for a route with CEL rules.
            now: now(),
        };
        let request_id = view.request_id.to_str().unwrap_or("-");
        route.policy.decide(
            id,
            &facts,
            &route.name,
            Thoroughness::Serve,
            &mut |i, rule, result| {
                series.count(route, i, rule, result);
                log(route, rule, result, request_id);
            },
        )
    };
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny { scope, rule } => Err(ProxyError::Forbidden {
            scope,
            rule: Some(rule),
        }),
    }
}

/// A shadow rule that would deny, or any rule that failed, gets a line of its own.
fn log(route: &Route, rule: &CelRule, result: RuleResult, request_id: &str) {
    let route = &*route.name;
    let name = &*rule.name;
    match (rule.mode, result) {
        (Mode::Shadow, RuleResult::Deny) => tracing::info!(
            target: "portcullis::authz",
            route, rule = name, request_id, result = "would deny",
            "shadow rule would deny"
        ),
        (Mode::Shadow, RuleResult::Error(reason)) => tracing::info!(
            target: "portcullis::authz",
            route, rule = name, request_id, result = "would deny", reason,
            "shadow rule failed: would deny"
        ),
        (Mode::Enforce, RuleResult::Error(reason)) => tracing::info!(
            target: "portcullis::authz",
            route, rule = name, request_id, result = "error", reason,
            "rule failed: request denied"
        ),
        _ => {}
    }
}
