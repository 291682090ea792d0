//! What the store's examples share: the typical comment row they write and the percentile
//! they report (`mod common;` in each; cargo builds no example from this folder).

use std::time::Duration;

use livecomments_shared::Comment;
use livecomments_shared::time::format_millis;
use ulid::Ulid;

/// A ~300 B comment row (about 200 characters of text and a little metadata), the typical
/// row of the partition arithmetic in docs/CQL.md, id stamped at `ms` with `random` as the
/// ULID's random part.
pub fn typical_comment(post: &str, ms: i64, random: u128, user: u32) -> Comment {
    Comment {
        id: Ulid::from_parts(ms as u64, random).to_string().into(),
        post_id: post.to_string().into(),
        user_id: format!("user{user}"),
        text: "a typical live comment of about two hundred characters, long enough to look like the real thing \
               and to make the row size realistic for the partition arithmetic in docs/CQL.md, nothing more."
            .to_string(),
        timestamp: format_millis(ms),
        region: "eu".into(),
        metadata: [("lang".to_string(), "en".to_string())].into(),
    }
}

/// The `p` percentile of sorted latencies, in ms (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}
