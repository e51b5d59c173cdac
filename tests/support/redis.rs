//! Real `redis-server` processes for the session-store tests: standalone on a unix socket,
//! TCP and TLS servers on free loopback ports, a Sentinel set and a three-master Cluster.
//! Every process is killed on drop; readiness is polled with deadlines. Never touches the
//! machine's 127.0.0.1:6379.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long a server gets to start accepting.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// One `redis-server` (or `redis-server --sentinel`).
pub struct RedisServer {
    child: Option<Child>,
    /// Its working directory (config, socket).
    pub dir: PathBuf,
    /// The unix socket (standalone only).
    pub socket: Option<PathBuf>,
    /// The TCP (or TLS) port, when it has one.
    pub port: Option<u16>,
    args: Vec<String>,
}

/// Fails the test (not a skip) when redis-server is missing: CI installs it.
pub fn require_redis() {
    let ok = std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "redis-server is not installed (apt-get install -y redis-server); the session store tests need it"
    );
}

/// A free loopback port (bound, then closed: a small race, fine for tests). With
/// `cluster_bus`, port + 10000 is free too.
pub fn free_port(cluster_bus: bool) -> u16 {
    for _ in 0..200 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !cluster_bus {
            return port;
        }
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair found");
}

fn base_args(dir: &Path) -> Vec<String> {
    [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.display().to_string()])
    .collect()
}

// === impl RedisServer ===

impl RedisServer {
    /// A standalone server on a unix socket only (`--port 0`).
    pub async fn unix(dir: &Path) -> Self {
        let socket = dir.join("r.sock");
        let mut args = base_args(dir);
        args.extend(
            ["--port", "0", "--unixsocket"]
                .iter()
                .map(|s| s.to_string())
                .chain([socket.display().to_string()])
                .chain(["--unixsocketperm".into(), "700".into()]),
        );
        Self::launch(dir, Some(socket), None, args).await
    }

    /// A server on a TCP port with extra arguments.
    pub async fn tcp(dir: &Path, port: u16, extra: &[String]) -> Self {
        let mut args = base_args(dir);
        args.extend(["--port".to_string(), port.to_string()]);
        args.extend(extra.iter().cloned());
        Self::launch(dir, None, Some(port), args).await
    }

    /// A TLS-only server (`--port 0 --tls-port`), with an ACL user `portcullis` (password
    /// `password`) and the default user disabled.
    pub async fn tls(dir: &Path, cert: &Path, key: &Path, password: &str) -> Self {
        let port = free_port(false);
        let mut args = base_args(dir);
        let p = |s: &Path| s.display().to_string();
        args.extend([
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            p(cert),
            "--tls-key-file".into(),
            p(key),
            "--tls-ca-cert-file".into(),
            p(cert),
            "--tls-auth-clients".into(),
            "no".into(),
            "--user".into(),
            "default".into(),
            "off".into(),
            "--user".into(),
            "portcullis".into(),
            "on".into(),
            format!(">{password}"),
            "~pc:*".into(),
            "+@all".into(),
        ]);
        Self::launch(dir, None, Some(port), args).await
    }

    /// A Sentinel watching `master` at `master_port` (quorum 2, 1 s down-after).
    pub async fn sentinel(dir: &Path, master_port: u16) -> Self {
        let port = free_port(false);
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.display()
            ),
        )
        .unwrap();
        Self::launch(
            dir,
            None,
            Some(port),
            vec![conf.display().to_string(), "--sentinel".into()],
        )
        .await
    }

    /// Starts `redis-server args` in `dir` (listening on `socket` or `port`) and waits until
    /// it accepts.
    async fn launch(
        dir: &Path,
        socket: Option<PathBuf>,
        port: Option<u16>,
        args: Vec<String>,
    ) -> Self {
        let mut s = Self {
            child: None,
            dir: dir.to_owned(),
            socket,
            port,
            args,
        };
        s.start().await;
        s
    }

    /// Starts (or restarts) the process with the same arguments and waits until it accepts.
    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .unwrap();
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let end = tokio::time::Instant::now() + START_DEADLINE;
        loop {
            let up = match (&self.socket, self.port) {
                (Some(sock), _) => tokio::net::UnixStream::connect(sock).await.is_ok(),
                (None, Some(port)) => tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok(),
                (None, None) => unreachable!(),
            };
            if up {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!("redis-server exited with {status}:\n{log}");
            }
            assert!(
                tokio::time::Instant::now() < end,
                "redis-server did not start within {START_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills the process (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        if let Some(sock) = &self.socket {
            let _ = std::fs::remove_file(sock);
        }
    }

    /// `redis://` or `redis+unix://` URL of this server.
    pub fn url(&self) -> String {
        match (&self.socket, self.port) {
            (Some(sock), _) => format!("redis+unix://{}", sock.display()),
            (None, Some(port)) => format!("redis://127.0.0.1:{port}"),
            (None, None) => unreachable!(),
        }
    }

    /// A direct connection (to read raw values).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// Runs `redis-cli` against a TCP port and returns stdout.
pub async fn cli(port: u16, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("redis-cli took too long")
    .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Polls `redis-cli` until its output contains `needle` (panics after `deadline`).
pub async fn wait_cli(port: u16, args: &[&str], needle: &str, deadline: Duration) -> String {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let out = cli(port, args).await;
        if out.contains(needle) {
            return out;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "redis-cli {args:?} never showed {needle:?}; last output:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A master, one replica and three Sentinels, all on loopback.
pub struct SentinelSet {
    /// The first master.
    pub master: RedisServer,
    /// Its replica.
    pub replica: RedisServer,
    /// The Sentinels.
    pub sentinels: Vec<RedisServer>,
}

// === impl SentinelSet ===

impl SentinelSet {
    /// Starts everything and waits until the Sentinels see the replica and each other.
    pub async fn start(dir: &Path) -> Self {
        let mk = |n: &str| {
            let d = dir.join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let mport = free_port(false);
        let master = RedisServer::tcp(&mk("master"), mport, &[]).await;
        let rport = free_port(false);
        let replica = RedisServer::tcp(
            &mk("replica"),
            rport,
            &["--replicaof".into(), "127.0.0.1".into(), mport.to_string()],
        )
        .await;
        wait_cli(
            rport,
            &["info", "replication"],
            "master_link_status:up",
            START_DEADLINE,
        )
        .await;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            sentinels.push(RedisServer::sentinel(&mk(&format!("sentinel{i}")), mport).await);
        }
        for s in &sentinels {
            let p = s.port.unwrap();
            wait_cli(
                p,
                &["sentinel", "replicas", "mymaster"],
                &rport.to_string(),
                START_DEADLINE,
            )
            .await;
            wait_cli(
                p,
                &["sentinel", "master", "mymaster"],
                "num-other-sentinels\n2",
                START_DEADLINE,
            )
            .await;
        }
        Self {
            master,
            replica,
            sentinels,
        }
    }

    /// `redis://127.0.0.1:<port>` of every Sentinel.
    pub fn addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port.unwrap()))
            .collect()
    }

    /// The master port the first Sentinel reports.
    pub async fn master_port(&self) -> u16 {
        let out = cli(
            self.sentinels[0].port.unwrap(),
            &["sentinel", "get-master-addr-by-name", "mymaster"],
        )
        .await;
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Three masters joined with `redis-cli --cluster create`.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

// === impl Cluster ===

impl Cluster {
    /// Starts three nodes, creates the cluster and waits for `cluster_state:ok`.
    pub async fn start(dir: &Path) -> Self {
        let mut nodes = Vec::new();
        for i in 0..3 {
            let d = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let port = free_port(true);
            nodes.push(
                RedisServer::tcp(
                    &d,
                    port,
                    &[
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        d.join("nodes.conf").display().to_string(),
                        "--cluster-node-timeout".into(),
                        "2000".into(),
                    ],
                )
                .await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port.unwrap()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let first = nodes[0].port.unwrap();
        let out = cli(first, &args).await;
        assert!(out.contains("[OK]"), "cluster create failed:\n{out}");
        for n in &nodes {
            wait_cli(
                n.port.unwrap(),
                &["cluster", "info"],
                "cluster_state:ok",
                START_DEADLINE,
            )
            .await;
        }
        Self { nodes }
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port.unwrap()))
            .collect()
    }
}
