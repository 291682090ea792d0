//! Tokens signed with the test secret the harness hands every server.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const SECRET: &str = "test-secret-0123456789abcdef";

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `user` signed with [`SECRET`].
pub fn token(user: &str) -> String {
    token_with(serde_json::json!({"sub": user, "exp": now_secs() + 3600}))
}

pub fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}
