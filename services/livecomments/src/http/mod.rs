//! HTTP: one router per role, one handler per file. Every refusal goes through [`ApiError`],
//! so bodies and statuses match CONTRACT §2 everywhere.

pub mod client_ip;
mod delete_ban;
mod delete_comment;
mod get_comments;
mod get_reactions;
mod get_settings;
mod get_viewers;
mod list_bans;
mod ops;
mod post_ban;
mod post_comment;
pub mod post_conn;
mod post_reaction;
mod put_settings;
mod query;
pub mod sse_conn;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use livecomments_shared::{ErrorCode, Rejection};

use crate::auth::{Authenticator, Caller};
use crate::bus::{Bus, Rpc};
use crate::fanout::Fanout;
use crate::ingest::reactions::Reactions;
use crate::ingest::{Pipeline, SlowMode, UserLimit};
use crate::metrics::METRICS;
use crate::moderation::Moderator;
use crate::presence::ViewerCounts;
use crate::reader::History;
use crate::reader::reactions::ReactionTotals;
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
    /// Bans and post settings (CONTRACT §8, §9): checked on every POST, changed by moderators.
    pub moderation: Arc<Moderator>,
    /// Slow mode's per-(user, post) window, where every writer of the region sees it.
    pub slow: SlowMode,
    /// Every region's comments: a pinned comment or a banned user's comments may live in
    /// another region.
    pub history: Arc<History>,
    /// Reactions counted this second, written and published each second (CONTRACT §11).
    pub reactions: Arc<Reactions>,
}

/// The other regions of the deployment, reached over NATS.
pub struct RemoteDeletes {
    pub rpc: Rpc,
    /// Never empty, never this region.
    pub regions: Vec<String>,
}

/// What the reader role runs: `GET /comments`, the viewer counts and reaction totals.
pub struct ReaderState {
    pub common: Arc<Common>,
    pub history: Arc<History>,
    /// Every fanout's reports (CONTRACT §11).
    pub viewers: Arc<ViewerCounts>,
    pub reactions: ReactionTotals,
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

    /// A moderator's token (claim `"role": "moderator"`), or 401 / 403 `forbidden`.
    pub fn moderator(&self, headers: &HeaderMap) -> ApiResult<Caller> {
        let caller = self.authenticate(headers)?;
        if !caller.moderator {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only moderators may do this",
            ));
        }
        Ok(caller)
    }

    /// For reads: a token only when the operator requires one (header, or `access_token` for
    /// EventSource, which cannot set headers). `None` when reads are public; the caller
    /// checks the post against the token's scope ([`Caller::require_post`]) once it has
    /// parsed the post id, so a bad token is a 401 before a bad post id is a 400.
    pub fn authorize_read(
        &self,
        headers: &HeaderMap,
        access_token: Option<&str>,
    ) -> ApiResult<Option<Caller>> {
        if !self.read_requires_token {
            return Ok(None);
        }
        match (access_token, &self.auth) {
            (Some(t), Some(auth)) if !headers.contains_key(header::AUTHORIZATION) => auth
                .verify(t)
                .map(Some)
                .map_err(|why| ApiError::new(ErrorCode::InvalidToken, why)),
            _ => self.authenticate(headers).map(Some),
        }
    }
}

/// A table of routes whose method names build the handlers' `MethodRouter`s, so the
/// (method, path) list `openapi.json` is checked against (`api_routes`) cannot differ from
/// what the router serves.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        &[$(($path, stringify!($method), || axum::routing::$method($handler))),*]
    };
}

type RouteTable<S> = &'static [(&'static str, &'static str, fn() -> MethodRouter<S>)];

/// Routes of every process (operations, the spec itself).
const COMMON: RouteTable<Arc<Common>> = routes!(
    get "/healthz" => ops::healthz,
    get "/readyz" => ops::readyz,
    get "/metrics" => ops::metrics,
    get "/openapi.json" => ops::openapi,
);
/// Standalone's dev tokens (only with `--dev-tokens`).
const DEV_TOKENS: RouteTable<Arc<Common>> = routes!(
    get "/dev/token" => ops::dev_token,
);
const INGEST: RouteTable<Arc<IngestState>> = routes!(
    post "/comment" => post_comment::handle,
    delete "/comment/{id}" => delete_comment::handle,
    post "/moderation/bans" => post_ban::handle,
    get "/moderation/bans" => list_bans::handle,
    delete "/moderation/bans/{user_id}" => delete_ban::handle,
    get "/posts/{post_id}/settings" => get_settings::handle,
    put "/posts/{post_id}/settings" => put_settings::handle,
    post "/reaction" => post_reaction::handle,
);
const READER: RouteTable<Arc<ReaderState>> = routes!(
    get "/comments" => get_comments::handle,
    get "/posts/{post_id}/viewers" => get_viewers::handle,
    get "/posts/{post_id}/reactions" => get_reactions::handle,
);
const FANOUT: RouteTable<Arc<FanoutState>> = routes!(
    get "/comments/stream" => stream::handle,
);
/// The demo page: files for a browser, not part of the API (not in `openapi.json`).
const DEMO_PAGE: RouteTable<Arc<Common>> = routes!(
    get "/" => ops::index,
    get "/app.js" => ops::app_js,
    get "/client.js" => ops::client_js,
    get "/style.css" => ops::style_css,
);

/// Every API route a process running every room serves, as (method, path): what
/// `openapi.json` must describe, no more and no less (checked by a test).
pub fn api_routes() -> Vec<(&'static str, &'static str)> {
    fn pairs<S>(t: RouteTable<S>) -> impl Iterator<Item = (&'static str, &'static str)> {
        t.iter().map(|(path, method, _)| (*method, *path))
    }
    pairs(COMMON)
        .chain(pairs(DEV_TOKENS))
        .chain(pairs(INGEST))
        .chain(pairs(READER))
        .chain(pairs(FANOUT))
        .collect()
}

fn add<S: Clone + Send + Sync + 'static>(mut r: Router<S>, table: RouteTable<S>) -> Router<S> {
    for (path, _, method_router) in table {
        r = r.route(path, method_router());
    }
    r
}

pub fn router(rooms: &Rooms) -> Router {
    let common = &rooms.common;
    let mut r = add(Router::new(), COMMON);
    if common.demo_page {
        r = add(r, DEMO_PAGE);
    }
    if common.auth.as_ref().is_some_and(|a| a.dev_tokens_enabled()) {
        r = add(r, DEV_TOKENS);
    }
    let mut r: Router = r.with_state(common.clone());
    if let Some(ingest) = &rooms.ingest {
        r = r.merge(add(Router::new(), INGEST).with_state(ingest.clone()));
    }
    if let Some(reader) = &rooms.reader {
        r = r.merge(add(Router::new(), READER).with_state(reader.clone()));
    }
    if let Some(fanout) = &rooms.fanout {
        r = r.merge(add(Router::new(), FANOUT).with_state(fanout.clone()));
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// `openapi.json` describes exactly the routes the router serves: a route added to a
    /// table without its description (or a description left behind) fails here.
    #[test]
    fn the_openapi_document_lists_exactly_the_served_routes() {
        let spec: serde_json::Value =
            serde_json::from_str(include_str!("../../openapi.json")).expect("openapi.json");
        let described: BTreeSet<(String, String)> = spec["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .expect("operations")
                    .keys()
                    .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                    .map(move |m| (m.clone(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = super::api_routes()
            .into_iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert!(served.len() >= 9, "{served:?}");
        assert_eq!(described, served);
    }
}
