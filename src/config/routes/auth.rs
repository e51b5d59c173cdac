//! A route's authentication keys: `routes[i].auth`, `issuer` and `authorize` (the raw
//! structs, the typed [`Policy`] and their validation).
//!
//! Security notes: `authorize` needs an authenticated route; a claim rule needs exactly one
//! operator, and its text operators refuse the empty string (it would match every string).
//! A CEL rule (`allow_if[j]`, `deny_if[j]`) is compiled and checked here, so an expression
//! that cannot work is a config error naming its key and the line:column in the expression.

use std::sync::Arc;

use serde::Deserialize;

use super::super::ConfigError;
use super::super::issuer::IssuerConfig;
use super::AuthMode;
use crate::authz::cel::{CelRule, Kind, Limits, Mode};
use crate::authz::{ClaimOp, Match, Policy, Rule};
use crate::claims::ClaimPath;

/// Raw `routes[i].authorize`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthorize {
    #[serde(rename = "match")]
    pub mode: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    pub claims: Option<Vec<RawClaimRule>>,
    pub allow_if: Option<Vec<RawCelRule>>,
    pub deny_if: Option<Vec<RawCelRule>>,
}

/// Raw `routes[i].authorize.allow_if[j]` / `deny_if[j]`: an expression, or a map with its
/// name and mode.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawCelRule {
    /// Just the expression (enforced, named `allow_if[j]`).
    Expr(String),
    /// `{ name, expr, mode }`.
    Full(RawCelRuleMap),
}

/// The map form of a CEL rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCelRuleMap {
    pub name: Option<String>,
    pub expr: String,
    pub mode: Option<String>,
}

/// Raw `routes[i].authorize.claims[j]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimRule {
    pub claim: Option<String>,
    pub equals: Option<serde_json::Value>,
    pub contains: Option<serde_json::Value>,
    pub one_of: Option<Vec<serde_json::Value>>,
    pub starts_with: Option<String>,
    pub ends_with: Option<String>,
    pub email_domain: Option<String>,
}

/// A route's authentication settings, validated.
pub(super) struct RouteAuth {
    pub mode: AuthMode,
    pub issuer: Option<usize>,
    pub policy: Policy,
}

/// Validates a route's `auth`, `issuer` and `authorize`.
pub(super) fn route_auth(
    key: &str,
    mode: Option<&str>,
    issuer: Option<&str>,
    authorize: Option<&RawAuthorize>,
    issuers: &[Arc<IssuerConfig>],
    limits: Limits,
) -> Result<RouteAuth, ConfigError> {
    let mode = match mode {
        None | Some("none") => AuthMode::None,
        Some("bearer") => AuthMode::Bearer,
        Some("session") => AuthMode::Session,
        Some("either") => AuthMode::Either,
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{key}.auth"),
                format!("\"{other}\" is not one of bearer, session, either, none"),
            ));
        }
    };
    let issuer = match (mode, issuer) {
        (_, Some(name)) => Some(issuers.iter().position(|i| i.name == name).ok_or_else(|| {
            ConfigError::invalid(
                format!("{key}.issuer"),
                format!("no issuer named \"{name}\""),
            )
        })?),
        (AuthMode::Bearer, None) if issuers.is_empty() => {
            return Err(ConfigError::invalid(
                format!("{key}.auth"),
                "bearer needs at least one entry in issuers",
            ));
        }
        // One issuer: it is the route's. Several: any configured issuer is accepted.
        (AuthMode::Bearer, None) if issuers.len() == 1 => Some(0),
        (AuthMode::Session | AuthMode::Either, None) => match issuers {
            [_] => Some(0),
            [] => {
                return Err(ConfigError::invalid(
                    format!("{key}.auth"),
                    "session needs an entry in issuers (with a client_id)",
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    format!("{key}.issuer"),
                    "required with auth: session or either when several issuers are configured",
                ));
            }
        },
        _ => None,
    };
    if matches!(mode, AuthMode::Session | AuthMode::Either)
        && let Some(i) = issuer.and_then(|i| issuers.get(i))
        && i.client_id.is_none()
    {
        return Err(ConfigError::invalid(
            format!("issuers.{}.client_id", i.name),
            format!("required: {key} signs browsers in through this issuer"),
        ));
    }
    let policy = match authorize {
        None => Policy::default(),
        Some(a) => {
            if mode == AuthMode::None {
                return Err(ConfigError::invalid(
                    format!("{key}.authorize"),
                    "needs auth: bearer, session or either",
                ));
            }
            policy(&format!("{key}.authorize"), a, limits)?
        }
    };
    Ok(RouteAuth {
        mode,
        issuer,
        policy,
    })
}

fn policy(key: &str, a: &RawAuthorize, limits: Limits) -> Result<Policy, ConfigError> {
    let mode = match a.mode.as_deref() {
        None | Some("all") => Match::All,
        Some("any") => Match::Any,
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{key}.match"),
                format!("\"{other}\" is not all or any"),
            ));
        }
    };
    let mut rules = Vec::new();
    let list = |name: &str, v: &Option<Vec<String>>| -> Result<Option<Vec<String>>, ConfigError> {
        match v {
            None => Ok(None),
            Some(l) if l.is_empty() || l.iter().any(|s| s.is_empty()) => Err(ConfigError::invalid(
                format!("{key}.{name}"),
                "must list at least one non-empty value",
            )),
            Some(l) => Ok(Some(l.clone())),
        }
    };
    if let Some(s) = list("scopes", &a.scopes)? {
        rules.push(Rule::Scopes(s));
    }
    if let Some(g) = list("groups", &a.groups)? {
        rules.push(Rule::Groups(g));
    }
    if let Some(r) = list("roles", &a.roles)? {
        rules.push(Rule::Roles(r));
    }
    for (j, c) in a.claims.iter().flatten().enumerate() {
        let ck = format!("{key}.claims[{j}]");
        let path = c
            .claim
            .as_deref()
            .and_then(ClaimPath::parse)
            .ok_or_else(|| {
                ConfigError::invalid(
                    format!("{ck}.claim"),
                    "is required (a claim name or dotted path)",
                )
            })?;
        let op = claim_op(&ck, c)?;
        rules.push(Rule::Claim(path, op));
    }
    Ok(Policy {
        mode,
        rules,
        cel: cel_rules(key, a, limits)?.into(),
    })
}

/// `deny_if` then `allow_if`, compiled; names unique within the route.
fn cel_rules(key: &str, a: &RawAuthorize, limits: Limits) -> Result<Vec<CelRule>, ConfigError> {
    let mut out: Vec<CelRule> = Vec::new();
    let lists = [
        ("deny_if", Kind::DenyIf, &a.deny_if),
        ("allow_if", Kind::AllowIf, &a.allow_if),
    ];
    for (list, kind, entries) in lists {
        if entries.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::invalid(
                format!("{key}.{list}"),
                "must list at least one expression",
            ));
        }
        for (j, raw) in entries.iter().flatten().enumerate() {
            let rk = format!("{key}.{list}[{j}]");
            let (name, expr, mode) = match raw {
                RawCelRule::Expr(e) => (None, e, None),
                RawCelRule::Full(m) => (m.name.as_deref(), &m.expr, m.mode.as_deref()),
            };
            let mode = match mode {
                None | Some("enforce") => Mode::Enforce,
                Some("shadow") => Mode::Shadow,
                Some(other) => {
                    return Err(ConfigError::invalid(
                        format!("{rk}.mode"),
                        format!("\"{other}\" is not enforce or shadow"),
                    ));
                }
            };
            let name = match name.map(str::trim) {
                None => format!("{list}[{j}]"),
                Some(n) if valid_rule_name(n) => n.to_string(),
                Some(n) => {
                    return Err(ConfigError::invalid(
                        format!("{rk}.name"),
                        format!("\"{n}\" must be 1 to 64 letters, digits, or _ - . [ ]"),
                    ));
                }
            };
            if out.iter().any(|r| *r.name == *name) {
                return Err(ConfigError::invalid(
                    format!("{rk}.name"),
                    format!("\"{name}\" names another rule of this route"),
                ));
            }
            let expr_key = match raw {
                RawCelRule::Expr(_) => rk.clone(),
                RawCelRule::Full(_) => format!("{rk}.expr"),
            };
            let rule = CelRule::compile(name.into(), kind, mode, expr, limits)
                .map_err(|e| ConfigError::invalid(expr_key, e.to_string()))?;
            out.push(rule);
        }
    }
    Ok(out)
}

/// A rule name is a metric label value: short, plain characters.
fn valid_rule_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.[]".contains(&b))
}

/// The one operator of `routes[i].authorize.claims[j]` (meanings in `crate::authz`).
fn claim_op(ck: &str, c: &RawClaimRule) -> Result<ClaimOp, ConfigError> {
    let given = [
        c.equals.is_some(),
        c.contains.is_some(),
        c.one_of.is_some(),
        c.starts_with.is_some(),
        c.ends_with.is_some(),
        c.email_domain.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ConfigError::invalid(
            ck,
            "needs exactly one of equals, one_of, contains, starts_with, ends_with, email_domain",
        ));
    }
    let text = |op: &str, v: &str| {
        if v.is_empty() {
            Err(ConfigError::invalid(
                format!("{ck}.{op}"),
                "must not be empty (it would match every string)",
            ))
        } else {
            Ok(v.to_string())
        }
    };
    if let Some(v) = &c.equals {
        return Ok(ClaimOp::Equals(v.clone()));
    }
    if let Some(v) = &c.one_of {
        if v.is_empty() {
            return Err(ConfigError::invalid(
                format!("{ck}.one_of"),
                "must list at least one value",
            ));
        }
        return Ok(ClaimOp::OneOf(v.clone()));
    }
    if let Some(v) = &c.contains {
        if matches!(
            v,
            serde_json::Value::Array(_) | serde_json::Value::Object(_) | serde_json::Value::Null
        ) {
            return Err(ConfigError::invalid(
                format!("{ck}.contains"),
                "must be one string, number or boolean (an array claim must have an element equal to it; for several values use one rule each, or one_of for a single-valued claim)",
            ));
        }
        return Ok(ClaimOp::Contains(v.clone()));
    }
    if let Some(v) = &c.starts_with {
        return Ok(ClaimOp::StartsWith(text("starts_with", v)?));
    }
    if let Some(v) = &c.ends_with {
        return Ok(ClaimOp::EndsWith(text("ends_with", v)?));
    }
    let d = c.email_domain.as_deref().unwrap_or_default();
    let d = text("email_domain", d)?;
    if d.contains('@') || d.starts_with('.') || d.ends_with('.') || d.contains(char::is_whitespace)
    {
        return Err(ConfigError::invalid(
            format!("{ck}.email_domain"),
            format!("\"{d}\" is not a domain (e.g. corp.example.com, without @)"),
        ));
    }
    Ok(ClaimOp::EmailDomain(d.to_ascii_lowercase()))
}
