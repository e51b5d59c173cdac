//! Test support: run Portcullis in-process on 127.0.0.1:0, a mock upstream with behaviours
//! chosen by path, generated certificates, small clients. Everything binds loopback port 0
//! and waits with deadlines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod certs;
pub mod client;
pub mod front;
pub mod idp;
pub mod paths;
pub mod process;
pub mod raw;
pub mod redis;
pub mod scenario;
pub mod upstream;
pub mod verifiers;
pub mod webdriver;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portcullis::{Config, Server};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// A running in-process Portcullis.
pub struct Proxy {
    /// Address of the listener named `plain` (if any).
    pub addr: Option<SocketAddr>,
    /// Address of the listener named `public` (if any; the TLS one in tests).
    pub tls_addr: Option<SocketAddr>,
    /// Admin address.
    pub admin: SocketAddr,
    /// Notify to reload certificates (what SIGHUP does).
    pub reload: Arc<Notify>,
    /// Applies a new configuration (what SIGHUP does with the config file).
    pub reloader: portcullis::reload::Reloader,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// The plain listener's base URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr.expect("no plain listener"), path)
    }

    /// Starts shutdown and returns the handle to await its end.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("already shut down")
    }

    /// Shuts down and waits (bounded).
    pub async fn shutdown(mut self) {
        let task = self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("shutdown took too long")
            .ok();
    }

    /// The admin /metrics text.
    pub async fn metrics(&self) -> String {
        let r = client::get(&format!("http://{}/metrics", self.admin)).await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// Polls /metrics until the series `series` reads `want` (panics naming `what` once
    /// `deadline` passes); returns that /metrics text.
    pub async fn wait_metric(
        &self,
        deadline: Duration,
        what: &str,
        series: &str,
        want: f64,
    ) -> String {
        wait_for(deadline, &format!("{what} ({series} = {want})"), || async {
            let m = self.metrics().await;
            (metric_value(&m, series) == want).then_some(m)
        })
        .await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Starts Portcullis from YAML. Listeners should bind `127.0.0.1:0`; `admin` is set to
/// `127.0.0.1:0` when the YAML has none.
pub async fn start_proxy(yaml: &str) -> Proxy {
    start_with(yaml, Arc::new(portcullis::clock::TokioClock)).await
}

async fn start_with(yaml: &str, clock: portcullis::clock::SharedClock) -> Proxy {
    let proxy = start_unready(yaml, clock).await;
    let admin = proxy.admin;
    // Ready when /readyz says so (bounded).
    wait_until(Duration::from_secs(10), || async {
        client::try_get(&format!("http://{admin}/readyz"))
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
    proxy
}

/// Like [`start_proxy_with_clock`], without waiting for `/readyz` (for tests of start-up
/// without keys). The admin listener answers once this returns.
pub async fn start_proxy_unready(yaml: &str, clock: portcullis::clock::ManualClock) -> Proxy {
    let proxy = start_unready(yaml, Arc::new(clock)).await;
    let admin = proxy.admin;
    wait_until(Duration::from_secs(10), || async {
        client::try_get(&format!("http://{admin}/healthz"))
            .await
            .is_some()
    })
    .await;
    proxy
}

async fn start_unready(yaml: &str, clock: portcullis::clock::SharedClock) -> Proxy {
    let yaml = if yaml.contains("\nadmin:") || yaml.starts_with("admin:") {
        yaml.to_string()
    } else {
        format!("{yaml}\nadmin: {{ address: \"127.0.0.1:0\" }}\n")
    };
    let config =
        Config::from_yaml(&yaml, []).unwrap_or_else(|e| panic!("bad test config: {e}\n{yaml}"));
    let server = Server::bind_with_clock(config, clock)
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = server.local_addr("plain");
    let tls_addr = server.local_addr("public");
    let admin = server.admin_addr().unwrap();
    let reload = server.reload_handle();
    let reloader = server.reloader();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Proxy {
        addr,
        tls_addr,
        admin,
        reload,
        reloader,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// Polls `f` until it returns `Some` or `deadline` passes (then panics with `what`).
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `f` until it is true or `deadline` passes (then panics).
pub async fn wait_until<F, Fut>(deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh temporary directory (removed by the OS eventually; tests write only small files).
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-test-{tag}-{}-{n}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback address where nothing listens (bound then closed).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The value of the series `name{labels}` (labels in the order Prometheus prints them:
/// sorted by name). Panics when the series is missing, so a renamed metric or label fails the
/// test instead of reading as 0.
pub fn metric_value(text: &str, series: &str) -> f64 {
    let series = series.trim();
    find_series(text, series).unwrap_or_else(|| {
        let name = series.split('{').next().unwrap_or(series);
        let similar: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
        panic!(
            "metric series {series} is missing; series of {name}:\n{}",
            similar.join("\n")
        )
    })
}

/// Asserts that the series `series` reads `want` in the /metrics text `text` (the message
/// names the series and shows the text).
pub fn assert_metric(text: &str, series: &str, want: f64) {
    assert_eq!(metric_value(text, series), want, "{series} in\n{text}");
}

/// Whether the series `name{labels}` is present at all.
pub fn has_series(text: &str, series: &str) -> bool {
    find_series(text, series.trim()).is_some()
}

fn find_series(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse::<f64>().ok())?
    })
}

/// Like [`start_proxy`], with the clock the IdP code uses (tests move it instead of waiting).
pub async fn start_proxy_with_clock(yaml: &str, clock: portcullis::clock::ManualClock) -> Proxy {
    start_with(yaml, Arc::new(clock)).await
}
