//! `GET /posts/<post_id>/viewers` (CONTRACT §11, public): open streams of the post over every
//! fanout of every region, as their reports of the last seconds add up (`presence`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use livecomments_shared::PostId;

use super::{ApiResult, ReaderState};

pub async fn handle(
    State(st): State<Arc<ReaderState>>,
    Path(post_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let post_id = PostId::parse(&post_id)?;
    let viewers = st.viewers.viewers(&post_id);
    Ok(Json(
        serde_json::json!({ "post_id": post_id, "viewers": viewers }),
    ))
}
