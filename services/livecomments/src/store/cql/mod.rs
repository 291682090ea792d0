//! The CQL store: ScyllaDB in production, tested against Apache Cassandra 5.0 (same CQL, protocol
//! v4). Schema in `cql/`, reasoning and measurements in `docs/CQL.md`.
//!
//! Layout (see `cql/0001_comments.cql`):
//! - `comments`, partition `(post_id, bucket)` with `bucket = id timestamp / 1 s`, clustered by
//!   `id DESC`. A hot post at 10,000 comments/s puts 10,000 rows (~3 MB typical) in a partition.
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
//! Idempotency keys, step by step (an equally safe alternative to a transaction, which CQL
//! does not have):
//! 1. `INSERT INTO idempotency ... VALUES (..., stored = false) IF NOT EXISTS USING TTL 86400`.
//! 2. Applied: write the comment (index rows, then the row), then `stored = true`; only then is
//!    the item answered `Created`.
//! 3. Not applied, `stored = true`: answer `Existing` with the comment of the record.
//! 4. Not applied, `stored = false`: the first attempt failed, is still in flight, or its node
//!    died. Without the ingest's policy (`visible_by_ms`; tools) the retry waits up to 0.5 s,
//!    then finishes the record's comment under its id. With it (every POST), see
//!    [`CqlStore::finish_pending`]: the retry waits until the first attempt's row can no
//!    longer change, then adopts that row when it exists, or moves the key to its own fresh
//!    id and shadows the old one when it does not. docs/WRITE-PATH.md has the reasoning.

mod migrate;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures::{StreamExt, stream};
use livecomments_shared::{Comment, id, time};
use parking_lot::Mutex;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::frame::types::{Consistency, SerialConsistency};
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};

pub use migrate::{MIGRATIONS, SCHEMA_VERSION, migrate};

use super::{Inserted, NewComment, Store, StoreError, StoreResult, Withdrawal};

/// Width of a `comments` partition in time.
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
/// A first attempt's comment lands within this long of its stamp or never: ingest starts the
/// write at most 3 s after the stamp (`visible_by_ms`), Cassandra's coordinator gives up on a
/// write after its 2 s `write_request_timeout`; 2 s more for clocks of two nodes that disagree.
/// A retry that finds the key unconfirmed decides the first attempt's fate only after it.
const KEY_SETTLED_MS: i64 = 7_000;
/// Client-side bound of one statement on the POST path (see `CqlStore::connect`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for lightweight transactions and serial reads.
const LWT_TIMEOUT: Duration = Duration::from_secs(3);
/// A write that succeeded this long after its stamp is certainly seen by a retry deciding at
/// [`KEY_SETTLED_MS`] (2 s of clock skew short of it).
const WRITTEN_IN_TIME_MS: i64 = 5_000;

pub fn bucket_of_millis(ms: i64) -> i64 {
    ms.div_euclid(BUCKET_MS)
}

pub fn span_of_bucket(bucket: i64) -> i64 {
    bucket.div_euclid(SPAN_BUCKETS)
}

/// The bucket of a stored comment id (any id `ulid` parses).
fn bucket_of_id(id: &str) -> Option<i64> {
    id::millis_of(id).map(bucket_of_millis)
}

/// The bucket a cursor starts from; `None` for a cursor that is not a canonical ULID, which is
/// then applied as a plain string bound on every bucket (still correct, only slower).
fn bucket_of_cursor(cursor: &str) -> Option<i64> {
    if id::is_valid(cursor) {
        bucket_of_id(cursor)
    } else {
        None
    }
}

/// Connection and schema settings of the CQL store.
#[derive(Debug, Clone)]
pub struct CqlOptions {
    /// Contact points `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace (validated: `[A-Za-z][A-Za-z0-9_]{0,47}`, stored lowercase).
    pub keyspace: String,
    /// `local_quorum` (default), `quorum`, `local_one`, `one`, `each_quorum`, `all`, ...
    pub consistency: String,
    /// Comments expire after this many days (CQL TTL); `None`: kept forever.
    pub retention_days: Option<u32>,
    /// Keyspace replication used by `migrate`: `SimpleStrategy:1` or
    /// `NetworkTopologyStrategy:dc1=3,dc2=3`.
    pub replication: String,
}

impl CqlOptions {
    /// Defaults for everything but the contact points and keyspace.
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> Self {
        CqlOptions {
            nodes,
            keyspace: keyspace.into(),
            consistency: "local_quorum".into(),
            retention_days: None,
            replication: "SimpleStrategy:1".into(),
        }
    }

    pub fn from_args(a: &crate::config::CqlArgs) -> anyhow::Result<Self> {
        let opts = CqlOptions {
            nodes: a
                .cql_nodes
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            keyspace: a.cql_keyspace.clone(),
            consistency: a.cql_consistency.clone(),
            retention_days: a.cql_retention_days,
            replication: a.cql_replication.clone(),
        };
        opts.validated()
    }

    /// Checks every field; lowercases the keyspace (unquoted CQL identifiers are
    /// case-insensitive).
    pub fn validated(mut self) -> anyhow::Result<Self> {
        if self.nodes.is_empty() {
            bail!("--cql-nodes: at least one host:port is needed");
        }
        let ks = &self.keyspace;
        let ok = ks.len() <= 48
            && ks.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            bail!("--cql-keyspace {ks:?}: must match [A-Za-z][A-Za-z0-9_]{{0,47}}");
        }
        self.keyspace = ks.to_ascii_lowercase();
        parse_consistency(&self.consistency)?;
        if self.retention_days == Some(0) || self.retention_days.is_some_and(|d| d > 3650) {
            bail!("--cql-retention-days must be between 1 and 3650");
        }
        self.replication_cql()?;
        Ok(self)
    }

    /// The replication map of `CREATE KEYSPACE`.
    pub fn replication_cql(&self) -> anyhow::Result<String> {
        replication_cql(&self.replication)
    }

    fn ttl_secs(&self) -> i32 {
        self.retention_days.map(|d| d as i32 * 86_400).unwrap_or(0)
    }
}

pub fn parse_consistency(s: &str) -> anyhow::Result<Consistency> {
    Ok(
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "any" => Consistency::Any,
            "one" => Consistency::One,
            "two" => Consistency::Two,
            "three" => Consistency::Three,
            "quorum" => Consistency::Quorum,
            "all" => Consistency::All,
            "local_quorum" => Consistency::LocalQuorum,
            "each_quorum" => Consistency::EachQuorum,
            "local_one" => Consistency::LocalOne,
            other => bail!(
                "--cql-consistency {other:?}: expected local_quorum, quorum, local_one, one, two, three, each_quorum, all or any"
            ),
        },
    )
}

/// `SimpleStrategy:1` → `{'class': 'SimpleStrategy', 'replication_factor': 1}`;
/// `NetworkTopologyStrategy:eu=3,us=3` → `{'class': 'NetworkTopologyStrategy', 'eu': 3, 'us': 3}`.
pub fn replication_cql(s: &str) -> anyhow::Result<String> {
    let usage =
        "--cql-replication: expected SimpleStrategy:<rf> or NetworkTopologyStrategy:<dc>=<rf>,...";
    let (class, rest) = s.trim().split_once(':').context(usage)?;
    let rf = |v: &str| -> anyhow::Result<u32> {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=9).contains(n))
            .context("replication factor must be 1..=9")
    };
    match class.trim().to_ascii_lowercase().as_str() {
        "simplestrategy" | "simple" => Ok(format!(
            "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
            rf(rest)?
        )),
        "networktopologystrategy" | "nts" => {
            let mut parts = Vec::new();
            for item in rest.split(',') {
                let (dc, n) = item.split_once('=').context(usage)?;
                let dc = dc.trim();
                let valid = !dc.is_empty()
                    && dc.len() <= 64
                    && dc
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !valid {
                    bail!("--cql-replication: bad datacenter name {dc:?}");
                }
                parts.push(format!("'{dc}': {}", rf(n)?));
            }
            Ok(format!(
                "{{'class': 'NetworkTopologyStrategy', {}}}",
                parts.join(", ")
            ))
        }
        _ => bail!("{usage}"),
    }
}

/// A driver session with the configured consistency, LOCAL_SERIAL for LWTs and the default
/// (token-aware, datacenter-aware) load balancing.
pub(crate) async fn session(opts: &CqlOptions) -> anyhow::Result<Session> {
    let profile = ExecutionProfile::builder()
        .consistency(parse_consistency(&opts.consistency)?)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(Duration::from_secs(10)))
        .build();
    SessionBuilder::new()
        .known_nodes(&opts.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .connection_timeout(Duration::from_secs(5))
        .build()
        .await
        .with_context(|| format!("connecting to CQL nodes {}", opts.nodes.join(",")))
}

/// The keyspace's applied migrations. A cluster that cannot answer yet (a node down or frozen
/// while this process starts: a quorum read times out) is asked again for up to 30 s, so a
/// restarted node does not exit over one slow read (the 10-minute chaos run lost an ingest
/// restart to exactly that); only a missing table or keyspace means "not migrated".
async fn schema_versions(session: &Session, ks: &str) -> anyhow::Result<Vec<i32>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut wait = Duration::from_millis(200);
    loop {
        let e = match migrate::applied_versions(session, ks).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let text = format!("{e:#}");
        if text.contains("unconfigured table") || text.contains("does not exist") {
            return Err(e).with_context(|| {
                format!("keyspace {ks} has no schema (run `livecomments migrate` with the same --cql-* flags)")
            });
        }
        if Instant::now() >= deadline {
            return Err(e).with_context(|| format!("reading the schema version of keyspace {ks}"));
        }
        tracing::warn!(error = %text, "reading the schema version; trying again");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// A driver error as a store error: the driver's message (it holds no credentials), bounded.
fn unavailable(e: impl std::fmt::Display) -> StoreError {
    let mut s = format!("cql: {e}");
    if s.len() > 400 {
        let mut cut = 400;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    StoreError::Unavailable(s)
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
        .ok_or_else(|| unavailable("empty LWT result"))?;
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
    spans_desc: PreparedStatement,
    spans_asc: PreparedStatement,
    buckets_desc: PreparedStatement,
    buckets_asc: PreparedStatement,
    ping: PreparedStatement,
    rate_recent: PreparedStatement,
    rate_take: PreparedStatement,
    restamp_key: PreparedStatement,
    release_key: PreparedStatement,
}

/// What a conditional "stored = true while the key names this comment" did.
enum Mark {
    Stored,
    /// The key names another comment now (a retry moved it) or is gone.
    Taken,
    /// The LWT timed out and could not be read back.
    Unknown(String),
}

/// What releasing the key of a comment whose write failed found.
#[derive(Debug, PartialEq, Eq)]
enum KeyFate {
    /// The key named the comment unconfirmed and is now free: the comment must go.
    Released,
    /// A retry adopted the comment (the key names it, stored): it stays.
    Adopted,
    /// The key is gone or names another comment: the comment must go.
    Elsewhere,
}

fn window_millis(window: Duration) -> i64 {
    i64::try_from(window.as_millis())
        .unwrap_or(i64::MAX / 2)
        .max(1)
}

fn in_time(item: &NewComment) -> StoreResult<()> {
    if item.still_in_time() {
        return Ok(());
    }
    Err(unavailable(format!(
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

fn comment_from_row(post_id: &str, r: CommentRow) -> Option<Comment> {
    let (id, user_id, text, created_at, region, metadata) = r;
    let id = id?;
    let ms = created_at
        .map(|t| t.0)
        .or_else(|| id::millis_of(&id))
        .unwrap_or(0);
    Some(Comment {
        id,
        post_id: post_id.to_string(),
        user_id: user_id.unwrap_or_default(),
        text: text.unwrap_or_default(),
        timestamp: time::format_millis(ms),
        region: region.unwrap_or_default(),
        metadata: metadata.unwrap_or_default(),
    })
}

fn created_ms(c: &Comment) -> i64 {
    time::parse_rfc3339_millis(&c.timestamp).unwrap_or_else(|| c.timestamp_millis())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Newest first.
    Desc,
    /// Oldest first.
    Asc,
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
    /// writes its bucket's index row once per second, not once per comment.
    indexed_spans: Mutex<HashSet<(String, i64)>>,
    indexed_buckets: Mutex<HashSet<(String, i64)>>,
}

impl CqlStore {
    /// Connects, checks the keyspace's schema version and prepares every statement. Refuses
    /// to start when the schema is older than this binary needs (run `livecomments migrate`).
    pub async fn connect(opts: &CqlOptions) -> anyhow::Result<CqlStore> {
        let opts = opts.clone().validated()?;
        let session = session(&opts).await?;
        let ks = opts.keyspace.clone();
        let applied = schema_versions(&session, &ks).await?;
        let have = applied.last().copied().unwrap_or(0);
        if have < SCHEMA_VERSION {
            bail!(
                "keyspace {ks} is at schema version {have}, this binary needs {SCHEMA_VERSION}: run `livecomments migrate` first"
            );
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
                    .with_context(|| format!("preparing {cql}"))?;
                p.set_is_idempotent(idempotent);
                anyhow::Ok(p)
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
            &mut st.insert_span,
            &mut st.mark_stored,
            &mut st.rate_recent,
            &mut st.rate_take,
            &mut st.delete,
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
        Ok(CqlStore {
            session: Arc::new(session),
            st,
            keyspace: ks,
            ttl_secs,
            index_ttl_secs: if ttl_secs > 0 { ttl_secs + 86_400 } else { 0 },
            indexed_spans: Mutex::new(HashSet::new()),
            indexed_buckets: Mutex::new(HashSet::new()),
        })
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The driver session (for tools and tests).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Index rows first, for every distinct bucket of `comments` this process has not
    /// indexed yet.
    async fn ensure_indexed(&self, comments: &[&Comment]) -> StoreResult<()> {
        let mut spans = HashSet::new();
        let mut buckets = HashSet::new();
        {
            let known_spans = self.indexed_spans.lock();
            let known_buckets = self.indexed_buckets.lock();
            for c in comments {
                let Some(b) = bucket_of_id(&c.id) else {
                    continue;
                };
                let s = span_of_bucket(b);
                let sk = (c.post_id.clone(), s);
                if !known_spans.contains(&sk) {
                    spans.insert(sk);
                }
                let bk = (c.post_id.clone(), b);
                if !known_buckets.contains(&bk) {
                    buckets.insert(bk);
                }
            }
        }
        if spans.is_empty() && buckets.is_empty() {
            return Ok(());
        }
        let ttl = self.index_ttl_secs;
        let writes: Vec<_> = spans
            .iter()
            .map(|(p, s)| (p, *s, None))
            .chain(
                buckets
                    .iter()
                    .map(|(p, b)| (p, span_of_bucket(*b), Some(*b))),
            )
            .map(|(p, span, bucket)| async move {
                match bucket {
                    None => {
                        self.session
                            .execute_unpaged(&self.st.insert_span, (p, span, ttl))
                            .await
                    }
                    Some(b) => {
                        self.session
                            .execute_unpaged(&self.st.insert_bucket, (p, span, b, ttl))
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
        known_buckets.extend(buckets);
        Ok(())
    }

    async fn write_comment(&self, c: &Comment) -> StoreResult<()> {
        let bucket = bucket_of_id(&c.id)
            .ok_or_else(|| unavailable(format!("comment id {:?} is not a ULID", c.id)))?;
        self.session
            .execute_unpaged(
                &self.st.insert_comment,
                (
                    &c.post_id,
                    bucket,
                    &c.id,
                    &c.user_id,
                    &c.text,
                    CqlTimestamp(created_ms(c)),
                    &c.region,
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

    /// With the ingest's policy (`visible_by_ms`): `stored = true` only while the record
    /// still names this comment; a retry that moved the key to its own fresh id wins. A
    /// timed-out LWT may still apply: then the record is read back (linearizably).
    async fn mark_stored_if_ours(&self, c: &Comment, key: &str, ttl: i32) -> Mark {
        let mut last = String::new();
        for _ in 0..2 {
            let res = self
                .session
                .execute_unpaged(
                    &self.st.mark_stored_if,
                    (ttl.max(1), &c.user_id, &c.post_id, key, &c.id),
                )
                .await;
            match res.map_err(unavailable).and_then(lwt_outcome) {
                Ok((true, _)) => return Mark::Stored,
                Ok((false, _)) => return Mark::Taken,
                Err(e) => {
                    tracing::warn!(error = %e, id = %c.id, "marking a key stored: outcome unknown; reading it back");
                    match self.read_key_owner(c, key).await {
                        Ok(Some((id, true))) if id == c.id => return Mark::Stored,
                        Ok(Some((id, false))) if id == c.id => continue, // the mark did not apply
                        Ok(_) => return Mark::Taken,
                        Err(e) => last = e.to_string(),
                    }
                }
            }
        }
        Mark::Unknown(last)
    }

    /// The outcome of an attempt that wrote its comment `c` (at `written_ms`) and then tried to
    /// mark its key. When the mark's outcome is unknown, the comment still counts as created
    /// if it was written early enough for every retry to find the row and adopt it
    /// ([`KEY_SETTLED_MS`]); the key cannot then move to another comment.
    fn settle(c: &Comment, mark: Mark, written_ms: i64) -> StoreResult<()> {
        match mark {
            Mark::Stored => Ok(()),
            Mark::Taken => Err(unavailable(
                "a retry took this Idempotency-Key over; this attempt is withdrawn",
            )),
            Mark::Unknown(e) if written_ms <= created_ms(c) + WRITTEN_IN_TIME_MS => {
                tracing::warn!(error = %e, id = %c.id, "key mark unknown; the comment was written in time, so any retry adopts it");
                Ok(())
            }
            Mark::Unknown(e) => Err(unavailable(format!(
                "could not mark the key of {} stored: {e}",
                c.id
            ))),
        }
    }

    /// After a failed write of `c` (claimed with `key`): free the key if it still names `c`
    /// unconfirmed, so the comment can be withdrawn and a retry claims afresh; or find that a
    /// retry adopted `c` meanwhile (it found the row), and then `c` stays.
    async fn release_key(&self, c: &Withdrawal, key: &str) -> StoreResult<KeyFate> {
        let res = self
            .session
            .execute_unpaged(&self.st.release_key, (&c.user_id, &c.post_id, key, &c.id))
            .await;
        let fate = |id: Option<&str>, stored: bool| match id {
            Some(id) if id == c.id && stored => KeyFate::Adopted,
            _ => KeyFate::Elsewhere,
        };
        match res.map_err(unavailable).and_then(lwt_outcome) {
            Ok((true, _)) => Ok(KeyFate::Released),
            Ok((false, row)) => Ok(fate(
                row.get("id").and_then(|v| v.as_text()).map(String::as_str),
                matches!(row.get("stored"), Some(CqlValue::Boolean(true))),
            )),
            Err(e) => {
                tracing::warn!(error = %e, id = %c.id, "releasing a key: outcome unknown; reading it back");
                let read = self
                    .session
                    .execute_unpaged(&self.st.read_key_id, (&c.user_id, &c.post_id, key))
                    .await
                    .map_err(unavailable)?
                    .into_rows_result()
                    .map_err(unavailable)?
                    .maybe_first_row::<(Option<String>, Option<bool>)>()
                    .map_err(unavailable)?;
                match read {
                    None => Ok(KeyFate::Released),
                    Some((id, Some(false) | None)) if id.as_deref() == Some(c.id.as_str()) => {
                        Err(unavailable("the key's release did not apply"))
                    }
                    Some((id, stored)) => Ok(fate(id.as_deref(), stored == Some(true))),
                }
            }
        }
    }

    /// The record's comment id and `stored` flag (LOCAL_SERIAL).
    async fn read_key_owner(&self, c: &Comment, key: &str) -> StoreResult<Option<(String, bool)>> {
        let res = self
            .session
            .execute_unpaged(&self.st.read_key_id, (&c.user_id, &c.post_id, key))
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        Ok(rows
            .maybe_first_row::<(Option<String>, Option<bool>)>()
            .map_err(unavailable)?
            .and_then(|(id, stored)| Some((id?, stored.unwrap_or(false)))))
    }

    async fn mark_stored(&self, c: &Comment, key: &str, ttl: i32) -> StoreResult<()> {
        self.session
            .execute_unpaged(
                &self.st.mark_stored,
                (ttl.max(1), &c.user_id, &c.post_id, key),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Step 1 of an idempotent insert: the LWT claim.
    async fn claim(&self, c: &Comment, key: &str) -> StoreResult<Claim> {
        let res = self
            .session
            .execute_unpaged(
                &self.st.claim_key,
                (
                    &c.user_id,
                    &c.post_id,
                    key,
                    &c.id,
                    &c.text,
                    CqlTimestamp(created_ms(c)),
                    &c.region,
                    &c.metadata,
                ),
            )
            .await
            .map_err(unavailable)?;
        let (applied, mut row) = lwt_outcome(res)?;
        if applied {
            return Ok(Claim::Fresh);
        }
        let text = |row: &mut HashMap<String, CqlValue>, k: &str| {
            row.remove(k).and_then(|v| v.into_string())
        };
        let Some(id) = text(&mut row, "id") else {
            // A record without a comment (expiring this very second): treat it as absent.
            return Ok(Claim::Fresh);
        };
        let ms = row
            .get("created_at")
            .and_then(|v| v.as_cql_timestamp())
            .map(|t| t.0);
        let metadata = match row.remove("metadata") {
            Some(CqlValue::Map(pairs)) => pairs
                .into_iter()
                .filter_map(|(k, v)| Some((k.into_string()?, v.into_string()?)))
                .collect(),
            _ => BTreeMap::new(),
        };
        let prev = Comment {
            timestamp: time::format_millis(ms.or_else(|| id::millis_of(&id)).unwrap_or(0)),
            id,
            post_id: c.post_id.clone(),
            user_id: c.user_id.clone(),
            text: text(&mut row, "text").unwrap_or_default(),
            region: text(&mut row, "region").unwrap_or_default(),
            metadata,
        };
        let stored = matches!(row.get("stored"), Some(CqlValue::Boolean(true)));
        Ok(if stored {
            Claim::Stored(prev)
        } else {
            Claim::Pending(prev)
        })
    }

    /// Step 4: the record exists but its comment was never confirmed. `fresh`: this retry's
    /// own item (its id is stamped now, by this node).
    async fn finish_pending(
        &self,
        prev: Comment,
        key: &str,
        fresh: &NewComment,
    ) -> StoreResult<Inserted> {
        if fresh.visible_by_ms.is_none() {
            return self.finish_pending_without_policy(prev, key).await;
        }
        // The first attempt's row may still appear (its node may be frozen mid-write) until
        // KEY_SETTLED_MS after its stamp. Deciding earlier either withdraws a comment a fanout
        // may already have streamed (its writer's stream reached it) or adopts a row that is
        // not there yet. The client comes back after Retry-After; nothing changed.
        let settled_at = created_ms(&prev).saturating_add(KEY_SETTLED_MS);
        let now = time::now_millis();
        if now < settled_at {
            return Err(StoreError::KeyInProgress(Duration::from_millis(
                (settled_at - now) as u64,
            )));
        }
        let ttl = IDEMPOTENCY_TTL_SECS - 1;
        // Read at the store's quorum: a row any quorum write left is found (and, read-repaired,
        // stays); a row not found now can only arrive later under the tombstone below.
        if let Some(row) = self.get(&prev.post_id, &prev.id).await? {
            // Written in time by the first attempt: it is in its writer's stream, streamed
            // by that writer or (the writer gone) by every fanout's repair. Adopt it.
            return match self.mark_stored_if_ours(&row, key, ttl).await {
                Mark::Stored => Ok(Inserted::Existing(row)),
                Mark::Taken => Err(unavailable(
                    "the Idempotency-Key changed hands meanwhile; retry",
                )),
                Mark::Unknown(e) => Err(unavailable(e)),
            };
        }
        // Never written (or not in time): the comment must not appear under the old id, whose
        // place in its writer's stream every fanout has passed. The claim moves to this
        // retry's fresh id, and the old id is withdrawn (a delete that shadows any copy still
        // on its way: rows carry their stamp's time as write timestamp).
        let res = self
            .session
            .execute_unpaged(
                &self.st.restamp_key,
                (
                    &fresh.comment.id,
                    CqlTimestamp(created_ms(&fresh.comment)),
                    &prev.user_id,
                    &prev.post_id,
                    key,
                    &prev.id,
                ),
            )
            .await
            .map_err(unavailable)?;
        let (applied, _) = lwt_outcome(res)?;
        if !applied {
            return Err(unavailable(
                "another attempt with this Idempotency-Key is finishing it; retry",
            ));
        }
        let comment = Comment {
            id: fresh.comment.id.clone(),
            timestamp: fresh.comment.timestamp.clone(),
            region: fresh.comment.region.clone(),
            ..prev.clone()
        };
        self.delete_rows(&[(&prev.post_id, &prev.id)]).await?;
        if !fresh.still_in_time() {
            return Err(unavailable("retry not written in time; retry again"));
        }
        self.ensure_indexed(&[&comment]).await?;
        self.write_comment(&comment).await?;
        let written_ms = time::now_millis();
        let mark = self.mark_stored_if_ours(&comment, key, ttl).await;
        Self::settle(&comment, mark, written_ms)?;
        Ok(Inserted::Created(comment))
    }

    /// Step 4 for tools and engine tests (no visibility bound): wait up to 0.5 s for the first
    /// attempt, then finish the record's comment under its own id (an overwrite, never a
    /// second comment).
    async fn finish_pending_without_policy(
        &self,
        prev: Comment,
        key: &str,
    ) -> StoreResult<Inserted> {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut ttl = IDEMPOTENCY_TTL_SECS;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let res = self
                .session
                .execute_unpaged(&self.st.read_key, (&prev.user_id, &prev.post_id, key))
                .await
                .map_err(unavailable)?;
            let rows = res.into_rows_result().map_err(unavailable)?;
            match rows
                .maybe_first_row::<(Option<bool>, Option<i32>)>()
                .map_err(unavailable)?
            {
                Some((Some(true), _)) => {
                    return match self.claim(&prev, key).await? {
                        Claim::Stored(c) => Ok(Inserted::Existing(c)),
                        _ => Err(unavailable(
                            "the Idempotency-Key changed hands while waiting; retry",
                        )),
                    };
                }
                Some((_, remaining)) => ttl = remaining.unwrap_or(ttl),
                None => break, // expired meanwhile: finish anyway, the write is an overwrite
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        self.ensure_indexed(&[&prev]).await?;
        self.write_comment(&prev).await?;
        self.mark_stored(&prev, key, ttl).await?;
        Ok(Inserted::Created(prev))
    }

    async fn delete_rows(&self, rows: &[(&str, &str)]) -> StoreResult<()> {
        for (post_id, id) in rows {
            let Some(bucket) = bucket_of_id(id) else {
                continue;
            };
            self.session
                .execute_unpaged(&self.st.delete, (post_id, bucket, id))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// A claimed item of a batch (found in time): the comment, then its key marked. When
    /// the write fails, the key is released at once, unless a retry on another node adopted
    /// the row meanwhile: the comment is then stored, acknowledged there, and this writer
    /// publishes it in its own stream as any other.
    async fn write_claimed(&self, item: &NewComment, key: &str) -> StoreResult<()> {
        let ttl = IDEMPOTENCY_TTL_SECS - 1;
        match self.write_comment(&item.comment).await {
            Ok(()) => {
                let written_ms = time::now_millis();
                let mark = self.mark_stored_if_ours(&item.comment, key, ttl).await;
                Self::settle(&item.comment, mark, written_ms)
            }
            Err(e) => match self.release_key(&Withdrawal::of(item), key).await {
                Ok(KeyFate::Adopted) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// The per-user rate limit across every ingest node of the region: a sliding window of
    /// `limit` accepted requests per `window`. Says whether `user` may post now, or how long
    /// until the oldest request in the window expires. The caller records an accepted request
    /// with [`CqlStore::record_rate`] before it answers, so the user's next request sees it.
    pub async fn check_rate(
        &self,
        user: &str,
        limit: u32,
        window: Duration,
    ) -> StoreResult<Result<(), Duration>> {
        let now = time::now_millis();
        let window_ms = window_millis(window);
        let limit = limit.clamp(1, i32::MAX as u32);
        let res = self
            .session
            .execute_unpaged(
                &self.st.rate_recent,
                (user, CqlTimestamp(now - window_ms), limit as i32),
            )
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        let ats: Vec<i64> = rows
            .rows::<(CqlTimestamp,)>()
            .map_err(unavailable)?
            .filter_map(|r| r.ok().map(|(t,)| t.0))
            .collect();
        if ats.len() >= limit as usize {
            let oldest = ats.iter().copied().min().unwrap_or(now);
            let wait = (oldest + window_ms - now).max(1);
            return Ok(Err(Duration::from_millis(wait as u64)));
        }
        Ok(Ok(()))
    }

    /// Records one accepted request of `user` in the rate-limit window.
    pub async fn record_rate(&self, user: &str, window: Duration) -> StoreResult<()> {
        let window_ms = window_millis(window);
        let ttl = i32::try_from(window_ms / 1000 + 1).unwrap_or(i32::MAX);
        self.session
            .execute_unpaged(
                &self.st.rate_take,
                (
                    user,
                    CqlTimestamp(time::now_millis()),
                    rand::random::<i64>(),
                    ttl,
                ),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn query_bucket(
        &self,
        dir: Dir,
        post_id: &str,
        bucket: i64,
        bound: &str,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        let st = match dir {
            Dir::Desc => &self.st.newest,
            Dir::Asc => &self.st.after,
        };
        let res = self
            .session
            .execute_unpaged(
                st,
                (post_id, bucket, bound, limit.min(i32::MAX as usize) as i32),
            )
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.rows_num());
        for r in rows.rows::<CommentRow>().map_err(unavailable)? {
            if let Some(c) = comment_from_row(post_id, r.map_err(unavailable)?) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// A page in `dir` order: walks the post's non-empty buckets through the index, reading
    /// them in waves of 1, 2, 4, ... (at most [`MAX_WAVE`]) partitions in parallel until
    /// `limit` comments are found or the buckets run out.
    async fn walk(
        &self,
        dir: Dir,
        post_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // Exclusive id bound, applied in every bucket.
        let bound = match (dir, cursor) {
            (_, Some(c)) => c.to_string(),
            (Dir::Desc, None) => char::MAX.to_string(),
            (Dir::Asc, None) => String::new(),
        };
        let start = cursor.and_then(bucket_of_cursor);
        let mut buckets = BucketWalk::new(self, dir, post_id, start);
        let mut wave = 1;
        while out.len() < limit {
            let mut batch = Vec::with_capacity(wave);
            while batch.len() < wave {
                match buckets.next().await? {
                    Some(b) => batch.push(b),
                    None => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let need = limit - out.len();
            let pages: Vec<_> = batch
                .into_iter()
                .map(|b| self.query_bucket(dir, post_id, b, &bound, need))
                .collect();
            let pages = stream::iter(pages)
                .buffered(MAX_WAVE)
                .collect::<Vec<_>>()
                .await;
            for page in pages {
                out.extend(page?);
            }
            out.truncate(limit);
            wave = (wave * 2).min(MAX_WAVE);
        }
        Ok(out)
    }
}

/// Runs futures with at most [`CONCURRENCY`] in flight; results in completion order.
async fn bounded<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    stream::iter(futs)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

enum Claim {
    /// The key was free; it is ours now.
    Fresh,
    /// The key's comment is durable: answer `Existing`.
    Stored(Comment),
    /// The key's first attempt has not (yet) confirmed its comment.
    Pending(Comment),
}

/// Lazily lists a post's non-empty buckets in `dir` order from the two index tables, a page
/// of [`INDEX_PAGE`] rows at a time.
struct BucketWalk<'a> {
    store: &'a CqlStore,
    dir: Dir,
    post_id: &'a str,
    /// Inclusive bound of the next span query; `None` once the spans are exhausted.
    next_span: Option<i64>,
    spans: std::collections::VecDeque<i64>,
    /// The span being read and the inclusive bound of its next bucket query.
    current: Option<(i64, i64)>,
    buckets: std::collections::VecDeque<i64>,
    /// Bucket bound in the first span (the cursor's bucket).
    start_bucket: Option<i64>,
}

impl<'a> BucketWalk<'a> {
    fn new(store: &'a CqlStore, dir: Dir, post_id: &'a str, start_bucket: Option<i64>) -> Self {
        let next_span = Some(match (dir, start_bucket) {
            (_, Some(b)) => span_of_bucket(b),
            (Dir::Desc, None) => i64::MAX,
            (Dir::Asc, None) => i64::MIN,
        });
        BucketWalk {
            store,
            dir,
            post_id,
            next_span,
            spans: Default::default(),
            current: None,
            buckets: Default::default(),
            start_bucket,
        }
    }

    fn extreme(&self) -> i64 {
        match self.dir {
            Dir::Desc => i64::MAX,
            Dir::Asc => i64::MIN,
        }
    }

    fn step_past(&self, v: i64) -> Option<i64> {
        match self.dir {
            Dir::Desc => v.checked_sub(1),
            Dir::Asc => v.checked_add(1),
        }
    }

    async fn index_page(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<Vec<i64>> {
        let res = self
            .store
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.rows_num());
        for r in rows.rows::<(i64,)>().map_err(unavailable)? {
            out.push(r.map_err(unavailable)?.0);
        }
        Ok(out)
    }

    async fn next(&mut self) -> StoreResult<Option<i64>> {
        loop {
            if let Some(b) = self.buckets.pop_front() {
                return Ok(Some(b));
            }
            if let Some((span, bound)) = self.current {
                let st = match self.dir {
                    Dir::Desc => &self.store.st.buckets_desc,
                    Dir::Asc => &self.store.st.buckets_asc,
                };
                let page = self
                    .index_page(st, (self.post_id, span, bound, INDEX_PAGE))
                    .await?;
                let full = page.len() == INDEX_PAGE as usize;
                self.current = match (full, page.last().and_then(|&l| self.step_past(l))) {
                    (true, Some(next)) => Some((span, next)),
                    _ => None,
                };
                self.buckets.extend(page);
                continue;
            }
            if self.spans.is_empty() {
                let Some(bound) = self.next_span else {
                    return Ok(None);
                };
                let st = match self.dir {
                    Dir::Desc => &self.store.st.spans_desc,
                    Dir::Asc => &self.store.st.spans_asc,
                };
                let page = self.index_page(st, (self.post_id, bound, 16i32)).await?;
                self.next_span = match (
                    page.len() == 16,
                    page.last().and_then(|&l| self.step_past(l)),
                ) {
                    (true, Some(next)) => Some(next),
                    _ => None,
                };
                if page.is_empty() {
                    return Ok(None);
                }
                self.spans.extend(page);
            }
            let Some(span) = self.spans.pop_front() else {
                return Ok(None);
            };
            let bound = match self.start_bucket {
                Some(b) if span_of_bucket(b) == span => b,
                _ => self.extreme(),
            };
            self.current = Some((span, bound));
        }
    }
}

#[async_trait]
impl Store for CqlStore {
    async fn insert_batch(&self, batch: Vec<NewComment>) -> Vec<StoreResult<Inserted>> {
        let n = batch.len();
        let mut results: Vec<Option<StoreResult<Inserted>>> = (0..n).map(|_| None).collect();

        // Duplicate keys inside the batch follow their first occurrence (the leader).
        let mut leader_of: HashMap<(String, String, String), usize> = HashMap::new();
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

        // 2. Index rows, then the comments, then the keys' `stored` flags.
        let comments: Vec<&Comment> = to_write.iter().map(|&i| &batch[i].comment).collect();
        match self.ensure_indexed(&comments).await {
            Err(e) => {
                for &i in &to_write {
                    results[i] = Some(Err(StoreError::Unavailable(e.to_string())));
                }
            }
            Ok(()) => {
                let (batch, claimed) = (&batch, &claimed);
                let written: Vec<_> = to_write
                    .iter()
                    .map(|&i| async move {
                        let item = &batch[i];
                        if let Err(e) = in_time(item) {
                            return (i, Err(e));
                        }
                        let key = item.idempotency_key.as_deref().filter(|_| claimed[i]);
                        let r = match key {
                            Some(key) if item.visible_by_ms.is_some() => {
                                self.write_claimed(item, key).await
                            }
                            Some(key) => match self.write_comment(&item.comment).await {
                                Ok(()) => {
                                    let ttl = IDEMPOTENCY_TTL_SECS - 1;
                                    self.mark_stored(&item.comment, key, ttl).await
                                }
                                Err(e) => Err(e),
                            },
                            None => self.write_comment(&item.comment).await,
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
                    Some(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                    None => Err(StoreError::Unavailable(
                        "internal: leader without result".into(),
                    )),
                });
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "internal: item without result".into(),
                    ))
                })
            })
            .collect()
    }

    async fn newest(
        &self,
        post_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        self.walk(Dir::Desc, post_id, before, limit).await
    }

    async fn after(
        &self,
        post_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        self.walk(Dir::Asc, post_id, after, limit).await
    }

    async fn get(&self, post_id: &str, id: &str) -> StoreResult<Option<Comment>> {
        let Some(bucket) = bucket_of_id(id) else {
            return Ok(None);
        };
        let res = self
            .session
            .execute_unpaged(&self.st.get, (post_id, bucket, id))
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        Ok(rows
            .maybe_first_row::<CommentRow>()
            .map_err(unavailable)?
            .and_then(|r| comment_from_row(post_id, r)))
    }

    async fn delete(&self, post_id: &str, id: &str) -> StoreResult<bool> {
        // Read, then delete: both idempotent (no LWT). Two concurrent deletes of one comment
        // may both answer true; the comment is gone either way.
        if self.get(post_id, id).await?.is_none() {
            return Ok(false);
        }
        let Some(bucket) = bucket_of_id(id) else {
            return Ok(false);
        };
        self.session
            .execute_unpaged(&self.st.delete, (post_id, bucket, id))
            .await
            .map_err(unavailable)?;
        Ok(true)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.session
            .execute_unpaged(&self.st.ping, ())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn withdraw(&self, failed: &[Withdrawal]) -> StoreResult<()> {
        for w in failed {
            if let Some(key) = &w.idempotency_key {
                if self.release_key(w, key).await? == KeyFate::Adopted {
                    continue;
                }
            }
            self.delete_rows(&[(&w.post_id, &w.id)]).await?;
        }
        Ok(())
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
