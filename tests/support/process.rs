//! The real binary as a child process: started on `127.0.0.1:0` (no free-port-then-bind race),
//! its bound addresses read from its own JSON "listening" log lines, killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{client, wait_for};

/// How long start-up may take.
const START: Duration = Duration::from_secs(30);

/// A running `portcullis` child.
pub struct Binary {
    /// The child process (killed on drop if still running).
    pub child: Child,
    /// The listener named `plain`.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Its stderr (the log).
    pub stderr: PathBuf,
}

/// A `portcullis` command with no `PORTCULLIS_*` or `RUST_LOG` from this process's environment,
/// run in `dir`.
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd
}

/// Writes `yaml` to `dir/portcullis.yaml` and runs `portcullis run --config` on it. The YAML
/// must bind its `plain` listener and `admin` on `127.0.0.1:0` and log JSON at `info` or
/// lower (`log: { format: json, level: info }`). Waits until both addresses are logged and
/// `/readyz` answers 200.
pub async fn spawn(dir: &Path, yaml: &str) -> Binary {
    spawn_with(dir, yaml, command(dir)).await
}

/// Like [`spawn`], with a prepared command (extra environment, arguments before `run`).
pub async fn spawn_with(dir: &Path, yaml: &str, mut cmd: Command) -> Binary {
    let config = dir.join("portcullis.yaml");
    std::fs::write(&config, yaml).unwrap();
    let stderr = dir.join("stderr.log");
    let child = cmd
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut bin = Binary {
        child,
        addr: "0.0.0.0:0".parse().unwrap(),
        admin: "0.0.0.0:0".parse().unwrap(),
        stderr,
    };
    let (addr, admin) = wait_for(START, "portcullis logs its addresses", || {
        if let Some(e) = bin.exited_early() {
            panic!("{e}");
        }
        let log = bin.log();
        std::future::ready(listening(&log, "plain").zip(listening(&log, "admin")))
    })
    .await;
    bin.addr = addr;
    bin.admin = admin;
    let url = format!("http://{admin}/readyz");
    wait_for(START, "portcullis ready", || {
        if let Some(e) = bin.exited_early() {
            panic!("{e}");
        }
        let url = url.clone();
        async move {
            client::try_get(&url)
                .await
                .is_some_and(|r| r.status == 200)
                .then_some(())
        }
    })
    .await;
    bin
}

/// The address a JSON log line `"listening"` gives for `listener`.
pub fn listening(log: &str, listener: &str) -> Option<SocketAddr> {
    log.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        // The JSON log flattens event fields into the line.
        let f = v.get("fields").unwrap_or(&v);
        (f.get("message")?.as_str()? == "listening" && f.get("listener")?.as_str()? == listener)
            .then(|| f.get("address")?.as_str()?.parse().ok())?
    })
}

impl Binary {
    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// A message when the child has exited.
    pub fn exited_early(&mut self) -> Option<String> {
        let status = self.child.try_wait().unwrap()?;
        Some(format!("portcullis exited ({status}): {}", self.log()))
    }

    /// Waits (bounded) for the child to exit and returns its exit code.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let status = wait_for(deadline, "portcullis exits", || {
            let s = self.child.try_wait().unwrap();
            async move { s }
        })
        .await;
        status.code()
    }

    /// Sends a signal (`TERM`, `HUP`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
