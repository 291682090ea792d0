//! `POST /moderation/bans` (CONTRACT §8): a moderator bans a user from one post or from
//! every post, for a time or for good, optionally deleting the user's comments on the post.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use livecomments_shared::moderation::{BAN_MAX_SECS, Ban, REASON_MAX_CHARS, RecordBody};
use livecomments_shared::{ErrorCode, PostId, time::now_millis, validate};
use serde::Deserialize;

use super::post_comment::read_json;
use super::{ApiError, ApiResult, IngestState};

/// The body; any other field is refused (400), as a typo must not ban for good.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    user_id: String,
    #[serde(default)]
    post_id: Option<String>,
    #[serde(default, deserialize_with = "whole_seconds")]
    duration_secs: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    delete_comments: Option<bool>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameter, message)
}

pub async fn handle(
    State(st): State<Arc<IngestState>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let caller = st.common.moderator(&headers)?;
    let b: BanBody = read_json(&headers, body).await?;
    if !validate::user_id(&b.user_id) {
        return Err(bad(
            "user_id must be 1 to 128 characters without control characters",
        ));
    }
    let post_id = b.post_id.as_deref().map(PostId::parse).transpose()?;
    if let Some(d) = b.duration_secs
        && !(1..=BAN_MAX_SECS).contains(&d)
    {
        return Err(bad(format!(
            "duration_secs must be from 1 to {BAN_MAX_SECS} (two weeks); leave it out for a permanent ban"
        )));
    }
    let reason = b
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > REASON_MAX_CHARS || r.chars().any(char::is_control))
    {
        return Err(bad(format!(
            "reason must be at most {REASON_MAX_CHARS} characters without control characters"
        )));
    }
    let purge = b.delete_comments.unwrap_or(false);
    if purge && post_id.is_none() {
        return Err(bad(
            "delete_comments needs post_id: comments are deleted from one post",
        ));
    }
    let now = now_millis();
    let ban = Ban {
        user_id: b.user_id,
        post_id,
        expires_at_ms: b.duration_secs.map(|d| now + (d as i64) * 1000),
        reason,
        created_by: caller.user_id.clone(),
        created_at_ms: now,
    };
    st.moderation
        .commit(RecordBody::Ban(ban.clone()))
        .await
        .map_err(|_| ApiError::unavailable("the moderation store"))?;
    tracing::info!(user_id = %ban.user_id, post_id = ?ban.post_id, by = %caller.user_id, "user banned");
    if let (true, Some(post)) = (purge, &ban.post_id) {
        let n = crate::ingest::purge::purge(&st, &ban.user_id, post, &caller.user_id).await;
        tracing::info!(user_id = %ban.user_id, post_id = %post, deleted = n, "banned user's comments deleted");
    }
    Ok((StatusCode::CREATED, axum::Json(ban.to_json())).into_response())
}

/// A JSON number that is a whole number of seconds: `60` or `60.0` (JSON Schema's `integer`
/// takes both, and so do clients that only have doubles); `60.5` and negatives are refused.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    let Some(n) = n else { return Ok(None) };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(
            "duration_secs must be a whole number of seconds",
        )),
    }
}
