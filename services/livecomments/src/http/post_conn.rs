//! The lean path for `POST /comment` and `POST /reaction`: the two requests a live event
//! sends by the tens of thousands a second, on keep-alive connections. Through hyper and
//! axum, each paid hyper's dispatcher (read, parse, body channel, encode, flush), axum's
//! router and middleware and their futures: 54 % of the server's CPU was on the connection
//! threads at 53k POSTs/s, ~19 points of it the handler itself (perf, BENCHMARKS.md "The
//! lean POST path"). Here a connection's requests are parsed with `httparse`, the same
//! handler is called as a function, and its response is written with one `write`.
//!
//! Only the plainest framing is served here: HTTP/1.1, one `Content-Length` of at most
//! `MAX_BODY`, no `Transfer-Encoding`, no `Expect`, no upgrade. The first request that is
//! anything else (another route, a chunked body, a malformed head) is handed to hyper with
//! every byte read so far, and hyper serves the rest of the connection, so statuses and
//! error bodies are hyper's and the router's as before.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{IngestState, MAX_BODY, post_comment, post_reaction};
use crate::trace::{self, Traced};

const MAX_HEADERS: usize = 64;
/// A client that takes longer to send a request (or to take its answer) is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The routes served here.
#[derive(Clone, Copy)]
enum Route {
    Comment,
    Reaction,
}

impl Route {
    /// The route of a request target (path and query).
    fn of(target: &[u8]) -> Option<Route> {
        let path = target.split(|&b| b == b'?').next().unwrap_or(target);
        match path {
            b"/comment" => Some(Route::Comment),
            b"/reaction" => Some(Route::Reaction),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Route::Comment => "/comment",
            Route::Reaction => "/reaction",
        }
    }
}

/// Whether a request head (its first bytes) is for this path: a POST to one of its routes.
pub fn wants(head: &[u8]) -> bool {
    head.strip_prefix(b"POST ")
        .and_then(|rest| rest.split(|&b| b == b' ').next())
        .is_some_and(|target| Route::of(target).is_some())
}

/// One request parsed from the buffer, owning what the handler needs.
struct Parsed {
    route: Route,
    raw_query: Option<String>,
    headers: HeaderMap,
    head_len: usize,
    body_len: usize,
    close: bool,
}

/// What to do with the bytes at the start of the buffer.
enum Head {
    /// Served here.
    Ready(Parsed),
    /// Not a complete head yet.
    Partial,
    /// Anything this path does not serve: hyper's.
    Hyper,
}

fn parse(buf: &[u8]) -> Head {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Hyper,
    };
    let (Some("POST"), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Head::Hyper;
    };
    let Some(route) = Route::of(target.as_bytes()) else {
        return Head::Hyper;
    };
    let raw_query = target.split_once('?').map(|(_, q)| q.to_string());
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut body_len = None;
    let mut close = false;
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Head::Hyper;
        };
        if name == axum::http::header::CONTENT_LENGTH {
            let len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok());
            match (body_len, len) {
                (None, Some(n)) if n <= MAX_BODY => body_len = Some(n),
                _ => return Head::Hyper,
            }
        } else if name == axum::http::header::TRANSFER_ENCODING
            || name == axum::http::header::EXPECT
            || name == axum::http::header::UPGRADE
        {
            return Head::Hyper;
        } else if name == axum::http::header::CONNECTION {
            let has = |token: &[u8]| {
                h.value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
            };
            if has(b"upgrade") {
                return Head::Hyper;
            }
            close |= has(b"close");
        }
        headers.append(name, value);
    }
    let Some(body_len) = body_len else {
        return Head::Hyper;
    };
    Head::Ready(Parsed {
        route,
        raw_query,
        headers,
        head_len,
        body_len,
        close,
    })
}

/// Serves the connection's requests while they are for this path. Returns the socket and
/// the bytes read but not served when hyper must take over, `None` when the connection is
/// done. `stopping` turns true at shutdown: the request being served is answered with
/// `connection: close`, an idle connection is closed.
pub async fn serve(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    st: Arc<IngestState>,
    mut stopping: watch::Receiver<bool>,
) -> Option<(TcpStream, Vec<u8>)> {
    let mut out = Vec::with_capacity(512);
    loop {
        let req = loop {
            match parse(&buf) {
                Head::Ready(p) => break p,
                Head::Hyper => return Some((stream, buf)),
                Head::Partial if buf.len() >= crate::server::MAX_HEADER_SIZE => {
                    return Some((stream, buf));
                }
                Head::Partial => {}
            }
            buf.reserve(4096);
            tokio::select! {
                r = tokio::time::timeout(IO_TIMEOUT, stream.read_buf(&mut buf)) => match r {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return None,
                },
                _ = stopping.wait_for(|s| *s), if buf.is_empty() => return None,
            }
        };
        let end = req.head_len + req.body_len;
        while buf.len() < end {
            buf.reserve(end - buf.len());
            match tokio::time::timeout(IO_TIMEOUT, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
        let body = Bytes::copy_from_slice(&buf[req.head_len..end]);
        buf.drain(..end);
        let close = req.close || *stopping.borrow();
        let resp = answer(&st, req, body).await;
        out.clear();
        encode(resp, close, &mut out).await;
        match tokio::time::timeout(IO_TIMEOUT, stream.write_all(&out)).await {
            Ok(Ok(())) if !close => {}
            _ => {
                let _ = stream.shutdown().await;
                return None;
            }
        }
    }
}

/// The routed handler's answer, in the same request span as the routed path's.
async fn answer(st: &Arc<IngestState>, req: Parsed, body: Bytes) -> Response {
    let t = Traced::begin(
        req.headers.get(&trace::HTTP_HEADER),
        "POST",
        req.route.path(),
    );
    let (query, headers, body) = (RawQuery(req.raw_query), req.headers, Body::from(body));
    let st = State(st.clone());
    t.run(async move {
        match req.route {
            Route::Comment => post_comment::handle(st, query, headers, body)
                .await
                .into_response(),
            Route::Reaction => post_reaction::handle(st, query, headers, body)
                .await
                .into_response(),
        }
    })
    .await
}

/// Appends the response as HTTP/1.1 bytes: status line, the handler's headers, `date` and
/// `content-length` as hyper writes them, the body.
async fn encode(resp: Response, close: bool, out: &mut Vec<u8>) {
    let (parts, body) = resp.into_parts();
    // The handlers' bodies are in memory (JSON): collecting them does not wait.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in parts.headers.iter() {
        // Framing is this writer's: a handler's own would be written twice.
        if k == axum::http::header::CONTENT_LENGTH
            || k == axum::http::header::CONNECTION
            || k == axum::http::header::DATE
        {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, "content-length: {}\r\ndate: ", body.len());
    DATE.with(|d| d.write_to(out));
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
}

/// The `date` header, formatted once a second per connection thread (as hyper does).
struct CachedDate {
    cell: std::cell::RefCell<(u64, String)>,
}

impl CachedDate {
    fn write_to(&self, out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut c = self.cell.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(c.1.as_bytes());
    }
}

thread_local! {
    static DATE: CachedDate = const {
        CachedDate {
            cell: std::cell::RefCell::new((0, String::new())),
        }
    };
}
