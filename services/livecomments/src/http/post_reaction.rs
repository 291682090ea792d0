//! `POST /reaction?post_id=...` (CONTRACT §11): a JWT, a kind, 202. Counted in memory for the
//! second (`ingest::reactions`), limited per user to 20 a second where every ingest node of
//! the region sees it (CONTRACT §7).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use livecomments_shared::{ErrorCode, PostId, ReactionKind};
use serde::{Deserialize, Serialize};

use super::post_comment::read_json;
use super::query::Query;
use super::{ApiError, ApiResult, IngestState};
use crate::ingest::reactions::Refused;
use crate::metrics::METRICS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactionInput {
    kind: String,
}

/// The 202's body: serialised straight from borrowed fields (a `serde_json::Value` cost two
/// maps and three strings per reaction).
#[derive(Serialize)]
struct Accepted<'a> {
    post_id: &'a PostId,
    kind: ReactionKind,
}

pub async fn handle(
    State(st): State<Arc<IngestState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let caller = st.common.authenticate(&headers)?;
    let post_id = Query::parse(raw.as_deref())?.post_id()?;
    caller.require_post(&post_id)?;
    let input: ReactionInput = read_json(&headers, body).await?;
    let kind = ReactionKind::parse(&input.kind).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidParameter,
            "kind must be one of like, love, haha, wow, sad, angry",
        )
    })?;
    // A banned user cannot react either (CONTRACT §8: "nothing is stored"); a closed post
    // still takes reactions, as a finished live video keeps its hearts.
    if let Some(ban) = st.moderation.state.ban_of(&caller.user_id, &post_id) {
        METRICS.moderation_refused.inc();
        return Err(ApiError::new(
            ErrorCode::Banned,
            super::post_comment::banned_message(&ban),
        ));
    }
    match st.reactions.react(&caller.user_id, &post_id, kind).await {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                post_id: &post_id,
                kind,
            }),
        )
            .into_response()),
        Err(Refused::Limited(wait)) => {
            METRICS.rate_limited.inc();
            Err(ApiError {
                retry_after: Some(wait),
                ..ApiError::new(
                    ErrorCode::RateLimited,
                    "too many reactions; at most 20 a second",
                )
            })
        }
        Err(Refused::Unavailable(what)) => Err(ApiError::unavailable(what)),
    }
}
