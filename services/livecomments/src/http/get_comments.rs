//! `GET /comments`: newest-first pages merged from every region, `before` cursors, `since`
//! (oldest first), and `after` (oldest first from a cursor; an extension for paging forward).

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use livecomments_shared::{ErrorCode, id, time};

use super::query::Query;
use super::{ApiError, ApiResult};

/// Deepest row reachable with `page_number`; deeper pages use `next_cursor` (O(page) each).
pub const MAX_OFFSET: u64 = 10_000;
pub const MAX_PAGE_NUMBER: u64 = MAX_OFFSET / 100;

pub async fn handle(
    State(st): State<std::sync::Arc<super::ReaderState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = Query::parse(raw.as_deref())?;
    let reader = st.common.authorize_read(&headers, q.get("access_token")?)?;
    let post_id = q.post_id()?;
    if let Some(r) = &reader {
        r.require_post(&post_id)?;
    }
    let page_size = q.int("page_size", 20, 1..=100)?;
    // 100 pages of at most 100 rows: every skip stays within MAX_OFFSET, and the rule is one
    // parameter's range (as the OpenAPI document can say it), not a product of two.
    let page_number = q.int("page_number", 1, 1..=MAX_PAGE_NUMBER)?;
    let cursor = |name: &str| -> ApiResult<Option<String>> {
        match q.get(name)? {
            None => Ok(None),
            Some(c) if id::is_valid(c) => Ok(Some(c.to_string())),
            Some(_) => Err(ApiError::new(
                ErrorCode::InvalidCursor,
                format!("{name} is not a cursor returned by this API"),
            )),
        }
    };
    let before = cursor("before")?;
    let after = cursor("after")?;
    let since = match q.get("since")? {
        None => None,
        Some(s) => Some(time::parse_since(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidParameter,
                "since must be RFC 3339 or integer milliseconds since the Unix epoch",
            )
        })?),
    };
    // Any combination means what each part says: `since`/`after` start an oldest-first read
    // at the later of the two, `before` ends it (a window), `page_number` skips pages in
    // either direction.
    let forward = since.is_some() || after.is_some();
    let skip = (page_number - 1) * page_size;
    let history = &st.history;
    let page_size = page_size as usize;
    let (page, next_cursor) = if forward {
        let from = match (after, since.map(id::max_at)) {
            (Some(a), Some(s)) => Some(a.max(s)),
            (a, s) => a.or(s),
        };
        let mut page = history
            .after(&post_id, from.as_deref(), skip as usize, page_size)
            .await;
        if let Some(end) = &before {
            // Oldest first: once one id reaches the window's end, every later one does.
            if let Some(cut) = page
                .comments
                .iter()
                .position(|c| c.id.as_str() >= end.as_str())
            {
                page.comments.truncate(cut);
                page.more = false;
            }
            page.deleted.retain(|d| d.id.as_str() < end.as_str());
        }
        // next_cursor means "older, with before=" (CONTRACT); forward pages continue with
        // `after=<next_after>` instead.
        (page, None)
    } else {
        let page = history
            .newest(&post_id, before.as_deref(), skip as usize, page_size)
            .await;
        let next = if page.more {
            page.comments.last().map(|c| c.id.clone())
        } else {
            None
        };
        (page, next)
    };
    if page.missing.len() == history.regions().count() {
        return Err(ApiError::unavailable("the comment store"));
    }
    let mut body = serde_json::json!({
        "post_id": post_id,
        "comments": page.comments,
        "next_cursor": next_cursor,
    });
    if forward {
        let next_after = if page.more {
            page.comments.last().map(|c| c.id.clone())
        } else {
            None
        };
        body["next_after"] = serde_json::json!(next_after);
        // CONTRACT §10: comments deleted within the range read (a client that showed them
        // drops them). Absent when there are none.
        if !page.deleted.is_empty() {
            let ids: Vec<&str> = page.deleted.iter().map(|d| d.comment_id.as_str()).collect();
            body["deleted"] = serde_json::json!(ids);
        }
    }
    let mut resp_headers = axum::http::HeaderMap::new();
    if !page.missing.is_empty() {
        body["partial"] = true.into();
        body["missing_regions"] = page.missing.clone().into();
        if let Ok(v) = HeaderValue::from_str(&page.missing.join(",")) {
            resp_headers.insert("x-livecomments-missing-regions", v);
        }
    }
    Ok((resp_headers, axum::Json(body)).into_response())
}
