//! `DELETE /comment/<id>?post_id=...`: by the author or a moderator; every stream hears it.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use livecomments_shared::wire::{Deletion, LiveEvent};
use livecomments_shared::{ErrorCode, id};

use super::query::Query;
use super::{ApiError, ApiResult};
use crate::metrics::METRICS;

pub async fn handle(
    State(st): State<super::State>,
    Path(comment_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let caller = st.authenticate(&headers)?;
    let post_id = Query::parse(raw.as_deref())?.post_id()?;
    if !id::is_valid(&comment_id) {
        return Err(ApiError::new(ErrorCode::NotFound, "no such comment"));
    }
    let store = st
        .store
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("the comment store"))?;
    let unavailable = |_| ApiError::unavailable("the comment store");
    let comment = store
        .get(&post_id, &comment_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such comment"))?;
    if comment.user_id != caller.user_id && !caller.moderator {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the author or a moderator may delete this comment",
        ));
    }
    if !store
        .delete(&post_id, &comment_id)
        .await
        .map_err(unavailable)?
    {
        return Err(ApiError::new(ErrorCode::NotFound, "no such comment"));
    }
    METRICS.comments_deleted.inc();
    let ev = LiveEvent::Delete(Deletion {
        id: comment_id,
        post_id,
        region: comment.region.clone(),
    });
    if st.bus.publish(&st.region, &ev).await.is_err() {
        METRICS.bus_publish_errors.inc();
    }
    Ok(StatusCode::NO_CONTENT)
}
