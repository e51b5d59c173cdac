//! Request workers: `server.workers` threads, each running its own single-threaded tokio
//! runtime. A worker accepts on its own listening socket for every listener (the sockets
//! share the port through `SO_REUSEPORT`, so the kernel spreads new connections over the
//! workers), serves each connection to its end on the same thread, and keeps its own upstream
//! connection pools (see `upstream::pool`). A request's work never leaves the core that
//! accepted its connection: no work stealing, no cross-thread wake-ups on the request path.
//!
//! What is shared stays shared and thread-safe: the connection limit (one semaphore over all
//! workers), the drain and close signals, the handler configuration (swapped on reload),
//! keys and the verified-token cache, metrics. The admin listener, key refresh, certificate
//! watching and reloads run on the runtime that called `Server::run`, not on a worker.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use super::conn::ConnContext;

thread_local! {
    /// The index of the worker running on this thread (0 off a worker thread).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the request worker running on this thread: `0..server.workers` on a worker,
/// 0 anywhere else (tests that call the handler directly, the admin runtime).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Listen backlog per socket (tokio's default for `TcpListener::bind`).
const BACKLOG: i32 = 1024;

/// Binds `n` listening sockets on `address`, one per worker. With more than one they share
/// the port through `SO_REUSEPORT` (the first one picks it when the port is 0). With one,
/// `SO_REUSEPORT` is not set, so a second process cannot join the port unnoticed.
pub(super) fn bind(address: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let reuse_port = n > 1;
    let first = bind_one(address, reuse_port)?;
    let bound = first.local_addr()?;
    let mut all = Vec::with_capacity(n);
    all.push(first);
    for _ in 1..n {
        all.push(bind_one(bound, reuse_port)?);
    }
    Ok(all)
}

fn bind_one(address: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // As tokio's `TcpListener::bind` does: a restart can bind while old sockets linger.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// What one worker thread serves, and the signals it shares with the others.
pub(super) struct Worker {
    /// Its index, `0..server.workers`.
    pub index: usize,
    /// Its own socket for each listener, with that listener's context.
    pub listeners: Vec<(std::net::TcpListener, Arc<ConnContext>)>,
    /// The connection limit, shared by all workers.
    pub slots: Arc<Semaphore>,
    /// Turns true when the process drains.
    pub drain: watch::Receiver<bool>,
    /// Held by every connection; shutdown waits until all are dropped.
    pub done: mpsc::Sender<()>,
    /// Turns true (or its sender goes) when the worker must stop: its runtime, with any
    /// connection still open, is dropped.
    pub stop: watch::Receiver<bool>,
    /// Dropped when the thread has finished (runtime dropped, sockets closed).
    pub exited: mpsc::Sender<()>,
}

// === impl Worker ===

impl Worker {
    /// Starts the worker on its own thread.
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("portcullis-w{}", self.index))
            .spawn(move || self.run())
            .map(drop)
    }

    fn run(self) {
        let Self {
            index,
            listeners,
            slots,
            drain,
            done,
            mut stop,
            exited,
        } = self;
        INDEX.with(|i| i.set(index));
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot start a request worker");
                return;
            }
        };
        runtime.block_on(async move {
            for (listener, ctx) in listeners {
                match TcpListener::from_std(listener) {
                    Ok(l) => {
                        tokio::spawn(super::accept_loop(
                            l,
                            ctx,
                            slots.clone(),
                            drain.clone(),
                            done.clone(),
                        ));
                    }
                    Err(e) => {
                        tracing::error!(worker = index, listener = %ctx.listener, error = %e, "cannot register a listening socket");
                    }
                }
            }
            drop(done);
            // Err: the server was dropped without a shutdown; stop too.
            let _ = stop.wait_for(|s| *s).await;
        });
        // Drops every task still on this worker (connections past the grace, tunnels).
        drop(runtime);
        drop(exited);
    }
}
