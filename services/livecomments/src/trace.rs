//! Request ids and the per-request span.
//!
//! Every HTTP request gets an id: the client's `X-Request-Id` when it is one we accept (1 to
//! [`MAX_LEN`] visible ASCII characters, `!`..`~`), otherwise a fresh ULID (26 characters,
//! time-ordered). The response echoes it, the request's span carries it (with method, path
//! without the query string, status and latency), and it travels on NATS in the
//! [`BUS_HEADER`] header: on the live event of a comment the request created, and on the
//! since-queries and forwarded deletions it caused. The MessagePack payloads are unchanged.
//!
//! Following a comment across processes: everything logged here with the request id is on
//! the target [`TARGET`] at debug (`RUST_LOG=info,livecomments::trace=debug`), the request
//! line itself at info.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The HTTP header a request id comes in and goes out in.
pub static HTTP_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// The NATS message header that carries the request id of what caused the message.
pub const BUS_HEADER: &str = "Livecomments-Request-Id";
/// The log target of the lines that follow a request id across processes.
pub const TARGET: &str = "livecomments::trace";
/// The longest request id accepted from a client (or from the bus).
pub const MAX_LEN: usize = 64;
/// Paths longer than this are cut in the log line.
const MAX_LOGGED_PATH: usize = 256;

/// A request id: 1 to [`MAX_LEN`] visible ASCII characters (so it is also a valid HTTP and
/// NATS header value and cannot break a log line). Cloning shares it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A fresh id: a ULID.
    pub fn generate() -> Self {
        let ms = u64::try_from(livecomments_shared::time::now_millis()).unwrap_or(0);
        RequestId(
            ulid::Ulid::from_parts(ms, rand::random::<u128>())
                .to_string()
                .into(),
        )
    }

    /// `s` when it is an acceptable id.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty() && s.len() <= MAX_LEN && s.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| RequestId(s.into()))
    }

    /// The client's id when acceptable, else a fresh one.
    pub fn from_header(v: Option<&HeaderValue>) -> Self {
        v.and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(Self::parse)
            .unwrap_or_else(Self::generate)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// As a response header value.
    pub fn header_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.0).ok()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

tokio::task_local! {
    /// The id of the request this task is serving (set around each request's handling, and
    /// around answering a bus request that carried one).
    static CURRENT: RequestId;
}

/// The request id of the request being served by this task, if any.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `id` as [`current`].
pub async fn scope<F: Future>(id: RequestId, fut: F) -> F::Output {
    CURRENT.scope(id, fut).await
}

/// The span of one request. `path` is the path only: a query string can carry a token.
pub fn request_span(id: &RequestId, method: &str, path: &str) -> tracing::Span {
    let path = match path.char_indices().nth(MAX_LOGGED_PATH) {
        Some((cut, _)) => &path[..cut],
        None => path,
    };
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        path = %path,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    )
}

/// Records the outcome on the request's span and logs the request line (at info; health,
/// readiness, metrics and static files at debug, they are polled).
/// `polled`: the path is one of [`is_polled`]'s.
pub fn finish(span: &tracing::Span, polled: bool, status: u16, started: Instant) {
    if span.is_disabled() {
        return;
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let latency_ms = (latency_ms * 1000.0).round() / 1000.0;
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    if polled {
        tracing::debug!(parent: span, "request");
    } else {
        tracing::info!(parent: span, "request");
    }
}

pub fn is_polled(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/" | "/app.js" | "/style.css"
    )
}

/// One request being served: its id and span, for the routed path and the lean POST path
/// (`http::post_conn`) alike, so both log, echo and record the same.
pub struct Traced {
    id: RequestId,
    span: tracing::Span,
    polled: bool,
    started: Instant,
}

impl Traced {
    /// `id_header`: the client's `X-Request-Id`, if any.
    pub fn begin(id_header: Option<&HeaderValue>, method: &str, path: &str) -> Self {
        let started = Instant::now();
        let id = RequestId::from_header(id_header);
        Traced {
            span: request_span(&id, method, path),
            polled: is_polled(path),
            id,
            started,
        }
    }

    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// Serves the request in its span and with its id as [`current`], echoes the id and
    /// logs the request line.
    pub async fn run(self, serve: impl Future<Output = Response>) -> Response {
        let mut resp = scope(self.id.clone(), serve)
            .instrument(self.span.clone())
            .await;
        if let Some(v) = self.id.header_value() {
            resp.headers_mut().insert(HTTP_HEADER.clone(), v);
        }
        finish(
            &self.span,
            self.polled,
            resp.status().as_u16(),
            self.started,
        );
        resp
    }
}

/// The middleware of every routed request: the id, its span, the echo and the request line.
pub async fn middleware(mut req: Request, next: Next) -> Response {
    // The path is only looked at here, so nothing is copied per request (at warn the span is
    // disabled and this is all the per-request logging costs).
    let t = Traced::begin(
        req.headers().get(&HTTP_HEADER),
        req.method().as_str(),
        req.uri().path(),
    );
    req.extensions_mut().insert(t.id().clone());
    t.run(next.run(req)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bounded_visible_ascii_only() {
        assert_eq!(
            RequestId::parse("trace-me-123").map(|r| r.to_string()),
            Some("trace-me-123".to_string())
        );
        assert!(RequestId::parse(&"a".repeat(MAX_LEN)).is_some());
        assert!(RequestId::parse(&"a".repeat(MAX_LEN + 1)).is_none());
        assert!(RequestId::parse("").is_none());
        assert!(RequestId::parse("with space").is_none());
        assert!(RequestId::parse("tab\there").is_none());
        assert!(RequestId::parse("café").is_none());
        assert!(RequestId::parse("line\nbreak").is_none());
    }

    #[test]
    fn generated_ids_are_acceptable_and_distinct() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 26);
        assert!(RequestId::parse(a.as_str()).is_some());
    }
}
