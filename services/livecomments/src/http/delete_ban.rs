//! `DELETE /moderation/bans/<user_id>?post_id=...` (CONTRACT §8): lifts the ban of that
//! post (no post_id: the global ban). 204, or 404 when there is no such active ban.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use livecomments_shared::moderation::RecordBody;
use livecomments_shared::{ErrorCode, PostId, validate};

use super::query::Query;
use super::{ApiError, ApiResult, IngestState};

pub async fn handle(
    State(st): State<Arc<IngestState>>,
    Path(user_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let caller = st.common.moderator(&headers)?;
    let q = Query::parse(raw.as_deref())?;
    let post_id = q.get("post_id")?.map(PostId::parse).transpose()?;
    if !validate::user_id(&user_id)
        || st
            .moderation
            .state
            .ban_exact(&user_id, post_id.as_deref())
            .is_none()
    {
        return Err(ApiError::new(ErrorCode::NotFound, "no such ban"));
    }
    st.moderation
        .commit(RecordBody::Unban {
            user_id: user_id.clone(),
            post_id: post_id.clone(),
        })
        .await
        .map_err(|_| ApiError::unavailable("the moderation store"))?;
    tracing::info!(%user_id, ?post_id, by = %caller.user_id, "ban lifted");
    Ok(StatusCode::NO_CONTENT)
}
