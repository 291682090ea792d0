//! The error vocabulary of the HTTP API: a snake_case code plus its status, so that every
//! role answers the same input with the same body (CONTRACT §2).

use serde::Serialize;

/// A machine-readable error code. The HTTP status is derived from it, never chosen ad hoc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    InvalidPostId,
    InvalidText,
    InvalidMetadata,
    InvalidJson,
    InvalidIdempotencyKey,
    InvalidParameter,
    InvalidCursor,
    InvalidToken,
    Forbidden,
    /// CONTRACT §8: the user is banned (from the post, or from every post).
    Banned,
    /// CONTRACT §9: the post is closed to new comments.
    PostClosed,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    /// CONTRACT §9: the post's slow mode.
    SlowMode,
    TooManyConnections,
    Unavailable,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BadRequest
            | InvalidPostId
            | InvalidText
            | InvalidMetadata
            | InvalidJson
            | InvalidIdempotencyKey
            | InvalidParameter
            | InvalidCursor => 400,
            InvalidToken => 401,
            Forbidden | Banned | PostClosed => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            RateLimited | SlowMode | TooManyConnections => 429,
            Unavailable => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "bad_request",
            InvalidPostId => "invalid_post_id",
            InvalidText => "invalid_text",
            InvalidMetadata => "invalid_metadata",
            InvalidJson => "invalid_json",
            InvalidIdempotencyKey => "invalid_idempotency_key",
            InvalidParameter => "invalid_parameter",
            InvalidCursor => "invalid_cursor",
            InvalidToken => "invalid_token",
            Forbidden => "forbidden",
            Banned => "banned",
            PostClosed => "post_closed",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RateLimited => "rate_limited",
            SlowMode => "slow_mode",
            TooManyConnections => "too_many_connections",
            Unavailable => "unavailable",
        }
    }
}

/// A refused request: what to tell the client. Messages are written for humans and never
/// carry internals (no paths, no driver errors, no token contents).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }

    /// The JSON body of CONTRACT §2: `{"error": {"code": ..., "message": ...}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }
}
