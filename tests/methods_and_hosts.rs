//! Method and host spellings a client can use to be routed as one thing and read by the
//! application as another, over raw HTTP/1 sockets and HTTP/2: methods that are not upper-case
//! tokens (400), CONNECT in every form (405, and on HTTP/1 the connection closes, so nothing
//! after it is ever forwarded), IPv4 host spellings other than dotted decimal and ports with
//! leading zeros (400).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Full};
use support::idp::MockIdp;
use support::raw::{self, RawResp};
use support::scenario::{Route, Scenario};
use support::upstream::{self, MockUpstream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Far above anything the proxy needs to answer or close.
const DEADLINE: Duration = Duration::from_secs(5);

/// A request with both framing headers: forwarded, it would smuggle `/smuggled`.
const SMUGGLE: &str = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
                       Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
                       GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// CONNECT in authority-form, as a forward proxy would get it.
const CONNECT_AUTHORITY_FORM: &str = "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n";
/// CONNECT in origin-form (it used to be routed and forwarded upstream).
const CONNECT_ORIGIN_FORM: &str = "CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n";

/// The echo upstream behind a pass-through proxy, and the proxy's address.
async fn pass_through() -> (MockUpstream, support::Proxy, SocketAddr) {
    let up = upstream::start("u").await;
    let proxy = Scenario::pass_through(&up).start().await;
    let addr = proxy.addr.unwrap();
    (up, proxy, addr)
}

/// Writes `bytes` on a new connection, reads one response, then reads until the proxy closes
/// the connection; returns the response and whatever came after it (must be nothing).
async fn answered_then_closed(addr: SocketAddr, bytes: &str) -> (RawResp, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes.as_bytes()).await.unwrap();
    let r = tokio::time::timeout(DEADLINE, raw::read_response(&mut s))
        .await
        .expect("no response in time");
    let rest = raw::read_until_closed(&mut s, DEADLINE).await;
    (r, rest)
}

/// Whether the response says `Connection: close` (hyper may append `keep-alive` for a client
/// that asked for it; the connection closes all the same).
fn closes(r: &RawResp) -> bool {
    r.header("connection")
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// Sends `req` over a new HTTP/2 connection; the status, or None when the request failed.
async fn h2_status(addr: SocketAddr, req: Request<Full<Bytes>>) -> Option<u16> {
    let mut sender = support::client::h2_sender(addr).await;
    let fut = async {
        let resp = sender.send_request(req).await.ok()?;
        assert_eq!(resp.version(), Version::HTTP_2);
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Some(status)
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("no HTTP/2 answer in time")
}

fn h2_request(method: &str, url: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(url)
        .body(Full::default())
        .unwrap()
}

// --- methods ---

#[tokio::test]
async fn method_spellings_that_are_not_upper_case_tokens_are_refused_over_http1() {
    let (up, proxy, addr) = pass_through().await;
    // Well-formed spellings pass, extension methods included.
    for ok in ["POST", "GET", "M-SEARCH", "PROPFIND", "X_CUSTOM"] {
        let r = raw::exchange(
            addr,
            format!("{ok} /orders HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{ok}: {}", r.text());
        assert_eq!(r.json()["method"], ok);
    }
    let hits = up.hits();
    // Django and Werkzeug read `post` as POST: a route for POST must never be bypassed by it.
    for bad in [
        "post", "get", "Post", "dElEtE", "options", "GET2", "G.T", "GE~T",
    ] {
        let (r, rest) = answered_then_closed(
            addr,
            &format!(
                "{bad} /orders HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(closes(&r), "{bad}: {:?}", r.headers);
        assert!(
            rest.is_empty(),
            "{bad}: more came: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    assert_eq!(
        up.hits(),
        hits,
        "a refused method spelling reached the upstream"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_spellings_that_are_not_upper_case_tokens_are_refused_over_http2() {
    let (up, proxy, addr) = pass_through().await;
    let url = format!("http://a:{}/orders", addr.port());
    assert_eq!(h2_status(addr, h2_request("POST", &url)).await, Some(200));
    let hits = up.hits();
    for bad in ["post", "get", "Post", "delete", "GET2", "G.T"] {
        assert_eq!(
            h2_status(addr, h2_request(bad, &url)).await,
            Some(400),
            "{bad}"
        );
    }
    assert_eq!(
        up.hits(),
        hits,
        "a refused method spelling reached the upstream"
    );
    proxy.shutdown().await;
}

// --- CONNECT ---

#[tokio::test]
async fn connect_in_every_http1_form_is_refused_and_the_connection_closed() {
    let (up, proxy, addr) = pass_through().await;
    for connect in [
        // authority-form, as a forward proxy would get it
        CONNECT_AUTHORITY_FORM,
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
        // origin-form: it used to be routed and forwarded upstream
        CONNECT_ORIGIN_FORM,
        "CONNECT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        // absolute-form, HTTP/1.0, keep-alive asked for
        "CONNECT http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let (r, rest) = answered_then_closed(addr, connect).await;
        assert_eq!(r.status, 405, "{connect:?}: {}", r.text());
        assert!(closes(&r), "{connect:?}: {:?}", r.headers);
        let allow = r.header("allow").unwrap_or_default();
        assert!(
            allow.contains("GET") && !allow.contains("CONNECT"),
            "{allow}"
        );
        assert!(rest.is_empty(), "{connect:?}: more came: {rest:?}");
    }
    // A lower-case spelling is refused too (as a method spelling: 400), and also closes.
    let (r, rest) = answered_then_closed(addr, "connect a:443 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(rest.is_empty());
    assert_eq!(up.hits(), 0, "a CONNECT reached the upstream");
    proxy.shutdown().await;
}

#[tokio::test]
async fn nothing_after_a_refused_connect_is_forwarded() {
    // The framing guard used to stop watching at a CONNECT, and the connection went on after
    // the refusal: a following request with both Content-Length and Transfer-Encoding was
    // forwarded. Now the connection closes after the 405, pipelined or not.
    let (up, proxy, addr) = pass_through().await;
    for connect in [CONNECT_AUTHORITY_FORM, CONNECT_ORIGIN_FORM] {
        // Pipelined: in the same write.
        let (r, rest) = answered_then_closed(addr, &format!("{connect}{SMUGGLE}")).await;
        assert_eq!(
            up.hits(),
            0,
            "the request after {connect:?} reached the upstream"
        );
        assert_eq!(r.status, 405, "{}", r.text());
        assert!(rest.is_empty(), "a second response came: {rest:?}");

        // After the answer: the proxy closes; whatever is written then is never read.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(connect.as_bytes()).await.unwrap();
        let r = tokio::time::timeout(DEADLINE, raw::read_response(&mut s))
            .await
            .expect("no response in time");
        assert_eq!(r.status, 405);
        let _ = s.write_all(SMUGGLE.as_bytes()).await;
        let rest = raw::read_until_closed(&mut s, DEADLINE).await;
        assert_eq!(
            up.hits(),
            0,
            "the request after {connect:?} reached the upstream"
        );
        assert!(rest.is_empty(), "a second response came: {rest:?}");
    }
    assert_eq!(
        up.hits(),
        0,
        "a request after a CONNECT reached the upstream"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_http2_is_refused() {
    let (up, proxy, addr) = pass_through().await;
    // Plain CONNECT: :method and :authority only.
    let req = Request::connect(format!("a:{}", addr.port()))
        .body(Full::default())
        .unwrap();
    assert_eq!(h2_status(addr, req).await, Some(405));
    // The same connection (and the proxy) still serve ordinary requests.
    let url = format!("http://a:{}/after", addr.port());
    assert_eq!(h2_status(addr, h2_request("GET", &url)).await, Some(200));
    let hits = up.hits();
    // Extended CONNECT (RFC 8441, `:protocol`): the server does not enable it, so a client
    // cannot send one; if it could, it would be refused like any CONNECT.
    let mut req = Request::connect(format!("http://a:{}/ws", addr.port()))
        .body(Full::default())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let status = h2_status(addr, req).await;
    assert!(matches!(status, None | Some(405)), "{status:?}");
    assert_eq!(up.hits(), hits, "a CONNECT reached the upstream");
    proxy.shutdown().await;
}

#[tokio::test]
async fn portcullis_own_paths_get_the_same_method_rules() {
    // The sign-in paths are answered before routing; the method rules come before them.
    let idp = MockIdp::start().await;
    let _key = idp.new_key(jsonwebtoken::Algorithm::RS256, "k1");
    let up = upstream::start("u").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .sign_in_issuer("corp", &idp, &[])
        .route(Route::session("/").name("app"))
        .sessions(&["cookie: { secure: false }"])
        .start()
        .await;
    let addr = proxy.addr.unwrap();
    for (request, status) in [
        (
            "post /oauth2/backchannel_logout HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            400,
        ),
        (
            "get /oauth2/callback?code=x HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
        ),
        ("CONNECT /oauth2/callback HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        ("CONNECT /oauth2/sign_out HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    ] {
        let (r, rest) = answered_then_closed(addr, request).await;
        assert_eq!(r.status, status, "{request:?}: {}", r.text());
        assert!(closes(&r), "{request:?}: {:?}", r.headers);
        assert!(rest.is_empty());
    }
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}

// --- hosts ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_spellings_and_zero_padded_ports_are_refused() {
    let (up, proxy, addr) = pass_through().await;
    for good in ["127.0.0.1", "1a.example.com", "x123", "a:8443"] {
        let r = raw::exchange(addr, &raw::get("/", good, &[])).await;
        assert_eq!(r.status, 200, "{good}: {}", r.text());
    }
    let hits = up.hits();
    for bad in [
        "0x7f.1",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "0x7f000001",
        "2130706433",
        "127.0.0.01",
        "1.2.3.0x4",
        "example.0x",
        "a:0",
        "a:080",
        "a:0443",
    ] {
        let r = raw::exchange(addr, &raw::get("/", bad, &[])).await;
        assert_eq!(r.status, 400, "Host {bad}: {}", r.text());
        // The same in an absolute-form target.
        let req = format!("GET http://{bad}/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let r = raw::exchange(addr, req.as_bytes()).await;
        assert_eq!(r.status, 400, "target {bad}: {}", r.text());
    }
    // HTTP/2 :authority.
    for bad in ["0x7f.1", "0177.0.0.1", "2130706433"] {
        let url = format!("http://{bad}:{}/", addr.port());
        assert_eq!(
            h2_status(addr, h2_request("GET", &url)).await,
            Some(400),
            "{bad}"
        );
    }
    let url = format!("http://a:0{}/", addr.port());
    assert_eq!(h2_status(addr, h2_request("GET", &url)).await, Some(400));
    assert_eq!(up.hits(), hits, "a refused host reached the upstream");
    proxy.shutdown().await;
}
