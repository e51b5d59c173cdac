//! CEL rules: a route's `authorize.allow_if` and `authorize.deny_if` (the `cel` crate).
//!
//! An expression reads these variables (nothing else; an unknown one is a config error):
//! - `claims`: the verified token's or session's claims, by name (`claims.email`,
//!   `claims["cognito:groups"]`, `has(claims.email)`); numbers that fit are `int`
//! - `request`: `method`, `host` and `path` (canonical, as routing saw them), `query` (raw,
//!   without `?`, `""` if none) and `headers` (lowercase names; several copies of a header
//!   joined with `", "`)
//! - `route`: the route's name
//! - `client.ip`: the client's address as a string
//! - `now`: Unix seconds, an `int` (compares with `exp`, `iat`, `auth_time` as they are)
//!
//! Compilation happens once, at config load ([`CelRule::compile`]): the size limits, the
//! parser, then the static checks of `check`. Evaluation ([`Evaluation`]) builds one
//! context per request; the claims are converted to CEL values once per identity (kept in
//! `Identity::cel`, so a cached token or session converts nothing), the request map only
//! when some rule of the route reads `request`, with only the headers the rules name
//! (`request.headers['x-tenant']`), or all of them when one reads the map another way.
//!
//! Security notes: evaluation never panics on request data (the interpreter returns errors:
//! overflow, division by zero, a missing key, a wrong type); any error, and a result that
//! is not a boolean, is [`RuleResult::Error`], which an enforced rule turns into a denial.
//! Error reasons are fixed words, never a value from the request or the claims.

mod check;
mod native;
mod values;

use std::net::IpAddr;
use std::sync::{Arc, LazyLock, OnceLock};

use cel::common::types::{CelInt, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, Program, Value};
use http::HeaderMap;

use crate::claims::Identity;

/// Whether a rule allows when true or denies when true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `allow_if`: must hold.
    AllowIf,
    /// `deny_if`: denies when true.
    DenyIf,
}

/// Whether a rule's result counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// It decides.
    #[default]
    Enforce,
    /// Evaluated, counted and logged ("would deny"), never enforced.
    Shadow,
}

/// What one rule said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleResult {
    /// The rule lets the request through (`allow_if` true, `deny_if` false).
    Allow,
    /// The rule refuses it (`allow_if` false, `deny_if` true).
    Deny,
    /// Evaluation failed (the reason, a fixed word): an enforced rule denies.
    Error(&'static str),
}

/// Size limits of an expression (`auth.policy.max_expression_bytes` / `_nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest source, in bytes.
    pub max_bytes: usize,
    /// Most AST nodes (after macro expansion).
    pub max_nodes: usize,
}

/// A compiled `allow_if` / `deny_if` entry.
pub struct CelRule {
    /// `allow_if[0]` unless named; unique within its route.
    pub name: Arc<str>,
    /// allow_if or deny_if.
    pub kind: Kind,
    /// Enforced or shadow.
    pub mode: Mode,
    /// The expression as written.
    pub source: String,
    program: Program,
    reads: check::Reads,
    /// The top of the expression compiled for native evaluation, when it has a clause of a
    /// supported shape (see `native`).
    native: Option<native::Node>,
}

/// Why an expression was refused at load: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {line}:{column}: {message}")]
pub struct CelError {
    /// 1-based line in the expression.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// What a rule reads of the request, for one request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Upper-case method.
    pub method: &'a str,
    /// Canonical host (lower-case, no port).
    pub host: &'a str,
    /// Canonical path.
    pub path: &'a str,
    /// Raw query, without `?`.
    pub query: &'a str,
    /// The request's headers (names are lower-case in `http`).
    pub headers: &'a HeaderMap,
    /// The client's address.
    pub client_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
}

/// One request's evaluation context: the variables, built on first use and shared by every
/// rule of the route.
pub struct Evaluation<'a> {
    facts: &'a Facts<'a>,
    route: &'a str,
    identity: &'a Identity,
    /// The route's rules: which headers the request map needs.
    rules: &'a [CelRule],
    request: OnceLock<Box<dyn Val + 'a>>,
    client: OnceLock<Box<dyn Val + 'a>>,
}

/// The standard environment, built once (a context per request only borrows it).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 4096,
            max_nodes: 512,
        }
    }
}

// === impl RuleResult ===

impl RuleResult {
    /// The metric and log word: `allow`, `deny`, `error`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error(_) => "error",
        }
    }
}

// === impl CelRule ===

impl CelRule {
    /// Compiles and checks `source` (see the module docs).
    pub fn compile(
        name: Arc<str>,
        kind: Kind,
        mode: Mode,
        source: &str,
        limits: Limits,
    ) -> Result<Self, CelError> {
        if source.len() > limits.max_bytes {
            let chars = source
                .char_indices()
                .take_while(|(i, _)| *i < limits.max_bytes)
                .count();
            let (line, column) = check::position_of_char(source, chars);
            return Err(CelError {
                line,
                column,
                message: format!(
                    "the expression is {} bytes, longer than auth.policy.max_expression_bytes ({})",
                    source.len(),
                    limits.max_bytes
                ),
            });
        }
        let program = Program::compile(source).map_err(|e| parse_error(&e))?;
        let reads = check::check(program.expression()).map_err(|p| {
            let (line, column) = check::position(program.source_info(), p.id, source);
            CelError {
                line,
                column,
                message: p.message,
            }
        })?;
        if reads.nodes > limits.max_nodes {
            return Err(CelError {
                line: 1,
                column: 1,
                message: format!(
                    "the expression has {} nodes, more than auth.policy.max_expression_nodes ({})",
                    reads.nodes, limits.max_nodes
                ),
            });
        }
        let native = native::Node::compile(program.expression());
        Ok(Self {
            name,
            kind,
            mode,
            source: source.to_string(),
            program,
            reads,
            native,
        })
    }

    /// The top-level claims the expression reads (what an identity must keep).
    pub fn claims(&self) -> &[String] {
        &self.reads.claims
    }

    /// Whether it reads `request` (and its headers).
    pub fn reads_request(&self) -> (bool, bool) {
        (self.reads.request, self.reads.headers)
    }

    /// The fields of `request` it reads (bits in `check::REQUEST_FIELDS` order).
    pub fn request_fields(&self) -> u8 {
        self.reads.request_fields
    }

    /// The headers it reads by name (lower-case), when it reads no other way; `None` when it
    /// reads the whole map.
    pub fn header_names(&self) -> Option<&[String]> {
        self.reads.header_names.as_deref()
    }

    /// Evaluates the rule in `context` (see [`Evaluation::context`]) by the interpreter
    /// alone.
    pub fn evaluate(&self, context: &Context<'_, '_>) -> RuleResult {
        match self.program.execute(context) {
            Ok(Value::Bool(b)) => self.result(Ok(Some(b))),
            Ok(_) => self.result(Ok(None)),
            Err(e) => self.result(Err(reason(&e))),
        }
    }

    /// Evaluates the rule for `scope`: natively where its clauses allow (see `native`),
    /// else by the interpreter, in `scope`'s context built on first use. The same result
    /// as [`CelRule::evaluate`].
    pub fn evaluate_in(&self, scope: &Evaluation<'_>) -> RuleResult {
        let Some(node) = &self.native else {
            return self.evaluate(&scope.context());
        };
        let context = std::cell::OnceCell::new();
        let interpret = |e: &cel::parser::Expression| {
            native::interpret(e, context.get_or_init(|| scope.context()))
        };
        self.result(node.eval(scope, &interpret))
    }

    /// Whether the rule is evaluated natively (at least one clause), for tests and docs.
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    fn result(&self, outcome: native::Outcome) -> RuleResult {
        let truth = match outcome {
            Ok(Some(b)) => b,
            Ok(None) => return RuleResult::Error("not a boolean"),
            Err(reason) => return RuleResult::Error(reason),
        };
        match (self.kind, truth) {
            (Kind::AllowIf, true) | (Kind::DenyIf, false) => RuleResult::Allow,
            _ => RuleResult::Deny,
        }
    }
}

impl PartialEq for CelRule {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.kind == other.kind
            && self.mode == other.mode
            && self.source == other.source
    }
}

impl std::fmt::Debug for CelRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelRule")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("mode", &self.mode)
            .field("source", &self.source)
            .finish()
    }
}

// === impl Evaluation ===

impl<'a> Evaluation<'a> {
    /// The variables of one request on `route` by `identity`, for `rules` (the headers they
    /// read by name, or all of them if one reads the map otherwise).
    pub fn new(
        facts: &'a Facts<'a>,
        route: &'a str,
        identity: &'a Identity,
        rules: &'a [CelRule],
    ) -> Self {
        Self {
            facts,
            route,
            identity,
            rules,
            request: OnceLock::new(),
            client: OnceLock::new(),
        }
    }

    /// `claims`, converted once per identity.
    fn claims(&self) -> &dyn Val {
        self.identity
            .cel
            .get_or_init(|| values::claims_val(&self.identity.claims))
    }

    /// A context over these variables, for [`CelRule::evaluate`].
    pub fn context(&self) -> Context<'_, '_> {
        let mut context = Context::with_env(ENV.clone());
        context.set_variable_resolver(self);
        context
    }
}

impl VariableResolver for Evaluation<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        Some(match variable {
            "claims" => CowVal::Borrowed(self.claims()),
            "request" => CowVal::Borrowed(
                &**self
                    .request
                    .get_or_init(|| values::request_val(self.facts, self.rules)),
            ),
            "client" => CowVal::Borrowed(
                &**self
                    .client
                    .get_or_init(|| values::client_val(self.facts.client_ip)),
            ),
            "route" => CowVal::owned(CelString::from(self.route)),
            "now" => CowVal::owned(CelInt::from(self.facts.now)),
            _ => return None,
        })
    }
}

/// A parse error, with its position (the parser's line and column are 1-based).
fn parse_error(e: &cel::ParseErrors) -> CelError {
    let first = e.errors.first();
    let (line, column) = first.map_or((1, 1), |p| {
        (
            usize::try_from(p.pos.0).unwrap_or(1).max(1),
            usize::try_from(p.pos.1).unwrap_or(1).max(1),
        )
    });
    CelError {
        line,
        column,
        message: format!(
            "syntax error: {}",
            first.map_or("cannot parse", |p| p
                .msg
                .strip_prefix("Syntax error: ")
                .unwrap_or(&p.msg))
        ),
    }
}

/// A fixed word for an evaluation error (never the values it carries).
fn reason(e: &ExecutionError) -> &'static str {
    match e {
        ExecutionError::NoSuchKey(_) => "no such key",
        ExecutionError::UndeclaredReference(_) => "undeclared reference",
        ExecutionError::DivisionByZero(_) | ExecutionError::RemainderByZero(_) => {
            "division by zero"
        }
        ExecutionError::Overflow(..) => "overflow",
        ExecutionError::IndexOutOfBounds(_) => "index out of bounds",
        ExecutionError::NoSuchOverload(_)
        | ExecutionError::UnexpectedType { .. }
        | ExecutionError::ValuesNotComparable(..)
        | ExecutionError::UnsupportedBinaryOperator(..)
        | ExecutionError::UnsupportedTargetType { .. }
        | ExecutionError::UnsupportedKeyType(_)
        | ExecutionError::UnsupportedIndex(..) => "wrong type",
        _ => "evaluation error",
    }
}

#[cfg(test)]
mod native_tests;
#[cfg(test)]
mod tests;
