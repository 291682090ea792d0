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
use crate::bus::Bus;
use crate::config::Role;
use crate::fanout::Fanout;
use crate::ingest::{Pipeline, UserLimit};
use crate::metrics::METRICS;
use crate::reader::History;
use crate::store::Store;

/// Largest request body (CONTRACT §2: 413 above 16 KiB).
pub const MAX_BODY: usize = 16 * 1024;

/// What the handlers share. Parts a role does not run are `None` and their routes absent.
pub struct AppState {
    pub region: String,
    pub auth: Option<Arc<Authenticator>>,
    pub read_requires_token: bool,
    pub pipeline: Option<Pipeline>,
    pub store: Option<Arc<dyn Store>>,
    pub bus: Arc<dyn Bus>,
    pub history: Option<Arc<History>>,
    pub fanout: Option<Arc<Fanout>>,
    pub rate: Arc<UserLimit>,
    pub demo_page: bool,
    /// Every region of the deployment, and NATS to reach the others (DELETE forwarding).
    pub regions: Vec<String>,
    pub rpc: Option<crate::bus::Rpc>,
    /// Proxies whose `X-Forwarded-For` names the client (`http::client_ip`).
    pub trusted_proxies: Vec<client_ip::Cidr>,
}

pub type State = Arc<AppState>;

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

impl AppState {
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

pub fn router(state: State, role: Role) -> Router {
    let ingest = matches!(role, Role::Standalone | Role::Ingest);
    let reader = matches!(role, Role::Standalone | Role::Reader);
    let fanout = matches!(role, Role::Standalone | Role::Fanout);
    let mut r = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi));
    if ingest {
        r = r
            .route("/comment", post(post_comment::handle))
            .route("/comment/{id}", delete(delete_comment::handle));
    }
    if reader {
        r = r.route("/comments", get(get_comments::handle));
    }
    if fanout {
        r = r.route("/comments/stream", get(stream::handle));
    }
    if state.demo_page {
        r = r
            .route("/", get(ops::index))
            .route("/app.js", get(ops::app_js))
            .route("/style.css", get(ops::style_css));
    }
    if state.auth.as_ref().is_some_and(|a| a.dev_tokens_enabled()) {
        r = r.route("/dev/token", get(ops::dev_token));
    }
    r.fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .with_state(state)
}
