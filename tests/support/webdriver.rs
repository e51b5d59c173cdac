//! A minimal W3C WebDriver client for one headless-Chromium test: chromedriver on a free
//! loopback port, one session, navigation, element lookup, typing, clicks and page text.
//!
//! Nothing outlives the test: chromedriver runs in a process group of its own, which Chromium
//! and its helpers join, and the whole group is killed on drop (killing chromedriver alone
//! left the browser running, orphaned). [`Browser::quit`] first ends the session, so the
//! browser closes normally. `.ci/leftover-processes` checks this after `cargo test` in CI.
//!
//! Written here rather than taken from fantoccini: that crate's `webdriver` dependency pulls
//! second copies of `http` (0.2), `thiserror` (1) and ICU (1.5) into the build, for the dozen
//! JSON calls below.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::client::try_send;

/// The W3C web element identifier key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian installs them (packages chromium and chromium-driver).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether the browser test can run here. In CI a missing browser fails the test; elsewhere
/// it is skipped with a message.
pub fn available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: chromium and chromium-driver must be installed (.ci/run installs them)"
        );
        eprintln!(
            "skipped: {CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)"
        );
    }
    present
}

/// chromedriver and one browser session; both end on drop, with every process they started.
pub struct Browser {
    _driver: Driver,
    base: String,
    session: String,
}

/// The chromedriver process; on drop its whole process group is killed.
struct Driver {
    child: Child,
    /// chromedriver's process group (its pid), which the browser and its helpers join.
    group: Option<u32>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile in `profile`.
    pub async fn start(profile: &Path) -> Self {
        let port = super::redis::free_port(false);
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            group: child.id(),
            child,
        };
        let base = format!("http://127.0.0.1:{port}");
        super::wait_until(Duration::from_secs(20), || async {
            call_opt("GET", &format!("{base}/status"), None)
                .await
                .is_some_and(|v| v["value"]["ready"] == true)
        })
        .await;
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v = call("POST", &format!("{base}/session"), Some(caps)).await;
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Self {
            _driver: driver,
            base,
            session,
        }
    }

    /// Ends the session (chromedriver closes the browser), then everything as on drop.
    pub async fn quit(self) {
        call("DELETE", &self.url(""), None).await;
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/session/{}{tail}", self.base, self.session)
    }

    /// Loads `url` (returns when the page has loaded).
    pub async fn goto(&self, url: &str) {
        call("POST", &self.url("/url"), Some(json!({ "url": url }))).await;
    }

    /// The address the browser shows now.
    pub async fn current_url(&self) -> String {
        let v = call("GET", &self.url("/url"), None).await;
        v["value"].as_str().unwrap().to_string()
    }

    /// The element matching `css` (waits up to 10 s for it).
    pub async fn find(&self, css: &str) -> String {
        super::wait_for(Duration::from_secs(10), css, || async {
            let v = call_opt(
                "POST",
                &self.url("/element"),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
            v["value"][ELEMENT].as_str().map(str::to_string)
        })
        .await
    }

    /// Clears the element and types `text` into it.
    pub async fn type_into(&self, element: &str, text: &str) {
        call(
            "POST",
            &self.url(&format!("/element/{element}/clear")),
            Some(json!({})),
        )
        .await;
        call(
            "POST",
            &self.url(&format!("/element/{element}/value")),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Clicks the element.
    pub async fn click(&self, element: &str) {
        call(
            "POST",
            &self.url(&format!("/element/{element}/click")),
            Some(json!({})),
        )
        .await;
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        let v = call(
            "POST",
            &self.url("/execute/sync"),
            Some(json!({ "script": "return document.body ? document.body.innerText : ''", "args": [] })),
        )
        .await;
        v["value"].as_str().unwrap_or_default().to_string()
    }

    /// The browser's cookies for the current page, by name.
    pub async fn cookie_names(&self) -> Vec<String> {
        let v = call("GET", &self.url("/cookie"), None).await;
        v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver alone would leave the browser and its helpers behind
        // (Chromium's crashpad handlers, in sessions of their own, leave with the browser).
        if let Some(group) = self.group {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
    }
}

async fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    call_opt(method, url, body)
        .await
        .unwrap_or_else(|| panic!("webdriver {method} {url} failed"))
}

async fn call_opt(method: &str, url: &str, body: Option<Value>) -> Option<Value> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .ok()?;
    let resp = try_send(req).await?;
    let v: Value = serde_json::from_slice(&resp.body).ok()?;
    if resp.status != 200 {
        eprintln!("webdriver {method} {url}: {} {v}", resp.status);
        return None;
    }
    Some(v)
}
