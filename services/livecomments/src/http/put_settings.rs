//! `PUT /posts/<post_id>/settings` (CONTRACT §9, moderators): any subset of `slow_mode_secs`
//! (0..=3600), `closed`, `pinned_comment_id` (an id of a comment of the post, or null);
//! `post_id` may be repeated if it names the path's post. Anything else → 400, an id that is
//! not a comment of the post → 404; nothing is changed then.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use livecomments_shared::moderation::{RecordBody, SLOW_MODE_MAX_SECS};
use livecomments_shared::{ErrorCode, PostId, id};
use serde_json::{Map, Value};

use super::post_comment::read_json;
use super::{ApiError, ApiResult, IngestState};

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameter, message)
}

pub async fn handle(
    State(st): State<Arc<IngestState>>,
    Path(post_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let post_id = PostId::parse(&post_id)?;
    let caller = st.common.moderator(&headers)?;
    let fields: Map<String, Value> = read_json(&headers, body).await?;
    let mut s = st.moderation.state.settings(&post_id);
    let mut pin: Option<Option<String>> = None;
    for (k, v) in &fields {
        match (k.as_str(), v) {
            ("post_id", Value::String(p)) if *p == post_id.as_str() => {}
            ("post_id", _) => return Err(bad("post_id in the body must be the path's post")),
            // A whole number, also written `30.0` (JSON Schema's integer takes both).
            ("slow_mode_secs", v) => match v.as_u64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            }) {
                Some(n) if n <= u64::from(SLOW_MODE_MAX_SECS) => s.slow_mode_secs = n as u32,
                _ => {
                    return Err(bad(format!(
                        "slow_mode_secs must be an integer from 0 to {SLOW_MODE_MAX_SECS}"
                    )));
                }
            },
            ("closed", Value::Bool(b)) => s.closed = *b,
            ("closed", _) => return Err(bad("closed must be true or false")),
            ("pinned_comment_id", Value::Null) => pin = Some(None),
            ("pinned_comment_id", Value::String(id)) => pin = Some(Some(id.clone())),
            ("pinned_comment_id", _) => {
                return Err(bad("pinned_comment_id must be a comment id or null"));
            }
            (other, _) => {
                return Err(bad(format!(
                    "unknown field {other:?}: expected slow_mode_secs, closed, pinned_comment_id"
                )));
            }
        }
    }
    match pin {
        Some(None) => s.pinned = None,
        Some(Some(cid)) => {
            let not_found = || ApiError::new(ErrorCode::NotFound, "no such comment on this post");
            if !id::is_valid(&cid) {
                return Err(not_found());
            }
            let found = match st.store.get(&post_id, &cid.clone().into()).await {
                Ok(Some(c)) => Some(c),
                Ok(None) => st
                    .history
                    .find(&post_id, &cid)
                    .await
                    .map_err(|_| ApiError::unavailable("a region holding comments"))?,
                Err(_) => return Err(ApiError::unavailable("the comment store")),
            };
            s.pinned = Some(found.ok_or_else(not_found)?);
        }
        None => {}
    }
    st.moderation
        .commit(RecordBody::Settings(s.clone()))
        .await
        .map_err(|_| ApiError::unavailable("the moderation store"))?;
    tracing::info!(post_id = %post_id, by = %caller.user_id, slow_mode_secs = s.slow_mode_secs, closed = s.closed, pinned = ?s.pinned.as_ref().map(|c| &c.id), "post settings changed");
    Ok(Json(s.to_json()))
}
