//! Moderation state (CONTRACT §8 bans, §9 post settings) as replicated records.
//!
//! Every change is one [`Record`]: a ban, the removal of a ban (a tombstone, so a removal
//! replicates like a ban does), or a post's whole settings. Records are keyed
//! ([`Record::key`]) and merge by last writer wins on `(updated_at_ms, origin)`, so any
//! node may apply any record any number of times, in any order, and every node that has seen
//! the same records holds the same state (a state-based CRDT). That is what lets a region
//! cut off from the others catch up by simply asking for "everything changed since t"
//! (`docs/MODERATION.md`).
//!
//! On NATS (MessagePack by name, `docs/NATS.md`):
//! - `comments.moderation.<region>`: [`ModChange`], every record a node of `<region>` wrote;
//! - `comments.modsync.<region>`: [`SyncRequest`] → [`SyncReply`], answered by the nodes of
//!   `<region>` holding its store, from memory.

use serde::{Deserialize, Serialize};

use crate::comment::Comment;
use crate::names::{PostId, Region};
use crate::validate;

/// Longest timed ban: two weeks (CONTRACT §8, Twitch's longest timeout).
pub const BAN_MAX_SECS: u64 = 1_209_600;
/// Longest slow mode (CONTRACT §9).
pub const SLOW_MODE_MAX_SECS: u32 = 3_600;
/// Longest ban reason in characters: YouTube's and Twitch's reason boxes take a sentence or
/// two; 500 keeps one record well under a kilobyte.
pub const REASON_MAX_CHARS: usize = 500;
/// How long a tombstone (a removed ban) is kept: a region cut off for longer than this may
/// keep enforcing a ban removed meanwhile. 30 days is far past any outage we plan for and
/// costs a few hundred bytes per removal.
pub const TOMBSTONE_KEEP_MS: i64 = 30 * 24 * 3600 * 1000;

/// Largest sync reply: 500 records of at most ~2 KB each (a settings record with a pinned
/// comment of 2000 characters) stay under NATS's 1 MB default payload limit; a ban is ~150
/// bytes, so a full page of bans is ~75 KB.
pub const SYNC_MAX_LIMIT: u32 = 500;

/// `comments.moderation.<region>`: the changes written by a node of `region`.
pub fn changes_subject(region: &str) -> String {
    format!("comments.moderation.{region}")
}

/// Every region's moderation changes.
pub const CHANGES_SUBJECT_ALL: &str = "comments.moderation.*";

/// `comments.modsync.<region>`: "records changed since t" asked of `region`.
pub fn sync_subject(region: &str) -> String {
    format!("comments.modsync.{region}")
}

/// Queue group of the nodes answering sync requests (each request answered once).
pub const SYNC_QUEUE_GROUP: &str = "livecomments-moderation";

/// A ban (CONTRACT §8). `post_id: None` bans from every post; `expires_at_ms: None` is
/// permanent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub user_id: String,
    #[serde(default)]
    pub post_id: Option<PostId>,
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at_ms: i64,
}

impl Ban {
    /// True while the ban holds at `now_ms`.
    pub fn active(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|t| now_ms < t)
    }

    /// The API's JSON shape (CONTRACT §8).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "user_id": self.user_id,
            "post_id": self.post_id,
            "expires_at": self.expires_at_ms.map(crate::time::format_millis),
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": crate::time::format_millis(self.created_at_ms),
        })
    }
}

/// A post's settings (CONTRACT §9). The pinned comment is carried whole, so a fanout (which
/// has no store) can send `event: pin` from the record alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostSettings {
    pub post_id: PostId,
    #[serde(default)]
    pub slow_mode_secs: u32,
    #[serde(default)]
    pub closed: bool,
    #[serde(default)]
    pub pinned: Option<Comment>,
}

impl PostSettings {
    /// The defaults: no slow mode, open, nothing pinned.
    pub fn default_for(post_id: PostId) -> PostSettings {
        PostSettings {
            post_id,
            slow_mode_secs: 0,
            closed: false,
            pinned: None,
        }
    }

    /// The API's JSON shape (CONTRACT §9).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "post_id": self.post_id,
            "slow_mode_secs": self.slow_mode_secs,
            "closed": self.closed,
            "pinned_comment_id": self.pinned.as_ref().map(|c| &c.id),
        })
    }
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordBody {
    Ban(Ban),
    /// The ban of `user_id` on `post_id` (None: the global one) was removed.
    Unban {
        user_id: String,
        #[serde(default)]
        post_id: Option<PostId>,
    },
    Settings(PostSettings),
}

/// One replicated moderation change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the change was made (the writing node's clock, Unix ms).
    pub updated_at_ms: i64,
    /// The region whose node made it; breaks ties between equal times.
    pub origin: Region,
    pub body: RecordBody,
}

/// The key of a ban: `b/<post or *>/<user>`. A post id never contains `/` or `*`
/// (`validate::post_id`), so the user id, last, may contain anything.
pub fn ban_key(user_id: &str, post_id: Option<&str>) -> String {
    let mut key = String::new();
    write_ban_key(&mut key, user_id, post_id);
    key
}

/// [`ban_key`] into `key` (cleared first): a hot path reuses one buffer.
pub fn write_ban_key(key: &mut String, user_id: &str, post_id: Option<&str>) {
    key.clear();
    key.reserve(4 + user_id.len() + post_id.map_or(1, str::len));
    key.push_str("b/");
    key.push_str(post_id.unwrap_or("*"));
    key.push('/');
    key.push_str(user_id);
}

/// The key of a post's settings: `s/<post>`.
pub fn settings_key(post_id: &str) -> String {
    format!("s/{post_id}")
}

impl Record {
    pub fn key(&self) -> String {
        match &self.body {
            RecordBody::Ban(b) => ban_key(&b.user_id, b.post_id.as_deref()),
            RecordBody::Unban { user_id, post_id } => ban_key(user_id, post_id.as_deref()),
            RecordBody::Settings(s) => settings_key(&s.post_id),
        }
    }

    /// Last writer wins: true when `self` replaces `other` (same key).
    pub fn supersedes(&self, other: &Record) -> bool {
        (self.updated_at_ms, self.origin.as_str()) > (other.updated_at_ms, other.origin.as_str())
    }

    /// Whether the record still matters at `now_ms`: an expired ban, or a tombstone older
    /// than [`TOMBSTONE_KEEP_MS`], can be forgotten (both mean "not banned" everywhere).
    pub fn worth_keeping(&self, now_ms: i64) -> bool {
        match &self.body {
            RecordBody::Ban(b) => b.active(now_ms),
            RecordBody::Unban { .. } => now_ms - self.updated_at_ms < TOMBSTONE_KEEP_MS,
            RecordBody::Settings(_) => true,
        }
    }

    /// What a well-behaved node writes: checked on every record read from NATS, so that a
    /// foreign or malicious publisher cannot put bad ids into keys, CQL or SSE frames.
    pub fn is_sane(&self) -> bool {
        let user_ok = |u: &str| validate::user_id(u);
        let post_ok = |p: &Option<PostId>| p.as_ref().is_none_or(|p| validate::post_id(p).is_ok());
        validate::is_region(&self.origin)
            && self.updated_at_ms > 0
            && match &self.body {
                RecordBody::Ban(b) => {
                    user_ok(&b.user_id)
                        && post_ok(&b.post_id)
                        && user_ok(&b.created_by)
                        && b.reason
                            .as_ref()
                            .is_none_or(|r| r.chars().count() <= REASON_MAX_CHARS)
                }
                RecordBody::Unban { user_id, post_id } => user_ok(user_id) && post_ok(post_id),
                RecordBody::Settings(s) => {
                    validate::post_id(&s.post_id).is_ok()
                        && s.slow_mode_secs <= SLOW_MODE_MAX_SECS
                        && s.pinned.as_ref().is_none_or(|c| {
                            c.post_id == s.post_id
                                && crate::id::is_valid(&c.id)
                                && c.text.len() <= 4 * validate::TEXT_MAX_CHARS
                        })
                }
            }
    }
}

/// Payload on `comments.moderation.<region>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModChange {
    pub records: Vec<Record>,
}

/// Request on `comments.modsync.<region>`: the records the answering region holds (its own
/// and those it learned from others) with `(updated_at_ms, key)` after
/// `(after_ms, after_key)`, in that order, at most `limit` ([`SYNC_MAX_LIMIT`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub after_ms: i64,
    #[serde(default)]
    pub after_key: Option<String>,
    pub limit: u32,
}

/// Reply to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReply {
    pub region: Region,
    pub records: Vec<Record>,
    /// More records follow the last one (ask again after it).
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn ban(user: &str, post: Option<&str>, at: i64, origin: &str) -> Record {
        Record {
            updated_at_ms: at,
            origin: origin.into(),
            body: RecordBody::Ban(Ban {
                user_id: user.into(),
                post_id: post.map(PostId::from),
                expires_at_ms: None,
                reason: Some("spam".into()),
                created_by: "mod".into(),
                created_at_ms: at,
            }),
        }
    }

    #[test]
    fn keys_tell_posts_users_and_global_apart() {
        assert_eq!(ban("a/b", Some("p"), 1, "eu").key(), "b/p/a/b");
        assert_eq!(ban("a", None, 1, "eu").key(), "b/*/a");
        let unban = Record {
            updated_at_ms: 2,
            origin: "eu".into(),
            body: RecordBody::Unban {
                user_id: "a".into(),
                post_id: None,
            },
        };
        assert_eq!(unban.key(), ban("a", None, 1, "eu").key());
    }

    #[test]
    fn last_writer_wins_with_the_region_breaking_ties() {
        let (a, b) = (ban("u", None, 5, "eu"), ban("u", None, 6, "eu"));
        assert!(b.supersedes(&a) && !a.supersedes(&b) && !a.supersedes(&a));
        let us = ban("u", None, 5, "us");
        assert!(us.supersedes(&a) && !a.supersedes(&us));
    }

    #[test]
    fn records_round_trip_by_name_and_garbage_is_refused() {
        let r = ban("u", Some("p"), 7, "eu");
        let bytes = wire::encode(&ModChange {
            records: vec![r.clone()],
        })
        .unwrap();
        let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(v["records"][0]["body"]["kind"], "ban");
        assert_eq!(v["records"][0]["body"]["user_id"], "u");
        assert_eq!(wire::decode::<ModChange>(&bytes).unwrap().records, vec![r]);
        assert!(wire::decode::<ModChange>(b"\x92\x01").is_err());
    }

    #[test]
    fn sanity_refuses_bad_ids() {
        assert!(ban("u", Some("p"), 7, "eu").is_sane());
        assert!(!ban("u", Some("a.b"), 7, "eu").is_sane());
        assert!(!ban("", None, 7, "eu").is_sane());
        assert!(!ban("u", None, 7, "EU!").is_sane());
        let mut s = Record {
            updated_at_ms: 1,
            origin: "eu".into(),
            body: RecordBody::Settings(PostSettings::default_for("p".into())),
        };
        assert!(s.is_sane());
        if let RecordBody::Settings(x) = &mut s.body {
            x.slow_mode_secs = 3601;
        }
        assert!(!s.is_sane());
    }

    #[test]
    fn expired_bans_and_old_tombstones_are_forgotten() {
        let mut r = ban("u", None, 1_000, "eu");
        assert!(r.worth_keeping(10_000));
        if let RecordBody::Ban(b) = &mut r.body {
            b.expires_at_ms = Some(5_000);
        }
        assert!(r.worth_keeping(4_999) && !r.worth_keeping(5_000));
    }
}
