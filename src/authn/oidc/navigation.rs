//! Whether an unauthenticated request is a browser navigation (answered with a 302 to sign
//! in) or anything else (answered with 401 and `WWW-Authenticate`).
//!
//! | method      | `Accept` has `text/html` | `Sec-Fetch-Mode`      | `X-Requested-With` | answer |
//! |-------------|--------------------------|-----------------------|--------------------|--------|
//! | GET or HEAD | yes                      | absent or `navigate`  | absent             | 302 to sign in |
//! | GET or HEAD | yes                      | anything else (`cors`, `no-cors`, `same-origin`, `websocket`) | any | 401 |
//! | GET or HEAD | yes                      | any                   | present            | 401 |
//! | GET or HEAD | no (absent, `*/*`, JSON) | any                   | any                | 401 |
//! | any other   | any                      | any                   | any                | 401 |
//!
//! Security notes: a redirect is only ever sent to what a user can follow (a top-level page
//! load), so scripts, API clients and form posts never get a login page they cannot use and
//! never start a login on the IdP by themselves (no login storms from background polling).
//! `*/*` alone is not HTML: `fetch` and `curl` send it. Several `Sec-Fetch-Mode` values, or
//! one that is not valid text, count as "not navigate".

use http::header::ACCEPT;
use http::{HeaderMap, Method};

/// The decision for an unauthenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Navigation {
    /// A browser page load: redirect to sign in.
    Browser,
    /// Anything else: 401 with `WWW-Authenticate`.
    Api,
}

/// Decides for a request with `method` and `headers` (see the module's table).
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> Navigation {
    let page_method = *method == Method::GET || *method == Method::HEAD;
    let wants_html = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(accepts_html);
    let mut modes = headers.get_all("sec-fetch-mode").iter();
    let mode_ok = match (modes.next(), modes.next()) {
        (None, _) => true,
        (Some(v), None) => v
            .to_str()
            .is_ok_and(|m| m.trim().eq_ignore_ascii_case("navigate")),
        (Some(_), Some(_)) => false,
    };
    let xhr = headers.contains_key("x-requested-with");
    if page_method && wants_html && mode_ok && !xhr {
        Navigation::Browser
    } else {
        Navigation::Api
    }
}

/// One `Accept` element names `text/html` (or XHTML) with a quality above zero.
fn accepts_html(element: &str) -> bool {
    let mut parts = element.split(';');
    let media = parts.next().unwrap_or_default().trim();
    let html = media.eq_ignore_ascii_case("text/html")
        || media.eq_ignore_ascii_case("application/xhtml+xml");
    let q_zero = parts.any(|p| {
        p.trim()
            .strip_prefix("q=")
            .and_then(|q| q.trim().parse::<f32>().ok())
            .is_some_and(|q| q <= 0.0)
    });
    html && !q_zero
}

#[cfg(test)]
mod tests {
    use super::*;
    use Navigation::{Api, Browser};

    const BROWSER_ACCEPT: &str =
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";

    fn decide(method: Method, headers: &[(&str, &str)]) -> Navigation {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                v.parse().unwrap_or_else(|e| panic!("{e}")),
            );
        }
        is_navigation(&method, &h)
    }

    type Case<'a> = (Method, Vec<(&'a str, &'a str)>, Navigation);

    #[test]
    fn table() {
        let html = ("accept", BROWSER_ACCEPT);
        let cases: Vec<Case> = vec![
            (Method::GET, vec![html], Browser),
            (Method::HEAD, vec![html], Browser),
            (Method::GET, vec![("accept", "text/html")], Browser),
            (
                Method::GET,
                vec![("accept", "TEXT/HTML; charset=utf-8")],
                Browser,
            ),
            (
                Method::GET,
                vec![("accept", "application/xhtml+xml")],
                Browser,
            ),
            (
                Method::GET,
                vec![html, ("sec-fetch-mode", "navigate")],
                Browser,
            ),
            (
                Method::GET,
                vec![html, ("sec-fetch-mode", "NAVIGATE")],
                Browser,
            ),
            (
                Method::GET,
                vec![("accept", "application/json"), ("accept", "text/html")],
                Browser,
            ),
            (Method::GET, vec![html, ("sec-fetch-mode", "cors")], Api),
            (Method::GET, vec![html, ("sec-fetch-mode", "no-cors")], Api),
            (
                Method::GET,
                vec![html, ("sec-fetch-mode", "same-origin")],
                Api,
            ),
            (
                Method::GET,
                vec![html, ("sec-fetch-mode", "websocket")],
                Api,
            ),
            (
                Method::GET,
                vec![
                    html,
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-mode", "cors"),
                ],
                Api,
            ),
            (
                Method::GET,
                vec![html, ("x-requested-with", "XMLHttpRequest")],
                Api,
            ),
            (Method::GET, vec![], Api),
            (Method::GET, vec![("accept", "*/*")], Api),
            (Method::GET, vec![("accept", "application/json")], Api),
            (Method::GET, vec![("accept", "text/html;q=0")], Api),
            (Method::GET, vec![("accept", "text/htmlx")], Api),
            (Method::POST, vec![html], Api),
            (Method::PUT, vec![html, ("sec-fetch-mode", "navigate")], Api),
            (Method::DELETE, vec![html], Api),
            (Method::OPTIONS, vec![html], Api),
        ];
        for (method, headers, want) in cases {
            assert_eq!(
                decide(method.clone(), &headers),
                want,
                "{method} {headers:?}"
            );
        }
    }
}
