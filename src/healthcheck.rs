//! `portcullis healthcheck`: one GET to the admin `/healthz` (or any plain-http URL), for
//! container HEALTHCHECKs in images without a shell or curl. Exit 0 on a 2xx answer within
//! the timeout, 1 otherwise, with one line saying which.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The URL checked when none is given: the default `admin.address`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9090/healthz";

/// A checked target: host and port to connect to, and the request URI.
#[derive(Debug)]
pub struct Target {
    uri: Uri,
    authority: String,
}

/// Why a URL cannot be checked (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URI.
    #[error("bad URL {url:?}")]
    Parse {
        /// As given.
        url: String,
        /// Why.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// Not `http://`.
    #[error("bad URL {0:?}: only http:// is supported")]
    Scheme(String),
    /// No host.
    #[error("bad URL {0:?}: no host")]
    NoHost(String),
    /// A user name or password.
    #[error("bad URL {0:?}: no user name or password")]
    UserInfo(String),
}

/// Why the target is unhealthy (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connection failed.
    #[error("connect {authority}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("request")]
    Http(#[source] hyper::Error),
    /// The request could not be built.
    #[error("request")]
    Request(#[source] http::Error),
    /// An answer that is not 2xx.
    #[error("{0}")]
    Status(http::StatusCode),
}

/// Parses a plain `http://host:port/path` URL (the admin listener has no TLS).
pub fn parse(url: &str) -> Result<Target, UrlError> {
    let uri: Uri = url.parse().map_err(|source| UrlError::Parse {
        url: url.to_string(),
        source,
    })?;
    if uri.scheme_str() != Some("http") {
        return Err(UrlError::Scheme(url.to_string()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| UrlError::NoHost(url.to_string()))?;
    if authority.as_str().contains('@') {
        return Err(UrlError::UserInfo(url.to_string()));
    }
    let authority = match authority.port_u16() {
        Some(_) => authority.as_str().to_string(),
        None => format!("{}:80", authority.host()),
    };
    Ok(Target { uri, authority })
}

impl Target {
    /// The URL checked.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

/// GETs the target within `timeout`: the 2xx status, or why it is unhealthy.
pub async fn check(target: &Target, timeout: Duration) -> Result<http::StatusCode, Unhealthy> {
    match tokio::time::timeout(timeout, get(target)).await {
        Err(_) => Err(Unhealthy::Timeout(timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if status.is_success() => Ok(status),
        Ok(Ok(status)) => Err(Unhealthy::Status(status)),
    }
}

async fn get(target: &Target) -> Result<http::StatusCode, Unhealthy> {
    let stream = TcpStream::connect(&target.authority)
        .await
        .map_err(|source| Unhealthy::Connect {
            authority: target.authority.clone(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Unhealthy::Http)?;
    tokio::spawn(conn);
    let path = target
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let req = Request::get(path)
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::USER_AGENT, "portcullis-healthcheck")
        .body(Empty::<Bytes>::new())
        .map_err(Unhealthy::Request)?;
    let resp = sender.send_request(req).await.map_err(Unhealthy::Http)?;
    Ok(resp.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_http_urls_only() {
        let t = parse(DEFAULT_URL).map_err(|e| e.to_string());
        assert_eq!(t.map(|t| t.authority), Ok("127.0.0.1:9090".to_string()));
        let t = parse("http://localhost/healthz")
            .map(|t| t.authority)
            .map_err(|e| e.to_string());
        assert_eq!(t, Ok("localhost:80".to_string()));
        assert!(matches!(
            parse("https://127.0.0.1:9090/healthz"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(parse("127.0.0.1:9090"), Err(UrlError::Scheme(_))));
        assert!(matches!(
            parse("http://u:p@127.0.0.1:9090/"),
            Err(UrlError::UserInfo(_))
        ));
        assert!(matches!(parse("not a url"), Err(UrlError::Parse { .. })));
    }
}
