//! `POST /comment?post_id=...`: authenticate, validate, rate-limit, write durably, answer 201.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use livecomments_shared::{CommentInput, ErrorCode, validate};

use super::query::Query;
use super::{ApiError, ApiResult, MAX_BODY};
use std::time::{Duration, Instant};

use crate::ingest::pipeline::{Submission, SubmitError};
use crate::metrics::METRICS;
use livecomments_store::StoreError;

pub async fn handle(
    State(st): State<std::sync::Arc<super::IngestState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let accepted = Instant::now();
    let caller = st.common.authenticate(&headers)?;
    let post_id = Query::parse(raw.as_deref())?.post_id()?;
    caller.require_post(&post_id)?;
    let input: CommentInput = read_json(&headers, body).await?;
    let text = validate::text(&input.text)?;
    let metadata = input.metadata.unwrap_or_default();
    validate::metadata(&metadata)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            // Bytes that are not text read as "", which the rule refuses with its message.
            let s = std::str::from_utf8(v.as_bytes()).unwrap_or_default();
            Some(validate::idempotency_key(s)?.to_string())
        }
    };
    // Moderation (CONTRACT §8, §9), from this node's memory: no I/O on the POST path.
    if let Some(ban) = st.moderation.state.ban_of(&caller.user_id, &post_id) {
        METRICS.moderation_refused.inc();
        return Err(ApiError::new(ErrorCode::Banned, banned_message(&ban)));
    }
    let settings = st.moderation.state.settings(&post_id);
    if settings.closed {
        METRICS.moderation_refused.inc();
        return Err(ApiError::new(
            ErrorCode::PostClosed,
            "this post is closed to new comments",
        ));
    }
    // Moderators are exempt from slow mode (CONTRACT §9), not from the rate limit.
    let slow_secs = if caller.moderator {
        0
    } else {
        settings.slow_mode_secs
    };
    let refusal = match st
        .slow
        .check(&caller.user_id, &post_id, slow_secs)
        .await
        .map_err(|_| ApiError::unavailable("the slow-mode store"))?
    {
        Err(wait) => Some(ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                ErrorCode::SlowMode,
                format!("slow mode: one comment every {slow_secs} s on this post"),
            )
        }),
        Ok(()) => match st
            .rate
            .check(&caller.user_id)
            .await
            .map_err(|_| ApiError::unavailable("the rate-limit store"))?
        {
            Err(wait) => Some(ApiError {
                retry_after: Some(wait),
                ..ApiError::new(ErrorCode::RateLimited, "too many comments; slow down")
            }),
            Ok(()) => None,
        },
    };
    if let Some(refusal) = refusal {
        // A retry of a comment already stored is not a new comment: it gets its comment
        // back (CONTRACT §2: same key, same comment), not a 429 for the requests before it.
        if let Some(key) = &idempotency_key
            && let Ok(Some(c)) = st.store.keyed(&caller.user_id, &post_id, key).await
        {
            METRICS.comments_idempotent_replays.inc();
            METRICS
                .post_seconds
                .observe(accepted.elapsed().as_secs_f64());
            return Ok((StatusCode::CREATED, axum::Json(c)).into_response());
        }
        match refusal.rejection.code {
            ErrorCode::SlowMode => METRICS.moderation_refused.inc(),
            _ => METRICS.rate_limited.inc(),
        };
        return Err(refusal);
    }
    // The request counts against the limit before the answer, whichever node the user's
    // next request reaches; recorded while the comment is written.
    let slow_post = post_id.clone();
    let (inserted, recorded, slowed) = tokio::join!(
        st.pipeline.submit(Submission {
            post_id,
            user_id: caller.user_id.clone(),
            text,
            metadata,
            idempotency_key,
            request_id: crate::trace::current(),
        }),
        st.rate.record(&caller.user_id),
        st.slow.record(&caller.user_id, &slow_post, slow_secs)
    );
    let inserted = inserted.map_err(|e| match e {
        SubmitError::QueueFull => ApiError {
            retry_after: Some(Duration::from_secs(1)),
            ..ApiError::new(
                ErrorCode::Unavailable,
                "too many comments are waiting to be written; retry shortly",
            )
        },
        SubmitError::Store(StoreError::KeyInProgress(wait)) => ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                ErrorCode::Unavailable,
                "an earlier request with this Idempotency-Key is still being written; \
                 retry after Retry-After with the same key",
            )
        },
        _ => ApiError::unavailable("the comment store"),
    })?;
    if let Err(e) = recorded.and(slowed) {
        // The comment is durable and will be published: answering 503 now would invite a
        // second copy from a client retrying without a key. The limit misses one request.
        tracing::warn!(error = %e, "could not record the request in the rate-limit window");
    }
    tracing::debug!(target: crate::trace::TARGET, comment_id = %inserted.comment().id, "comment accepted");
    // A retry with a known Idempotency-Key gets the same answer as the first time.
    METRICS
        .post_seconds
        .observe(accepted.elapsed().as_secs_f64());
    Ok((StatusCode::CREATED, axum::Json(inserted.comment())).into_response())
}

/// "You are banned ... until <expiry>" (CONTRACT §8: the message names the expiry).
pub(super) fn banned_message(ban: &livecomments_shared::moderation::Ban) -> String {
    let scope = if ban.post_id.is_some() {
        "from this post"
    } else {
        "from every post"
    };
    match ban.expires_at_ms {
        Some(t) => format!(
            "you are banned {scope} until {}",
            livecomments_shared::time::format_millis(t)
        ),
        None => format!("you are banned {scope} permanently"),
    }
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes with `Content-Type: application/json`.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<T> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "Content-Type must be application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("body must be at most {MAX_BODY} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok())
        && len > MAX_BODY as u64
    {
        return Err(too_large());
    }
    let bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                ApiError::new(ErrorCode::BadRequest, "could not read the request body")
            }
        })?;
    let bytes = bytes.to_bytes();
    // serde would also accept a JSON array for a struct; the contract's body is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "body must be a JSON object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("body is not valid: {}", json_reason(&e)),
        )
    })
}

/// serde_json's message without input excerpts.
fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => "malformed JSON".into(),
        Category::Data => {
            let s = e.to_string();
            s.split(" at line ")
                .next()
                .unwrap_or("unexpected fields")
                .to_string()
        }
        Category::Io => "unreadable".into(),
    }
}
