//! `GET /posts/<post_id>/settings` (CONTRACT §9, public): slow mode, closed, pinned comment.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use livecomments_shared::PostId;

use super::{ApiResult, IngestState};

pub async fn handle(
    State(st): State<Arc<IngestState>>,
    Path(post_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let post_id = PostId::parse(&post_id)?;
    Ok(Json(st.moderation.state.settings(&post_id).to_json()))
}
