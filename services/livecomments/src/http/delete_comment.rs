//! `DELETE /comment/<id>?post_id=...`: by the author or a moderator; every stream hears it.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use livecomments_shared::wire::DeleteRequest;
use livecomments_shared::{ErrorCode, id};

use super::query::Query;
use super::{ApiError, ApiResult};
use crate::ingest::delete::{self, Outcome};

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
    let req = DeleteRequest {
        post_id,
        id: comment_id,
        user_id: caller.user_id,
        moderator: caller.moderator,
    };
    let mut outcome = delete::delete_local(store.as_ref(), st.bus.as_ref(), &st.region, &req).await;
    if outcome == Outcome::NotFound {
        // Not ours: the comment may live in another region's store.
        if let Some(rpc) = &st.rpc {
            let others: Vec<String> = st
                .regions
                .iter()
                .filter(|r| **r != st.region)
                .cloned()
                .collect();
            if !others.is_empty() {
                outcome = delete::delete_remote(rpc, &others, &req).await;
            }
        }
    }
    match outcome {
        Outcome::Deleted => Ok(StatusCode::NO_CONTENT),
        Outcome::NotFound => Err(ApiError::new(ErrorCode::NotFound, "no such comment")),
        Outcome::Forbidden => Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the author or a moderator may delete this comment",
        )),
        Outcome::Error => Err(ApiError::unavailable("the comment store")),
    }
}
