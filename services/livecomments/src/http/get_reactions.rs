//! `GET /posts/<post_id>/reactions` (CONTRACT §11, public): the post's reaction totals per
//! kind over every region (`reader::reactions`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use livecomments_shared::PostId;

use super::{ApiError, ApiResult, ReaderState};

pub async fn handle(
    State(st): State<Arc<ReaderState>>,
    Path(post_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let post_id = PostId::parse(&post_id)?;
    let (totals, missing) = st
        .reactions
        .of(&post_id)
        .await
        .map_err(|_| ApiError::unavailable("the reaction store"))?;
    let mut body = serde_json::json!({ "post_id": post_id, "reactions": totals.to_json() });
    if !missing.is_empty() {
        // As a partial `GET /comments` page says which regions it lacks.
        body["missing_regions"] = missing.into();
    }
    Ok(Json(body))
}
