//! What travels on NATS (CONTRACT §5), MessagePack with fields by name
//! (`rmp_serde::to_vec_named`). `docs/NATS.md` describes each message for other languages.

use serde::{Deserialize, Serialize};

use crate::comment::Comment;
use crate::entry::Tombstone;
use crate::names::{CommentId, PostId, Region};
use crate::position::Position;
use crate::reaction::Counts;

/// Largest since-reply page; keeps one NATS message well under the 1 MB default payload limit
/// (a comment is at most ~10 KB of JSON-equivalent data).
pub const SINCE_MAX_LIMIT: u32 = 100;

/// `comments.live.<region>.<post_id>`
pub fn live_subject(region: &str, post_id: &str) -> String {
    format!("comments.live.{region}.{post_id}")
}

/// Every region's live events of one post: `comments.live.*.<post_id>`.
pub fn live_subject_all_regions(post_id: &str) -> String {
    format!("comments.live.*.{post_id}")
}

/// `comments.since.<region>`
pub fn since_subject(region: &str) -> String {
    format!("comments.since.{region}")
}

/// `comments.delete.<region>`: a deletion asked of the region that stores the comment.
pub fn delete_subject(region: &str) -> String {
    format!("comments.delete.{region}")
}

/// Queue group of the writers (ingest, standalone) answering deletions.
pub const DELETE_QUEUE_GROUP: &str = "livecomments-writers";

/// Request on `comments.delete.<region>`, sent by an ingest of another region that does not
/// hold the comment. The caller already verified the token; the owner checks authorship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub post_id: PostId,
    pub id: CommentId,
    pub user_id: String,
    #[serde(default)]
    pub moderator: bool,
}

/// Reply to a [`DeleteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReply {
    pub outcome: DeleteOutcome,
}

/// What a deletion did; on the wire `"deleted"`, `"not_found"`, `"forbidden"`, `"error"`
/// (any other string reads as `error`, so a newer peer cannot make an older one fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    Forbidden,
    /// A store or a region could not be reached; nothing is known to have been deleted.
    #[serde(other)]
    Error,
}

/// Queue group of the readers answering since-queries, so each query is answered once.
pub const SINCE_QUEUE_GROUP: &str = "livecomments-readers";

/// A message on a live subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A newly accepted comment; the map carries every field of [`Comment`] beside `type`.
    Comment(LiveComment),
    /// A comment was deleted.
    Delete(Deletion),
}

/// A comment on the live subject, with the id of the comment the same region published just
/// before it on the same post. A subscriber whose last id of that region differs has missed
/// something (a gateway cut, a dropped message) and repairs from history before going on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveComment {
    #[serde(flatten)]
    pub comment: Comment,
    /// Absent when the publisher does not know (first comment after it started).
    /// `prev` chains one *writer's* comments of the post (`id::writer_of`): a region with
    /// several ingest nodes publishes several chains on the same subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<CommentId>,
    /// Set when the publisher is not the comment's writer: it finished a comment another
    /// node had claimed for the same Idempotency-Key and never confirmed. Such a comment is
    /// outside every chain, so a subscriber checks with history instead of trusting it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// `comments.writers.<region>`: every ingest node announces itself once a second, so that a
/// fanout notices within seconds that a writer is gone and fetches from history whatever
/// that writer stored but never published (it died between its commit and its publish).
pub fn writers_subject(region: &str) -> String {
    format!("comments.writers.{region}")
}

/// Every region's writer announcements.
pub const WRITERS_SUBJECT_ALL: &str = "comments.writers.*";

/// How often a writer announces itself, and after how long without one a fanout gives it up.
pub const WRITER_BEAT_MS: u64 = 1_000;
pub const WRITER_LOST_MS: u64 = 3_000;

/// Payload on `comments.writers.<region>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterBeat {
    pub region: Region,
    /// The writer part of its ids (`id::writer_of`), 8 characters.
    pub writer: String,
}

/// A comment was deleted. `id` is the deleted comment's (as in the SSE `data:`); the
/// deletion's own place in the stream is `event_id`, chained by `prev` like a comment of the
/// same writer (CONTRACT §10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub id: CommentId,
    pub post_id: PostId,
    /// The region that stored the comment.
    pub region: Region,
    /// The tombstone's id. Absent from a publisher older than tombstones: such a deletion
    /// is passed on as it comes, outside every chain and every position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<CommentId>,
    /// The id of the event the same writer published just before on the same post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<CommentId>,
}

impl Deletion {
    /// The tombstone this deletion announces, when it carries one.
    pub fn tombstone(&self) -> Option<Tombstone> {
        Some(Tombstone {
            id: self.event_id.clone()?,
            post_id: self.post_id.clone(),
            comment_id: self.id.clone(),
            region: self.region.clone(),
        })
    }
}

impl LiveEvent {
    pub fn post_id(&self) -> &PostId {
        match self {
            LiveEvent::Comment(c) => &c.comment.post_id,
            LiveEvent::Delete(d) => &d.post_id,
        }
    }
}

/// Request on `comments.since.<region>`: comments of `post_id` stored in that region with an id
/// greater than `after` (all of them when `after` is absent), oldest first, at most `limit`.
///
/// Extension for the global reader's newest-first pages: with `newest_first: true` the answer
/// is the newest comments with an id lower than `before` (all when absent), newest first.
/// "Since t" is `after` = the greatest id of millisecond t (see `id::max_at`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinceRequest {
    pub post_id: PostId,
    #[serde(default)]
    pub after: Option<CommentId>,
    #[serde(default)]
    pub before: Option<CommentId>,
    #[serde(default)]
    pub newest_first: bool,
    pub limit: u32,
}

/// Reply to a [`SinceRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinceReply {
    /// The answering region.
    pub region: Region,
    /// Oldest first.
    pub comments: Vec<Comment>,
    /// True when more comments follow the last one returned.
    pub more: bool,
    /// Oldest-first queries: the deletions in the range answered (after `after`, up to the
    /// last comment returned, or on to the end when `more` is false), oldest first. Together
    /// with `comments` at most `limit` events; paging goes on after the greater of the last
    /// comment's and the last deletion's ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletions: Vec<Tombstone>,
    /// Set instead of comments when the request was refused or the store failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `comments.viewers.<region>`: each fanout's open streams per post (CONTRACT §11), once
/// every [`VIEWER_BEAT_MS`]. One message per fanout node per beat (more only past
/// [`VIEWER_BEAT_MAX_POSTS`] posts), never one per viewer: the cost grows with fanout nodes
/// and active posts, not with viewers.
pub fn viewers_subject(region: &str) -> String {
    format!("comments.viewers.{region}")
}

/// Every region's viewer counts.
pub const VIEWERS_SUBJECT_ALL: &str = "comments.viewers.*";

/// How often a fanout reports its counts, and after how long without a report its counts stop
/// counting (it died or froze): a killed fanout's viewers leave the total within 3–4 s.
pub const VIEWER_BEAT_MS: u64 = 1_000;
pub const VIEWER_STALE_MS: u64 = 3_000;
/// Posts per viewer beat message: 4,000 posts of ~70 bytes stay far below NATS's 1 MB.
pub const VIEWER_BEAT_MAX_POSTS: usize = 4_000;

/// Payload on `comments.viewers.<region>`: `posts` is `[[post_id, n], ...]`, the streams this
/// node holds open per post, including once a `0` for a post whose last stream just closed
/// (so the total drops at the next beat, not when the entry goes stale).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewerBeat {
    pub region: Region,
    /// The reporting fanout process, made at its start (any string of 1..=64 characters).
    pub node: String,
    pub posts: Vec<(PostId, u32)>,
}

/// `comments.reactions.<region>`: each ingest node's reaction counts of one wall-clock second,
/// published when the second is over.
pub fn reactions_subject(region: &str) -> String {
    format!("comments.reactions.{region}")
}

/// Every region's reaction counts.
pub const REACTIONS_SUBJECT_ALL: &str = "comments.reactions.*";

/// Posts per reaction beat message (a post's entry is ~80 bytes).
pub const REACTION_BEAT_MAX_POSTS: usize = 4_000;

/// Payload on `comments.reactions.<region>`: the reactions one ingest node accepted in the
/// second starting at `second` (Unix seconds), per post, as `[[post_id, [like, love, haha,
/// wow, sad, angry]], ...]`. Posts with none are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionBeat {
    pub region: Region,
    pub node: String,
    pub second: i64,
    pub posts: Vec<(PostId, Counts)>,
}

/// `comments.reaction-totals.<region>`: "the totals of post P in your region", asked by
/// another region's `GET /posts/<id>/reactions` and answered by that region's readers
/// (queue group [`SINCE_QUEUE_GROUP`]).
pub fn reaction_totals_subject(region: &str) -> String {
    format!("comments.reaction-totals.{region}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionTotalsRequest {
    pub post_id: PostId,
}

/// Reply to a [`ReactionTotalsRequest`]: the answering region's durable totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionTotalsReply {
    pub region: Region,
    pub totals: Counts,
    /// Set (and `totals` zero) when the store could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(msg)
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// Helper for the fanout: the position after delivering `c`.
pub fn position_after(mut p: Position, c: &Comment) -> Position {
    p.advance(&c.region, &c.id);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment() -> Comment {
        Comment {
            id: "01JDQ7Z8XK3M4N5P6Q7R8S9T0V".into(),
            post_id: "match-42".into(),
            user_id: "alice".into(),
            text: "what a goal!".into(),
            timestamp: "2026-11-25T19:44:32.123Z".into(),
            region: "eu".into(),
            metadata: [("lang".to_string(), "en".to_string())].into(),
        }
    }

    #[test]
    fn live_events_round_trip_by_name() {
        let ev = LiveEvent::Comment(LiveComment {
            comment: comment(),
            prev: Some("01JDQ7Z8XK3M4N5P6Q7R8S9T0T".into()),
            adopted: false,
        });
        let bytes = encode(&ev).unwrap();
        assert_eq!(decode::<LiveEvent>(&bytes).unwrap(), ev);
        let first = LiveEvent::Comment(LiveComment {
            comment: comment(),
            prev: None,
            adopted: true,
        });
        assert_eq!(
            decode::<LiveEvent>(&encode(&first).unwrap()).unwrap(),
            first
        );
        // Fields by name, so another language can read them.
        let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], "comment");
        assert_eq!(v["text"], "what a goal!");
        assert!(v.get("adopted").is_none(), "absent unless set");
        let beat = WriterBeat {
            region: "eu".into(),
            writer: "ABCDEFGH".into(),
        };
        assert_eq!(decode::<WriterBeat>(&encode(&beat).unwrap()).unwrap(), beat);
        let del = LiveEvent::Delete(Deletion {
            id: "x".into(),
            post_id: "p".into(),
            region: "eu".into(),
            event_id: Some("y".into()),
            prev: None,
        });
        assert_eq!(decode::<LiveEvent>(&encode(&del).unwrap()).unwrap(), del);
    }

    #[test]
    fn delete_outcomes_by_name_and_unknown_ones_as_error() {
        for (o, name) in [
            (DeleteOutcome::Deleted, "deleted"),
            (DeleteOutcome::NotFound, "not_found"),
            (DeleteOutcome::Forbidden, "forbidden"),
            (DeleteOutcome::Error, "error"),
        ] {
            let bytes = encode(&DeleteReply { outcome: o }).unwrap();
            let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(v["outcome"], name);
            assert_eq!(decode::<DeleteReply>(&bytes).unwrap().outcome, o);
        }
        let future = rmp_serde::to_vec_named(&serde_json::json!({"outcome": "archived"})).unwrap();
        assert_eq!(
            decode::<DeleteReply>(&future).unwrap().outcome,
            DeleteOutcome::Error
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\xff\xff",
            b"\x81\xa4type\xa3bad",
            b"\x92\x01\x02",
        ] {
            assert!(decode::<LiveEvent>(bytes).is_err());
        }
    }

    #[test]
    fn since_messages_round_trip() {
        let req = SinceRequest {
            post_id: "p".into(),
            after: None,
            before: None,
            newest_first: false,
            limit: 10,
        };
        assert_eq!(decode::<SinceRequest>(&encode(&req).unwrap()).unwrap(), req);
        let rep = SinceReply {
            region: "eu".into(),
            comments: vec![comment()],
            more: false,
            deletions: vec![Tombstone {
                id: "01JDQ7Z8XK3M4N5P6Q7R8S9T0W".into(),
                post_id: "match-42".into(),
                comment_id: "01JDQ7Z8XK3M4N5P6Q7R8S9T0V".into(),
                region: "eu".into(),
            }],
            error: None,
        };
        assert_eq!(decode::<SinceReply>(&encode(&rep).unwrap()).unwrap(), rep);
    }
}
