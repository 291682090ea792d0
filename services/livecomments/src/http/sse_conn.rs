//! The lean path for `GET /comments/stream`: an SSE viewer is mostly idle for hours, and a
//! general HTTP stack keeps per-connection buffers and state that cost several times what the
//! viewer itself needs (measured: ~14 KiB per idle viewer through hyper). So the accept loop
//! reads the request head itself; a stream request is answered here, writing straight to the
//! socket, and anything else is handed to hyper with the bytes already read.
//!
//! The checks are the same as the routed handler's (`stream::open`), so statuses and error
//! bodies are identical.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use tracing::Instrument;

use super::ApiError;
use crate::fanout::conn::Conn;
use crate::fanout::viewer::Viewer;
use crate::trace::{self, RequestId};
use livecomments_shared::ErrorCode;

/// A viewer whose socket accepts nothing for this long is dropped (its fd and task freed).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEADERS: usize = 64;
/// The path of every request served here (logged without its query: it can carry a token).
const STREAM_PATH: &str = "/comments/stream";

/// What the accept loop does with a connection after reading its head.
pub enum Sniffed {
    /// A stream request: served here.
    Stream { head: Vec<u8> },
    /// Anything else: hyper serves it, replaying `head` first.
    Other { head: Vec<u8> },
    /// Closed, timed out or oversized before a full head: nothing to serve.
    Gone,
}

/// Reads until the end of the request head (or `max` bytes, or the timeout).
pub async fn sniff(stream: &mut TcpStream, max: usize, timeout: Duration) -> Sniffed {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        loop {
            if head.len() >= max {
                return true;
            }
            head.reserve(1024);
            match stream.read_buf(&mut head).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return true;
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(true) => {}
        _ => return Sniffed::Gone,
    }
    if head.starts_with(b"GET /comments/stream?") || head.starts_with(b"GET /comments/stream ") {
        Sniffed::Stream { head }
    } else {
        Sniffed::Other { head }
    }
}

/// The query string and headers of a request head (a plain function: httparse's header
/// slots stay off the long-lived connection future).
fn parse_head(head: &[u8]) -> Option<(Option<String>, HeaderMap)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let path = req.path.unwrap_or("");
    let raw_query = path.split_once('?').map(|(_, q)| q.to_string());
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            headers.append(name, value);
        }
    }
    Some((raw_query, headers))
}

/// Serves one stream request on its socket until the stream ends or the client goes away.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    head: Vec<u8>,
    st: Arc<super::FanoutState>,
) {
    // The same request span as the routed path's (`trace::middleware`); it ends when the
    // stream is open (its latency is the time to open), not hours later with the viewer.
    let started = Instant::now();
    let Some((raw_query, headers)) = parse_head(&head) else {
        let id = RequestId::generate();
        let span = trace::request_span(&id, "GET", STREAM_PATH);
        let _ = write_error(
            &mut stream,
            ApiError::new(ErrorCode::BadRequest, "malformed request"),
            &id,
        )
        .await;
        trace::finish(&span, false, 400, started);
        return;
    };
    drop(head);
    let id = RequestId::from_header(headers.get(&trace::HTTP_HEADER));
    let span = trace::request_span(&id, "GET", STREAM_PATH);
    let socket = Arc::new(stream);
    let opened = trace::scope(
        id.clone(),
        super::stream::open(
            &st,
            peer,
            raw_query.as_deref(),
            &headers,
            Some(socket.clone()),
        ),
    )
    .instrument(span.clone())
    .await;
    let viewer = match opened {
        Ok(v) => v,
        Err(e) => {
            let status = e.rejection.code.status();
            if let Ok(mut stream) = Arc::try_unwrap(socket) {
                let _ = write_error(&mut stream, e, &id).await;
            }
            trace::finish(&span, false, status, started);
            return;
        }
    };
    trace::finish(&span, false, 200, started);
    // The viewer lives for hours: give it a task of its own whose future holds only the
    // socket and the viewer, not the larger state of parsing and setting up.
    tokio::spawn(pump(socket, viewer, id));
}

/// The viewer's own task: its replay, then only what the hub could not write at once (a full
/// socket), and noticing that the client went away.
async fn pump(socket: Arc<TcpStream>, mut viewer: Viewer, id: RequestId) {
    // Boxed: the replay's state is large and needed once, the task lives for hours. The
    // request id is needed only for it (the since-queries of a replay carry it).
    {
        let head = crate::fanout::sse::lean_response_head(id.as_str());
        Box::pin(trace::scope(id, viewer.start(&head))).await;
    }
    let conn = viewer.conn().clone();
    loop {
        if Box::pin(flush(&conn, &socket)).await.is_err() {
            return;
        }
        if conn.done() {
            break;
        }
        // The body is close-delimited: no chunk framing on each event. A viewer sends nothing
        // after its request, so anything readable (normally EOF: it went away) ends the
        // stream at once and frees its slot, instead of at the next heartbeat.
        tokio::select! {
            () = viewer.changed() => {}
            r = socket.readable() => {
                if r.is_err() {
                    return;
                }
                let mut probe = [0u8; 1];
                match socket.try_read(&mut probe) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => return,
                }
            }
        }
    }
    drop(viewer);
    if let Ok(mut stream) = Arc::try_unwrap(socket) {
        let _ = stream.shutdown().await;
    }
}

/// Writes what waits in the connection, waiting for the socket to drain as needed.
async fn flush(conn: &Conn, socket: &TcpStream) -> io::Result<()> {
    while !conn.try_flush(socket)? {
        match tokio::time::timeout(WRITE_TIMEOUT, socket.writable()).await {
            Ok(r) => r?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
    }
    Ok(())
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Writes the same response the routed handler would give, then closes.
async fn write_error(stream: &mut TcpStream, e: ApiError, id: &RequestId) -> io::Result<()> {
    let resp = e.into_response();
    let (mut parts, body) = resp.into_parts();
    if let Some(v) = id.header_value() {
        parts.headers.insert(trace::HTTP_HEADER.clone(), v);
    }
    let body: Bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (k, v) in parts.headers.iter() {
        if let Ok(v) = v.to_str() {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    write(stream, &bytes).await?;
    stream.shutdown().await
}

/// A socket that yields `prefix` before its own bytes: hands hyper a connection whose head
/// the accept loop already read.
pub struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl Prefixed {
    pub fn new(prefix: Vec<u8>, inner: TcpStream) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
