//! The static checks of a compiled expression, at config load: the size in nodes, every
//! identifier a known variable (or one a macro binds), claims read by name only, and a result
//! that can be boolean where the top of the expression shows it.
//!
//! What is checked statically is what the expression's shape tells without knowing any value:
//! `1 + 2`, `"x"`, `request.path` or `size(claims.groups)` at the top can never be a boolean,
//! so they are refused; `claims.admin` can (a claim's type is only known per request), so it is
//! checked when it runs, where a non-boolean is a runtime error that denies.

use cel::common::ast::{EntryExpr, Expr, LiteralValue, SourceInfo};
use cel::parser::Expression;

/// The variables an expression may read (see `authz::cel`).
pub const VARIABLES: [&str; 5] = ["claims", "request", "route", "client", "now"];

/// Type names an identifier may spell (`type(x) == string`).
const TYPE_NAMES: [&str; 11] = [
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// Functions and operators whose result is never a boolean: at the top of a rule, refused.
const NON_BOOL_CALLS: [&str; 13] = [
    "_+_",
    "_-_",
    "_*_",
    "_/_",
    "_%_",
    "-_",
    "size",
    "string",
    "int",
    "uint",
    "double",
    "bytes",
    "type",
];

/// The fields of `request`, all strings except `headers` (a map).
pub const REQUEST_FIELDS: [&str; 5] = ["method", "host", "path", "query", "headers"];

/// The bit of `headers` in [`Reads::request_fields`].
pub const HEADERS_BIT: u8 = 1 << 4;

/// Every field.
pub const ALL_FIELDS: u8 = 0b1_1111;

/// What a static check found wrong, and where (the node's id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The node the problem is at.
    pub id: u64,
    /// What is wrong.
    pub message: String,
}

/// What an expression reads, found by [`check`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reads {
    /// Top-level claim names, each once.
    pub claims: Vec<String>,
    /// `request` at all; `request.headers` in particular.
    pub request: bool,
    /// `request.headers`.
    pub headers: bool,
    /// The fields of `request` read, as bits in [`REQUEST_FIELDS`] order (all when the map
    /// itself is read).
    pub request_fields: u8,
    /// The header names read as `request.headers['name']`, `request.headers.name` or
    /// `'name' in request.headers` (lower-case: an upper-case one is refused), when every
    /// read is one of those; `None` when the map is read another way (every header is
    /// needed).
    pub header_names: Option<Vec<String>>,
    /// AST nodes.
    pub nodes: usize,
}

/// Walks `root`: identifiers, claim reads, node count.
pub fn check(root: &Expression) -> Result<Reads, Problem> {
    let mut walk = Walk {
        reads: Reads {
            header_names: Some(Vec::new()),
            ..Reads::default()
        },
        bound: Vec::new(),
    };
    walk.expr(root)?;
    if let Some(what) = never_bool(root) {
        return Err(Problem {
            id: root.id,
            message: format!("the result is {what}, never a boolean (true or false)"),
        });
    }
    Ok(walk.reads)
}

/// `line:column` (1-based, in characters) of node `id` in `source`; `1:1` if unknown.
pub fn position(info: &SourceInfo, id: u64, source: &str) -> (usize, usize) {
    let offset = info.offset_for(id).map_or(0, |(start, _)| start as usize);
    position_of_char(source, offset)
}

/// `line:column` (1-based) of the character at `offset` (in characters).
pub fn position_of_char(source: &str, offset: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for c in source.chars().take(offset) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// The recursive walk (the parser bounds the depth: 96 nested levels).
struct Walk<'e> {
    reads: Reads,
    /// Variables bound by the macros around the current node (`x` in `l.exists(x, ...)`).
    bound: Vec<&'e str>,
}

// === impl Walk ===

impl<'e> Walk<'e> {
    fn expr(&mut self, e: &'e Expression) -> Result<(), Problem> {
        self.reads.nodes += 1;
        if self.header(e)? {
            return Ok(());
        }
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => self.ident(e.id, name),
            Expr::Select(s) => self.select(e.id, s),
            Expr::Call(c) => {
                if c.func_name == "_[_]"
                    && c.target.is_none()
                    && let [base, key] = c.args.as_slice()
                    && let Expr::Ident(name) = &base.expr
                    && name == "claims"
                    && !self.is_bound(name)
                {
                    let Expr::Literal(LiteralValue::String(k)) = &key.expr else {
                        return Err(problem(key.id, CLAIMS_BY_NAME));
                    };
                    self.reads.nodes += 2;
                    self.claim(k);
                    return Ok(());
                }
                if let Some(t) = &c.target {
                    self.expr(t)?;
                }
                c.args.iter().try_for_each(|a| self.expr(a))
            }
            Expr::List(l) => l.elements.iter().try_for_each(|x| self.expr(x)),
            Expr::Map(m) => m.entries.iter().try_for_each(|x| match &x.expr {
                EntryExpr::MapEntry(me) => {
                    self.expr(&me.key)?;
                    self.expr(&me.value)
                }
                EntryExpr::StructField(f) => self.expr(&f.value),
            }),
            Expr::Struct(_) => Err(problem(e.id, "message literals are not supported")),
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range)?;
                self.expr(&c.accu_init)?;
                let before = self.bound.len();
                self.bound.push(&c.iter_var);
                if let Some(v) = &c.iter_var2 {
                    self.bound.push(v);
                }
                self.bound.push(&c.accu_var);
                let inner = [&c.loop_cond, &c.loop_step, &c.result]
                    .into_iter()
                    .try_for_each(|x| self.expr(x));
                self.bound.truncate(before);
                inner
            }
        }
    }

    fn ident(&mut self, id: u64, name: &str) -> Result<(), Problem> {
        if self.is_bound(name) || TYPE_NAMES.contains(&name) {
            return Ok(());
        }
        match name {
            "claims" => Err(problem(id, CLAIMS_BY_NAME)),
            "request" => {
                // The whole map (e.g. `"path" in request`): every field may be read.
                self.reads.request = true;
                self.reads.headers = true;
                self.reads.header_names = None;
                self.reads.request_fields = ALL_FIELDS;
                Ok(())
            }
            "route" | "client" | "now" => Ok(()),
            other => Err(problem(
                id,
                &format!(
                    "unknown variable \"{other}\" (known: {})",
                    VARIABLES.join(", ")
                ),
            )),
        }
    }

    /// A read of one header by a literal name: recorded (true), or refused when the name has
    /// upper-case letters.
    fn header(&mut self, e: &'e Expression) -> Result<bool, Problem> {
        let Some(name) = self.header_read(e) else {
            return Ok(false);
        };
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(problem(
                e.id,
                &format!(
                    "request.headers has lower-case names: \"{}\" never matches, write \"{}\"",
                    name,
                    name.to_ascii_lowercase()
                ),
            ));
        }
        self.reads.nodes += 3;
        self.reads.request = true;
        self.reads.headers = true;
        self.reads.request_fields |= HEADERS_BIT;
        if let Some(names) = &mut self.reads.header_names
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
        Ok(true)
    }

    /// `x.field`: a claim by name, a field of `request` or `client`, or a field of anything.
    fn select(&mut self, id: u64, s: &'e cel::common::ast::SelectExpr) -> Result<(), Problem> {
        if let Expr::Ident(base) = &s.operand.expr
            && !self.is_bound(base)
        {
            match base.as_str() {
                "claims" => {
                    self.reads.nodes += 1;
                    self.claim(&s.field);
                    return Ok(());
                }
                "request" => {
                    self.reads.nodes += 1;
                    return self.request_field(s.operand.id, &s.field);
                }
                "client" if s.field != "ip" => {
                    return Err(problem(id, "client has one field: client.ip"));
                }
                _ => {}
            }
        }
        self.expr(&s.operand)
    }

    /// The header name when `e` reads one header by a literal name.
    fn header_read(&self, e: &'e Expression) -> Option<&'e str> {
        match &e.expr {
            Expr::Select(s) if self.is_headers(&s.operand) => Some(s.field.as_str()),
            Expr::Call(c) if c.target.is_none() => match (c.func_name.as_str(), c.args.as_slice()) {
                ("_[_]", [map, key]) | ("@in", [key, map]) if self.is_headers(map) => match &key.expr {
                    Expr::Literal(LiteralValue::String(k)) => Some(&**k),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether `e` is `request.headers` (the variable, not a macro's).
    fn is_headers(&self, e: &Expression) -> bool {
        matches!(&e.expr, Expr::Select(s) if !s.test
            && s.field == "headers"
            && matches!(&s.operand.expr, Expr::Ident(r) if r == "request" && !self.is_bound(r)))
    }

    fn request_field(&mut self, id: u64, field: &str) -> Result<(), Problem> {
        if !REQUEST_FIELDS.contains(&field) {
            return Err(problem(
                id,
                &format!(
                    "request has no field \"{field}\" (it has {})",
                    REQUEST_FIELDS.join(", ")
                ),
            ));
        }
        self.reads.request = true;
        if let Some(i) = REQUEST_FIELDS.iter().position(|f| *f == field) {
            self.reads.request_fields |= 1 << i;
        }
        if field == "headers" {
            // The map itself (iterated, sized, indexed by a computed name): every header.
            self.reads.headers = true;
            self.reads.header_names = None;
        }
        Ok(())
    }

    fn claim(&mut self, name: &str) {
        if !self.reads.claims.iter().any(|c| c == name) {
            self.reads.claims.push(name.to_string());
        }
    }

    fn is_bound(&self, name: &str) -> bool {
        self.bound.contains(&name)
    }
}

const CLAIMS_BY_NAME: &str = "claims are read by name: claims.NAME or claims[\"NAME\"] (has(claims.NAME) tests for one)";

fn problem(id: u64, message: &str) -> Problem {
    Problem {
        id,
        message: message.to_string(),
    }
}

/// What the top of `e` is when its shape shows it can never be a boolean.
fn never_bool(e: &Expression) -> Option<&'static str> {
    match &e.expr {
        Expr::Literal(LiteralValue::Boolean(_)) => None,
        Expr::Literal(LiteralValue::Null) => Some("null"),
        Expr::Literal(LiteralValue::String(_)) => Some("a string"),
        Expr::Literal(LiteralValue::Bytes(_)) => Some("bytes"),
        Expr::Literal(LiteralValue::Int(_) | LiteralValue::UInt(_)) => Some("an integer"),
        Expr::Literal(LiteralValue::Double(_)) => Some("a number"),
        Expr::List(_) => Some("a list"),
        Expr::Map(_) | Expr::Struct(_) => Some("a map"),
        Expr::Ident(name) => match name.as_str() {
            "now" => Some("an integer"),
            "route" => Some("a string"),
            "request" | "client" | "claims" => Some("a map"),
            n if TYPE_NAMES.contains(&n) => Some("a type"),
            _ => None,
        },
        Expr::Select(s) if !s.test => match &s.operand.expr {
            Expr::Ident(base) if base == "request" && s.field == "headers" => Some("a map"),
            Expr::Ident(base) if base == "request" || base == "client" => Some("a string"),
            _ => None,
        },
        Expr::Call(c) if c.func_name == "_?_:_" => {
            c.args.get(1..).and_then(|branches| {
                branches
                    .iter()
                    .find_map(never_bool)
                    .filter(|_| branches.iter().all(|b| never_bool(b).is_some()))
            })
        }
        Expr::Call(c) if NON_BOOL_CALLS.contains(&c.func_name.as_str()) => Some(match c
            .func_name
            .as_str()
        {
            "size" | "int" | "uint" => "an integer",
            "string" => "a string",
            "double" => "a number",
            "bytes" => "bytes",
            "type" => "a type",
            _ => "a number or string (arithmetic)",
        }),
        // `l.map(x, ..)` and `l.filter(x, ..)` accumulate a list.
        Expr::Comprehension(c) if matches!(c.accu_init.expr, Expr::List(_)) => Some("a list"),
        Expr::Call(c)
            if c.target.is_some()
                && matches!(
                    c.func_name.as_str(),
                    "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" | "split"
                ) =>
        {
            Some("a string")
        }
        _ => None,
    }
}
