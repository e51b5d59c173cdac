//! The few HTML pages the browser flow answers with itself: sign-in failed (with a link to
//! start again, never an automatic redirect, so a failing IdP cannot cause a loop), sign-in
//! unavailable (503), signed out, and the sign-out confirmation (a POST form).
//!
//! Security notes: every dynamic part is HTML-escaped; pages are `no-store`, framed by nobody
//! (`X-Frame-Options: DENY`, CSP `frame-ancestors 'none'`) and load nothing.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};

/// A page with `title`, a paragraph `message`, and a link `link` labelled `label`.
pub fn page(
    status: StatusCode,
    title: &str,
    message: &str,
    link: Option<(&str, &str)>,
) -> Response<ProxyBody> {
    let link = link
        .map(|(href, label)| format!("<p><a href=\"{}\">{}</a></p>", escape(href), escape(label)))
        .unwrap_or_default();
    html(status, title, &format!("<p>{}</p>{link}", escape(message)))
}

/// The sign-out confirmation: a button that POSTs to `action` (the sign-out path with its
/// token), and a link back to `back`. Not cached, not framed; the referrer stays on this origin
/// (`same-origin`, not `no-referrer`, which would turn the form's `Origin` into `null`).
pub fn confirm_sign_out(action: &str, back: &str) -> Response<ProxyBody> {
    let body = format!(
        "<p>Do you want to sign out?</p>\
         <form method=\"post\" action=\"{}\"><button type=\"submit\">Sign out</button></form>\
         <p><a href=\"{}\">Stay signed in</a></p>",
        escape(action),
        escape(back),
    );
    let mut resp = html(StatusCode::OK, "Sign out?", &body);
    resp.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// A page with `title` and `body` (already escaped HTML).
fn html(status: StatusCode, title: &str, body: &str) -> Response<ProxyBody> {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
         <h1>{t}</h1>{body}</body></html>\n",
        t = escape(title),
    );
    let mut resp = Response::new(body::full(html));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    resp
}

/// Sign-in could not finish; `again` starts it over.
pub fn sign_in_failed(status: StatusCode, message: &str, again: &str) -> Response<ProxyBody> {
    page(
        status,
        "Sign-in failed",
        message,
        Some((again, "Sign in again")),
    )
}

/// Sessions cannot be used now (the session store is unavailable).
pub fn unavailable(again: &str) -> Response<ProxyBody> {
    let mut resp = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in temporarily unavailable",
        "Sign-in is temporarily unavailable. Please try again in a moment.",
        Some((again, "Try again")),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// A 302 to `location`, not cached.
pub fn redirect(location: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    } else {
        // Only URLs Portcullis built get here; one that is not a header value is a bug.
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// HTML-escapes `s`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_parts_are_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
