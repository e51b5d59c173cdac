//! Native evaluation of the common shapes of a rule, without the interpreter.
//!
//! At load, the top of an expression is split along `&&` and `||` (as the parser nested
//! them) into clauses; a clause of one of these shapes is compiled into a [`Leaf`]:
//! - `request.F == 'LIT'`, `request.F != 'LIT'`, `request.F.startsWith('LIT')` (and
//!   `endsWith`, `contains`), for `F` one of `method`, `host`, `path`, `query`
//! - `request.headers['x'] == 'LIT'` / `!=` (and `request.headers.x`)
//! - `claims.a == LIT` / `!=` (any literal but bytes), `claims.a.startsWith('LIT')` (and
//!   `endsWith`, `contains`), `'LIT' in claims.a`
//!
//! Every other clause is kept as its expression and run by the interpreter. The `&&` and
//! `||` between clauses follow the interpreter's rules exactly (a false left side decides
//! `&&`; an error on one side is absorbed when the other side decides; an error on the right
//! side wins), and the leaves use the values and functions the interpreter would (the
//! claims' CEL values, `Val::equals`, `Container::contains`), so that a result and an error's
//! reason are the interpreter's: the differential tests in `tests.rs` check it.
//!
//! What this saves per request: the interpreter's dispatch by function name and its
//! temporaries, the `request` map (built only when a clause left to the interpreter reads
//! it), and for a string claim or a list of strings the claims' conversion to CEL values
//! (an identity's first request converts nothing when every clause is native).

use cel::common::ast::{CallExpr, Expr, LiteralValue};
use cel::common::types::{CelBool, CelString};
use cel::common::value::CowVal;
use cel::parser::Expression;
use cel::{Context, Value};


use super::Evaluation;
use super::check::REQUEST_FIELDS;

/// The outcome of a clause: a boolean, another value (`None`), or an error's reason.
pub type Outcome = Result<Option<bool>, &'static str>;

/// A rule's top, compiled.
#[derive(Debug)]
pub enum Node {
    /// `a && b`
    And(Box<Node>, Box<Node>),
    /// `a || b`
    Or(Box<Node>, Box<Node>),
    /// A clause evaluated natively.
    Leaf(Leaf),
    /// A clause the interpreter runs.
    Interpreted(Expression),
}

/// A clause of one of the supported shapes.
#[derive(Debug)]
pub enum Leaf {
    /// `request.F <op> 'LIT'` (`F` by its index in `REQUEST_FIELDS`).
    Request(usize, StrOp, String),
    /// `request.headers['name'] == 'LIT'` (`eq` false for `!=`).
    Header {
        /// Lower-case name.
        name: String,
        /// `==` (or `!=`).
        eq: bool,
        /// The literal.
        value: String,
    },
    /// `claims.a == LIT` (`eq` false for `!=`).
    ClaimEq(CelString<'static>, bool, LiteralValue),
    /// `claims.a.startsWith('LIT')` and the like (never `Eq`/`Ne`).
    ClaimStr(CelString<'static>, StrOp, String),
    /// `'LIT' in claims.a`.
    ClaimIn(CelString<'static>, LiteralValue),
}

/// A string comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `startsWith`
    StartsWith,
    /// `endsWith`
    EndsWith,
    /// `contains`
    Contains,
}

// === impl StrOp ===

impl StrOp {
    fn method(name: &str) -> Option<Self> {
        match name {
            "startsWith" => Some(Self::StartsWith),
            "endsWith" => Some(Self::EndsWith),
            "contains" => Some(Self::Contains),
            _ => None,
        }
    }

    fn apply(self, s: &str, lit: &str) -> bool {
        match self {
            Self::Eq => s == lit,
            Self::Ne => s != lit,
            Self::StartsWith => s.starts_with(lit),
            Self::EndsWith => s.ends_with(lit),
            Self::Contains => s.contains(lit),
        }
    }
}

// === impl Node ===

impl Node {
    /// The compiled form of `e`, or `None` when no clause of it has a native shape (the
    /// interpreter then runs the whole expression, as before).
    pub fn compile(e: &Expression) -> Option<Self> {
        let node = Self::of(e);
        node.has_leaf().then_some(node)
    }

    fn of(e: &Expression) -> Self {
        if let Expr::Call(c) = &e.expr
            && c.target.is_none()
            && let [l, r] = c.args.as_slice()
        {
            match c.func_name.as_str() {
                "_&&_" => return Self::And(Box::new(Self::of(l)), Box::new(Self::of(r))),
                "_||_" => return Self::Or(Box::new(Self::of(l)), Box::new(Self::of(r))),
                _ => {}
            }
        }
        leaf(e).map_or_else(|| Self::Interpreted(e.clone()), Self::Leaf)
    }

    fn has_leaf(&self) -> bool {
        match self {
            Self::And(l, r) | Self::Or(l, r) => l.has_leaf() || r.has_leaf(),
            Self::Leaf(_) => true,
            Self::Interpreted(_) => false,
        }
    }

    /// Evaluates the node; `interpret` runs a clause left to the interpreter.
    pub fn eval(&self, scope: &Evaluation<'_>, interpret: &dyn Fn(&Expression) -> Outcome) -> Outcome {
        match self {
            Self::And(l, r) => {
                let left = as_bool(l.eval(scope, interpret));
                if left == Ok(false) {
                    return Ok(Some(false));
                }
                match (left, r.eval(scope, interpret)?) {
                    (Ok(_), Some(right)) => Ok(Some(right)),
                    (Err(_), Some(false)) => Ok(Some(false)),
                    (Err(e), _) => Err(e),
                    (Ok(_), None) => Err("wrong type"),
                }
            }
            Self::Or(l, r) => {
                let left = as_bool(l.eval(scope, interpret));
                if left == Ok(true) {
                    return Ok(Some(true));
                }
                match (left, r.eval(scope, interpret)?) {
                    (Ok(_), Some(right)) => Ok(Some(right)),
                    (Err(_), Some(true)) => Ok(Some(true)),
                    (Err(e), _) => Err(e),
                    (Ok(_), None) => Err("wrong type"),
                }
            }
            Self::Leaf(leaf) => leaf.eval(scope),
            Self::Interpreted(e) => interpret(e),
        }
    }
}

/// The interpreter's `try_bool`: a non-boolean is a type error.
fn as_bool(o: Outcome) -> Result<bool, &'static str> {
    o.and_then(|b| b.ok_or("wrong type"))
}

/// Runs `e` in the interpreter.
pub fn interpret(e: &Expression, context: &Context<'_, '_>) -> Outcome {
    match Value::resolve_val(e, context) {
        Ok(v) => Ok(v.downcast_ref::<CelBool>().map(|b| *b.inner())),
        Err(e) => Err(super::reason(&e)),
    }
}

// === impl Leaf ===

impl Leaf {
    /// Evaluates the clause over `scope`'s claims and request.
    pub fn eval(&self, scope: &Evaluation<'_>) -> Outcome {
        match self {
            Self::Request(field, op, lit) => {
                let facts = scope.facts;
                let s = [facts.method, facts.host, facts.path, facts.query]
                    .get(*field)
                    .copied()
                    .unwrap_or_default();
                Ok(Some(op.apply(s, lit)))
            }
            Self::Header { name, eq, value } => {
                let mut all = scope.facts.headers.get_all(name.as_str()).iter();
                let first = all.next().ok_or("no such key")?;
                let mut text = String::from_utf8_lossy(first.as_bytes());
                for more in all {
                    let t = text.to_mut();
                    t.push_str(", ");
                    t.push_str(&String::from_utf8_lossy(more.as_bytes()));
                }
                Ok(Some((*text == **value) == *eq))
            }
            Self::ClaimEq(key, eq, lit) => {
                if let LiteralValue::String(l) = lit
                    && let Some(s) = json_claim(scope, key)?.as_str()
                {
                    return Ok(Some((s == l.inner()) == *eq));
                }
                let v = claim(scope, key)?;
                let lit = lit.to_val();
                Ok(Some(v.as_ref().equals(lit.as_ref()) == *eq))
            }
            Self::ClaimStr(key, op, lit) => {
                if let Some(s) = json_claim(scope, key)?.as_str() {
                    return Ok(Some(op.apply(s, lit)));
                }
                let v = claim(scope, key)?;
                let s = v.as_ref().downcast_ref::<CelString>().ok_or("wrong type")?;
                Ok(Some(op.apply(s.inner(), lit)))
            }
            Self::ClaimIn(key, lit) => {
                if let LiteralValue::String(l) = lit
                    && let Some(list) = json_claim(scope, key)?.as_array()
                    && list.iter().all(serde_json::Value::is_string)
                {
                    return Ok(Some(list.iter().any(|v| v.as_str() == Some(l.inner()))));
                }
                let v = claim(scope, key)?;
                let container = v.as_ref().as_container().ok_or("wrong type")?;
                let lit = lit.to_val();
                container
                    .contains(lit.as_ref())
                    .map(Some)
                    .map_err(|e| super::reason(&e))
            }
        }
    }
}

/// The claim `key` as JSON, read before any conversion: strings and lists of strings are
/// compared as they are (a fresh identity converts nothing), anything else goes through its
/// CEL value. A missing claim is the interpreter's error.
fn json_claim<'s>(
    scope: &'s Evaluation<'_>,
    key: &CelString<'static>,
) -> Result<&'s serde_json::Value, &'static str> {
    scope.identity.claims.get(key.inner()).ok_or("no such key")
}

/// The claim `key` (as `claims.key` reads it).
fn claim<'s>(
    scope: &'s Evaluation<'_>,
    key: &CelString<'static>,
) -> Result<CowVal<'s, 's>, &'static str> {
    let map = scope.claims().as_indexer().ok_or("wrong type")?;
    map.get(key).map_err(|e| super::reason(&e))
}

/// The leaf `e` compiles to, if it has a supported shape.
fn leaf(e: &Expression) -> Option<Leaf> {
    let Expr::Call(c) = &e.expr else {
        return None;
    };
    match (c.func_name.as_str(), &c.target, c.args.as_slice()) {
        ("_==_" | "_!=_", None, [lhs, rhs]) => {
            let eq = c.func_name == "_==_";
            compare(lhs, rhs, eq)
        }
        ("@in", None, [lit, container]) => {
            let key = claim_name(container)?;
            match &lit.expr {
                Expr::Literal(l @ LiteralValue::String(_)) => Some(Leaf::ClaimIn(key, l.clone())),
                _ => None,
            }
        }
        (name, Some(target), [arg]) => string_method(name, target, arg),
        _ => None,
    }
}

/// `x == LIT` / `x != LIT` for a request field, a header or a claim.
fn compare(lhs: &Expression, rhs: &Expression, eq: bool) -> Option<Leaf> {
    let Expr::Literal(lit) = &rhs.expr else {
        return None;
    };
    if let Some(key) = claim_name(lhs) {
        return (!matches!(lit, LiteralValue::Bytes(_))).then(|| Leaf::ClaimEq(key, eq, lit.clone()));
    }
    let LiteralValue::String(s) = lit else {
        return None;
    };
    let value = s.inner().to_string();
    if let Some(field) = request_field(lhs) {
        let op = if eq { StrOp::Eq } else { StrOp::Ne };
        return Some(Leaf::Request(field, op, value));
    }
    header_name(lhs).map(|name| Leaf::Header { name, eq, value })
}

/// `target.startsWith('LIT')` and the like, on a request field or a claim.
fn string_method(name: &str, target: &Expression, arg: &Expression) -> Option<Leaf> {
    let op = StrOp::method(name)?;
    let Expr::Literal(LiteralValue::String(s)) = &arg.expr else {
        return None;
    };
    let lit = s.inner().to_string();
    if let Some(key) = claim_name(target) {
        return Some(Leaf::ClaimStr(key, op, lit));
    }
    request_field(target).map(|field| Leaf::Request(field, op, lit))
}

/// `a` when `e` is `claims.a`.
fn claim_name(e: &Expression) -> Option<CelString<'static>> {
    match &e.expr {
        Expr::Select(s) if !s.test && is_ident(&s.operand, "claims") => {
            Some(CelString::from(s.field.clone()))
        }
        _ => None,
    }
}

/// The index in `REQUEST_FIELDS` when `e` is `request.F` for a string field.
fn request_field(e: &Expression) -> Option<usize> {
    match &e.expr {
        Expr::Select(s) if !s.test && is_ident(&s.operand, "request") => REQUEST_FIELDS
            .iter()
            .take(4)
            .position(|f| *f == s.field),
        _ => None,
    }
}

/// The name when `e` is `request.headers['name']` or `request.headers.name` (lower-case:
/// the static check refuses another).
fn header_name(e: &Expression) -> Option<String> {
    let (map, name) = match &e.expr {
        Expr::Select(s) if !s.test => (&*s.operand, s.field.clone()),
        Expr::Call(CallExpr {
            func_name,
            target: None,
            args,
        }) if func_name == "_[_]" => match args.as_slice() {
            [map, key] => match &key.expr {
                Expr::Literal(LiteralValue::String(k)) => (map, k.inner().to_string()),
                _ => return None,
            },
            _ => return None,
        },
        _ => return None,
    };
    let is_headers = matches!(&map.expr, Expr::Select(s) if !s.test
        && s.field == "headers"
        && is_ident(&s.operand, "request"));
    (is_headers && !name.bytes().any(|b| b.is_ascii_uppercase())).then_some(name)
}

fn is_ident(e: &Expression, name: &str) -> bool {
    matches!(&e.expr, Expr::Ident(n) if n == name)
}
