//! The `portcullis` command: load config, build the runtime, run. Exit codes: 0 ok, 2 bad
//! config or usage, 1 runtime failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::explain::{Credential, Question};
use portcullis::{Config, Server, config::ConfigError, logging};

mod healthcheck;
mod sessions_cli;

/// mimalloc instead of glibc's malloc: less user time per request under load, most at high
/// connection counts (hyper's buffers and the per-request allocations; see docs/BENCHMARKS.md).
/// Built without transparent huge pages (the `no_thp` feature): on a host whose THP setting is
/// `always`, `MIMALLOC_ALLOW_THP=0` turns them off for the process too (the image sets it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A resilient OpenID Connect reverse proxy"
)]
struct Cli {
    /// Configuration file (same as `portcullis run --config FILE`).
    #[arg(long, short = 'c', global = false, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file.
        #[arg(long, short = 'c', env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file (and open the certificate, key and CA files it names)
    /// and print a summary.
    CheckConfig {
        /// Configuration file.
        #[arg(env = "PORTCULLIS_CONFIG")]
        file: PathBuf,
    },
    /// Run everything on loopback for a first look: an echo upstream and Portcullis in front.
    Demo {
        /// Where Portcullis listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin endpoints listen.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    /// Explain how the proxy would decide one request: canonical host and path, route,
    /// authentication and every authorize rule (nothing is fetched; a --token is decoded
    /// without verifying its signature).
    Explain {
        /// Configuration file.
        #[arg(long, short = 'c', env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// The request's absolute URL (http:// or https://).
        #[arg(long)]
        url: String,
        /// The request's method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// A request header, `Name: value` (repeat for more).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// A bearer JWT (decoded, not verified).
        #[arg(long, conflicts_with = "claims")]
        token: Option<String>,
        /// Claims as a JSON object (taken as verified).
        #[arg(long)]
        claims: Option<String>,
        /// The client's address (`client.ip`; default 127.0.0.1).
        #[arg(long)]
        client_ip: Option<std::net::IpAddr>,
    },
    /// GET the admin /healthz (for container HEALTHCHECKs): exit 0 on 2xx, 1 otherwise.
    Healthcheck {
        /// What to GET (plain http).
        #[arg(long, default_value = healthcheck::DEFAULT_URL)]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = portcullis::config::parse_duration)]
        timeout: std::time::Duration,
    },
    /// List or revoke sessions through a running Portcullis's admin listener (needs
    /// admin.token there). The token comes from --token-file, the variable
    /// PORTCULLIS_ADMIN__TOKEN, or --config's admin.token; never from a flag.
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
        /// The admin listener (default: --config's admin.address, else http://127.0.0.1:9090).
        #[arg(long, global = true)]
        admin: Option<String>,
        /// A file holding the admin token.
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        /// A configuration file to take admin.address and admin.token from.
        #[arg(long, short = 'c', global = true)]
        config: Option<PathBuf>,
        /// How long to wait for the answer.
        #[arg(long, global = true, default_value = "10s", value_parser = portcullis::config::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// Live sessions (id hash, sub, sid, issuer, created, last seen, expiry).
    List {
        /// Only this subject's.
        #[arg(long)]
        sub: Option<String>,
        /// Only sessions with this sid.
        #[arg(long)]
        sid: Option<String>,
        /// Only this issuer's (a name under `issuers`).
        #[arg(long)]
        issuer: Option<String>,
        /// At most this many (1 to 1000; default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End sessions on every replica (their open WebSockets too): one by id (a hash from
    /// `list`), or every session with a sid or a subject.
    Revoke {
        /// The session's id hash, as listed.
        #[arg(long)]
        id: Option<String>,
        /// Every session with this sid.
        #[arg(long)]
        sid: Option<String>,
        /// Every session of this subject.
        #[arg(long)]
        sub: Option<String>,
        /// Only this issuer's (with --sid or --sub; default every issuer).
        #[arg(long, conflicts_with = "id")]
        issuer: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let command = match (cli.command, cli.config) {
        (Some(c), _) => c,
        (None, Some(config)) => Command::Run { config },
        (None, None) => {
            eprintln!(
                "portcullis: give a command (run, check-config, demo, explain, healthcheck, sessions) or --config FILE; see --help"
            );
            return ExitCode::from(2);
        }
    };
    match command {
        Command::CheckConfig { file } => match load(&file, env) {
            Ok(c) => {
                print!("{}: ok\n{}", file.display(), c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&file, &e),
        },
        Command::Run { config: file } => match load(&file, env) {
            Ok(c) => run(Source::Loaded(Box::new(c), file)),
            Err(e) => config_error(&file, &e),
        },
        Command::Demo { listen, admin } => run(Source::Demo { env, listen, admin }),
        Command::Healthcheck { url, timeout } => health(&url, timeout),
        Command::Explain {
            config,
            url,
            method,
            headers,
            token,
            claims,
            client_ip,
        } => {
            let credential = match (token, claims) {
                (Some(t), _) => Credential::Token(t),
                (None, Some(c)) => Credential::Claims(c),
                (None, None) => Credential::None,
            };
            let question = Question {
                url,
                method,
                headers,
                credential,
                client_ip,
            };
            explain(&config, env, &question)
        }
        Command::Sessions {
            action,
            admin,
            token_file,
            config,
            timeout,
        } => sessions(action, admin, token_file, config, env, timeout),
    }
}

/// `portcullis explain`: 0 explained (whatever the decision), 2 bad config or question.
fn explain(file: &std::path::Path, env: Vec<(String, String)>, q: &Question) -> ExitCode {
    let config = match Config::load(file, env) {
        Ok(c) => c,
        Err(e) => return config_error(file, &e),
    };
    match portcullis::explain::explain(&config, q, std::time::SystemTime::now()) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis explain: {e}");
            ExitCode::from(2)
        }
    }
}

/// `portcullis sessions ...`: 0 done, 1 the call failed, 2 bad usage or configuration.
fn sessions(
    action: SessionsAction,
    admin: Option<String>,
    token_file: Option<PathBuf>,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    timeout: std::time::Duration,
) -> ExitCode {
    use sessions_cli::{Admin, CliError, ListArgs, RevokeArgs};
    let fail = |e: CliError| {
        eprintln!("portcullis sessions: {e}");
        match e {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Call(_) => ExitCode::FAILURE,
        }
    };
    let admin = match Admin::resolve(admin, token_file, config, env, timeout) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(CliError::Call(format!("cannot start the runtime: {e}"))),
    };
    let out = runtime.block_on(async {
        match action {
            SessionsAction::List {
                sub,
                sid,
                issuer,
                limit,
                json,
            } => {
                let args = ListArgs {
                    sub,
                    sid,
                    issuer,
                    limit,
                    json,
                };
                admin.list(&args).await
            }
            SessionsAction::Revoke {
                id,
                sid,
                sub,
                issuer,
            } => {
                admin
                    .revoke(&RevokeArgs {
                        id,
                        sid,
                        sub,
                        issuer,
                    })
                    .await
            }
        }
    });
    match out {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `portcullis healthcheck`: 0 healthy, 1 not, 2 bad URL.
fn health(url: &str, timeout: std::time::Duration) -> ExitCode {
    let target = match healthcheck::parse(url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portcullis healthcheck: {:#}", anyhow::Error::new(e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis healthcheck: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let uri = target.uri();
    match runtime.block_on(healthcheck::check(&target, timeout)) {
        Ok(status) => {
            println!("portcullis healthcheck: healthy: {uri}: {status}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // `{:#}`: the whole cause chain on one line.
            eprintln!(
                "portcullis healthcheck: unhealthy: {uri}: {:#}",
                anyhow::Error::new(e)
            );
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates the file, then opens the files it names, as `run` would.
fn load(file: &std::path::Path, env: Vec<(String, String)>) -> Result<Config, ConfigError> {
    let config = Config::load(file, env)?;
    portcullis::server::check_files(&config)?;
    Ok(config)
}

fn config_error(file: &std::path::Path, e: &ConfigError) -> ExitCode {
    eprintln!("portcullis: invalid configuration {}: {e}", file.display());
    ExitCode::from(2)
}

/// Where the configuration comes from.
enum Source {
    /// A loaded file (reloaded on SIGHUP).
    Loaded(Box<Config>, PathBuf),
    /// The demo: start the echo upstream and the development IdP first, then configure
    /// Portcullis in front of them.
    Demo {
        env: Vec<(String, String)>,
        listen: SocketAddr,
        admin: SocketAddr,
    },
}

fn run(source: Source) -> ExitCode {
    // The control runtime, on this thread: admin listener, key refresh, signals, reloads.
    // Requests are served on `server.workers` threads of their own (`listener::worker`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The demo's state directory lives as long as this run and is removed at its end.
    let (config, path, demo_state) = match source {
        Source::Loaded(c, path) => (*c, Some(path), None),
        Source::Demo { env, listen, admin } => {
            match runtime.block_on(portcullis::demo::prepare(env, listen, admin)) {
                Ok(demo) => {
                    println!("{}", demo.intro);
                    (demo.config, None, Some(demo.state))
                }
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    logging::init(&config.log);
    if !config.env_ignored.is_empty() {
        tracing::warn!(
            variables = config.env_ignored.join(", "),
            "ignoring PORTCULLIS_* environment variables that name no configuration key"
        );
    }
    let outcome = runtime.block_on(serve(config, path));
    // Tasks still on the runtime may write into the state directory: they end first.
    drop(runtime);
    drop(demo_state);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "portcullis stopped");
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    let reload = server.reload_handle();
    let reloader = server.reloader();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading configuration and certificates");
            if let Some(path) = path.clone() {
                let reloader = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    reloader.reload_file(&path, std::env::vars())
                })
                .await;
            }
            reload.notify_one();
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    };
    server.run(shutdown).await;
    Ok(())
}
