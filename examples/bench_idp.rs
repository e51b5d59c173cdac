//! The development IdP of `portcullis demo`, on its own, signing one user in without a form,
//! for load tests of session routes:
//!
//! ```sh
//! cargo run --release --example bench_idp -- 127.0.0.1:18086 alice
//! ```
//!
//! Prints `listening <issuer>` and serves discovery, JWKS, `/authorize` (auto-approve),
//! `/token` (code with PKCE, rotating refresh tokens) until killed. For benchmarks only.

use std::net::SocketAddr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, user] = args.as_slice() else {
        eprintln!("usage: bench_idp ADDRESS USER");
        return ExitCode::from(2);
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        eprintln!("bench_idp: {addr} is not an address");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_idp: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match portcullis::demo::DevIdp::spawn_with(addr, Some(user.clone())).await {
            Ok(idp) => {
                println!("listening {}", idp.issuer);
                std::future::pending::<()>().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench_idp: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
