//! A small browser-like HTTP client for the sign-in tests: keeps cookies (by name; every test
//! host is loopback), sends navigation headers, and follows redirects a bounded number of
//! times.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::client::{Resp, send};

/// Cookies by name, and the cookie attributes last set for each.
#[derive(Debug, Default, Clone)]
pub struct CookieClient {
    pub cookies: BTreeMap<String, String>,
    pub attributes: BTreeMap<String, String>,
    /// Extra cookies sent with every request (not from Set-Cookie).
    pub extra: Vec<(String, String)>,
}

/// One hop of a followed navigation.
#[derive(Debug)]
pub struct Hop {
    pub url: String,
    pub status: u16,
}

impl CookieClient {
    pub fn new() -> Self {
        Self::default()
    }

    /// The `Cookie` header this client sends now.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Applies the response's `Set-Cookie` headers.
    pub fn absorb(&mut self, resp: &Resp) {
        for v in resp.headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let removed = attrs
                .split(';')
                .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if removed {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
            self.attributes
                .insert(name.trim().to_string(), attrs.trim().to_string());
        }
    }

    /// One request with the cookies and `headers`; cookies from the answer are kept.
    pub async fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(url);
        let cookie = self.cookie_header();
        if !cookie.is_empty() {
            b = b.header("cookie", cookie);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = send(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await;
        self.absorb(&resp);
        resp
    }

    /// A page load (GET with `Accept: text/html` and `Sec-Fetch-Mode: navigate`).
    pub async fn navigate(&mut self, url: &str) -> Resp {
        self.request(
            "GET",
            url,
            &[
                ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
                ("sec-fetch-mode", "navigate"),
            ],
            "",
        )
        .await
    }

    /// A click on a link of the site's own pages: a page load with `Sec-Fetch-Site:
    /// same-origin` (and `Accept: text/html`, `Sec-Fetch-Mode: navigate`).
    pub async fn follow_link(&mut self, url: &str) -> Resp {
        self.request(
            "GET",
            url,
            &[
                ("accept", "text/html"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-site", "same-origin"),
            ],
            "",
        )
        .await
    }

    /// A GET marked as coming from the site's own pages (`Sec-Fetch-Site: same-origin`, no
    /// other fetch metadata).
    pub async fn same_origin_get(&mut self, url: &str) -> Resp {
        self.request("GET", url, &[("sec-fetch-site", "same-origin")], "")
            .await
    }

    /// An API call (`Accept: application/json`).
    pub async fn api(&mut self, url: &str) -> Resp {
        self.request("GET", url, &[("accept", "application/json")], "")
            .await
    }

    /// Navigates to `url` and follows up to 10 redirects; returns the last response and
    /// every hop.
    pub async fn follow(&mut self, url: &str) -> (Resp, Vec<Hop>) {
        let mut hops = Vec::new();
        let mut url = url.to_string();
        for _ in 0..10 {
            let resp = self.navigate(&url).await;
            hops.push(Hop {
                url: url.clone(),
                status: resp.status,
            });
            if !(300..400).contains(&resp.status) {
                return (resp, hops);
            }
            let location = resp.headers["location"].to_str().unwrap().to_string();
            url = if location.starts_with('/') {
                let base = url.split('/').take(3).collect::<Vec<_>>().join("/");
                format!("{base}{location}")
            } else {
                location
            };
        }
        panic!("redirect loop: {hops:?}");
    }
}

/// A back-channel logout as the IdP sends it: `logout_token=<token>` POSTed form-encoded to
/// `url`, without cookies.
pub async fn backchannel_logout(url: &str, token: &str) -> Resp {
    CookieClient::new()
        .request(
            "POST",
            url,
            &[("content-type", "application/x-www-form-urlencoded")],
            &format!("logout_token={token}"),
        )
        .await
}

/// The value of the query parameter `name` in `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    let pairs = portcullis::authn::oidc::form::parse(q);
    portcullis::authn::oidc::form::get(&pairs, name).map(str::to_string)
}
