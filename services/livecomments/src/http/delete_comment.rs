//! `DELETE /comment/<id>?post_id=...`: by the author or a moderator; every stream hears it.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use livecomments_shared::wire::DeleteRequest;
use livecomments_shared::{ErrorCode, id};

use super::query::Query;
use super::{ApiError, ApiResult};
use crate::ingest::delete::{self, Outcome};

pub async fn handle(
    State(st): State<std::sync::Arc<super::IngestState>>,
    Path(comment_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let caller = st.common.authenticate(&headers)?;
    let post_id = Query::parse(raw.as_deref())?.post_id()?;
    caller.require_post(&post_id)?;
    if !id::is_valid(&comment_id) {
        return Err(ApiError::new(ErrorCode::NotFound, "no such comment"));
    }
    let req = DeleteRequest {
        post_id,
        id: comment_id.into(),
        user_id: caller.user_id,
        moderator: caller.moderator,
    };
    let mut outcome = delete::delete_local(st.store.as_ref(), &st.pipeline, &req).await;
    if let (Outcome::NotFound, Some(remote)) = (outcome, &st.remote_deletes) {
        // Not ours: the comment may live in another region's store.
        outcome = delete::delete_remote(&remote.rpc, &remote.regions, &req).await;
    }
    match outcome {
        Outcome::Deleted => {
            // Deleting the pinned comment unpins it (CONTRACT §9).
            st.moderation.forget_comment(&req.post_id, &req.id).await;
            Ok(StatusCode::NO_CONTENT)
        }
        Outcome::NotFound => Err(ApiError::new(ErrorCode::NotFound, "no such comment")),
        Outcome::Forbidden => Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the author or a moderator may delete this comment",
        )),
        Outcome::Error => Err(ApiError::unavailable("the comment store")),
    }
}
