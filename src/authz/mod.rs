//! Authorization per route: rules over the verified identity.
//!
//! A route's `authorize` lists conditions, combined with `match: all` (default) or `any`:
//! `scopes` (every listed scope present), `groups` / `roles` (at least one listed value
//! present), and `claims` rules on the claim at a dotted path. No conditions: allow.
//!
//! Claim operators (every comparison is exact and case-sensitive unless said otherwise; a
//! missing claim never matches; types must agree: `5` is not `"5"`, numbers compare by value so
//! `5` is `5.0`):
//! - `equals: v`: the claim is `v`.
//! - `one_of: [v, ...]`: the claim is one of them.
//! - `contains: v`: an array claim has an element equal to `v`; a single (non-array) claim is
//!   treated as a list of one, so it must equal `v`. Never a substring test.
//! - `starts_with: s` / `ends_with: s`: a string claim (or any string element of an array
//!   claim) starts / ends with `s`, byte for byte. `ends_with: corp.com` also matches
//!   `evilcorp.com`: for e-mail domains use `email_domain`.
//! - `email_domain: d`: a string claim (or any string element of an array) has the form
//!   `local@domain` with a non-empty local part and, after the last `@`, exactly the domain
//!   `d`, ASCII case-insensitive (no subdomains, no Unicode case folding).
//!
//! CEL rules (`allow_if` / `deny_if`, see [`cel`]) sit next to these: a `deny_if` that is
//! true (or fails) denies, whatever the rest says, and is evaluated first; `allow_if` rules
//! combine with the claim rules under the same `match`: with `all` every one must hold, with
//! `any` one must (evaluated in order until one holds). An enforced CEL rule that fails at
//! run time (missing claim, wrong type, not a boolean) denies the request. Shadow rules are
//! evaluated on every authorized-or-not request that reached authorization, reported, and
//! never change the decision.
//!
//! Security notes: `email_domain` trusts the IdP's `email` claim; pair it with
//! `{ claim: email_verified, equals: true }` where the IdP lets users set their address.

pub mod cel;

use std::sync::Arc;

use serde_json::Value;

use crate::claims::{ClaimPath, Identity};
use self::cel::{CelRule, Evaluation, Facts, Kind, Mode, RuleResult};

/// How the conditions combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Match {
    /// Every condition must hold.
    #[default]
    All,
    /// At least one must hold.
    Any,
}

/// A comparison on one claim (see the module docs for the exact meaning).
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOp {
    /// Equal to this value.
    Equals(Value),
    /// An array with an element equal to it, or a non-array claim equal to it.
    Contains(Value),
    /// Equal to one of these.
    OneOf(Vec<Value>),
    /// A string (or a string element of an array) starting with this (non-empty).
    StartsWith(String),
    /// A string (or a string element of an array) ending with this (non-empty).
    EndsWith(String),
    /// An address `local@domain` whose domain is exactly this (stored ASCII-lowercase).
    EmailDomain(String),
}

/// One condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// All these scopes.
    Scopes(Vec<String>),
    /// One of these groups.
    Groups(Vec<String>),
    /// One of these roles.
    Roles(Vec<String>),
    /// A claim comparison.
    Claim(ClaimPath, ClaimOp),
}

/// A route's rules.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    /// How rules combine.
    pub mode: Match,
    /// The rules.
    pub rules: Vec<Rule>,
    /// `allow_if` and `deny_if`, in that order of the file (deny_if evaluated first).
    pub cel: Arc<[CelRule]>,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward.
    Allow,
    /// 403; `scope` lists the scopes the route asks for (for `WWW-Authenticate`).
    Deny {
        /// Required scopes, space-separated, if the route has any.
        scope: Option<String>,
        /// The rule that decided (for the access log and `explain`).
        rule: Decider,
    },
}

/// Which rule refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    /// A claim rule (`scopes`, `groups`, `roles`, `claims`) under `match: all`, or
    /// `authorize` when none held under `match: any`.
    Fixed(&'static str),
    /// A CEL rule, by name.
    Cel(Arc<str>),
}

// === impl Decider ===

impl Decider {
    /// The rule's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Fixed(n) => n,
            Self::Cel(n) => n,
        }
    }
}

/// Evaluates enforced `allow_if` rule `i` given the refusal so far (`None` when it was not
/// evaluated).
type AllowIfEval<'a> = dyn FnMut(usize, &CelRule, &Option<Decider>) -> Option<RuleResult> + 'a;

/// Evaluate every rule (for `explain`) or stop at the first enforced refusal (serving).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thoroughness {
    /// Stop at the first enforced refusal; shadow rules are evaluated anyway.
    Serve,
    /// Every rule, each reported.
    Explain,
}

// === impl Policy ===

impl Policy {
    /// Whether the route has any rule (claim or CEL, enforced or shadow).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.cel.is_empty()
    }

    /// Evaluates the claim rules only (no CEL): a route without CEL rules, and tests.
    pub fn evaluate(&self, id: &Identity) -> Decision {
        self.claim_rules(id, Thoroughness::Serve, &mut |_, _, _| None)
            .map_or(Decision::Allow, |rule| self.deny(rule))
    }

    /// Evaluates every rule for `id` making the request `facts` on `route`; `report` is
    /// told each CEL rule's result as it is evaluated.
    pub fn decide(
        &self,
        id: &Identity,
        facts: &Facts<'_>,
        route: &str,
        how: Thoroughness,
        report: &mut dyn FnMut(usize, &CelRule, RuleResult),
    ) -> Decision {
        if self.cel.is_empty() {
            return self
                .claim_rules(id, how, &mut |_, _, _| None)
                .map_or(Decision::Allow, |rule| self.deny(rule));
        }
        let scope = Evaluation::new(facts, route, id, &self.cel);
        let mut denied: Option<Decider> = None;
        let mut eval = |i: usize, r: &CelRule, denied: &Option<Decider>| -> Option<RuleResult> {
            let wanted = r.mode == Mode::Shadow || denied.is_none() || how == Thoroughness::Explain;
            wanted.then(|| {
                let result = r.evaluate_in(&scope);
                report(i, r, result);
                result
            })
        };
        for (i, r) in self.cel.iter().enumerate() {
            if r.kind != Kind::DenyIf {
                continue;
            }
            if let Some(result) = eval(i, r, &denied)
                && r.mode == Mode::Enforce
                && result != RuleResult::Allow
                && denied.is_none()
            {
                denied = Some(Decider::Cel(r.name.clone()));
            }
        }
        if denied.is_none() || how == Thoroughness::Explain {
            let refused = self.claim_rules(id, how, &mut |i, r, d| eval(i, r, d));
            denied = denied.or(refused);
        }
        // Shadow allow_if rules are evaluated whatever the decision.
        for (i, r) in self.cel.iter().enumerate() {
            if r.kind == Kind::AllowIf && r.mode == Mode::Shadow {
                let _ = eval(i, r, &denied);
            }
        }
        denied.map_or(Decision::Allow, |rule| self.deny(rule))
    }

    /// The claim rules and the enforced `allow_if` rules under `match`: the rule that
    /// refused, if one did. `cel` evaluates an `allow_if` rule (given the refusal so far).
    fn claim_rules(
        &self,
        id: &Identity,
        how: Thoroughness,
        cel: &mut AllowIfEval<'_>,
    ) -> Option<Decider> {
        let enforced = || {
            self.cel
                .iter()
                .enumerate()
                .filter(|(_, r)| r.kind == Kind::AllowIf && r.mode == Mode::Enforce)
        };
        let mut refused: Option<Decider> = None;
        match self.mode {
            Match::All => {
                for r in &self.rules {
                    if refused.is_none() && !r.holds(id) {
                        refused = Some(Decider::Fixed(r.label()));
                    }
                }
                for (i, r) in enforced() {
                    if let Some(result) = cel(i, r, &refused)
                        && result != RuleResult::Allow
                        && refused.is_none()
                    {
                        refused = Some(Decider::Cel(r.name.clone()));
                    }
                }
                refused
            }
            Match::Any => {
                if self.rules.is_empty() && enforced().next().is_none() {
                    return None;
                }
                let mut held = self.rules.iter().any(|r| r.holds(id));
                for (i, r) in enforced() {
                    if held && how == Thoroughness::Serve {
                        break;
                    }
                    match cel(i, r, &refused) {
                        Some(RuleResult::Allow) => held = true,
                        // A failing rule denies, whatever the others say.
                        Some(RuleResult::Error(_)) if refused.is_none() => {
                            refused = Some(Decider::Cel(r.name.clone()));
                        }
                        _ => {}
                    }
                }
                refused.or((!held).then_some(Decider::Fixed("authorize")))
            }
        }
    }

    fn deny(&self, rule: Decider) -> Decision {
        let scope = self.rules.iter().find_map(|r| match r {
            Rule::Scopes(s) => Some(s.join(" ")),
            _ => None,
        });
        Decision::Deny { scope, rule }
    }
}

// === impl Rule ===

impl Rule {
    /// The rule's name in logs: its key.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Scopes(_) => "scopes",
            Self::Groups(_) => "groups",
            Self::Roles(_) => "roles",
            Self::Claim(..) => "claims",
        }
    }

    /// Whether `id` satisfies the rule.
    pub fn holds(&self, id: &Identity) -> bool {
        match self {
            Self::Scopes(want) => want.iter().all(|w| id.scopes.iter().any(|s| s == w)),
            Self::Groups(want) => want.iter().any(|w| id.groups.iter().any(|g| g == w)),
            Self::Roles(want) => want.iter().any(|w| id.roles.iter().any(|r| r == w)),
            Self::Claim(path, op) => {
                let Some(v) = path.get(&id.claims) else {
                    return false;
                };
                op.holds(v)
            }
        }
    }
}

// === impl ClaimOp ===

impl ClaimOp {
    /// Whether the claim value `v` satisfies the operator.
    pub fn holds(&self, v: &Value) -> bool {
        match self {
            Self::Equals(x) => json_eq(v, x),
            Self::OneOf(xs) => xs.iter().any(|x| json_eq(v, x)),
            Self::Contains(x) => match v {
                Value::Array(a) => a.iter().any(|e| json_eq(e, x)),
                single => json_eq(single, x),
            },
            Self::StartsWith(p) => any_string(v, |s| s.starts_with(p.as_str())),
            Self::EndsWith(p) => any_string(v, |s| s.ends_with(p.as_str())),
            Self::EmailDomain(d) => any_string(v, |s| {
                s.rsplit_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty() && domain.eq_ignore_ascii_case(d)
                })
            }),
        }
    }
}

/// A string claim, or any string element of an array claim, satisfies `f`.
fn any_string(v: &Value, f: impl Fn(&str) -> bool) -> bool {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().any(|e| e.as_str().is_some_and(&f)),
        _ => false,
    }
}

/// JSON equality, with numbers compared by value (`5` equals `5.0`; integers exactly).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else if x.is_f64() || y.is_f64() {
                x.as_f64() == y.as_f64()
            } else {
                false
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, xv)| y.get(k).is_some_and(|yv| json_eq(xv, yv)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests;
