//! Operations endpoints, the OpenAPI document, the dev token and the demo page.

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use livecomments_shared::{ErrorCode, validate};

use super::query::Query;
use super::{ApiError, ApiResult};
use crate::metrics::METRICS;

pub async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// 200 when the store (if this role has one) and the bus answer, else 503 naming what failed.
pub async fn readyz(State(st): State<std::sync::Arc<super::Common>>) -> Response {
    let store_ok = match &st.store {
        Some(s) => tokio::time::timeout(std::time::Duration::from_secs(2), s.ping())
            .await
            .is_ok_and(|r| r.is_ok()),
        None => true,
    };
    let bus_ok = st.bus.is_connected();
    let body = serde_json::json!({"store": if store_ok {"ok"} else {"unavailable"}, "bus": if bus_ok {"ok"} else {"unavailable"}});
    if store_ok && bus_ok {
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        let failing = if store_ok {
            "the bus"
        } else {
            "the comment store"
        };
        let mut resp = ApiError::unavailable(failing).into_response();
        *resp.body_mut() = axum::body::Body::from(
            serde_json::json!({
                "error": {"code": "unavailable", "message": format!("{failing} is unavailable")},
                "store": body["store"], "bus": body["bus"],
            })
            .to_string(),
        );
        resp
    }
}

pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        METRICS.render(),
    )
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../openapi.json"),
    )
}

/// `GET /dev/token?user_id=...&role=moderator` (standalone without a configured key only;
/// `role=moderator` adds the moderator claim).
pub async fn dev_token(
    State(st): State<std::sync::Arc<super::Common>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(raw.as_deref())?;
    let user = q.get("user_id")?.unwrap_or("demo");
    if !validate::user_id(user) || user.trim() != user {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "user_id must be 1 to 128 printable characters",
        ));
    }
    // Exactly `moderator` or absent (the OpenAPI enum): an empty `role=` is refused too.
    let moderator = match q.get("role")? {
        None => false,
        Some("moderator") => true,
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                "role must be moderator (or absent)",
            ));
        }
    };
    let auth = st
        .auth
        .as_ref()
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such route"))?;
    let (token, exp) = auth
        .dev_token_as(user, 24 * 3600, moderator)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such route"))?;
    Ok(axum::Json(serde_json::json!({"token": token, "user_id": user, "expires_at": livecomments_shared::time::format_millis(exp as i64 * 1000)})).into_response())
}

pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../assets/index.html"),
    )
}

pub async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../assets/app.js"),
    )
}

/// The JavaScript client (`clients/js`, the npm package `@livecomments/client`), served so that
/// the demo page uses the same reconnect/resume/dedup code as every other app (`/app.js`
/// imports it), and so a page can `import { connect } from "<server>/client.js"` without npm.
pub async fn client_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../../../clients/js/index.js"),
    )
}

pub async fn style_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../assets/style.css"),
    )
}
