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

/// Parses a plain `http://host:port/path` URL (the admin listener has no TLS).
pub fn parse(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("bad URL {url:?}: only http:// is supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("bad URL {url:?}: no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("bad URL {url:?}: no user name or password"));
    }
    let authority = match authority.port_u16() {
        Some(_) => authority.as_str().to_string(),
        None => format!("{}:80", authority.host()),
    };
    Ok(Target { uri, authority })
}

/// GETs the target within `timeout`. `Ok` is the one-line report of a 2xx answer; `Err` the
/// one-line reason it is unhealthy.
pub async fn check(target: &Target, timeout: Duration) -> Result<String, String> {
    let uri = &target.uri;
    match tokio::time::timeout(timeout, get(target)).await {
        Err(_) => Err(format!("{uri}: no answer within {timeout:?}")),
        Ok(Err(e)) => Err(format!("{uri}: {e}")),
        Ok(Ok(status)) if status.is_success() => Ok(format!("{uri}: {status}")),
        Ok(Ok(status)) => Err(format!("{uri}: {status}")),
    }
}

async fn get(target: &Target) -> Result<http::StatusCode, String> {
    let stream = TcpStream::connect(&target.authority)
        .await
        .map_err(|e| format!("connect {}: {e}", target.authority))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
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
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    Ok(resp.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_http_urls_only() {
        let t = parse(DEFAULT_URL).map_err(|e| e.to_string());
        assert_eq!(t.map(|t| t.authority), Ok("127.0.0.1:9090".to_string()));
        let t = parse("http://localhost/healthz").map(|t| t.authority);
        assert_eq!(t, Ok("localhost:80".to_string()));
        assert!(parse("https://127.0.0.1:9090/healthz").is_err());
        assert!(parse("127.0.0.1:9090").is_err());
        assert!(parse("http://u:p@127.0.0.1:9090/").is_err());
        assert!(parse("not a url").is_err());
    }
}
