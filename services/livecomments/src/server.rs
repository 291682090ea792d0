//! The HTTP/1.1 accept loop. Hand-rolled rather than `axum::serve` for four things it does
//! not offer: a header read timeout (slowloris), the peer address for per-IP limits, a
//! graceful shutdown that is bounded in time, and connections served on threads of their own.
//!
//! Connection threads (`--http-threads N`, default one per core): the accept loop hands each
//! accepted socket, round-robin, to one of N threads, each running a single-threaded tokio
//! runtime that serves its connections start to end, as nginx's workers do. A request then
//! never crosses threads (no work-stealing, no cross-thread wake-up per response). Measured
//! with `livecomments-bench reactions` (10k viewers, 64 keep-alive POST connections) and
//! `wrk -t1 -c64` on this 2-core box: docs/BENCHMARKS.md, "Connection threads". What is not a
//! connection (hubs, the writer, the bus, timers) stays on the main multi-threaded runtime:
//! `Fanout` spawns its hubs there, whichever thread the first viewer came in on.
//! `--http-threads 0` serves connections on the main runtime (the previous behaviour). The
//! threads exposed a lost "ready" in the hub (fixed, `Hub::run`); the whole test suite has
//! run on them since.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use crate::http::{FanoutState, IngestState, post_conn, sse_conn};

/// A client must send its request headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers): 431 above. `max_buf_size` alone does not
/// bound it, because hyper checks that limit only while a head is incomplete and one read can
/// fill the buffer past it (a 100 KB header was accepted with a 64 KiB buffer limit). Tokens
/// are at most 8 KiB (`auth::MAX_TOKEN_LEN`), so 32 KiB leaves room for every honest client.
pub const MAX_HEADER_SIZE: usize = 32 * 1024;

/// Accepted sockets waiting for their connection thread. The accept loop waits when a thread
/// is this far behind, and the kernel's accept backlog (16,384) holds the rest.
const HANDOFF_QUEUE: usize = 1024;

/// The requests that bypass hyper, and the state that serves them.
#[derive(Clone, Default)]
pub struct Lean {
    /// `GET /comments/stream` (`http::sse_conn`), in a process that serves streams.
    pub streams: Option<Arc<FanoutState>>,
    /// `POST /comment` and `POST /reaction` (`http::post_conn`), in a process that ingests.
    pub posts: Option<Arc<IngestState>>,
}

/// What serves one connection: the router, hyper's settings and the lean paths.
#[derive(Clone)]
struct Connections {
    router: Router,
    http: hyper::server::conn::http1::Builder,
    lean: Lean,
    /// Turns true when the server stops: the lean POST path closes its keep-alive
    /// connections then, as hyper's graceful shutdown does.
    stopping: watch::Receiver<bool>,
}

impl Connections {
    async fn serve(self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        let _ = stream.set_nodelay(true);
        let router = self.router;
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(req)
        });
        if self.lean.streams.is_none() && self.lean.posts.is_none() {
            let _ = watcher
                .watch(self.http.serve_connection(TokioIo::new(stream), svc))
                .await;
            return;
        }
        let mut stream = stream;
        let head = match sse_conn::sniff(&mut stream, MAX_HEADER_SIZE, HEADER_TIMEOUT).await {
            sse_conn::Sniffed::Stream { head } => match self.lean.streams {
                Some(st) => return sse_conn::serve(stream, peer, head, st).await,
                None => head,
            },
            sse_conn::Sniffed::Other { head } => head,
            sse_conn::Sniffed::Gone => return,
        };
        let (stream, head) = match self.lean.posts {
            Some(st) if post_conn::wants(&head) => {
                // The watcher is held while the lean path serves, so a graceful shutdown
                // waits for the request in flight; `stopping` tells the loop to close.
                // Boxed: inline, its state (buffers, a parsed head) would enlarge every
                // connection's future, idle stream viewers' too (1.81 -> 2.48 KiB per idle
                // viewer, `fanout --viewers 10000 --idle-secs 5`); one allocation per POST
                // connection instead.
                match Box::pin(post_conn::serve(stream, head, st, self.stopping)).await {
                    Some(rest) => rest,
                    None => return,
                }
            }
            _ => (stream, head),
        };
        let io = TokioIo::new(sse_conn::Prefixed::new(head, stream));
        let _ = watcher.watch(self.http.serve_connection(io, svc)).await;
    }
}

/// One socket on its way to a connection thread, with the watcher that holds the graceful
/// shutdown open until the connection ends.
type Handoff = (std::net::TcpStream, SocketAddr, Watcher);

/// Serves `listener` until `shutdown`, then lets open requests finish (at most `grace`) and
/// streams on the lean path write their `reconnect` and close (at most `grace` again).
/// `threads`: connection threads (0: connections on the calling runtime).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    lean: Lean,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    threads: usize,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEADER_SIZE)
        .max_buf_size(64 * 1024);
    let (stop, stopping) = watch::channel(false);
    let conns = Connections {
        router,
        http,
        lean: lean.clone(),
        stopping,
    };
    // Set once the lean streams are drained: the connection threads' runtimes (and with them
    // every task still on them) end then, not before.
    let (done, stopped) = watch::channel(false);
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let (tx, rx) = mpsc::channel::<Handoff>(HANDOFF_QUEUE);
        let (conns, stopped) = (conns.clone(), stopped.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || runtime.block_on(connection_thread(rx, conns, stopped)))?;
        workers.push(tx);
    }
    tokio::pin!(shutdown);
    let mut next = 0usize;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of fds or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let watcher = graceful.watcher();
        if workers.is_empty() {
            tokio::spawn(conns.clone().serve(stream, peer, watcher));
            continue;
        }
        // A socket that cannot leave this runtime (it cannot fail for a registered TCP
        // stream, but nothing here may panic) is closed: its client retries.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        next = (next + 1) % workers.len();
        if workers[next].send((stream, peer, watcher)).await.is_err() {
            tracing::error!(thread = next, "a connection thread stopped");
        }
    }
    drop(listener);
    drop(workers);
    stop.send_replace(true);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; exiting anyway");
    }
    // Streams on the lean path are not hyper connections: let them write their `reconnect`
    // event and close before the process exits.
    if let Some(f) = &lean.streams {
        let deadline = tokio::time::Instant::now() + grace;
        while f.fanout.open_streams() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    done.send_replace(true);
    Ok(())
}

/// A connection thread's loop: serves each socket it is handed until told to stop.
async fn connection_thread(
    mut rx: mpsc::Receiver<Handoff>,
    conns: Connections,
    mut stopped: watch::Receiver<bool>,
) {
    while let Some((stream, peer, watcher)) = rx.recv().await {
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                tokio::spawn(conns.clone().serve(stream, peer, watcher));
            }
            Err(e) => tracing::warn!(error = %e, "a handed-over connection was lost"),
        }
    }
    let _ = stopped.wait_for(|stop| *stop).await;
}
