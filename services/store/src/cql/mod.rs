//! The CQL store: ScyllaDB in production, tested against Apache Cassandra 5.0 (same CQL, protocol
//! v4). Schema in `cql/`, reasoning and measurements in `docs/CQL.md`.
//!
//! Layout (see `cql/0001_comments.cql`):
//! - `comments`, partition `(post_id, bucket)`, clustered by `id DESC`. A partition is 1 s
//!   (`bucket = id timestamp / 1 s`), 60 s or 3,600 s wide (a negative bucket), by the post's
//!   rate as its writer sees it (`tier.rs`). A hot post at 10,000 comments/s puts 10,000 rows
//!   (~3 MB typical) in a 1-second partition; a wide one holds at most 5,000 per writer.
//! - `comment_parts` `((post_id, span), start, width)`: the wide partitions of a post (0007).
//! - `comment_buckets` `((post_id, span), bucket)` and `comment_spans` `(post_id, span)`, where a
//!   span is 6 hours: the non-empty buckets of a post, so a page never scans empty buckets and
//!   never needs OFFSET. Written *before* the comment, so a reader that finds a comment can
//!   always reach it through the index.
//! - `idempotency` `((user_id, post_id, idem_key))`, TTL 24 h, claimed with an LWT.
//!
//! Every statement is prepared; writes are idempotent (the id is assigned before the write, a
//! retried insert overwrites the same row) and marked so, letting the driver retry them.
//! Routing is the driver's default token-aware policy; consistency LOCAL_QUORUM unless
//! configured otherwise; LWTs use LOCAL_SERIAL.
//!
//! Modules, one concern each: `options` (how to reach the cluster), `migrate` (the schema
//! in `cql/*.cql`), `idempotency` (the Idempotency-Key protocol: claim, write, mark; what a
//! retry does with a claim never confirmed), `rate` (the per-user window shared by every
//! ingest node), `tier` (partition widths), `walk` (reading a post in order across its
//! partitions, a merge of overlapping widths). This file
//! holds the store itself: statements, the batch write and the `Store` methods.

mod idempotency;
mod migrate;
mod moderation;
mod options;
mod rate;
mod reactions;
mod tier;
mod walk;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{StreamExt, stream};
use livecomments_shared::{Comment, CommentId, PostId, Tombstone, id, time};
use parking_lot::Mutex;
use scylla::client::session::Session;
use scylla::frame::types::Consistency;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};

pub use migrate::{MIGRATIONS, SCHEMA_VERSION, migrate};
pub(crate) use options::session;
pub use options::{CqlOptions, Partitions, parse_consistency, replication_cql};
pub use tier::{HOUR_MAX_PER_MINUTE, MINUTE_MAX_PER_SECOND, PART_CAP, Part, WIDTHS};

use idempotency::{Claim, KeyFate};
use walk::Dir;

use super::{
    Doing, Inserted, NewComment, SetupError, Store, StoreError, StoreResult, Withdrawal, chain,
};

/// Width of a 1-second `comments` partition, the narrowest tier (`tier.rs` has the others).
pub const BUCKET_MS: i64 = 1_000;
/// Buckets per index span (6 hours).
pub const SPAN_BUCKETS: i64 = 21_600;
/// Seconds an idempotency record lives (CONTRACT §2: 24 h).
const IDEMPOTENCY_TTL_SECS: i32 = 86_400;
/// Concurrent requests one batch or one page issues.
const CONCURRENCY: usize = 128;
/// Largest number of bucket partitions read at once by one page.
const MAX_WAVE: usize = 32;
/// Index rows fetched per request while walking.
const INDEX_PAGE: i32 = 256;
/// Buckets remembered as already indexed; the cache is cleared when it grows past this.
const INDEX_CACHE_MAX: usize = 100_000;
/// Client-side bound of one statement on the POST path (see `CqlStore::connect`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for lightweight transactions and serial reads.
const LWT_TIMEOUT: Duration = Duration::from_secs(3);
pub fn bucket_of_millis(ms: i64) -> i64 {
    ms.div_euclid(BUCKET_MS)
}

pub fn span_of_bucket(bucket: i64) -> i64 {
    bucket.div_euclid(SPAN_BUCKETS)
}

/// The 1-second bucket of a comment id (any id `ulid` parses).
#[cfg(test)]
fn bucket_of_id(id: &str) -> Option<i64> {
    id::millis_of(id).map(bucket_of_millis)
}

/// The bucket a cursor starts from; `None` for a cursor that is not a canonical ULID, which is
/// then applied as a plain string bound on every bucket (still correct, only slower).
fn bucket_of_cursor(cursor: &str) -> Option<i64> {
    if id::is_valid(cursor) {
        id::millis_of(cursor).map(bucket_of_millis)
    } else {
        None
    }
}

/// The keyspace's applied migrations. A cluster that cannot answer yet (a node down or frozen
/// while this process starts: a quorum read times out) is asked again for up to 30 s, so a
/// restarted node does not exit over one slow read (the 10-minute chaos run lost an ingest
/// restart to exactly that); only a missing table or keyspace means "not migrated".
async fn schema_versions(session: &Session, ks: &str) -> Result<Vec<i32>, SetupError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut wait = Duration::from_millis(200);
    loop {
        let e = match migrate::applied_versions(session, ks).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let text = chain(&e);
        if text.contains("unconfigured table") || text.contains("does not exist") {
            return Err(SetupError::Schema(format!(
                "keyspace {ks} has no schema (run `livecomments migrate` with the same --cql-* flags): {text}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(e);
        }
        tracing::warn!(error = %text, "reading the schema version; trying again");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// A driver error as a store error, kept as its source.
fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::unavailable(e)
}

/// `[applied]` of an LWT and, when not applied, the existing row by column name.
pub(crate) fn lwt_outcome(
    res: QueryResult,
) -> Result<(bool, HashMap<String, CqlValue>), StoreError> {
    let rows = res.into_rows_result().map_err(unavailable)?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let row = rows
        .maybe_first_row::<Row>()
        .map_err(unavailable)?
        .ok_or_else(|| StoreError::failed("empty LWT result"))?;
    let mut map = HashMap::new();
    for (name, v) in names.into_iter().zip(row.columns) {
        if let Some(v) = v {
            map.insert(name, v);
        }
    }
    let applied = matches!(map.get("[applied]"), Some(CqlValue::Boolean(true)));
    Ok((applied, map))
}

struct Statements {
    insert_comment: PreparedStatement,
    insert_bucket: PreparedStatement,
    insert_part: PreparedStatement,
    insert_span: PreparedStatement,
    claim_key: PreparedStatement,
    mark_stored: PreparedStatement,
    mark_stored_if: PreparedStatement,
    read_key_id: PreparedStatement,
    read_key: PreparedStatement,
    newest: PreparedStatement,
    after: PreparedStatement,
    get: PreparedStatement,
    delete: PreparedStatement,
    insert_deletion: PreparedStatement,
    deletions_after: PreparedStatement,
    spans_desc: PreparedStatement,
    spans_asc: PreparedStatement,
    buckets_desc: PreparedStatement,
    buckets_asc: PreparedStatement,
    parts_of_span: PreparedStatement,
    ping: PreparedStatement,
    rate_recent: PreparedStatement,
    rate_take: PreparedStatement,
    restamp_key: PreparedStatement,
    release_key: PreparedStatement,
    read_key_comment: PreparedStatement,
}

fn in_time(item: &NewComment) -> StoreResult<()> {
    if item.still_in_time() {
        return Ok(());
    }
    Err(StoreError::failed(format!(
        "comment {} not written in time after it was stamped; not writing it late",
        item.comment.id
    )))
}

const COMMENT_COLUMNS: &str = "id, user_id, text, created_at, region, metadata";

type CommentRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<String>,
    Option<BTreeMap<String, String>>,
);

fn comment_from_row(post_id: &PostId, r: CommentRow) -> Option<Comment> {
    let (id, user_id, text, created_at, region, metadata) = r;
    let id = id?;
    let ms = created_at
        .map(|t| t.0)
        .or_else(|| id::millis_of(&id))
        .unwrap_or(0);
    Some(Comment {
        id: id.into(),
        post_id: post_id.clone(),
        user_id: user_id.unwrap_or_default(),
        text: text.unwrap_or_default(),
        timestamp: time::format_millis(ms),
        region: region.unwrap_or_default().into(),
        metadata: metadata.unwrap_or_default(),
    })
}

fn created_ms(c: &Comment) -> i64 {
    time::parse_rfc3339_millis(&c.timestamp).unwrap_or_else(|| c.timestamp_millis())
}

pub struct CqlStore {
    session: Arc<Session>,
    st: Statements,
    keyspace: String,
    /// TTL of comment rows in seconds (0: none).
    ttl_secs: i32,
    /// TTL of index rows: a day longer than the comments they point to (0: none).
    index_ttl_secs: i32,
    /// `(post, span)` and `(post, bucket)` pairs this process already indexed: a hot post
    /// writes its bucket's index row once per second, not once per comment. Wider partitions
    /// are in `indexed_buckets` too, by their (negative, distinct) bucket, with the `until`
    /// this process recorded in their row (0 for a 1-second bucket: nothing to raise).
    indexed_spans: Mutex<HashSet<(PostId, i64)>>,
    indexed_buckets: Mutex<HashMap<(PostId, i64), i64>>,
    /// Which partition width each comment this process writes gets (`tier.rs`).
    placer: tier::Placer,
    /// What the walks of this store read, for tests, tools and benchmarks.
    reads: ReadCounters,
    /// Bans and post settings (`moderation.rs`).
    moderation: moderation::ModStatements,
    /// Reaction totals (`reactions.rs`).
    reactions: reactions::ReactionStatements,
}

impl CqlStore {
    /// Connects, checks the keyspace's schema version and prepares every statement. Refuses
    /// to start when the schema is older than this binary needs (run `livecomments migrate`).
    pub async fn connect(opts: &CqlOptions) -> Result<CqlStore, SetupError> {
        let opts = opts.clone().validated()?;
        let session = session(&opts).await?;
        let ks = opts.keyspace.clone();
        let applied = schema_versions(&session, &ks).await?;
        let have = applied.last().copied().unwrap_or(0);
        if have < SCHEMA_VERSION {
            return Err(SetupError::Schema(format!(
                "keyspace {ks} is at schema version {have}, this binary needs {SCHEMA_VERSION}: run `livecomments migrate` first"
            )));
        }
        if have > SCHEMA_VERSION {
            tracing::warn!(keyspace = %ks, have, need = SCHEMA_VERSION, "the keyspace's schema is newer than this binary");
        }

        let prep = |cql: String, idempotent: bool| {
            let session = &session;
            async move {
                let mut p = session
                    .prepare(cql.as_str())
                    .await
                    .doing(|| format!("preparing {cql}"))?;
                p.set_is_idempotent(idempotent);
                Ok::<_, SetupError>(p)
            }
        };
        let st = Statements {
            insert_comment: prep(
                format!(
                    "INSERT INTO {ks}.comments (post_id, bucket, id, user_id, text, created_at, region, metadata) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
                ),
                true,
            )
            .await?,
            insert_bucket: prep(
                format!("INSERT INTO {ks}.comment_buckets (post_id, span, bucket) VALUES (?, ?, ?) USING TTL ?"),
                true,
            )
            .await?,
            insert_part: prep(
                format!(
                    "INSERT INTO {ks}.comment_parts (post_id, span, start, width, until) VALUES (?, ?, ?, ?, ?) \
                     USING TTL ? AND TIMESTAMP ?"
                ),
                true,
            )
            .await?,
            insert_span: prep(format!("INSERT INTO {ks}.comment_spans (post_id, span) VALUES (?, ?) USING TTL ?"), true)
                .await?,
            claim_key: prep(
                format!(
                    "INSERT INTO {ks}.idempotency (user_id, post_id, idem_key, id, text, created_at, region, metadata, stored) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, false) IF NOT EXISTS USING TTL {IDEMPOTENCY_TTL_SECS}"
                ),
                false,
            )
            .await?,
            mark_stored: prep(
                format!(
                    "UPDATE {ks}.idempotency USING TTL ? SET stored = true \
                     WHERE user_id = ? AND post_id = ? AND idem_key = ?"
                ),
                true,
            )
            .await?,
            mark_stored_if: prep(
                format!(
                    "UPDATE {ks}.idempotency USING TTL ? SET stored = true \
                     WHERE user_id = ? AND post_id = ? AND idem_key = ? IF id = ?"
                ),
                false,
            )
            .await?,
            read_key_id: {
                let mut p = prep(
                    format!(
                        "SELECT id, stored FROM {ks}.idempotency WHERE user_id = ? AND post_id = ? AND idem_key = ?"
                    ),
                    true,
                )
                .await?;
                p.set_consistency(Consistency::LocalSerial);
                p
            },
            read_key: {
                let mut p = prep(
                    format!(
                        "SELECT stored, TTL(id) FROM {ks}.idempotency WHERE user_id = ? AND post_id = ? AND idem_key = ?"
                    ),
                    true,
                )
                .await?;
                // Linearizable with the LWT that wrote it.
                p.set_consistency(Consistency::LocalSerial);
                p
            },
            newest: prep(
                format!(
                    "SELECT {COMMENT_COLUMNS} FROM {ks}.comments WHERE post_id = ? AND bucket = ? AND id < ? \
                     ORDER BY id DESC LIMIT ?"
                ),
                true,
            )
            .await?,
            after: prep(
                format!(
                    "SELECT {COMMENT_COLUMNS} FROM {ks}.comments WHERE post_id = ? AND bucket = ? AND id > ? \
                     ORDER BY id ASC LIMIT ?"
                ),
                true,
            )
            .await?,
            get: prep(
                format!("SELECT {COMMENT_COLUMNS} FROM {ks}.comments WHERE post_id = ? AND bucket = ? AND id = ?"),
                true,
            )
            .await?,
            delete: prep(format!("DELETE FROM {ks}.comments WHERE post_id = ? AND bucket = ? AND id = ?"), true).await?,
            insert_deletion: prep(
                format!(
                    "INSERT INTO {ks}.deletions (post_id, id, comment_id, region) VALUES (?, ?, ?, ?) USING TTL ?"
                ),
                true,
            )
            .await?,
            deletions_after: prep(
                format!(
                    "SELECT id, comment_id, region FROM {ks}.deletions WHERE post_id = ? AND id > ? \
                     ORDER BY id ASC LIMIT ?"
                ),
                true,
            )
            .await?,
            spans_desc: prep(
                format!(
                    "SELECT span FROM {ks}.comment_spans WHERE post_id = ? AND span <= ? ORDER BY span DESC LIMIT ?"
                ),
                true,
            )
            .await?,
            spans_asc: prep(
                format!("SELECT span FROM {ks}.comment_spans WHERE post_id = ? AND span >= ? ORDER BY span ASC LIMIT ?"),
                true,
            )
            .await?,
            buckets_desc: prep(
                format!(
                    "SELECT bucket FROM {ks}.comment_buckets WHERE post_id = ? AND span = ? AND bucket <= ? \
                     ORDER BY bucket DESC LIMIT ?"
                ),
                true,
            )
            .await?,
            buckets_asc: prep(
                format!(
                    "SELECT bucket FROM {ks}.comment_buckets WHERE post_id = ? AND span = ? AND bucket >= ? \
                     ORDER BY bucket ASC LIMIT ?"
                ),
                true,
            )
            .await?,
            parts_of_span: prep(
                format!("SELECT start, width, until FROM {ks}.comment_parts WHERE post_id = ? AND span = ? LIMIT ?"),
                true,
            )
            .await?,
            ping: prep("SELECT release_version FROM system.local".to_string(), true).await?,
            rate_recent: prep(
                format!("SELECT at FROM {ks}.user_rate WHERE user_id = ? AND at > ? LIMIT ?"),
                true,
            )
            .await?,
            rate_take: prep(
                format!("INSERT INTO {ks}.user_rate (user_id, at, nonce) VALUES (?, ?, ?) USING TTL ?"),
                true,
            )
            .await?,
            restamp_key: prep(
                format!(
                    "UPDATE {ks}.idempotency USING TTL {IDEMPOTENCY_TTL_SECS} SET id = ?, created_at = ? \
                     WHERE user_id = ? AND post_id = ? AND idem_key = ? IF id = ? AND stored = false"
                ),
                false,
            )
            .await?,
            read_key_comment: prep(
                format!(
                    "SELECT id, text, created_at, region, metadata, stored FROM {ks}.idempotency \
                     WHERE user_id = ? AND post_id = ? AND idem_key = ?"
                ),
                true,
            )
            .await?,
            release_key: prep(
                format!(
                    "DELETE FROM {ks}.idempotency WHERE user_id = ? AND post_id = ? AND idem_key = ? \
                     IF id = ? AND stored = false"
                ),
                false,
            )
            .await?,
        };
        let mut st = st;
        // The POST path gives up where Cassandra's coordinator does (`write_request_timeout`
        // 2 s), not at the session's 10 s: a coordinator frozen mid-request (SIGSTOP, a long
        // GC) otherwise held every batch with a write on it for 10 s (the 10-minute chaos run:
        // all writes stopped 11.7 s after one Cassandra node froze), and a comment's write ends
        // within 2 s of its start, as `KEY_SETTLED_MS` and the fanouts' 5 s ripeness assume.
        for p in [
            &mut st.insert_comment,
            &mut st.insert_bucket,
            &mut st.insert_part,
            &mut st.insert_span,
            &mut st.mark_stored,
            &mut st.rate_recent,
            &mut st.rate_take,
            &mut st.delete,
            &mut st.insert_deletion,
        ] {
            p.set_request_timeout(Some(WRITE_TIMEOUT));
        }
        // A Paxos round waits for up to three quorums (and for contention, 1 s by default).
        for p in [
            &mut st.claim_key,
            &mut st.mark_stored_if,
            &mut st.restamp_key,
            &mut st.release_key,
            &mut st.read_key_id,
            &mut st.read_key,
        ] {
            p.set_request_timeout(Some(LWT_TIMEOUT));
        }
        let ttl_secs = opts.ttl_secs();
        let moderation = moderation::ModStatements::prepare(&session, &ks).await?;
        let reactions = reactions::ReactionStatements::prepare(&session, &ks).await?;
        Ok(CqlStore {
            moderation,
            reactions,
            session: Arc::new(session),
            st,
            keyspace: ks,
            ttl_secs,
            index_ttl_secs: if ttl_secs > 0 { ttl_secs + 86_400 } else { 0 },
            indexed_spans: Mutex::new(HashSet::new()),
            indexed_buckets: Mutex::new(HashMap::new()),
            placer: tier::Placer::new(opts.partitions),
            reads: ReadCounters::default(),
        })
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The driver session (for tools and tests).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Partitions and index rows read by this store's walks since it connected.
    pub fn reads(&self) -> ReadStats {
        ReadStats {
            partitions: self.reads.partitions.load(Ordering::Relaxed),
            index: self.reads.index.load(Ordering::Relaxed),
        }
    }

    /// The partition for `c`, chosen from its post's rate as this process saw it and counted
    /// as written (`tier.rs`); `None` when its id is not a ULID (it cannot be stored).
    fn place(&self, c: &Comment) -> Option<Part> {
        let ms = id::millis_of(c.id.as_str())?;
        Some(self.placer.place(&c.post_id, ms))
    }

    /// Places, indexes and writes one comment (the paths that write outside a batch).
    async fn write_placed(&self, c: &Comment) -> StoreResult<()> {
        let part = self.place(c).ok_or_else(|| not_a_ulid(c.id.as_str()))?;
        self.ensure_indexed(&[(c, part)]).await?;
        self.write_comment_in(c, part).await
    }

    /// Index rows first, for every distinct partition of `comments` this process has not
    /// indexed yet, and for a wide partition whenever a comment is stamped at or past the
    /// `until` this process last recorded in its row (`Part::cover_until`).
    async fn ensure_indexed(&self, comments: &[(&Comment, Part)]) -> StoreResult<()> {
        let mut spans = HashSet::new();
        // Per partition to index: the `until` to record (wide) or 0 (1-second).
        let mut buckets: HashMap<(PostId, i64), (Part, i64)> = HashMap::new();
        {
            let known_spans = self.indexed_spans.lock();
            let known_buckets = self.indexed_buckets.lock();
            for (c, part) in comments {
                let sk = (c.post_id.clone(), part.span());
                if !known_spans.contains(&sk) {
                    spans.insert(sk);
                }
                let bk = (c.post_id.clone(), part.bucket());
                // The id's time, as the walk places rows by (a non-ULID was refused before).
                let ms = id::millis_of(c.id.as_str()).unwrap_or(i64::MAX);
                let until = if part.width_s == 1 {
                    0
                } else {
                    part.cover_until(ms)
                };
                let covered = known_buckets
                    .get(&bk)
                    .is_some_and(|&known| part.width_s == 1 || ms < known);
                if !covered {
                    let e = buckets.entry(bk).or_insert((*part, until));
                    e.1 = e.1.max(until);
                }
            }
        }
        if spans.is_empty() && buckets.is_empty() {
            return Ok(());
        }
        let ttl = self.index_ttl_secs;
        let writes: Vec<_> = spans
            .iter()
            .map(|(p, s)| (p.as_str(), *s, None))
            .chain(
                buckets.iter().map(|((p, _), (part, until))| {
                    (p.as_str(), part.span(), Some((*part, *until)))
                }),
            )
            .map(|(p, span, part)| async move {
                match part {
                    None => {
                        self.session
                            .execute_unpaged(&self.st.insert_span, (p, span, ttl))
                            .await
                    }
                    Some((part, _)) if part.width_s == 1 => {
                        self.session
                            .execute_unpaged(&self.st.insert_bucket, (p, span, part.bucket(), ttl))
                            .await
                    }
                    Some((part, until)) => {
                        // Widths are 60 and 3,600: an i32 always.
                        let width = i32::try_from(part.width_s).unwrap_or(i32::MAX);
                        // The write time is the value: the largest `until` any writer
                        // recorded wins, whichever lands last (0007).
                        self.session
                            .execute_unpaged(
                                &self.st.insert_part,
                                (
                                    p,
                                    span,
                                    part.start_s,
                                    width,
                                    until,
                                    ttl,
                                    until.saturating_mul(1_000),
                                ),
                            )
                            .await
                    }
                }
            })
            .collect();
        for r in bounded(writes).await {
            r.map_err(unavailable)?;
        }
        let mut known_spans = self.indexed_spans.lock();
        if known_spans.len() + spans.len() > INDEX_CACHE_MAX {
            known_spans.clear();
        }
        known_spans.extend(spans);
        drop(known_spans);
        let mut known_buckets = self.indexed_buckets.lock();
        if known_buckets.len() + buckets.len() > INDEX_CACHE_MAX {
            known_buckets.clear();
        }
        for (bk, (_, until)) in buckets {
            // Concurrent batches may record the same partition: keep the larger bound.
            let known = known_buckets.entry(bk).or_insert(until);
            *known = (*known).max(until);
        }
        Ok(())
    }

    /// The one INSERT of a comment's row in a one-second partition, alone (no index, no
    /// key): what `livecomments-bench cql-loop` repeats to find the node's limit for these
    /// rows (a post at the bench's rate gets one-second partitions from the placer too).
    pub async fn write_comment(&self, c: &Comment) -> StoreResult<()> {
        let ms = id::millis_of(c.id.as_str()).ok_or_else(|| not_a_ulid(c.id.as_str()))?;
        self.write_comment_in(c, Part::at(ms, 1)).await
    }

    async fn write_comment_in(&self, c: &Comment, part: Part) -> StoreResult<()> {
        let bucket = part.bucket();
        self.session
            .execute_unpaged(
                &self.st.insert_comment,
                (
                    c.post_id.as_str(),
                    bucket,
                    c.id.as_str(),
                    &c.user_id,
                    &c.text,
                    CqlTimestamp(created_ms(c)),
                    c.region.as_str(),
                    &c.metadata,
                    self.ttl_secs,
                    // The write carries its stamp's time, not the coordinator's: a delete
                    // issued later (a withdrawal, a user's DELETE) shadows every copy of it,
                    // also one that reaches a replica after the delete (a driver retry,
                    // hinted handoff).
                    created_ms(c).saturating_mul(1000),
                ),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The comment's row goes and its tombstone comes in one logged batch: both or neither,
    /// also when the coordinator dies after accepting it (the batchlog replays it).
    async fn record_deletion(&self, t: &Tombstone) -> StoreResult<()> {
        {
            // Whichever width its writer (or a retry's) chose: every candidate goes. A
            // delete of a row that is not there is one tombstone.
            let [a, b, c] = Part::candidates_of(t.comment_id.as_str())
                .ok_or_else(|| not_a_ulid(t.comment_id.as_str()))?;
            let mut batch = Batch::new(BatchType::Logged);
            for _ in 0..3 {
                batch.append_statement(self.st.delete.clone());
            }
            batch.append_statement(self.st.insert_deletion.clone());
            batch.set_request_timeout(Some(WRITE_TIMEOUT));
            let ttl = self.ttl_secs;
            let (post, id) = (t.post_id.as_str(), t.comment_id.as_str());
            self.session
                .batch(
                    &batch,
                    (
                        (post, a.bucket(), id),
                        (post, b.bucket(), id),
                        (post, c.bucket(), id),
                        (
                            t.post_id.as_str(),
                            t.id.as_str(),
                            t.comment_id.as_str(),
                            t.region.as_str(),
                            ttl,
                        ),
                    ),
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        }
    }

    async fn delete_rows(&self, rows: &[(&str, &str)]) -> StoreResult<()> {
        for (post_id, id) in rows {
            let Some(parts) = Part::candidates_of(id) else {
                continue;
            };
            // The three candidates at once: one round trip per row, as with one width.
            futures::future::try_join_all(parts.map(|part| {
                self.session
                    .execute_unpaged(&self.st.delete, (post_id, part.bucket(), id))
            }))
            .await
            .map_err(unavailable)?;
        }
        Ok(())
    }
}

fn not_a_ulid(id: &str) -> StoreError {
    StoreError::failed(format!("comment id {id:?} is not a ULID"))
}

/// What the walks read (see [`CqlStore::reads`]).
#[derive(Default)]
struct ReadCounters {
    partitions: AtomicU64,
    index: AtomicU64,
}

/// Totals since the store connected: `comments` partitions read (one query each) and index
/// queries (`comment_spans`, `comment_buckets`, `comment_parts`) by `newest` and `after`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub partitions: u64,
    pub index: u64,
}

impl std::ops::Sub for ReadStats {
    type Output = ReadStats;
    fn sub(self, o: ReadStats) -> ReadStats {
        ReadStats {
            partitions: self.partitions.saturating_sub(o.partitions),
            index: self.index.saturating_sub(o.index),
        }
    }
}

/// Runs futures with at most [`CONCURRENCY`] in flight; results in completion order.
async fn bounded<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    stream::iter(futs)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

#[async_trait]
impl Store for CqlStore {
    /// A batch is round trips to the cluster (index rows, then rows), independent of the one
    /// before it, and a writer that waits for each one left the node half idle: with 64
    /// connections a POST waited out the running batch and then its own, p50 8.9 ms at
    /// 6.2k/s while the node took 41k rows/s from a bare loop (docs/BENCHMARKS.md). Each
    /// batch's writes are bounded by `CONCURRENCY`, so at most 4 × 128 requests are out.
    fn batches_in_flight(&self) -> usize {
        4
    }

    async fn insert_batch(&self, batch: Vec<NewComment>) -> Vec<StoreResult<Inserted>> {
        let n = batch.len();
        let mut results: Vec<Option<StoreResult<Inserted>>> = (0..n).map(|_| None).collect();

        // Duplicate keys inside the batch follow their first occurrence (the leader).
        let mut leader_of: HashMap<(String, PostId, String), usize> = HashMap::new();
        let mut follower: Vec<Option<usize>> = vec![None; n];
        for (i, item) in batch.iter().enumerate() {
            if let Some(k) = &item.idempotency_key {
                let key = (
                    item.comment.user_id.clone(),
                    item.comment.post_id.clone(),
                    k.clone(),
                );
                match leader_of.get(&key) {
                    Some(&l) => follower[i] = Some(l),
                    None => {
                        leader_of.insert(key, i);
                    }
                }
            }
        }

        // 1. Claim the keys of the leaders.
        let claims: Vec<_> = batch
            .iter()
            .enumerate()
            .filter(|(i, it)| it.idempotency_key.is_some() && follower[*i].is_none())
            .map(|(i, it)| async move {
                (
                    i,
                    self.claim(&it.comment, it.idempotency_key.as_deref().unwrap_or(""))
                        .await,
                )
            })
            .collect();
        let claims = bounded(claims).await;
        let mut to_write: Vec<usize> = Vec::with_capacity(n);
        let mut pending: Vec<(usize, Comment)> = Vec::new();
        let mut claimed = vec![false; n];
        for (i, claim) in claims {
            match claim {
                Ok(Claim::Fresh) => {
                    claimed[i] = true;
                    to_write.push(i);
                }
                Ok(Claim::Stored(prev)) => results[i] = Some(Ok(Inserted::Existing(prev))),
                Ok(Claim::Pending(prev)) => pending.push((i, prev)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        for (i, item) in batch.iter().enumerate() {
            if item.idempotency_key.is_none() {
                to_write.push(i);
            }
        }
        to_write.sort_unstable();

        // 2. Each comment's partition (in id order: the rate it sees is the post's), index
        // rows, then the comments, then the keys' `stored` flags.
        let mut parts: Vec<Option<Part>> = vec![None; n];
        let mut placed: Vec<(&Comment, Part)> = Vec::with_capacity(to_write.len());
        for &i in &to_write {
            parts[i] = self.place(&batch[i].comment);
            if let Some(p) = parts[i] {
                placed.push((&batch[i].comment, p));
            }
        }
        match self.ensure_indexed(&placed).await {
            Err(e) => {
                for &i in &to_write {
                    results[i] = Some(Err(e.clone()));
                }
            }
            Ok(()) => {
                let (batch, claimed, parts) = (&batch, &claimed, &parts);
                let written: Vec<_> = to_write
                    .iter()
                    .map(|&i| async move {
                        let item = &batch[i];
                        if let Err(e) = in_time(item) {
                            return (i, Err(e));
                        }
                        let Some(part) = parts[i] else {
                            return (i, Err(not_a_ulid(item.comment.id.as_str())));
                        };
                        let key = item.idempotency_key.as_deref().filter(|_| claimed[i]);
                        let r = match key {
                            Some(key) if item.visible_by_ms.is_some() => {
                                self.write_claimed(item, key, part).await
                            }
                            Some(key) => match self.write_comment_in(&item.comment, part).await {
                                Ok(()) => {
                                    let ttl = IDEMPOTENCY_TTL_SECS - 1;
                                    self.mark_stored(&item.comment, key, ttl).await
                                }
                                Err(e) => Err(e),
                            },
                            None => self.write_comment_in(&item.comment, part).await,
                        };
                        (i, r)
                    })
                    .collect();
                let written = bounded(written).await;
                for (i, r) in written {
                    results[i] = Some(r.map(|()| Inserted::Created(batch[i].comment.clone())));
                }
            }
        }

        // 3. Keys whose first attempt never confirmed.
        let finished: Vec<_> = pending
            .into_iter()
            .map(|(i, prev)| {
                let key = batch[i].idempotency_key.clone().unwrap_or_default();
                let fresh = &batch[i];
                async move { (i, self.finish_pending(prev, &key, fresh).await) }
            })
            .collect();
        let finished = bounded(finished).await;
        for (i, r) in finished {
            results[i] = Some(r);
        }

        // 4. Followers answer like their leader, as a repeat.
        for i in 0..n {
            if let Some(l) = follower[i] {
                results[i] = Some(match &results[l] {
                    Some(Ok(ins)) => Ok(Inserted::Existing(ins.comment().clone())),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err(StoreError::failed("internal: leader without result")),
                });
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::failed("internal: item without result"))))
            .collect()
    }

    async fn newest(
        &self,
        post_id: &PostId,
        before: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        self.walk(Dir::Desc, post_id, before, limit).await
    }

    async fn after(
        &self,
        post_id: &PostId,
        after: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        self.walk(Dir::Asc, post_id, after, limit).await
    }

    async fn get(&self, post_id: &PostId, id: &CommentId) -> StoreResult<Option<Comment>> {
        let Some(parts) = Part::candidates_of(id) else {
            return Ok(None);
        };
        // The id's three candidate partitions at once: one round trip, as before.
        let reads = parts.map(|part| async move {
            let res = self
                .session
                .execute_unpaged(&self.st.get, (post_id.as_str(), part.bucket(), id.as_str()))
                .await
                .map_err(unavailable)?;
            let rows = res.into_rows_result().map_err(unavailable)?;
            Ok::<_, StoreError>(
                rows.maybe_first_row::<CommentRow>()
                    .map_err(unavailable)?
                    .and_then(|r| comment_from_row(post_id, r)),
            )
        });
        let found = futures::future::join_all(reads).await;
        let mut out = None;
        for r in found {
            // Any copy will do (a rewrite under the same id carries the same comment).
            if let Some(c) = r? {
                out.get_or_insert(c);
            }
        }
        Ok(out)
    }

    async fn keyed(
        &self,
        user_id: &str,
        post_id: &PostId,
        key: &str,
    ) -> StoreResult<Option<Comment>> {
        self.confirmed_key(user_id, post_id, key).await
    }

    async fn deletions_after(
        &self,
        post_id: &PostId,
        after: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Tombstone>> {
        // "" sorts before every id: from the start.
        let after = after.map_or("", |a| a.as_str());
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = self
            .session
            .execute_unpaged(&self.st.deletions_after, (post_id.as_str(), after, limit))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for row in rows
            .rows::<(String, String, String)>()
            .map_err(unavailable)?
        {
            let (id, comment_id, region) = row.map_err(unavailable)?;
            out.push(Tombstone {
                id: id.into(),
                post_id: post_id.clone(),
                comment_id: comment_id.into(),
                region: region.into(),
            });
        }
        Ok(out)
    }

    async fn record_deletions(&self, batch: Vec<Tombstone>) -> Vec<StoreResult<()>> {
        let writes: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, t)| async move { (i, self.record_deletion(t).await) })
            .collect();
        // `bounded` answers in completion order: put them back in the batch's.
        let mut done: Vec<(usize, StoreResult<()>)> = bounded(writes).await;
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, r)| r).collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.session
            .execute_unpaged(&self.st.ping, ())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn withdraw(&self, failed: &[Withdrawal]) -> StoreResult<Vec<Withdrawal>> {
        let mut removed = Vec::with_capacity(failed.len());
        for w in failed {
            if let Some(key) = &w.idempotency_key
                && self.release_key(w, key).await? == KeyFate::Adopted
            {
                continue;
            }
            self.delete_rows(&[(w.post_id.as_str(), w.id.as_str())])
                .await?;
            removed.push(w.clone());
        }
        Ok(removed)
    }

    async fn put_moderation(
        &self,
        records: &[livecomments_shared::moderation::Record],
    ) -> StoreResult<()> {
        self.put_records(records).await
    }

    async fn moderation(
        &self,
        limit: usize,
    ) -> StoreResult<Vec<livecomments_shared::moderation::Record>> {
        self.all_records(limit).await
    }

    async fn moderation_since(
        &self,
        after_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<livecomments_shared::moderation::Record>> {
        self.records_since(after_ms, limit).await
    }

    async fn add_reactions(
        &self,
        counts: &[(PostId, livecomments_shared::Counts)],
    ) -> StoreResult<()> {
        self.add_counts(counts).await
    }

    async fn reactions(&self, post_id: &PostId) -> StoreResult<livecomments_shared::Counts> {
        self.totals(post_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_spans() {
        assert_eq!(bucket_of_millis(1_999), 1);
        assert_eq!(bucket_of_millis(2_000), 2);
        assert_eq!(span_of_bucket(21_599), 0);
        assert_eq!(span_of_bucket(21_600), 1);
        let id = ulid::Ulid::from_parts(1_795_808_672_123, 7).to_string();
        assert_eq!(bucket_of_id(&id), Some(1_795_808_672));
        assert_eq!(bucket_of_cursor(&id), Some(1_795_808_672));
        assert_eq!(bucket_of_cursor(&id.to_lowercase()), None);
        assert_eq!(bucket_of_cursor("zzz"), None);
    }

    #[test]
    fn options_are_validated() {
        let o = CqlOptions::new(vec!["127.0.0.2:9042".into()], "LiveComments")
            .validated()
            .unwrap();
        assert_eq!(o.keyspace, "livecomments");
        assert!(CqlOptions::new(vec![], "ks").validated().is_err());
        assert!(
            CqlOptions::new(vec!["h:1".into()], "bad-name")
                .validated()
                .is_err()
        );
        assert!(
            CqlOptions::new(vec!["h:1".into()], "1ks")
                .validated()
                .is_err()
        );
        let mut o = CqlOptions::new(vec!["h:1".into()], "ks");
        o.consistency = "LOCAL_ONE".into();
        assert!(o.clone().validated().is_ok());
        o.consistency = "serial".into();
        assert!(o.validated().is_err());
    }

    #[test]
    fn replication_maps() {
        assert_eq!(
            replication_cql("SimpleStrategy:1").unwrap(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(
            replication_cql("NetworkTopologyStrategy:eu-west=3,us_east=3").unwrap(),
            "{'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us_east': 3}"
        );
        for bad in [
            "",
            "SimpleStrategy",
            "SimpleStrategy:0",
            "Other:1",
            "nts:eu",
            "nts:e'u=3",
            "nts:=3",
        ] {
            assert!(replication_cql(bad).is_err(), "{bad}");
        }
    }
}
