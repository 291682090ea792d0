//! The regional store: where a comment becomes durable. Two engines implement [`Store`]: the
//! embedded one (redb, one file under `--data-dir`) for standalone and small deployments, and
//! the CQL one (ScyllaDB; tested on Cassandra) for production regions. Both pass the same
//! conformance suite (`tests/store_conformance.rs`).
//!
//! The store only knows its own region's comments; merging regions is the reader's job.

// No request path may panic on input: outside tests, no unwrap or expect.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod coalesce;
pub mod cql;
pub mod embedded;
mod pending;
mod wal;

use std::sync::Arc;

use async_trait::async_trait;
use livecomments_shared::moderation::Record;
use livecomments_shared::{Comment, CommentId, Counts, PostId, Tombstone};

/// A comment ready to be written: validated, id and timestamp assigned by the ingest pipeline.
#[derive(Debug, Clone)]
pub struct NewComment {
    pub comment: Comment,
    /// `Idempotency-Key` of the request, if any; scoped to (user, post) and kept 24 h.
    pub idempotency_key: Option<String>,
    /// Unix ms after which the comment must not become visible any more (the write fails
    /// instead, and nothing is stored). The ingest pipeline sets it a few seconds after the
    /// stamp: fanouts take a comment id this old as settled (`position::SETTLE_MS`), so a
    /// node frozen between stamping and writing must not make it appear later. `None`: no
    /// bound (tools, tests of the engine itself). With a bound, an Idempotency-Key retry that
    /// finds a claim never confirmed follows the same rule (see the CQL engine).
    pub visible_by_ms: Option<i64>,
}

impl NewComment {
    /// False when `visible_by_ms` has passed: writing now would be too late.
    pub fn still_in_time(&self) -> bool {
        self.visible_by_ms
            .is_none_or(|t| livecomments_shared::time::now_millis() <= t)
    }
}

/// A comment answered 503 that must never appear (see [`Store::withdraw`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    pub post_id: PostId,
    pub id: CommentId,
    pub user_id: String,
    pub idempotency_key: Option<String>,
}

impl Withdrawal {
    pub fn of(c: &NewComment) -> Withdrawal {
        Withdrawal {
            post_id: c.comment.post_id.clone(),
            id: c.comment.id.clone(),
            user_id: c.comment.user_id.clone(),
            idempotency_key: c.idempotency_key.clone(),
        }
    }
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Newly stored: publish it.
    Created(Comment),
    /// The idempotency key was seen before (within 24 h): this is the comment stored then.
    /// Nothing new was stored; do not publish again.
    Existing(Comment),
}

impl Inserted {
    pub fn comment(&self) -> &Comment {
        match self {
            Inserted::Created(c) | Inserted::Existing(c) => c,
        }
    }
}

/// Cloneable (the cause is shared), so a read shared by many callers hands each the same error
/// (`coalesce`), and a batch's followers answer with their leader's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The engine cannot be reached or failed to write; nothing was stored. The cause is the
    /// driver's (or the engine's) error, kept as this error's source.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// An earlier attempt with the same Idempotency-Key is still being written and can change
    /// for this much longer; nothing was done. Answered 503 with `Retry-After`.
    #[error("an earlier attempt with this Idempotency-Key is still being written")]
    KeyInProgress(std::time::Duration),
}

impl StoreError {
    /// The engine failed with this error (a driver's, redb's, a task's).
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Unavailable(Cause(Arc::new(e)))
    }

    /// The engine failed in a way no library error describes (a row that breaks the schema's
    /// rules, an LWT that answered nothing).
    pub fn failed(why: impl Into<String>) -> StoreError {
        StoreError::Unavailable(Cause(Arc::new(Message(why.into()))))
    }
}

/// Why an engine failed: the underlying error, shared so that [`StoreError`] stays `Clone`.
/// It shows as that error and hands on that error's own source, so a log's error chain is
/// the driver's.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

pub type StoreResult<T> = Result<T, StoreError>;

/// Why an engine could not be configured, opened or migrated: startup only (requests get a
/// [`StoreError`]). The binary reports it with its source chain and exits.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// An option is wrong; the message names the flag.
    #[error("{0}")]
    Config(String),
    /// The keyspace has no schema, or one older than this binary needs.
    #[error("{0}")]
    Schema(String),
    /// A step failed; the message says which, the source why.
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `.doing(|| "what was being done")` on a fallible step of the setup, as anyhow's
/// `with_context` but typed.
pub(crate) trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, SetupError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Doing<T> for Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, SetupError> {
        self.map_err(|e| SetupError::Failed {
            what: what(),
            source: e.into(),
        })
    }
}

/// The error and every source under it, `: `-joined, as a log line shows it.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        next = cause.source();
    }
    s
}

/// How long an idempotency key is remembered (CONTRACT §2).
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes a batch durably (one commit / one round of writes for all of it) and answers per
    /// item in order. Idempotency is checked against earlier batches *and* earlier items of
    /// the same batch. When this returns `Ok` for an item, that item survives a crash.
    async fn insert_batch(&self, batch: Vec<NewComment>) -> Vec<StoreResult<Inserted>>;

    /// How many `insert_batch` (and `record_deletions`) calls one writer may have in flight
    /// at once. One where a commit is serial anyway: the embedded store's log fsyncs one
    /// batch after another, and 4 in flight measured slower there (48.7k against 52.6k
    /// POSTs/s, docs/BENCHMARKS.md). A store whose batches are independent round trips
    /// says more.
    fn batches_in_flight(&self) -> usize {
        1
    }

    /// Newest first: the `limit` newest comments of the post with id < `before` (all when None).
    async fn newest(
        &self,
        post_id: &PostId,
        before: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>>;

    /// Oldest first: the first `limit` comments of the post with id > `after` (from the start
    /// when None).
    async fn after(
        &self,
        post_id: &PostId,
        after: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>>;

    /// One comment by id.
    async fn get(&self, post_id: &PostId, id: &CommentId) -> StoreResult<Option<Comment>>;

    /// The comment stored earlier (within 24 h) with this user's Idempotency-Key on this post,
    /// once it is confirmed; `None` when the key is unknown or its first attempt unfinished.
    /// Lets a rate-limited retry get its comment back instead of a 429.
    async fn keyed(
        &self,
        user_id: &str,
        post_id: &PostId,
        key: &str,
    ) -> StoreResult<Option<Comment>>;

    /// Oldest first: the first `limit` tombstones of the post with id > `after`.
    async fn deletions_after(
        &self,
        post_id: &PostId,
        after: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Tombstone>>;

    /// Deletes each tombstone's comment and keeps the tombstone (CONTRACT §10: deletions are
    /// replayed on resume), durably, in one commit / one round of writes; answers per item in
    /// order. The caller checked that the comment exists and may be deleted by whoever asked:
    /// two deletions of one comment racing each other both record a tombstone, and a viewer
    /// applying a deletion twice sees no difference.
    async fn record_deletions(&self, batch: Vec<Tombstone>) -> Vec<StoreResult<()>>;

    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    /// Makes sure comments whose insert failed never become visible later (a write reported
    /// failed may still reach replicas, or be retried by the driver, after the failure).
    /// A comment with an Idempotency-Key is withdrawn only if its key still names it
    /// unconfirmed (the key is then released): a retry through another node may have adopted
    /// the comment meanwhile, and then it stays. Answers the comments it removed: a write
    /// whose outcome was unknown may have been read (a fanout's repair, a page) before the
    /// removal shadowed it, so the caller retracts each in the stream with a deletion. Engines
    /// whose failed commit stores nothing (the embedded one: one transaction) have nothing to
    /// do and nothing to retract.
    async fn withdraw(&self, _failed: &[Withdrawal]) -> StoreResult<Vec<Withdrawal>> {
        Ok(Vec::new())
    }

    /// Stores moderation records (bans, removals, post settings; CONTRACT §8, §9), each
    /// replacing the stored record of its key only when it supersedes it (last writer wins
    /// on `(updated_at_ms, origin)`, [`Record::supersedes`]): applying the same records in any
    /// order, any number of times, leaves the same state. Durable when it returns `Ok`.
    async fn put_moderation(&self, _records: &[Record]) -> StoreResult<()> {
        Err(StoreError::failed("this store keeps no moderation records"))
    }

    /// The current record of every key (at most `limit`), in no particular order; expired
    /// bans and old tombstones may be among them (the caller drops them).
    async fn moderation(&self, _limit: usize) -> StoreResult<Vec<Record>> {
        Err(StoreError::failed("this store keeps no moderation records"))
    }

    /// Records written with `updated_at_ms > after_ms` (possibly also older versions that
    /// were superseded since), at most `limit`, oldest first. The cheap read a node repeats
    /// every second to learn what other nodes of its region wrote.
    async fn moderation_since(&self, _after_ms: i64, _limit: usize) -> StoreResult<Vec<Record>> {
        Err(StoreError::failed("this store keeps no moderation records"))
    }

    /// Adds one second's reaction counts to posts' totals (CONTRACT §11). At most once: a
    /// failed call is not retried by anyone (the counts of that second are lost, never
    /// counted twice). Durable when it returns `Ok`.
    async fn add_reactions(&self, _counts: &[(PostId, Counts)]) -> StoreResult<()> {
        Err(StoreError::failed("this store keeps no reactions"))
    }

    /// A post's reaction totals in this region.
    async fn reactions(&self, _post_id: &PostId) -> StoreResult<Counts> {
        Err(StoreError::failed("this store keeps no reactions"))
    }
}

/// Most moderation records a store is asked for at once: 10,000 active bans is the scale we
/// measure (docs/BENCHMARKS.md) and 100,000 leaves room for every post's settings besides.
pub const MODERATION_MAX_RECORDS: usize = 100_000;
