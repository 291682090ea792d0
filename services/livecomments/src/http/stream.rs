//! `GET /comments/stream?post_id=...`: Server-Sent Events, resumable with `Last-Event-ID`
//! (or `?last_event_id=`), or from a point in time with `since=`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use livecomments_shared::{ErrorCode, Position, time};
use tokio::net::TcpStream;

use super::query::Query;
use super::{ApiError, ApiResult};
use crate::fanout::sample::Rate;
use crate::fanout::viewer::Viewer;
use crate::fanout::{Refusal, StreamOptions};

pub async fn handle(
    State(st): State<Arc<super::FanoutState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let viewer = open(&st, peer, raw.as_deref(), &headers, None).await?;
    let mut resp = Response::new(Body::from_stream(viewer.into_stream()));
    let h = resp.headers_mut();
    for (name, value) in crate::fanout::sse::RESPONSE_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    Ok(resp)
}

/// Everything of a stream request but the transport: checks, limits, joining the hub. Used by
/// this handler and by the lean connection path (`http::sse_conn`), which passes the socket
/// for the hub to write to.
pub async fn open(
    st: &super::FanoutState,
    peer: SocketAddr,
    raw: Option<&str>,
    headers: &HeaderMap,
    socket: Option<Arc<TcpStream>>,
) -> ApiResult<Viewer> {
    let q = Query::parse(raw)?;
    let reader = st.common.authorize_read(headers, q.get("access_token")?)?;
    let post_id = q.post_id()?;
    let expires_at = match &reader {
        Some(r) => {
            r.require_post(&post_id)?;
            // The verifier's 5 s leeway (for clocks) accepts a token just past its `exp`; a
            // stream opened with it would be closed at once for expiry, and the client would
            // loop on reconnects until the leeway ran out. It asks for a fresh token instead.
            if r.expires_at.saturating_mul(1000) <= time::now_millis().max(0) as u64 {
                return Err(ApiError::new(ErrorCode::InvalidToken, "token expired"));
            }
            Some(r.expires_at)
        }
        None => None,
    };
    let fanout = st.fanout.clone();
    let bad_token = || {
        ApiError::new(
            ErrorCode::InvalidCursor,
            "Last-Event-ID is not an event id from this stream",
        )
    };
    // The header wins over the query parameter (browsers set it on automatic reconnects);
    // both are checked, so a malformed one is a 400 whichever would win.
    let from_header = match headers.get("last-event-id").filter(|v| !v.is_empty()) {
        // An empty one means none (the SSE spec's "reset the last event ID").
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(Position::parse)
                .ok_or_else(bad_token)?,
        ),
        None => None,
    };
    let from_query = match q.get("last_event_id")? {
        Some(s) => Some(Position::parse(s).ok_or_else(bad_token)?),
        None => None,
    };
    let resume = from_header.or(from_query);
    // `since` is checked even when a resume token wins over it: each parameter's rule holds
    // on its own (as the OpenAPI document states them), whatever else the request carries.
    let since = match q.get("since")? {
        Some(s) => Some(time::parse_since(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidParameter,
                "since must be RFC 3339 or integer milliseconds since the Unix epoch",
            )
        })?),
        None => None,
    };
    let resume = match (resume, since) {
        (Some(p), _) => Some(p),
        (None, Some(ms)) => {
            let regions: Vec<String> = fanout.history.regions().map(str::to_string).collect();
            Some(Position::at_time(&regions, ms))
        }
        (None, None) => None,
    };
    let opts = StreamOptions {
        rate: match q.get("rate")? {
            Some(r) => Some(Rate::parse(r).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidParameter,
                    "rate must be a whole number of comments per second from 1 to 1000",
                )
            })?),
            None => None,
        },
        viewers: match q.get("viewers")? {
            None | Some("0" | "false") => false,
            Some("1" | "true") => true,
            Some(_) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    "viewers must be 1, true, 0 or false",
                ));
            }
        },
    };
    let ip = super::client_ip::client_ip(peer.ip(), headers, &st.common.trusted_proxies);
    let slot = fanout.admit(ip).map_err(|r| {
        let msg = match r {
            Refusal::TooManyStreams => {
                "this server holds as many streams as it can; try another or later"
            }
            Refusal::TooManyStreamsFromIp => "too many open streams from your address",
        };
        ApiError {
            retry_after: Some(std::time::Duration::from_secs(5)),
            ..ApiError::new(ErrorCode::TooManyConnections, msg)
        }
    })?;
    let expiries = fanout.expiries.clone();
    let viewer = Viewer::open(fanout, post_id.to_string(), resume, opts, slot, socket).await;
    if let Some(exp) = expires_at {
        expiries.watch(viewer.conn(), exp);
    }
    Ok(viewer)
}
