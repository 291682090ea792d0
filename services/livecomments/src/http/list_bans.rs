//! `GET /moderation/bans?post_id=...` (CONTRACT §8, moderators): the active bans of the post
//! and the global ones; without post_id every active ban.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use livecomments_shared::PostId;

use super::query::Query;
use super::{ApiResult, IngestState};

pub async fn handle(
    State(st): State<Arc<IngestState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    st.common.moderator(&headers)?;
    let q = Query::parse(raw.as_deref())?;
    let post_id = q.get("post_id")?.map(PostId::parse).transpose()?;
    let bans: Vec<serde_json::Value> = st
        .moderation
        .state
        .bans(post_id.as_deref())
        .iter()
        .map(|b| b.to_json())
        .collect();
    Ok(Json(serde_json::json!({ "bans": bans })))
}
