//! HTTP: one router per role, one handler per file. Every refusal goes through [`ApiError`],
//! so bodies and statuses match CONTRACT §2 everywhere.

pub mod client_ip;
mod delete_comment;
mod get_comments;
mod ops;
mod post_comment;
mod query;
pub mod sse_conn;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use livecomments_shared::{ErrorCode, Rejection};

use crate::auth::{Authenticator, Caller};
use crate::bus::{Bus, Rpc};
use crate::fanout::Fanout;
use crate::ingest::{Pipeline, UserLimit};
use crate::metrics::METRICS;
use crate::reader::History;
use livecomments_store::Store;

/// Largest request body (CONTRACT §2: 413 above 16 KiB).
pub const MAX_BODY: usize = 16 * 1024;

/// What every route of every role shares.
pub struct Common {
    pub region: String,
    pub auth: Option<Arc<Authenticator>>,
    pub read_requires_token: bool,
    pub bus: Arc<dyn Bus>,
    /// The store this process depends on (ingest, reader, standalone), checked by `/readyz`.
    pub store: Option<Arc<dyn Store>>,
    /// Proxies whose `X-Forwarded-For` names the client (`http::client_ip`).
    pub trusted_proxies: Vec<client_ip::Cidr>,
    pub demo_page: bool,
}

/// What the ingest role runs: `POST /comment`, `DELETE /comment/<id>`.
pub struct IngestState {
    pub common: Arc<Common>,
    pub pipeline: Pipeline,
    pub store: Arc<dyn Store>,
    pub rate: Arc<UserLimit>,
    /// Where a DELETE of a comment this region does not hold goes; `None` with one region.
    pub remote_deletes: Option<RemoteDeletes>,
}

/// The other regions of the deployment, reached over NATS.
pub struct RemoteDeletes {
    pub rpc: Rpc,
    /// Never empty, never this region.
    pub regions: Vec<String>,
}

/// What the reader role runs: `GET /comments`.
pub struct ReaderState {
    pub common: Arc<Common>,
    pub history: Arc<History>,
}

/// What the fanout role runs: `GET /comments/stream` (also on the lean path, `sse_conn`).
pub struct FanoutState {
    pub common: Arc<Common>,
    pub fanout: Arc<Fanout>,
}

/// The rooms of one process: the roles it runs decide which exist, and so which routes.
pub struct Rooms {
    pub common: Arc<Common>,
    pub ingest: Option<Arc<IngestState>>,
    pub reader: Option<Arc<ReaderState>>,
    pub fanout: Option<Arc<FanoutState>>,
}

/// A refused request, rendered as `{"error": {...}}` with the matching status and headers.
#[derive(Debug)]
pub struct ApiError {
    pub rejection: Rejection,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            rejection: Rejection::new(code, message),
            retry_after: None,
        }
    }
    pub fn unavailable(what: &str) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            format!("{what} is unavailable, try again shortly"),
        )
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError {
            rejection,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.rejection.code;
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
        if status.is_client_error() {
            METRICS.requests_rejected.inc();
        }
        let mut headers = HeaderMap::new();
        if code == ErrorCode::InvalidToken {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if let Some(d) = self.retry_after {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        (status, headers, axum::Json(self.rejection.body())).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl Common {
    /// The caller from `Authorization: Bearer`, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> ApiResult<Caller> {
        let auth = self
            .auth
            .as_ref()
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, "no token key is configured"))?;
        let value = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::new(ErrorCode::InvalidToken, "malformed Authorization header")
            })?),
        };
        auth.verify_header(value)
            .map_err(|why| ApiError::new(ErrorCode::InvalidToken, why))
    }

    /// For reads: a token only when the operator requires one (header, or `access_token` for
    /// EventSource, which cannot set headers).
    pub fn authorize_read(&self, headers: &HeaderMap, access_token: Option<&str>) -> ApiResult<()> {
        if !self.read_requires_token {
            return Ok(());
        }
        match (access_token, &self.auth) {
            (Some(t), Some(auth)) if !headers.contains_key(header::AUTHORIZATION) => auth
                .verify(t)
                .map(|_| ())
                .map_err(|why| ApiError::new(ErrorCode::InvalidToken, why)),
            _ => self.authenticate(headers).map(|_| ()),
        }
    }
}

pub fn router(rooms: &Rooms) -> Router {
    let common = &rooms.common;
    let mut r = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi));
    if common.demo_page {
        r = r
            .route("/", get(ops::index))
            .route("/app.js", get(ops::app_js))
            .route("/style.css", get(ops::style_css));
    }
    if common.auth.as_ref().is_some_and(|a| a.dev_tokens_enabled()) {
        r = r.route("/dev/token", get(ops::dev_token));
    }
    let mut r: Router = r.with_state(common.clone());
    if let Some(ingest) = &rooms.ingest {
        r = r.merge(
            Router::new()
                .route("/comment", post(post_comment::handle))
                .route("/comment/{id}", delete(delete_comment::handle))
                .with_state(ingest.clone()),
        );
    }
    if let Some(reader) = &rooms.reader {
        r = r.merge(
            Router::new()
                .route("/comments", get(get_comments::handle))
                .with_state(reader.clone()),
        );
    }
    if let Some(fanout) = &rooms.fanout {
        r = r.merge(
            Router::new()
                .route("/comments/stream", get(stream::handle))
                .with_state(fanout.clone()),
        );
    }
    r.fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(axum::middleware::from_fn(crate::trace::middleware))
}
