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

pub async fn handle(
    State(st): State<std::sync::Arc<super::ReaderState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = Query::parse(raw.as_deref())?;
    st.common.authorize_read(&headers, q.get("access_token")?)?;
    let post_id = q.post_id()?;
    let page_size = q.int("page_size", 20, 1..=100)?;
    let page_number = q.int("page_number", 1, 1..=u64::MAX)?;
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
    let forward = since.is_some() || after.is_some();
    if [before.is_some(), since.is_some(), after.is_some()]
        .iter()
        .filter(|b| **b)
        .count()
        > 1
    {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "use only one of before, since and after",
        ));
    }
    if forward && page_number != 1 {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "page_number applies to newest-first pages only",
        ));
    }
    let skip = (page_number - 1).saturating_mul(page_size);
    if skip > MAX_OFFSET {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "page_number reaches past {MAX_OFFSET} comments; follow next_cursor with before= instead"
            ),
        ));
    }
    let history = &st.history;
    let page_size = page_size as usize;
    let (page, next_cursor) = if forward {
        let from = after.or_else(|| since.map(id::max_at));
        let page = history.after(&post_id, from.as_deref(), page_size).await;
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
