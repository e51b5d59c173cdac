//! The JWKS response: the public keys of the assertion, on an own path of the proxy
//! listeners (any host, never routed) and on the admin listener, with
//! `Cache-Control: public, max-age=<auth.assertion.jwks_max_age>`.
//!
//! Security notes: public keys only; GET and HEAD only (the proxy answers anything else with
//! 405 before it could reach a route).

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};

use super::KeySet;
use crate::body::{self, ProxyBody};

/// Methods the JWKS path answers.
pub const ALLOW: &str = "GET, HEAD";

/// Whether `method` may fetch the JWKS.
pub fn allows(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The JWKS of `keys` (no body for HEAD).
pub fn response(keys: &KeySet, method: &Method) -> Response<ProxyBody> {
    let body = if method == Method::HEAD {
        body::empty()
    } else {
        body::full(keys.jwks().clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(keys.jwks().len()));
    if let Ok(v) = HeaderValue::try_from(format!(
        "public, max-age={}",
        keys.max_age().as_secs()
    )) {
        h.insert(CACHE_CONTROL, v);
    }
    resp
}
