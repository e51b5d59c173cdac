//! The CEL values of the variables: claims (JSON, converted once per identity), the request
//! map (strings borrowed from the request, no copy unless a header has several values or is
//! not UTF-8), the client.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;
use http::HeaderMap;
use serde_json::{Map, Value};

use super::check::{HEADERS_BIT, REQUEST_FIELDS};
use super::{CelRule, Facts};

/// `claims`: a map of the (kept) claims.
pub fn claims_val(claims: &Map<String, Value>) -> Box<dyn Val> {
    let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = claims
        .iter()
        .map(|(k, v)| (CelMapKey::from(k.clone()), json_val(v)))
        .collect();
    Box::new(CelMap::from(map))
}

/// One JSON value: integers as `int` when they fit (as CEL literals are), else `uint`, else
/// `double`. serde_json bounds the nesting (128) when it parses, so the recursion is bounded.
fn json_val(v: &Value) -> Box<dyn Val> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => Box::new(CelString::from(s.clone())),
        Value::Array(a) => Box::new(CelList::from(a.iter().map(json_val).collect::<Vec<_>>())),
        Value::Object(o) => claims_val(o),
    }
}

/// `request`: method, host, path, query, and the headers `rules` read.
pub fn request_val<'a>(facts: &Facts<'a>, rules: &'a [CelRule]) -> Box<dyn Val + 'a> {
    // Only the fields some rule reads: a map entry (hashing, a box) per field otherwise.
    let fields = rules.iter().fold(0, |f, r| f | r.request_fields());
    let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> =
        HashMap::with_capacity(fields.count_ones() as usize);
    let strings = [facts.method, facts.host, facts.path, facts.query];
    for (i, (name, value)) in REQUEST_FIELDS.iter().zip(strings).enumerate() {
        if fields & (1 << i) != 0 {
            map.insert(CelMapKey::from(*name), Box::new(CelString::from(value)));
        }
    }
    let reading = || rules.iter().filter(|r| r.reads_request().1);
    if fields & HEADERS_BIT != 0 && reading().next().is_some() {
        let headers = if reading().any(|r| r.header_names().is_none()) {
            all_headers(facts.headers)
        } else {
            let names = reading().flat_map(|r| r.header_names().unwrap_or_default());
            named_headers(facts.headers, names)
        };
        map.insert(CelMapKey::from("headers"), headers);
    }
    Box::new(CelMap::from(map))
}

/// `request.headers`, every header: lower-case names; several copies joined with `", "`;
/// bytes that are not UTF-8 replaced (U+FFFD).
fn all_headers(headers: &HeaderMap) -> Box<dyn Val + '_> {
    let mut map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> =
        HashMap::with_capacity(headers.keys_len());
    for name in headers.keys() {
        if let Some(v) = joined(headers.get_all(name)) {
            map.insert(CelMapKey::from(name.as_str()), v);
        }
    }
    Box::new(CelMap::from(map))
}

/// `request.headers` with only `names` (lower-case; the ones the rules read by name): no
/// map entry, no copy for the others.
fn named_headers<'a>(
    headers: &'a HeaderMap,
    names: impl Iterator<Item = &'a String>,
) -> Box<dyn Val + 'a> {
    let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::new();
    for name in names {
        if let Some(v) = joined(headers.get_all(name.as_str())) {
            map.insert(CelMapKey::from(name.as_str()), v);
        }
    }
    Box::new(CelMap::from(map))
}

/// A header's copies as one string (borrowed when there is one, valid UTF-8).
fn joined(all: http::header::GetAll<'_, http::HeaderValue>) -> Option<Box<dyn Val + '_>> {
    let mut values = all.iter();
    let first = values.next()?;
    let mut text = String::from_utf8_lossy(first.as_bytes());
    for more in values {
        let t = text.to_mut();
        t.push_str(", ");
        t.push_str(&String::from_utf8_lossy(more.as_bytes()));
    }
    Some(Box::new(CelString::from(text)))
}

/// `client`: `ip`.
pub fn client_val<'a>(ip: IpAddr) -> Box<dyn Val + 'a> {
    let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(1);
    map.insert(
        CelMapKey::from("ip"),
        Box::new(CelString::from(Cow::Owned(ip.to_string()))),
    );
    Box::new(CelMap::from(map))
}
