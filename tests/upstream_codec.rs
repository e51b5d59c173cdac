//! The upstream HTTP/1 codec (`client: codec`) against hyper's client (`client: hyper`):
//! the same raw upstream bytes through both must give the client the same response or the
//! same refusal; connections that saw anything ambiguous are never reused; early responses
//! and request bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use support::Proxy;
use support::raw::{self, RawUpstream};
use support::scenario::{Route, Scenario};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One worker (so sequential requests share one pool), routes `/hyper` and `/codec` to the
/// same upstream through each client, with `settings` for both.
async fn both(up: &RawUpstream, settings: &[&str]) -> Proxy {
    let mut h = vec!["client: hyper"];
    h.extend_from_slice(settings);
    let mut c = vec!["client: codec"];
    c.extend_from_slice(settings);
    Scenario::new()
        .server(&["workers: 1"])
        .upstream_at("h", &[up.url()], &h)
        .upstream_at("c", &[up.url()], &c)
        .route(Route::open("/hyper").name("hyper").upstream("h"))
        .route(Route::open("/codec").name("codec").upstream("c"))
        .start()
        .await
}

/// What the client got, normalized for comparison.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    /// Lowercased names, sorted; Date and X-Request-Id left out.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body arrived whole (framing complete).
    complete: bool,
}

/// Whether two clients saw the same thing. A complete response must be the same in every
/// byte. A body that broke mid-way (the upstream's framing ended early or went wrong after
/// the head) gives a truncated response or, when hyper's server had not flushed the head
/// before the body failed, a connection closed without one; how much is flushed before the
/// abort depends on timing even with hyper's client alone. So: both broken, and where both
/// have a head, the same head and one body a prefix of the other.
fn alike(h: &Option<Seen>, c: &Option<Seen>) -> bool {
    match (h, c) {
        (Some(h), Some(c)) if h.complete && c.complete => h == c,
        (Some(h), Some(c)) => {
            !h.complete
                && !c.complete
                && h.status == c.status
                && h.headers == c.headers
                && (h.body.starts_with(&c.body) || c.body.starts_with(&h.body))
        }
        (None, None) => true,
        (None, Some(x)) | (Some(x), None) => !x.complete,
    }
}

/// Sends `method path` with `Connection: close` and reads until the proxy closes; `None`
/// when it closed without a response.
async fn fetch(proxy: &Proxy, method: &str, path: &str) -> Option<Seen> {
    let addr = proxy.addr.unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let got = raw::read_until_closed(&mut s, Duration::from_secs(10)).await;
    if got.is_empty() {
        return None;
    }
    Some(seen(&got, method == "HEAD"))
}

fn seen(data: &[u8], head_request: bool) -> Seen {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(data)));
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| k != "date" && k != "x-request-id")
        .collect();
    headers.sort();
    let rest = &data[end + 4..];
    let value = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let (body, complete) = if head_request || status == 204 || status == 304 {
        (rest.to_vec(), rest.is_empty())
    } else if let Some(len) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
        (rest[..len.min(rest.len())].to_vec(), rest.len() == len)
    } else if value("transfer-encoding").is_some() {
        dechunk(rest)
    } else {
        (rest.to_vec(), true)
    };
    if status == 502 {
        // The refusal's body names the request id: only the status is compared.
        return Seen {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            complete: true,
        };
    }
    Seen {
        status,
        headers,
        body,
        complete,
    }
}

/// A chunked body as far as it goes, and whether it ended properly.
fn dechunk(mut data: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let line = String::from_utf8_lossy(&data[..eol]).into_owned();
        let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (out, false);
        };
        data = &data[eol + 2..];
        if size == 0 {
            return (
                out,
                data.starts_with(b"\r\n") || data.windows(4).any(|w| w == b"\r\n\r\n"),
            );
        }
        if data.len() < size + 2 {
            out.extend_from_slice(&data[..size.min(data.len())]);
            return (out, false);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// An upstream that answers every request with the bytes in `script`, then closes.
async fn scripted(script: Arc<Mutex<Vec<u8>>>) -> RawUpstream {
    raw::upstream(move |mut s, _| {
        let script = script.clone();
        async move {
            if raw::read_head(&mut s).await.is_none() {
                return;
            }
            let bytes = script.lock().unwrap().clone();
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            // Until the proxy closes its end (bounded), so nothing it still sends is reset.
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    })
    .await
}

/// Number of response classes [`build`] knows.
const CLASSES: u8 = 24;

/// A response of one of the classes the codec has to get right, and the request method.
fn case() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let body = prop::collection::vec(prop::sample::select(b"abcXYZ019 \r\n".to_vec()), 0..40);
    let extra = prop::collection::vec(
        prop::sample::select(vec![
            "X-A: 1\r\n",
            "Set-Cookie: a=b\r\n",
            "Set-Cookie: c=d\r\n",
            "X-Empty:\r\n",
            "Cache-Control: no-cache\r\n",
            "Connection: close\r\n",
            "Connection: keep-alive\r\n",
        ]),
        0..3,
    );
    let status = prop::sample::select(vec![
        "200 OK",
        "201 Created",
        "404 Not Found",
        "503 Try Later",
        "302 Found",
    ]);
    (0..CLASSES, body, extra, status, 1usize..8, any::<bool>()).prop_map(
        |(class, body, extra, status, split, flag)| {
            build(class, &body, &extra.concat(), status, split, flag)
        },
    )
}

/// Response class `class` with `body` (cut into chunks of `split` where chunked), `extra`
/// header lines and `status`; `flag` makes some classes a HEAD request.
fn build(
    class: u8,
    body: &[u8],
    extra: &str,
    status: &str,
    split: usize,
    flag: bool,
) -> (&'static str, Vec<u8>) {
    let n = body.len();
    let b = String::from_utf8_lossy(body).into_owned();
    let chunked = |ext: &str, trailers: &str| {
        let mut s = String::new();
        for part in body.chunks(split) {
            s.push_str(&format!("{:x}{ext}\r\n", part.len()));
            s.push_str(&String::from_utf8_lossy(part));
            s.push_str("\r\n");
        }
        s.push_str(&format!("0\r\n{trailers}\r\n"));
        s
    };
    let te = |spelling: &str| {
        format!(
            "HTTP/1.1 {status}\r\n{extra}Transfer-Encoding: {spelling}\r\n\r\n{}",
            chunked("", "")
        )
    };
    let method = if flag && class.is_multiple_of(5) {
        "HEAD"
    } else {
        "GET"
    };
    let r = match class {
        0 => format!("HTTP/1.1 {status}\r\n{extra}Content-Length: {n}\r\n\r\n{b}"),
        1 => format!("HTTP/1.1 {status}\r\nContent-Length: {n}\r\n{extra}\r\n{b}trailing junk"),
        2 => format!("HTTP/1.1 {status}\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n\r\n{b}"),
        3 => format!("HTTP/1.1 {status}\r\nContent-Length: {n}, {n}\r\n\r\n{b}"),
        4 => format!(
            "HTTP/1.1 {status}\r\nContent-Length: {n}\r\nContent-Length: {}\r\n\r\n{b}",
            n + 1
        ),
        5 => {
            let bad = ["+1", "1.0", "", "0x1", "-0", "1 1"][split % 6];
            format!("HTTP/1.1 {status}\r\nContent-Length: {bad}\r\n\r\n{b}")
        }
        6 => format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{b}", n + 5),
        7 => format!(
            "HTTP/1.1 {status}\r\n{extra}Transfer-Encoding: chunked\r\n\r\n{}",
            chunked(";ext=1;q=\"a b\"", "")
        ),
        8 => format!(
            "HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n{}",
            chunked("", "X-T: t\r\nX-U: u\r\n")
        ),
        9 => te([
            "Chunked",
            "gzip, chunked",
            " chunked ",
            "identity, chunked",
            "CHUNKED",
        ][split % 5]),
        10 => te([
            "chunked, gzip",
            "gzip",
            "chunked\r\nTransfer-Encoding: identity",
            "chunked , ",
            "chunk",
        ][split % 5]),
        11 => format!(
            "HTTP/1.1 {status}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked("", "")
        ),
        12 => format!("HTTP/1.1 {status}\r\n{extra}\r\n{b}"),
        13 => format!("HTTP/1.1 {status}\nContent-Length: {n}\nX-Bare: lf\n\n{b}"),
        14 => format!("HTTP/1.1 {status}\r\nX-Fold: a\r\n b\r\nContent-Length: {n}\r\n\r\n{b}"),
        15 => format!(
            "HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked("", "").replacen("\r\n", "\n", 1)
        ),
        16 => format!(
            "HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked(";a\nb", "")
        ),
        17 => {
            let s = ["204 No Content", "304 Not Modified"][split % 2];
            format!("HTTP/1.1 {s}\r\n{extra}Content-Length: {n}\r\n\r\n{b}")
        }
        18 => format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 {status}\r\nContent-Length: {n}\r\n\r\n{b}"
        ),
        19 => format!(
            "HTTP/1.0 {status}\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked("", "")
        ),
        20 => format!(
            "HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n1{}\r\nx\r\n0\r\n\r\n",
            "0".repeat(16)
        ),
        21 => format!("HTTP/1.1 {status}\r\nX-Space : v\r\nContent-Length: {n}\r\n\r\n{b}"),
        22 => format!(
            "HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked("", "").trim_end_matches("0\r\n\r\n")
        ),
        _ => format!("HTTP/1.0 {status}\r\n{extra}\r\n{b}"),
    };
    (method, r.into_bytes())
}

/// The differential test: every generated upstream response gives the client the same
/// status, headers and body through both clients, or a 502 through both.
#[test]
fn hyper_and_codec_answer_alike() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let script = Arc::new(Mutex::new(Vec::new()));
    let (up, proxy) = rt.block_on(async {
        let up = scripted(script.clone()).await;
        let proxy = both(&up, &["pool_max_idle: 0"]).await;
        (up, proxy)
    });
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |((method, bytes) in case())| {
        *script.lock().unwrap() = bytes.clone();
        let (h, c) = rt.block_on(async {
            (fetch(&proxy, method, "/hyper/x").await, fetch(&proxy, method, "/codec/x").await)
        });
        prop_assert!(alike(&h, &c), "{} of {:?}:\nhyper {:?}\ncodec {:?}", method, String::from_utf8_lossy(&bytes), h, c);
    });
    drop(up);
}

/// Every class with each of its variants (the spellings are picked by `split`), so a
/// variant the generator rarely picks is still compared.
#[tokio::test(flavor = "multi_thread")]
async fn every_class_once_and_the_stricter_codec_classes() {
    let script = Arc::new(Mutex::new(Vec::new()));
    let up = scripted(script.clone()).await;
    let proxy = both(&up, &["pool_max_idle: 0"]).await;
    for (class, split, flag) in (0..CLASSES)
        .flat_map(|c| (1..=6).map(move |s| (c, s)))
        .flat_map(|(c, s)| [(c, s, false), (c, s, true)])
    {
        {
            let (method, bytes) = build(class, b"hello world", "X-A: 1\r\n", "200 OK", split, flag);
            *script.lock().unwrap() = bytes.clone();
            let h = fetch(&proxy, method, "/hyper/x").await;
            let c = fetch(&proxy, method, "/codec/x").await;
            assert!(
                alike(&h, &c),
                "{method} of {:?}:\nhyper {h:?}\ncodec {c:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    // Deliberately stricter: a 101 to a request that did not ask to upgrade is refused (hyper
    // passes it on as a bodiless 101, which the client cannot use).
    *script.lock().unwrap() =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n".to_vec();
    let refused = fetch(&proxy, "GET", "/codec/x").await;
    assert_eq!(refused.map(|s| s.status), Some(502));
}

// --- pool safety ---

/// An upstream whose `n`-th connection gets `answers(n)` as its answer to each request on it
/// (one entry per request, in order; it closes after the last), counting connections.
async fn per_connection(answers: fn(usize) -> Vec<&'static [u8]>) -> RawUpstream {
    raw::upstream(move |mut s, n| async move {
        for answer in answers(n) {
            let Some((head, pre)) = raw::read_head(&mut s).await else {
                return;
            };
            let _ = raw::read_body(&mut s, &head, pre).await;
            if s.write_all(answer).await.is_err() {
                return;
            }
            // A body delimited by the close ends only with it.
            let text = String::from_utf8_lossy(answer).to_ascii_lowercase();
            if !text.contains("content-length") && !text.contains("chunked") {
                let _ = s.shutdown().await;
            }
        }
        // Keep the connection open until the proxy closes it (bounded).
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut sink)).await;
    })
    .await
}

/// What a connection that should not have been reused answers a second request with.
const WRONG: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwrong";

async fn get(proxy: &Proxy, path: &str) -> raw::RawResp {
    raw::exchange(proxy.addr.unwrap(), &raw::get(path, "t", &[])).await
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let up =
        per_connection(|_| vec![&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]; 3]).await;
    let proxy = both(&up, &[]).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy, "/codec/a").await.text(), "ok");
    }
    assert_eq!(
        up.accepted(),
        1,
        "sequential requests should share one connection"
    );
}

#[tokio::test]
async fn bytes_after_a_complete_response_close_the_connection() {
    // The first connection sends a second, unasked-for response right behind the first (and
    // would answer a second request with `wrong`).
    let up = per_connection(|n| {
        if n == 0 {
            vec![
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"[..],
                WRONG,
            ]
        } else {
            vec![&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"[..]]
        }
    })
    .await;
    let proxy = both(&up, &[]).await;
    assert_eq!(get(&proxy, "/codec/a").await.text(), "ok");
    assert_eq!(get(&proxy, "/codec/b").await.text(), "fresh");
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn ambiguous_exchanges_are_never_reused() {
    // Each first answer leaves its connection unusable; the second connection answers right.
    for first in [
        &b"HTTP/1.1 200 OK\r\n\r\nclose-delimited"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nuntil close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nclose-delimited",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nEVIL",
    ] {
        static FIRST: Mutex<&[u8]> = Mutex::new(&[]);
        *FIRST.lock().unwrap() = first;
        let up = per_connection(|n| {
            if n == 0 {
                vec![*FIRST.lock().unwrap(), WRONG]
            } else {
                vec![&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nright"[..]]
            }
        })
        .await;
        let proxy = both(&up, &[]).await;
        let _ = get(&proxy, "/codec/a").await;
        let second = get(&proxy, "/codec/b").await;
        assert_eq!(
            second.text(),
            "right",
            "after {:?}",
            String::from_utf8_lossy(first)
        );
        assert_eq!(
            up.accepted(),
            2,
            "after {:?}",
            String::from_utf8_lossy(first)
        );
    }
}

/// An HTTP/1.0 upstream that keeps a connection open when asked to, as such servers do: a
/// request in HTTP/1.1, or in HTTP/1.0 with `Connection: keep-alive`, gets `Connection:
/// keep-alive` and a Content-Length (or, for `close_delimited`, a body ended by the close);
/// an HTTP/1.0 request without it gets an answer and the close. Records each request line's
/// method and version with its connection's number and `Connection` lines.
async fn http10_keep_alive(close_delimited: bool) -> (RawUpstream, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let store = lines.clone();
    let up = raw::upstream(move |mut s, n| {
        let store = store.clone();
        async move {
            while let Some((head, pre)) = raw::read_head(&mut s).await {
                let _ = raw::read_body(&mut s, &head, pre).await;
                let line = head.lines().next().unwrap_or("").to_string();
                let method = line.split(' ').next().unwrap_or("");
                let version = line.rsplit(' ').next().unwrap_or("");
                let connection: Vec<String> = head
                    .to_ascii_lowercase()
                    .lines()
                    .filter(|l| l.starts_with("connection:"))
                    .map(|l| l.trim().to_string())
                    .collect();
                let keep =
                    version == "HTTP/1.1" || connection.iter().any(|l| l.contains("keep-alive"));
                let mut seen = format!("{n} {method} {version}");
                for c in connection {
                    seen.push_str(&format!(" [{c}]"));
                }
                store.lock().unwrap().push(seen);
                let answer: &[u8] = match (keep, close_delimited) {
                    (true, false) => {
                        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
                    }
                    (true, true) => b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nok",
                    (false, _) => b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
                };
                if s.write_all(answer).await.is_err() || !keep || close_delimited {
                    let _ = s.shutdown().await;
                    return;
                }
            }
        }
    })
    .await;
    (up, lines)
}

/// Three sequential GETs through `client` to a fresh [`http10_keep_alive`] upstream: the
/// request lines it saw (with connection numbers) and the connections it accepted.
async fn three_to_http10(client: &str, close_delimited: bool) -> (Vec<String>, usize) {
    let (up, lines) = http10_keep_alive(close_delimited).await;
    let proxy = both(&up, &[]).await;
    for p in ["a", "b", "c"] {
        assert_eq!(get(&proxy, &format!("/{client}/{p}")).await.text(), "ok");
    }
    let seen = lines.lock().unwrap().clone();
    (seen, up.accepted())
}

#[tokio::test]
async fn http10_keep_alive_is_pooled_as_hyper_pools_it() {
    // A 1.0 response with `Connection: keep-alive` and a Content-Length leaves the connection
    // reusable; the next requests on it go as HTTP/1.0 with `Connection: keep-alive`
    // (hyper's `enforce_version`), so the upstream keeps it open for all three.
    let (codec, codec_conns) = three_to_http10("codec", false).await;
    assert_eq!(
        codec,
        [
            "0 GET HTTP/1.1",
            "0 GET HTTP/1.0 [connection: keep-alive]",
            "0 GET HTTP/1.0 [connection: keep-alive]"
        ],
        "the codec's requests"
    );
    assert_eq!(codec_conns, 1);
    let (hyper, hyper_conns) = three_to_http10("hyper", false).await;
    assert_eq!(hyper, codec, "hyper's client and the codec differ");
    assert_eq!(hyper_conns, codec_conns);
    // A close-delimited 1.0 body ends with the connection: never reused.
    let (codec, codec_conns) = three_to_http10("codec", true).await;
    assert_eq!(
        codec,
        ["0 GET HTTP/1.1", "1 GET HTTP/1.1", "2 GET HTTP/1.1"]
    );
    assert_eq!(codec_conns, 3);
    let (hyper, _) = three_to_http10("hyper", true).await;
    assert_eq!(hyper, codec, "hyper's client and the codec differ");
}

#[tokio::test]
async fn a_chunked_request_body_never_goes_to_an_http10_peer() {
    // The pooled connection's peer answered with HTTP/1.0, which has no chunked coding: a
    // chunked request goes to a new connection (in HTTP/1.1, as to any new peer), whole.
    let (up, lines) = http10_keep_alive(false).await;
    let proxy = both(&up, &[]).await;
    assert_eq!(get(&proxy, "/codec/a").await.text(), "ok");
    let chunked = b"POST /codec/b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nbody\r\n0\r\n\r\n";
    assert_eq!(
        raw::exchange(proxy.addr.unwrap(), chunked).await.text(),
        "ok"
    );
    assert_eq!(
        lines.lock().unwrap().clone(),
        ["0 GET HTTP/1.1", "1 POST HTTP/1.1"]
    );
    // A body of known length may go on it (as HTTP/1.0 with its Content-Length).
    let (up, lines) = http10_keep_alive(false).await;
    let proxy = both(&up, &[]).await;
    assert_eq!(get(&proxy, "/codec/a").await.text(), "ok");
    let sized =
        b"POST /codec/b HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody";
    assert_eq!(raw::exchange(proxy.addr.unwrap(), sized).await.text(), "ok");
    assert_eq!(
        lines.lock().unwrap().clone(),
        ["0 GET HTTP/1.1", "0 POST HTTP/1.0 [connection: keep-alive]"]
    );
}

#[tokio::test]
async fn a_response_not_read_to_its_end_closes_the_upstream_connection() {
    let closed = Arc::new(tokio::sync::Notify::new());
    let seen = closed.clone();
    let up = raw::upstream(move |mut s, _| {
        let seen = seen.clone();
        async move {
            let Some(_) = raw::read_head(&mut s).await else {
                return;
            };
            let body = vec![b'x'; 4 << 20];
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes()).await;
            // Blocks once the buffers are full; fails when the proxy closes.
            if s.write_all(&body).await.is_err() {
                seen.notify_one();
                return;
            }
            let mut sink = [0u8; 64];
            if matches!(s.read(&mut sink).await, Ok(0) | Err(_)) {
                seen.notify_one();
            }
        }
    })
    .await;
    let proxy = both(&up, &[]).await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    s.write_all(b"GET /codec/big HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let n = s.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    drop(s);
    tokio::time::timeout(Duration::from_secs(10), closed.notified())
        .await
        .expect("the upstream connection stayed open after the client went away");
}

#[tokio::test]
async fn junk_while_idle_drops_the_pooled_connection() {
    let junk = Arc::new(tokio::sync::Notify::new());
    let written = Arc::new(tokio::sync::Notify::new());
    let (send_junk, done) = (junk.clone(), written.clone());
    let up = raw::upstream(move |mut s, n| {
        let (send_junk, done) = (send_junk.clone(), done.clone());
        async move {
            let Some(_) = raw::read_head(&mut s).await else {
                return;
            };
            if n == 0 {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                send_junk.notified().await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
                    .await;
                done.notify_one();
                let mut sink = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut sink)).await;
            } else {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nright")
                    .await;
            }
        }
    })
    .await;
    let proxy = both(&up, &[]).await;
    assert_eq!(get(&proxy, "/codec/a").await.text(), "ok");
    junk.notify_one();
    // On loopback the junk is in the proxy's socket once written, before the next request's
    // connection is even opened: the pooled connection is readable while idle and is
    // dropped at checkout.
    tokio::time::timeout(Duration::from_secs(10), written.notified())
        .await
        .expect("the junk was not written");
    assert_eq!(get(&proxy, "/codec/b").await.text(), "right");
    assert_eq!(up.accepted(), 2);
}

// --- request bodies ---

/// An upstream that records each request body it reads, then answers `200 got`.
async fn recording() -> (RawUpstream, Arc<Mutex<Vec<Vec<u8>>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = bodies.clone();
    let up = raw::answering(
        move |_, body| {
            store.lock().unwrap().push(body);
            async { &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ngot"[..] }
        },
        || (),
    )
    .await;
    (up, bodies)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn request_bodies_arrive_byte_exact() {
    let (up, bodies) = recording().await;
    let proxy = both(&up, &[]).await;
    let addr = proxy.addr.unwrap();
    let big = pattern(300_000);
    // Content-Length.
    let mut req = format!(
        "POST /codec/cl HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    assert_eq!(raw::exchange(addr, &req).await.text(), "got");
    // Chunked, in uneven chunks, on a GET (forwarded too).
    let mut req = b"GET /codec/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for part in big.chunks(7001) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw::exchange(addr, &req).await.text(), "got");
    let got = bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert!(got[0] == big, "Content-Length body differs");
    assert!(got[1] == big, "chunked body differs");
}

#[tokio::test]
async fn request_trailers_reach_the_upstream_alike() {
    // The raw bytes after each request's head: the chunked body as it came, trailers and all.
    let raw_bodies = Arc::new(Mutex::new(Vec::new()));
    let store = raw_bodies.clone();
    let up = raw::upstream(move |mut s, _| {
        let store = store.clone();
        async move {
            while let Some((_, mut data)) = raw::read_head(&mut s).await {
                let mut chunk = [0u8; 4096];
                while !(data.ends_with(b"\r\n\r\n") && data.windows(3).any(|w| w == b"0\r\n")) {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&chunk[..n]),
                    }
                }
                store.lock().unwrap().push(data);
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ngot")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = both(&up, &[]).await;
    for client in ["hyper", "codec"] {
        let req = format!(
            "POST /{client}/t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTrailer: X-T, Authorization\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\nAuthorization: secret\r\nX-U: 2\r\n\r\n"
        );
        assert_eq!(
            raw::exchange(proxy.addr.unwrap(), req.as_bytes())
                .await
                .text(),
            "got",
            "{client}"
        );
    }
    let got = raw_bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(
        String::from_utf8_lossy(&got[1]),
        String::from_utf8_lossy(&got[0]),
        "the codec sent other bytes than hyper's client"
    );
    // The proxy drops `Trailer` as hop-by-hop, so neither client forwards any trailer.
    assert_eq!(got[1], b"5\r\nhello\r\n0\r\n\r\n");
}

#[tokio::test]
async fn early_response_while_uploading_is_delivered() {
    let up = raw::upstream(|mut s, _| async move {
        let Some(_) = raw::read_head(&mut s).await else {
            return;
        };
        let _ = s
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
            .await;
        // Drain until the proxy closes, so the close is not a reset.
        let mut sink = vec![0u8; 65536];
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    })
    .await;
    let proxy = both(&up, &[]).await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    let len = 64 << 20;
    let head = format!("POST /codec/up HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'u'; 65536];
        let mut sent = 0;
        while sent < len {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
    });
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.windows(8).any(|w| w == b"too big!") {
                break;
            }
        }
        got
    })
    .await
    .expect("no early response");
    writer.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.ends_with("too big!"), "{text}");
}

// --- retry rule, upgrades ---

#[tokio::test]
async fn a_pooled_connection_closed_unanswered_is_retried_only_without_a_body() {
    // Connection 0 answers its first request, then hangs up on the next one unanswered (the
    // keep-alive race with an upstream's idle close); later connections answer `fresh`.
    let up = raw::upstream(|mut s, n| async move {
        let Some((head, pre)) = raw::read_head(&mut s).await else {
            return;
        };
        let _ = raw::read_body(&mut s, &head, pre).await;
        if n == 0 {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            let _ = raw::read_head(&mut s).await;
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
            .await;
    })
    .await;
    let proxy = both(&up, &[]).await;
    assert_eq!(get(&proxy, "/codec/a").await.text(), "ok");
    // A GET without a body goes to a new connection.
    assert_eq!(get(&proxy, "/codec/b").await.text(), "fresh");
    assert_eq!(up.accepted(), 2);

    // A request with a body is never sent twice: 502.
    let up = raw::upstream(|mut s, n| async move {
        let Some((head, pre)) = raw::read_head(&mut s).await else {
            return;
        };
        let _ = raw::read_body(&mut s, &head, pre).await;
        if n == 0 {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            if let Some((head, pre)) = raw::read_head(&mut s).await {
                let _ = raw::read_body(&mut s, &head, pre).await;
            }
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
            .await;
    })
    .await;
    let proxy = both(&up, &[]).await;
    assert_eq!(get(&proxy, "/codec/a").await.text(), "ok");
    let post =
        b"POST /codec/b HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody";
    assert_eq!(raw::exchange(proxy.addr.unwrap(), post).await.status, 502);
    assert_eq!(up.accepted(), 1, "a request with a body was sent again");
}

/// Two addresses, A then B, through the codec. Request 1 goes to A (round-robin starts
/// there) and its connection is pooled; request 2 goes to B. Then A's listener closes, and
/// A's pooled connection reads the next request (`third`) and hangs up unanswered. Returns
/// what the client got for `third`, the request lines and `Host`s A's connection read, and
/// those B read, with `@A` and `@B` for the addresses' authorities (`rewrite_host:
/// upstream`, so a request that moves from A to B must have its head encoded again).
async fn stale_then_refused(third: &[u8]) -> (raw::RawResp, Vec<String>, Vec<String>) {
    let a_seen = Arc::new(Mutex::new(Vec::new()));
    let store = a_seen.clone();
    let a = raw::upstream(move |mut s, _| {
        let store = store.clone();
        async move {
            let mut first = true;
            while let Some((head, pre)) = raw::read_head(&mut s).await {
                let _ = raw::read_body(&mut s, &head, pre).await;
                store.lock().unwrap().push(line_and_host(&head));
                if !first {
                    return;
                }
                first = false;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
                    .await;
            }
        }
    })
    .await;
    let b_seen = Arc::new(Mutex::new(Vec::new()));
    let store = b_seen.clone();
    let b = raw::answering(
        move |head, _| {
            store.lock().unwrap().push(line_and_host(&head));
            async { &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"[..] }
        },
        || (),
    )
    .await;
    let proxy = Scenario::new()
        .server(&["workers: 1"])
        .upstream_at("c", &[a.url(), b.url()], &["client: codec"])
        .route(
            Route::open("/codec")
                .name("codec")
                .upstream("c")
                .raw("rewrite_host", "upstream"),
        )
        .start()
        .await;
    assert_eq!(get(&proxy, "/codec/1").await.text(), "a");
    assert_eq!(get(&proxy, "/codec/2").await.text(), "b");
    // Closes A's listener (its accepted connection lives on); wait until it refuses.
    let (a_addr, b_addr) = (a.addr, b.addr);
    drop(a);
    tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(a_addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("A's listener did not close");
    let resp = raw::exchange(proxy.addr.unwrap(), third).await;
    let names = |seen: &Mutex<Vec<String>>| -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|l| {
                l.replace(&a_addr.to_string(), "A")
                    .replace(&b_addr.to_string(), "B")
            })
            .collect()
    };
    (resp, names(&a_seen), names(&b_seen))
}

/// `METHOD target VERSION @host` of a request head.
fn line_and_host(head: &str) -> String {
    let mut lines = head.lines();
    let line = lines.next().unwrap_or("");
    let host = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim())
        .unwrap_or("");
    format!("{line} @{host}")
}

#[tokio::test]
async fn a_request_unsent_on_a_stale_connection_goes_to_the_next_address_once() {
    // A bodiless GET that A's pooled connection took but never answered may be sent again
    // (the retry rule); A refuses a new connection, so B gets it, exactly once and with its
    // own Host.
    let (resp, a_seen, b_seen) = stale_then_refused(&raw::get("/codec/3", "t", &[])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "b");
    assert_eq!(
        a_seen,
        ["GET /codec/1 HTTP/1.1 @A", "GET /codec/3 HTTP/1.1 @A"]
    );
    assert_eq!(
        b_seen,
        ["GET /codec/2 HTTP/1.1 @B", "GET /codec/3 HTTP/1.1 @B"]
    );
}

#[tokio::test]
async fn a_request_with_a_body_is_not_sent_to_the_next_address() {
    // A POST with a body that A's connection took is never sent again, to any address.
    let post =
        b"POST /codec/3 HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody";
    let (resp, a_seen, b_seen) = stale_then_refused(post).await;
    assert_eq!(resp.status, 502);
    assert_eq!(
        a_seen,
        ["GET /codec/1 HTTP/1.1 @A", "POST /codec/3 HTTP/1.1 @A"]
    );
    assert_eq!(b_seen, ["GET /codec/2 HTTP/1.1 @B"]);
}

#[tokio::test]
async fn bytes_right_after_the_101_reach_the_client_first() {
    let up = raw::upstream(|mut s, _| async move {
        let Some(_) = raw::read_head(&mut s).await else {
            return;
        };
        // The 101 and the first tunnel bytes in one write.
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-test\r\nConnection: Upgrade\r\n\r\nEARLY")
            .await;
        let mut buf = [0u8; 4];
        if s.read_exact(&mut buf).await.is_ok() && &buf == b"ping" {
            let _ = s.write_all(b"pong").await;
        }
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut sink)).await;
    })
    .await;
    let proxy = both(&up, &[]).await;
    for path in ["/hyper/up", "/codec/up"] {
        let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: x-test\r\nConnection: Upgrade\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"EARLY") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "{path}: closed: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            got
        })
        .await
        .unwrap_or_else(|_| panic!("{path}: no tunnel bytes"));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 101"), "{path}: {text}");
        s.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut pong))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer through the tunnel"))
            .unwrap();
        assert_eq!(&pong, b"pong", "{path}");
    }
}

/// Two bursts of `N` requests in flight at once, past `pool_max_idle: 2`, through `path`:
/// the second burst reuses the first one's connections (none closed on return, none opened
/// again), and once idle the pool trims back to its bound.
async fn burst_past_the_bound(path: &str) {
    const N: usize = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let closed = Arc::new(AtomicUsize::new(0));
    let (b, c) = (barrier.clone(), closed.clone());
    // Answers only when N requests wait at once, so each burst needs N connections.
    let up = raw::answering(
        move |_, _| {
            let b = b.clone();
            async move {
                b.wait().await;
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]
            }
        },
        move || {
            c.fetch_add(1, Ordering::SeqCst);
        },
    )
    .await;
    let proxy = both(&up, &["pool_max_idle: 2"]).await;
    let addr = proxy.addr.unwrap();
    for burst in 0..2 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..N {
            let request = raw::get(path, "t", &[]);
            set.spawn(async move { raw::exchange(addr, &request).await });
        }
        let replies = tokio::time::timeout(Duration::from_secs(10), set.join_all())
            .await
            .unwrap_or_else(|_| panic!("{path}: burst {burst} not answered"));
        assert!(replies.iter().all(|r| r.text() == "ok"), "{path}");
    }
    assert_eq!(
        up.accepted(),
        N,
        "{path}: the second burst reused the first one's connections"
    );
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "{path}: none closed on return"
    );
    // Idle past the grace: all but pool_max_idle are closed (the rest stay for
    // pool_idle_timeout, 90 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while closed.load(Ordering::SeqCst) < N - 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: the pool never trimmed back to its bound"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed.load(Ordering::SeqCst), N - 2, "{path}");
}

#[tokio::test]
async fn a_burst_past_pool_max_idle_reuses_its_connections_then_trims_to_the_bound() {
    burst_past_the_bound("/codec/a").await;
    burst_past_the_bound("/hyper/a").await;
}

/// The codec's response timer is armed once per connection and moved only when it fires:
/// a later request on a pooled connection gets its own full `response_timeout`, not what was
/// left of the first request's, and still times out at its own deadline.
#[tokio::test]
async fn a_pooled_connection_gives_each_request_its_own_response_timeout() {
    // Answers `/codec/<ms>` after <ms> milliseconds.
    let up = raw::answering(
        |head, _| async move {
            let ms: u64 = head
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.rsplit('/').next())
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]
        },
        || (),
    )
    .await;
    let proxy = both(&up, &["response_timeout: 2s"]).await;
    let addr = proxy.addr.unwrap();
    let ask = async |ms: u64| {
        let request = raw::get(&format!("/codec/{ms}"), "t", &[]);
        tokio::time::timeout(Duration::from_secs(10), raw::exchange(addr, &request))
            .await
            .expect("an answer")
    };
    let started = tokio::time::Instant::now();
    assert_eq!(ask(0).await.status, 200);
    // The first request's deadline (2 s from its start) passes while the second waits.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = ask(1200).await;
    assert!(started.elapsed() > Duration::from_secs(2));
    assert_eq!(
        second.status, 200,
        "timed out at an earlier request's deadline"
    );
    // And a request slower than its own timeout still times out.
    assert_eq!(ask(3000).await.status, 504);
    assert_eq!(up.accepted(), 1, "all on one pooled connection");
}
