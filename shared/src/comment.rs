//! The comment as users see it (CONTRACT §1) and the body a client posts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::{CommentId, PostId, Region};

/// A stored, accepted comment. The same struct is the JSON of the HTTP API and, encoded with
/// `rmp_serde::to_vec_named`, the MessagePack on NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// ULID text; its time part equals `timestamp`, so ordering by id orders by time.
    pub id: CommentId,
    pub post_id: PostId,
    pub user_id: String,
    pub text: String,
    /// RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    pub region: Region,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl Comment {
    /// Epoch milliseconds, read from the id (ULIDs carry them) so no parse of `timestamp` is needed.
    pub fn timestamp_millis(&self) -> i64 {
        crate::id::millis_of(&self.id).unwrap_or(0)
    }
}

/// The body of `POST /comment`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommentInput {
    pub text: String,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Merged order of every read: newest first by timestamp, then id (ids start with the
/// timestamp, so comparing ids is enough, and is stable across regions).
pub fn newest_first(a: &Comment, b: &Comment) -> std::cmp::Ordering {
    b.id.cmp(&a.id)
}
