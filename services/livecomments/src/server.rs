//! The HTTP/1.1 accept loop. Hand-rolled rather than `axum::serve` for three things it does
//! not offer: a header read timeout (slowloris), the peer address for per-IP limits, and a
//! graceful shutdown that is bounded in time.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::http::sse_conn;

/// A client must send its request headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers): 431 above. `max_buf_size` alone does not
/// bound it, because hyper checks that limit only while a head is incomplete and one read can
/// fill the buffer past it (a 100 KB header was accepted with a 64 KiB buffer limit). Tokens
/// are at most 8 KiB (`auth::MAX_TOKEN_LEN`), so 32 KiB leaves room for every honest client.
pub const MAX_HEADER_SIZE: usize = 32 * 1024;

/// `lean`: the state of a process that serves streams, whose stream requests then bypass
/// hyper (`http::sse_conn`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    lean: Option<std::sync::Arc<crate::http::FanoutState>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEADER_SIZE)
        .max_buf_size(64 * 1024);
    tokio::pin!(shutdown);
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
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(req)
        });
        let watcher = graceful.watcher();
        let http = http.clone();
        let lean = lean.clone();
        tokio::spawn(async move {
            let Some(st) = lean else {
                let _ = watcher
                    .watch(http.serve_connection(TokioIo::new(stream), svc))
                    .await;
                return;
            };
            let mut stream = stream;
            match sse_conn::sniff(&mut stream, MAX_HEADER_SIZE, HEADER_TIMEOUT).await {
                sse_conn::Sniffed::Stream { head } => sse_conn::serve(stream, peer, head, st).await,
                sse_conn::Sniffed::Other { head } => {
                    let io = TokioIo::new(sse_conn::Prefixed::new(head, stream));
                    let _ = watcher.watch(http.serve_connection(io, svc)).await;
                }
                sse_conn::Sniffed::Gone => {}
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; exiting anyway");
    }
}
