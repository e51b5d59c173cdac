//! Authorization per route: rules over the verified identity.
//!
//! A route's `authorize` lists conditions, combined with `match: all` (default) or `any`:
//! `scopes` (every listed scope present), `groups` / `roles` (at least one listed value
//! present), and `claims` rules (a claim at a dotted path `equals` a value, `contains` a value
//! (arrays, or substrings of strings), or is `one_of` several values). No conditions: allow.

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

/// A comparison on one claim.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOp {
    /// Equal to this value.
    Equals(Value),
    /// An array containing it, or a string containing it as a substring.
    Contains(Value),
    /// Equal to one of these.
    OneOf(Vec<Value>),
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
                match op {
                    ClaimOp::Equals(x) => v == x,
                    ClaimOp::OneOf(xs) => xs.iter().any(|x| v == x),
                    ClaimOp::Contains(x) => match (v, x) {
                        (Value::Array(a), x) => a.contains(x),
                        (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
                        _ => false,
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
            claims,
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
        };
        assert_eq!(
            p(vec![Rule::Scopes(vec!["api:read".into()])]).evaluate(&i),
            Decision::Allow
        );
        assert_eq!(
            p(vec![Rule::Scopes(vec!["api:read".into(), "admin".into()])]).evaluate(&i),
            Decision::Deny {
                scope: Some("api:read admin".into())
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
        assert!(holds(Rule::Claim(
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
                rules: rules.clone()
            }
            .evaluate(&i),
            Decision::Deny { .. }
        ));
        assert_eq!(
            Policy {
                mode: Match::Any,
                rules
            }
            .evaluate(&i),
            Decision::Allow
        );
        assert_eq!(Policy::default().evaluate(&i), Decision::Allow);
    }
}
