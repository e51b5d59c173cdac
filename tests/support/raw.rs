//! A raw HTTP/1 client: the test writes the request bytes itself, so nothing between the test
//! and the proxy normalises the request line, the path or the headers. Reads exactly one
//! response (Content-Length, chunked, or to EOF) with a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response as read off the socket.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    /// Names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    /// The first value of `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Connects to `addr`, writes `request` verbatim and reads one response (10 s deadline).
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> RawResp {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        read_response(&mut s).await
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("raw exchange timed out")
}

/// Like [`exchange`] for a request with `Connection: close` to a peer that may refuse it
/// without any answer (a front proxy dropping a request line it cannot parse): reads until the
/// peer closes (10 s deadline); `None` when it closed without a response head.
pub async fn try_exchange(addr: SocketAddr, request: &[u8]) -> Option<RawResp> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
    parse_response(&got)
}

/// One whole response in `data` (head, then the body by Content-Length, chunked coding or
/// to the end); `None` when `data` has no complete head.
pub fn parse_response(data: &[u8]) -> Option<RawResp> {
    let head_end = find(data, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &data[head_end + 4..];
    let value = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let body = if let Some(len) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest[..len.min(rest.len())].to_vec()
    } else if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest).unwrap_or_default()
    } else {
        rest.to_vec()
    };
    Some(RawResp {
        status,
        headers,
        body,
    })
}

/// Reads from `s` until the peer closes it (EOF or a reset) and returns the bytes that came
/// before; panics when it is still open after `deadline`.
pub async fn read_until_closed(s: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let fut = async {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(deadline, fut)
        .await
        .expect("the peer did not close the connection in time")
}

/// Connects to `addr`, writes `request` (the proxy may have closed already) and expects the
/// connection closed without an answer within `deadline`; panics naming `what` otherwise.
pub async fn closed_without_answer(
    addr: SocketAddr,
    request: &[u8],
    deadline: Duration,
    what: &str,
) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut chunk = [0u8; 1024];
    let n = tokio::time::timeout(deadline, s.read(&mut chunk))
        .await
        .unwrap_or_else(|_| panic!("{what} was left hanging"))
        .unwrap_or(0);
    assert_eq!(n, 0, "{what}: {:?}", String::from_utf8_lossy(&chunk[..n]));
}

/// `GET <target> HTTP/1.1` with `Host: host`, `extra` header lines (each without CRLF) and
/// `Connection: close`.
pub fn get(target: &str, host: &str, extra: &[&str]) -> Vec<u8> {
    let mut r = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n");
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("Connection: close\r\n\r\n");
    r.into_bytes()
}

/// Reads one response from `s`: the head, then the body by Content-Length, chunked coding, or
/// to EOF. Panics on a malformed response or EOF before the head ends.
pub async fn read_response(s: &mut TcpStream) -> RawResp {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "EOF before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).unwrap().to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF inside the body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            if let Some(body) = dechunk(&rest) {
                break body;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF inside a chunked body");
            rest.extend_from_slice(&chunk[..n]);
        }
    } else if status == 101 || status == 204 || status == 304 {
        Vec::new()
    } else {
        s.read_to_end(&mut rest).await.unwrap();
        rest
    };
    RawResp {
        status,
        headers,
        body,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The decoded body once `data` holds the whole chunked body, else None.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n")?;
        let size_str = std::str::from_utf8(&data[..eol]).unwrap();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A raw upstream on 127.0.0.1:0: every accepted connection is handed to `serve` with its
/// number (0, 1, ...), so a test writes exactly the bytes it means to; connections are
/// counted.
pub struct RawUpstream {
    pub addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    /// `http://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a [`RawUpstream`] that runs `serve` on each connection.
pub async fn upstream<F, Fut>(serve: F) -> RawUpstream
where
    F: Fn(TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(serve(s, n));
        }
    });
    RawUpstream {
        addr,
        accepted,
        task,
    }
}

/// A [`RawUpstream`] that answers every request on every connection with the bytes
/// `answer` gives for its head and decoded body (awaited: it may wait), until the client
/// closes or a write fails; `on_close` runs as each connection ends.
pub async fn answering<F, Fut, C>(answer: F, on_close: C) -> RawUpstream
where
    F: Fn(String, Vec<u8>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = &'static [u8]> + Send,
    C: Fn() + Clone + Send + Sync + 'static,
{
    upstream(move |mut s, _| {
        let (answer, on_close) = (answer.clone(), on_close.clone());
        async move {
            while let Some((head, pre)) = read_head(&mut s).await {
                let body = read_body(&mut s, &head, pre).await;
                let reply = answer(head, body).await;
                if s.write_all(reply).await.is_err() {
                    break;
                }
            }
            on_close();
        }
    })
    .await
}

/// Reads one request head from `s` (through its blank line); returns it with the bytes read
/// past it. `None` when the peer closed first.
pub async fn read_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads a request body framed as `head` says (Content-Length or chunked), starting with
/// `pre` (bytes already read past the head); returns the decoded body.
pub async fn read_body(s: &mut TcpStream, head: &str, pre: Vec<u8>) -> Vec<u8> {
    let lower = head.to_ascii_lowercase();
    let value = |name: &str| {
        lower
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    let mut data = pre;
    let mut chunk = vec![0u8; 65536];
    if let Some(len) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while data.len() < len {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF inside the request body");
            data.extend_from_slice(&chunk[..n]);
        }
        data.truncate(len);
        return data;
    }
    if value("transfer-encoding").is_some_and(|v| v == "chunked") {
        loop {
            if let Some(body) = dechunk_all(&data) {
                return body;
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF inside a chunked request body");
            data.extend_from_slice(&chunk[..n]);
        }
    }
    data
}

/// A whole chunked body in `data` (through the last chunk and the final CRLF), else None.
fn dechunk_all(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n")?;
        let line = std::str::from_utf8(&data[..eol]).unwrap();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[eol + 2..];
        if size == 0 {
            return find(data, b"\r\n").map(|_| out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
