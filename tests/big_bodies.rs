//! 256 MiB through the real `portcullis` binary in each direction, streamed at both ends, and
//! the proxy's peak resident memory (VmHWM) stays small: bodies are streamed, never buffered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http::Request;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use support::process::{self, Binary};
use support::scenario::Scenario;
use support::{client, temp_dir, upstream, wait_until};
use tokio::net::TcpStream;

/// 256 MiB.
const SIZE: u64 = 256 * 1024 * 1024;
/// Upload chunk size; every chunk is a clone of one shared buffer.
const CHUNK: usize = 64 * 1024;
/// Peak resident memory (VmHWM) allowed for the proxy process, in KiB.
///
/// Measured with the debug binary (Linux, 2 vCPUs): 17.4-17.8 MiB just after start-up and
/// 19.9-20.7 MiB after both 256 MiB transfers (5 runs); after bearer auth landed, 21.1 MiB at
/// start-up and 23.3 MiB after. The transfers themselves cost 2-3 MiB. The bound is 64 MiB,
/// about 3x the measured peak; a proxy that buffered a quarter of one body would exceed it.
/// (A mutation that collects the response body before sending it fails this test.)
const MAX_HWM_KIB: u64 = 64 * 1024;
/// Growth of VmHWM during the transfers allowed, in KiB (measured: ~3 MiB), so the check
/// stays meaningful if start-up memory grows with new features.
const MAX_GROWTH_KIB: u64 = 32 * 1024;

/// Peak resident set size (`VmHWM`) of the process, in KiB.
fn vm_hwm_kib(proxy: &Binary) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc status:\n{status}"))
}

/// Starts `portcullis run --config FILE` in front of `upstream`; waits for /readyz.
async fn spawn_proxy(upstream: &str, dir: &Path) -> Binary {
    let yaml = Scenario::binary_pass_through(upstream, &["response_timeout: 60s"]).to_yaml();
    process::spawn(dir, &yaml).await
}

/// An HTTP/1.1 connection to `addr`.
async fn connect<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Uploads `SIZE` bytes to `/sink` from a generated stream; returns what the upstream counted.
async fn upload(addr: SocketAddr) -> u64 {
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    let chunks = stream::unfold(SIZE, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64) as usize;
            Some((
                Ok::<_, Infallible>(Frame::data(chunk.slice(..n))),
                left - n as u64,
            ))
        }
    });
    let req = Request::post("/sink")
        .header("host", "big.example")
        .header("content-length", SIZE)
        .body(StreamBody::new(chunks))
        .unwrap();
    let mut sender = connect(addr).await;
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    j["bytes"].as_u64().unwrap()
}

/// Downloads `/source?bytes=SIZE`, counting bytes without keeping them.
async fn download(addr: SocketAddr) -> u64 {
    let req = Request::get(format!("/source?bytes={SIZE}"))
        .header("host", "big.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut sender = connect(addr).await;
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], SIZE.to_string().as_str());
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            assert!(d.iter().all(|&b| b == b'x'), "corrupted download at {n}");
            n += d.len() as u64;
        }
    }
    n
}

/// Runs `transfer` (at most 120 s, else panics naming `what`); returns its result and how
/// long it took.
async fn timed<T>(what: &str, transfer: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(120), transfer)
        .await
        .unwrap_or_else(|_| panic!("{what} took over 120 s"));
    (out, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_256_mib_each_way_in_bounded_memory() {
    let up = upstream::start("big").await;
    let dir = temp_dir("big-bodies");
    let proxy = spawn_proxy(&up.url(), &dir).await;
    let at_start = vm_hwm_kib(&proxy);

    let (sent, up_time) = timed("upload", upload(proxy.addr)).await;
    assert_eq!(sent, SIZE, "the upstream did not receive every byte");

    let (got, down_time) = timed("download", download(proxy.addr)).await;
    assert_eq!(got, SIZE, "the client did not receive every byte");

    // The proxy's own byte counters saw both bodies go through.
    let admin = proxy.admin;
    wait_until(Duration::from_secs(10), || async {
        let m = client::get(&format!("http://{admin}/metrics")).await;
        let m = String::from_utf8_lossy(&m.body).into_owned();
        support::metric_value(&m, "portcullis_upstream_bytes_total{direction=\"request\"}")
            >= SIZE as f64
            && support::metric_value(
                &m,
                "portcullis_upstream_bytes_total{direction=\"response\"}",
            ) >= SIZE as f64
    })
    .await;

    let peak = vm_hwm_kib(&proxy);
    println!(
        "proxy VmHWM: {:.1} MiB at start, {:.1} MiB after 2 x 256 MiB (bound {} MiB, growth \
         bound {} MiB); upload {up_time:.2?}, download {down_time:.2?}",
        at_start as f64 / 1024.0,
        peak as f64 / 1024.0,
        MAX_HWM_KIB / 1024,
        MAX_GROWTH_KIB / 1024,
    );
    assert!(
        peak < MAX_HWM_KIB,
        "proxy peak RSS {peak} KiB is over the {MAX_HWM_KIB} KiB bound: bodies are being buffered"
    );
    assert!(
        peak - at_start < MAX_GROWTH_KIB,
        "proxy peak RSS grew by {} KiB during the transfers (bound {MAX_GROWTH_KIB} KiB)",
        peak - at_start
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
