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
//! Security notes: `email_domain` trusts the IdP's `email` claim; pair it with
//! `{ claim: email_verified, equals: true }` where the IdP lets users set their address.

use serde_json::Value;

use crate::claims::{ClaimPath, Identity};

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
    },
}

// === impl Policy ===

impl Policy {
    /// Evaluates the rules for `id`.
    pub fn evaluate(&self, id: &Identity) -> Decision {
        if self.rules.is_empty() {
            return Decision::Allow;
        }
        let ok = match self.mode {
            Match::All => self.rules.iter().all(|r| r.holds(id)),
            Match::Any => self.rules.iter().any(|r| r.holds(id)),
        };
        if ok {
            Decision::Allow
        } else {
            let scope = self.rules.iter().find_map(|r| match r {
                Rule::Scopes(s) => Some(s.join(" ")),
                _ => None,
            });
            Decision::Deny { scope }
        }
    }
}

// === impl Rule ===

impl Rule {
    fn holds(&self, id: &Identity) -> bool {
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
