//! Sign-out (`auth.sign_out_path`): end the session here, close its tunnels, clear the cookie,
//! then RP-initiated logout at the IdP when it offers an `end_session_endpoint`.
//!
//! Security notes (logout CSRF): another site must not be able to sign a user out, nor make
//! the IdP end the user's IdP session with our `id_token_hint`. A request ends the session
//! only when it provably comes from this origin:
//! - `Sec-Fetch-Site: same-origin` (browsers set it; a page cannot), or, when the browser
//!   sends no fetch metadata, an `Origin` equal to this origin (scheme, host, port);
//! - or a POST carrying the confirmation token of the session (an HMAC of the session id
//!   under the cookie key: only the confirmation page, same-origin and `no-store`, shows it)
//!   from a browser that sent neither header. A POST that names another site (fetch metadata
//!   or `Origin`) is never enough, token or not.
//!
//! Anything else that holds a session (a cross-site link or form, a top-level navigation typed
//! or bookmarked, curl, an old browser) gets a small confirmation page: a same-origin POST
//! form (with the token) that the user submits. The page cannot be framed. `id_token_hint`
//! goes to the IdP only from a confirmed sign-out (none other reaches it). Without a session
//! there is nothing to protect: the cookie is cleared and a "signed out" page is shown.

use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode, request};

use super::error::{SignInError, SignInFailure};
use super::{Browser, EndReason, Origin, pages};
use crate::authn::oidc::{RedirectPolicy, form, return_target};
use crate::body::ProxyBody;
use crate::session::SessionId;
use crate::session::admin::{Cause, Ended};

/// Query parameter of the confirmation token.
const TOKEN_PARAM: &str = "confirm";

/// Sign-out: the confirmation page, or the end of the session (see the module notes).
pub(super) async fn sign_out(
    b: &Browser,
    head: &request::Parts,
    origin: &Origin,
    redirects: &RedirectPolicy,
) -> Result<Response<ProxyBody>, SignInError> {
    let query = form::parse(head.uri.query().unwrap_or_default());
    let rd = return_target(form::get(&query, "rd"), redirects);
    let Some(id) = b.session_id(&head.headers) else {
        return Ok(signed_out(b, StatusCode::OK, &rd));
    };
    let confirmed = match same_origin(&head.headers, origin) {
        Some(same) => same,
        // No fetch metadata and no Origin: only the confirmation form's POST, by its token.
        None => {
            head.method == Method::POST
                && single(&query, TOKEN_PARAM).is_some_and(|t| token_matches(b, &id, t))
        }
    };
    if !confirmed {
        return confirm_page(b, &id, &rd);
    }
    end_session(b, &id, origin, &rd).await
}

/// Ends a confirmed session: store, tunnels, cookie, then the IdP's end-session endpoint.
async fn end_session(
    b: &Browser,
    id: &SessionId,
    origin: &Origin,
    rd: &str,
) -> Result<Response<ProxyBody>, SignInError> {
    let mut id_token: Option<String> = None;
    let mut slot = None;
    if let Ok(Some(s)) = b.store.get(id).await {
        id_token = s.tokens.id_token.as_ref().map(|t| t.expose().to_string());
        slot = b.auth.slot_names().iter().position(|n| **n == *s.issuer);
    }
    b.store.delete(id).await.map_err(|e| {
        tracing::warn!(error = %e, "sign-out: the session could not be deleted");
        unavailable(b)
    })?;
    b.tunnels.end(id, EndReason::SignOut);
    b.announce(Ended::ids(Cause::SignOut, [id])).await;
    b.metrics.logouts.with_label_values(&["sign_out"]).inc();
    // An absolute `rd` (an allowed host) is where the IdP sends the browser back to as is.
    let after = if rd.starts_with('/') {
        format!("{}://{}{}", origin.scheme, origin.authority(), rd)
    } else {
        rd.to_string()
    };
    let end_session = slot
        .and_then(|s| b.client(s).ok())
        .and_then(|c| c.metadata.end_session_endpoint.clone().map(|e| (e, c)));
    let Some((endpoint, client)) = end_session else {
        return Ok(signed_out(b, StatusCode::OK, rd));
    };
    let mut pairs: Vec<(&str, &str)> = vec![("post_logout_redirect_uri", after.as_str())];
    if let Some(t) = id_token.as_deref() {
        pairs.push(("id_token_hint", t));
    }
    let client_id = client.config.client_id.clone().unwrap_or_default();
    pairs.push(("client_id", client_id.as_str()));
    let sep = match endpoint.query() {
        Some(q) if !q.is_empty() => "&",
        Some(_) => "",
        None => "?",
    };
    let mut resp = pages::redirect(&format!("{endpoint}{sep}{}", form::encode_pairs(pairs)));
    clear_cookie(b, &mut resp);
    Ok(resp)
}

/// Sessions cannot be used now; "try again" leads back to the sign-out path.
fn unavailable(b: &Browser) -> SignInError {
    SignInError::at(SignInFailure::StoreUnavailable, &b.settings.paths.sign_out)
}

/// "Signed out", with the session cookie cleared.
fn signed_out(b: &Browser, status: StatusCode, rd: &str) -> Response<ProxyBody> {
    let mut resp = pages::page(
        status,
        "Signed out",
        "You are signed out.",
        Some((rd, "Sign in again")),
    );
    clear_cookie(b, &mut resp);
    resp
}

fn clear_cookie(b: &Browser, resp: &mut Response<ProxyBody>) {
    if let Some(c) = b.jar.clear(&b.jar.name, "/") {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
}

/// The confirmation page: a POST form back to the sign-out path with the session's token.
fn confirm_page(b: &Browser, id: &SessionId, rd: &str) -> Result<Response<ProxyBody>, SignInError> {
    let token = token(b, id).ok_or_else(|| unavailable(b))?;
    let action = format!(
        "{}?{}",
        b.settings.paths.sign_out,
        form::encode_pairs([("rd", rd), (TOKEN_PARAM, token.as_str())])
    );
    Ok(pages::confirm_sign_out(&action, rd))
}

/// Whether the request says it comes from this origin: `Some(true)` by `Sec-Fetch-Site:
/// same-origin` (or, without fetch metadata, an `Origin` equal to ours), `Some(false)` when
/// either names something else, `None` when the request carries neither. Headers sent more
/// than once count as another site.
fn same_origin(headers: &HeaderMap, origin: &Origin) -> Option<bool> {
    let one = |name: &str| {
        let mut it = headers.get_all(name).iter();
        match (it.next(), it.next()) {
            (None, _) => None,
            (Some(v), None) => Some(v.to_str().ok()),
            _ => Some(None),
        }
    };
    if let Some(site) = one("sec-fetch-site") {
        return Some(site.is_some_and(|s| s.eq_ignore_ascii_case("same-origin")));
    }
    one(header::ORIGIN.as_str()).map(|o| o.is_some_and(|o| origin_matches(o, origin)))
}

/// Whether an `Origin` header value is `origin` (scheme and host compared without case, the
/// scheme's default port optional on either side).
fn origin_matches(value: &str, origin: &Origin) -> bool {
    let Some((scheme, authority)) = value.split_once("://") else {
        return false;
    };
    scheme.eq_ignore_ascii_case(origin.scheme)
        && without_default_port(authority, origin.scheme)
            .eq_ignore_ascii_case(without_default_port(origin.authority(), origin.scheme))
}

fn without_default_port<'a>(authority: &'a str, scheme: &str) -> &'a str {
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// The confirmation token of session `id`: a keyed hash (the cookie keys' tag key), bound to
/// its purpose.
fn token(b: &Browser, id: &SessionId) -> Option<String> {
    b.sealer.index_tag(&token_input(id))
}

fn token_matches(b: &Browser, id: &SessionId, given: &str) -> bool {
    b.sealer
        .index_tags(&token_input(id))
        .iter()
        .any(|t| super::flow::constant_time_eq(t.as_bytes(), given.as_bytes()))
}

fn token_input(id: &SessionId) -> Vec<u8> {
    let mut v = b"sign_out\0".to_vec();
    v.extend_from_slice(id.as_str().as_bytes());
    v
}

/// The one value of `name` in the query (`None` when absent or repeated).
fn single<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut it = query.iter().filter(|(k, _)| k == name);
    match (it.next(), it.next()) {
        (Some((_, v)), None) => Some(v.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn origin() -> Origin {
        Origin {
            scheme: "https",
            authority: HeaderValue::from_static("app.example"),
        }
    }

    fn check(pairs: &[(&str, &str)]) -> Option<bool> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        same_origin(&h, &origin())
    }

    #[test]
    fn fetch_metadata_then_origin_decide() {
        assert_eq!(check(&[]), None);
        assert_eq!(check(&[("sec-fetch-site", "same-origin")]), Some(true));
        for site in [
            "same-site",
            "cross-site",
            "none",
            "",
            "same-origin, same-origin",
        ] {
            assert_eq!(check(&[("sec-fetch-site", site)]), Some(false), "{site}");
        }
        assert_eq!(
            check(&[
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-site", "same-origin")
            ]),
            Some(false),
            "repeated"
        );
        assert_eq!(check(&[("origin", "https://app.example")]), Some(true));
        assert_eq!(check(&[("origin", "https://APP.example:443")]), Some(true));
        for o in [
            "null",
            "http://app.example",
            "https://app.example.evil",
            "https://evil.example",
            "https://app.example:8443",
            "https://sub.app.example",
            "app.example",
        ] {
            assert_eq!(check(&[("origin", o)]), Some(false), "{o}");
        }
        // Fetch metadata wins over Origin.
        assert_eq!(
            check(&[
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://app.example")
            ]),
            Some(false)
        );
    }
}
