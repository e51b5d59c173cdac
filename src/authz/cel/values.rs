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

use super::Facts;

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

/// `request`: method, host, path, query, and the headers when `headers`.
pub fn request_val<'a>(facts: &Facts<'a>, headers: bool) -> Box<dyn Val + 'a> {
    let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(5);
    let mut put = |k: &'static str, v: &'a str| {
        map.insert(CelMapKey::from(k), Box::new(CelString::from(v)));
    };
    put("method", facts.method);
    put("host", facts.host);
    put("path", facts.path);
    put("query", facts.query);
    if headers {
        map.insert(CelMapKey::from("headers"), headers_val(facts.headers));
    }
    Box::new(CelMap::from(map))
}

/// `request.headers`: lower-case names; several copies joined with `", "`; bytes that are
/// not UTF-8 replaced (U+FFFD).
fn headers_val(headers: &HeaderMap) -> Box<dyn Val + '_> {
    let mut map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> =
        HashMap::with_capacity(headers.keys_len());
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            continue;
        };
        let mut text = String::from_utf8_lossy(first.as_bytes());
        for more in values {
            let t = text.to_mut();
            t.push_str(", ");
            t.push_str(&String::from_utf8_lossy(more.as_bytes()));
        }
        map.insert(
            CelMapKey::from(name.as_str()),
            Box::new(CelString::from(text)),
        );
    }
    Box::new(CelMap::from(map))
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
