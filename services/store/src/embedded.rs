//! The embedded store: redb, a pure-Rust, maintained, ACID B-tree in one file.
//!
//! Why redb: a B-tree gives ordered range scans, so the newest page and every cursor page
//! are a seek plus `limit` steps, O(page) whatever the post's history; it is a single file
//! with no background compaction to tune, and a commit is atomic. Durability: the ingest
//! answers 201 only for comments that survive `kill -9`. A comment batch is synced in the
//! write-ahead log (`wal`, one `fdatasync` of a preallocated file, ~0.1 ms) and put in memory
//! (`pending`, merged into every read); a flusher thread applies what accumulated to redb
//! without a sync every 10 ms, and every other write, and a checkpoint at least once a second
//! or every 512 KiB of log, is a durable redb commit (`Durability::Immediate`, fsync'd before
//! `commit()` returns) that applies it first. Throughput comes from group commit: the ingest
//! pipeline hands over a whole batch and it costs one sync, and a B-tree commit now carries
//! ~10 ms of batches instead of one.
//!
//! Layout (all keys are bytes, ordered):
//! - `comments`: `post_id 0x00 id` → MessagePack of the [`Comment`].
//! - `idempotency`: `user_id 0x00 post_id 0x00 key` → `created_ms (8 bytes BE)` + MessagePack of
//!   the comment first stored with that key. `post_id` and `user_id` never contain 0x00
//!   (validated), so the separators are unambiguous.
//! - `deletions`: `post_id 0x00 tombstone id` → MessagePack of the [`Tombstone`] (CONTRACT §10:
//!   a deletion is an event of the post's stream, replayed on resume). A deletion removes the
//!   comment and writes its tombstone in one transaction.
//! - `moderation`: record key (`moderation::Record::key`) → MessagePack of the winning
//!   [`Record`] (last writer wins, decided inside the write transaction).
//! - `moderation_log`: `updated_at_ms (8 bytes BE) key` → the record as written, so "what
//!   changed since t" is one range scan; entries older than 31 days are dropped on each write
//!   (a node re-reads the last seconds of it, never more than a day).
//! - `reactions`: `post_id` → the post's totals, six u64 BE in `ReactionKind::ALL` order
//!   (CONTRACT §11); a second's counts are added in one transaction.
//! - `meta`: `wal_checkpoint` → the last log record the durable state covers; `wal_tail` →
//!   where the log's next record starts (recovery reads from there).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use livecomments_shared::moderation::Record;
use livecomments_shared::{Comment, CommentId, Counts, PostId, Tombstone, time::now_millis, wire};
use parking_lot::{Mutex, MutexGuard, RwLock};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};

use crate::pending::{FLUSH_BYTES, FLUSH_EVERY, Layer, Pending, Row, merge};
use crate::wal::{self, Logged, Wal};

use super::{
    Doing, IDEMPOTENCY_TTL_MS, Inserted, NewComment, SetupError, Store, StoreError, StoreResult,
};

const COMMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("comments");
const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");
const DELETIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("deletions");
const MODERATION: TableDefinition<&[u8], &[u8]> = TableDefinition::new("moderation");
const MODERATION_LOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("moderation_log");
const REACTIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("reactions");
/// `wal_checkpoint` → the sequence number of the last log record a durable commit covers.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const WAL_CHECKPOINT: &str = "wal_checkpoint";
/// `wal_tail` → where in the log the record after the checkpoint starts (or 0, after a wrap).
const WAL_TAIL: &str = "wal_tail";
/// How long `moderation_log` keeps an entry: readers ask for the last seconds, a fresh node
/// reads `moderation` instead; 31 days bounds the table by a month of moderation changes.
const MODERATION_LOG_KEEP_MS: i64 = 31 * 24 * 3600 * 1000;

pub struct EmbeddedStore {
    db: Arc<Db>,
}

/// The B-tree, its write-ahead log (`wal`) and what the log holds that the B-tree does not
/// yet (`pending`). Locks, always taken in this order: `applying`, `wal`, `pending`.
struct Db {
    db: Database,
    /// Held from a batch's append until the batch is in `pending`, so that a checkpoint's
    /// mark (taken with it) and its freeze of `pending` see the same batches.
    wal: Mutex<Wal>,
    pending: RwLock<Pending>,
    /// One apply of `pending` into redb at a time (the flusher's, a durable write's).
    applying: Mutex<()>,
    /// The flusher thread, woken early when `pending` grows past `FLUSH_BYTES`.
    flusher: OnceLock<std::thread::Thread>,
}

/// Which end of a post's comments a page starts from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Newest,
    Oldest,
}

/// A durable write transaction: every batch logged up to `mark` applied first; its commit is
/// a checkpoint of the log (which is not held meanwhile: batches go on being logged).
struct Durable<'a> {
    txn: WriteTransaction,
    mark: wal::Mark,
    frozen: Arc<Layer>,
    _applying: MutexGuard<'a, ()>,
}

impl std::ops::Deref for Durable<'_> {
    type Target = WriteTransaction;
    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

impl Db {
    /// A read snapshot and, taken with it, what `pending` holds under `lo..hi` of comments
    /// (see `pending`: together, so that a flush in between hides nothing from both).
    fn read_comments(&self, lo: &[u8], hi: &[u8]) -> StoreResult<(ReadTransaction, Vec<Row>)> {
        let p = self.pending.read();
        let txn = self.db.begin_read().map_err(unavailable)?;
        Ok((txn, p.comments_in(lo, hi)))
    }

    /// At most `limit` comments with keys in `lo..hi`, newest or oldest first: redb's and
    /// `pending`'s merged.
    fn comments_between(
        &self,
        lo: &[u8],
        hi: &[u8],
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        let (txn, pending) = self.read_comments(lo, hi)?;
        let t = txn.open_table(COMMENTS).map_err(unavailable)?;
        let range = t.range(lo..hi).map_err(unavailable)?;
        let range: Box<dyn Iterator<Item = _>> = match order {
            Order::Newest => Box::new(range.rev()),
            Order::Oldest => Box::new(range),
        };
        let mut rows = Vec::with_capacity(limit.min(128));
        for row in range.take(limit) {
            let (k, v) = row.map_err(unavailable)?;
            rows.push((k.value().to_vec(), v.value().to_vec()));
        }
        merge(rows, pending, order == Order::Newest, limit)
            .iter()
            .map(|v| decode_comment(v))
            .collect()
    }

    /// One key of a hot table: `pending`'s value, else redb's (same rule as `read_comments`).
    fn read_one(&self, table: wal::Table, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let p = self.pending.read();
        if let Some(v) = p.get(table, key) {
            return Ok(Some(v));
        }
        let txn = self.db.begin_read().map_err(unavailable)?;
        drop(p);
        let def = match table {
            wal::Table::Comments => COMMENTS,
            wal::Table::Idempotency => IDEMPOTENCY,
        };
        let t = txn.open_table(def).map_err(unavailable)?;
        Ok(t.get(key).map_err(unavailable)?.map(|v| v.value().to_vec()))
    }

    fn begin_read(&self) -> Result<ReadTransaction, redb::TransactionError> {
        self.db.begin_read()
    }

    /// Begins a durable write: every write but a comment batch is one, and so a checkpoint
    /// of the log. What `pending` holds is applied first, so the write sees (and may delete)
    /// every acknowledged comment, and the checkpoint covers every logged batch.
    fn begin_durable(&self) -> StoreResult<Durable<'_>> {
        let applying = self.applying.lock();
        let (mark, frozen) = {
            let wal = self.wal.lock();
            (wal.mark(), self.pending.write().freeze())
        };
        let txn = self.db.begin_write().map_err(unavailable)?;
        apply(&txn, &frozen)?;
        Ok(Durable {
            txn,
            mark,
            frozen,
            _applying: applying,
        })
    }

    /// Commits durably (fsync'd before it returns) with the log's checkpoint in it, which
    /// frees the log up to its mark.
    fn commit_durable(&self, d: Durable<'_>) -> StoreResult<()> {
        let Durable {
            txn,
            mark,
            frozen,
            _applying,
        } = d;
        checkpoint(txn, mark)?;
        self.wal.lock().checkpointed(mark);
        self.pending.write().thaw(&frozen);
        Ok(())
    }

    fn checkpoint_now(&self) -> StoreResult<()> {
        let d = self.begin_durable()?;
        self.commit_durable(d)
    }

    /// Applies what `pending` holds to redb without a sync (the log has it): the flusher's
    /// work between checkpoints.
    fn flush(&self) -> StoreResult<()> {
        let _applying = self.applying.lock();
        let frozen = self.pending.write().freeze();
        if frozen.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(unavailable)?;
        apply(&txn, &frozen)?;
        txn.set_durability(Durability::None).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        self.pending.write().thaw(&frozen);
        Ok(())
    }
}

/// Writes a frozen layer's puts in `txn`.
fn apply(txn: &WriteTransaction, layer: &Layer) -> StoreResult<()> {
    if layer.is_empty() {
        return Ok(());
    }
    let mut comments = txn.open_table(COMMENTS).map_err(unavailable)?;
    for (k, v) in &layer.comments {
        comments
            .insert(k.as_slice(), v.as_slice())
            .map_err(unavailable)?;
    }
    let mut idem = txn.open_table(IDEMPOTENCY).map_err(unavailable)?;
    for (k, v) in &layer.idempotency {
        idem.insert(k.as_slice(), v.as_slice())
            .map_err(unavailable)?;
    }
    Ok(())
}

/// The flusher: applies `pending` every `FLUSH_EVERY` (or when woken), and makes the
/// checkpoint when the log says one is due. Ends when the store is dropped.
fn flusher(db: std::sync::Weak<Db>) {
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        let Some(db) = db.upgrade() else {
            return;
        };
        let due = db.wal.lock().checkpoint_due();
        // Applied first without the log's lock, so the checkpoint, which holds it (and so
        // holds up the writer), applies only what came during this flush.
        let res = db
            .flush()
            .and_then(|()| if due { db.checkpoint_now() } else { Ok(()) });
        if let Err(e) = res {
            // Still in `pending` (read from there) and in the log: the next pass retries.
            tracing::warn!(error = %e, checkpoint = due, "applying the write-ahead log to redb");
        }
    }
}

/// Stores `mark` as the log's checkpoint in `txn` and commits it durably.
fn checkpoint(txn: WriteTransaction, mark: wal::Mark) -> StoreResult<()> {
    {
        let mut m = txn.open_table(META).map_err(unavailable)?;
        m.insert(WAL_CHECKPOINT, mark.seq).map_err(unavailable)?;
        m.insert(WAL_TAIL, mark.tail).map_err(unavailable)?;
    }
    txn.commit().map_err(unavailable)
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::unavailable(e)
}

fn comment_key(post_id: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(post_id.len() + 1 + id.len());
    k.extend_from_slice(post_id.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// First key after every key of the post: `post_id 0x01`.
fn post_end(post_id: &str) -> Vec<u8> {
    let mut k = post_id.as_bytes().to_vec();
    k.push(1);
    k
}

fn idem_key(user: &str, post: &str, key: &str) -> Vec<u8> {
    [user.as_bytes(), &[0], post.as_bytes(), &[0], key.as_bytes()].concat()
}

/// `post 0x00 after 0x00`: the smallest key greater than every key up to `after`.
fn key_after(post_id: &str, after: Option<&CommentId>) -> Vec<u8> {
    match after {
        Some(id) => {
            let mut k = comment_key(post_id, id);
            k.push(0);
            k
        }
        None => comment_key(post_id, ""),
    }
}

fn decode_comment(bytes: &[u8]) -> StoreResult<Comment> {
    wire::decode(bytes).map_err(|e| StoreError::failed(format!("corrupt comment record: {e}")))
}

impl EmbeddedStore {
    /// Opens (or creates) `<dir>/comments.redb`.
    /// `cache_mb` bounds redb's page cache (its default, 1 GiB, makes RSS follow the data).
    pub fn open(dir: &Path, cache_mb: usize) -> Result<Self, SetupError> {
        std::fs::create_dir_all(dir).doing(|| format!("creating data dir {}", dir.display()))?;
        let path = dir.join("comments.redb");
        let db = redb::Builder::new()
            .set_cache_size(cache_mb.max(1) * 1024 * 1024)
            .create(&path)
            .doing(|| format!("opening {}", path.display()))?;
        let tables = || -> Result<(u64, u64), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(COMMENTS)?;
            txn.open_table(IDEMPOTENCY)?;
            txn.open_table(DELETIONS)?;
            txn.open_table(MODERATION)?;
            txn.open_table(MODERATION_LOG)?;
            txn.open_table(REACTIONS)?;
            txn.open_table(META)?;
            txn.commit()?;
            let read = db.begin_read()?;
            let meta = read.open_table(META)?;
            Ok((
                meta.get(WAL_CHECKPOINT)?.map_or(0, |v| v.value()),
                meta.get(WAL_TAIL)?.map_or(0, |v| v.value()),
            ))
        };
        let (checkpoint, tail) =
            tables().doing(|| format!("creating the tables in {}", path.display()))?;
        let wal_path = dir.join("comments.wal");
        let (wal, replay) = Wal::open(&wal_path, checkpoint, tail)
            .doing(|| format!("opening {}", wal_path.display()))?;
        let db = Db {
            db,
            wal: Mutex::new(wal),
            pending: RwLock::new(Pending::default()),
            applying: Mutex::new(()),
            flusher: OnceLock::new(),
        };
        if !replay.is_empty() {
            let n = replay.len();
            let apply = || -> StoreResult<()> {
                let txn = db.begin_durable()?;
                {
                    let mut comments = txn.open_table(COMMENTS).map_err(unavailable)?;
                    let mut idem = txn.open_table(IDEMPOTENCY).map_err(unavailable)?;
                    for put in replay.iter().flatten() {
                        let table = match put.table {
                            wal::Table::Comments => &mut comments,
                            wal::Table::Idempotency => &mut idem,
                        };
                        table
                            .insert(put.key.as_slice(), put.value.as_slice())
                            .map_err(unavailable)?;
                    }
                }
                db.commit_durable(txn)
            };
            apply().doing(|| format!("replaying {}", wal_path.display()))?;
            tracing::info!(batches = n, "replayed the write-ahead log");
        }
        let db = Arc::new(db);
        let weak = Arc::downgrade(&db);
        let thread = std::thread::Builder::new()
            .name("redb-flusher".into())
            .spawn(move || flusher(weak))
            .doing(|| "starting the write-ahead log's flusher".to_string())?;
        let _ = db.flusher.set(thread.thread().clone());
        Ok(EmbeddedStore { db })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(unavailable)?
    }

    /// Drops idempotency records older than 24 h. Bounded by what 24 h of keyed posts wrote.
    pub async fn purge_expired_keys(&self) -> StoreResult<usize> {
        self.blocking(|db| {
            let cutoff = now_millis() - IDEMPOTENCY_TTL_MS;
            let txn = db.begin_durable()?;
            let removed;
            {
                let mut t = txn.open_table(IDEMPOTENCY).map_err(unavailable)?;
                let before = t.len().map_err(unavailable)?;
                t.retain(|_, v| created_ms(v) >= cutoff)
                    .map_err(unavailable)?;
                removed = (before - t.len().map_err(unavailable)?) as usize;
            }
            db.commit_durable(txn)?;
            Ok(removed)
        })
        .await
    }
}

fn created_ms(v: &[u8]) -> i64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .unwrap_or(0)
}

fn decode_record(bytes: &[u8]) -> StoreResult<Record> {
    wire::decode(bytes).map_err(|e| StoreError::failed(format!("corrupt moderation record: {e}")))
}

fn log_key(at_ms: i64, key: &str) -> Vec<u8> {
    [&at_ms.max(0).to_be_bytes()[..], key.as_bytes()].concat()
}

fn put_records(db: &Db, records: &[Record]) -> StoreResult<()> {
    let txn = db.begin_durable()?;
    {
        let mut state = txn.open_table(MODERATION).map_err(unavailable)?;
        let mut log = txn.open_table(MODERATION_LOG).map_err(unavailable)?;
        for r in records {
            let key = r.key();
            let newer = match state.get(key.as_bytes()).map_err(unavailable)? {
                Some(v) => r.supersedes(&decode_record(v.value())?),
                None => true,
            };
            if !newer {
                continue;
            }
            let bytes = wire::encode(r).map_err(unavailable)?;
            state
                .insert(key.as_bytes(), bytes.as_slice())
                .map_err(unavailable)?;
            log.insert(log_key(r.updated_at_ms, &key).as_slice(), bytes.as_slice())
                .map_err(unavailable)?;
        }
        let cutoff = log_key(now_millis() - MODERATION_LOG_KEEP_MS, "");
        log.retain_in(..cutoff.as_slice(), |_, _| false)
            .map_err(unavailable)?;
    }
    db.commit_durable(txn)
}

fn decode_counts(bytes: &[u8]) -> Counts {
    let mut c = Counts::default();
    for (slot, chunk) in c.0.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *slot = u64::from_be_bytes(b);
    }
    c
}

fn encode_counts(c: &Counts) -> [u8; 48] {
    let mut out = [0u8; 48];
    for (chunk, n) in out.chunks_exact_mut(8).zip(c.0) {
        chunk.copy_from_slice(&n.to_be_bytes());
    }
    out
}

fn add_counts(db: &Db, counts: &[(PostId, Counts)]) -> StoreResult<()> {
    let txn = db.begin_durable()?;
    {
        let mut t = txn.open_table(REACTIONS).map_err(unavailable)?;
        for (post, c) in counts {
            let mut total = match t.get(post.as_bytes()).map_err(unavailable)? {
                Some(v) => decode_counts(v.value()),
                None => Counts::default(),
            };
            total.merge(c);
            t.insert(post.as_bytes(), encode_counts(&total).as_slice())
                .map_err(unavailable)?;
        }
    }
    db.commit_durable(txn)
}

fn write_batch(db: &Db, batch: Vec<NewComment>) -> StoreResult<Vec<Inserted>> {
    let now = now_millis();
    let deadline = batch.iter().filter_map(|i| i.visible_by_ms).min();
    let mut out = Vec::with_capacity(batch.len());
    let mut rec = wal::Record::new();
    let mut puts = Vec::with_capacity(batch.len());
    // This batch's own keys first: a key twice in one batch is the first one's comment.
    let mut keys: std::collections::HashMap<Vec<u8>, Vec<u8>> = std::collections::HashMap::new();
    let mut wal = db.wal.lock();
    for item in batch {
        let c = item.comment;
        let encoded = wire::encode(&c).map_err(unavailable)?;
        if let Some(key) = &item.idempotency_key {
            let k = idem_key(&c.user_id, &c.post_id, key);
            let known = match keys.get(&k) {
                Some(v) => Some(v.clone()),
                None => db.read_one(wal::Table::Idempotency, &k)?,
            };
            let existing = match known {
                Some(v) if created_ms(&v) >= now - IDEMPOTENCY_TTL_MS => {
                    Some(decode_comment(&v[8..])?)
                }
                _ => None,
            };
            if let Some(prev) = existing {
                out.push(Inserted::Existing(prev));
                continue;
            }
            let mut v = Vec::with_capacity(8 + encoded.len());
            v.extend_from_slice(&now.to_be_bytes());
            v.extend_from_slice(&encoded);
            rec.put(wal::Table::Idempotency, &k, &v);
            keys.insert(k.clone(), v.clone());
            puts.push((wal::Table::Idempotency, k, v));
        }
        let key = comment_key(&c.post_id, &c.id);
        rec.put(wal::Table::Comments, &key, &encoded);
        puts.push((wal::Table::Comments, key, encoded));
        out.push(Inserted::Created(c));
    }
    let in_time = deadline.is_none_or(|t| now_millis() <= t);
    // A process frozen since the stamp must not make old ids appear now: give up instead
    // (nothing was logged, nothing is stored).
    if !in_time {
        return Err(StoreError::failed(
            "batch not committed in time after it was stamped",
        ));
    }
    if wal.log(&mut rec).map_err(unavailable)? == Logged::Full {
        // The flusher has not checkpointed for a whole log's worth: do it here, then log.
        drop(wal);
        db.checkpoint_now()?;
        wal = db.wal.lock();
        if wal.log(&mut rec).map_err(unavailable)? == Logged::Full {
            // Bigger than the whole log (512 comments of 2,000 four-byte characters with
            // their keys are ~8 MiB): durable in redb itself instead, as before the log.
            drop(wal);
            let d = db.begin_durable()?;
            let mut layer = Layer::default();
            for (table, key, value) in puts {
                layer.put(table, key, value);
            }
            apply(&d, &layer)?;
            db.commit_durable(d)?;
            return Ok(out);
        }
    }
    // Synced in the log: visible now (before the log is released, see `Db::wal`).
    let mut p = db.pending.write();
    p.put_all(puts);
    let wake = p.active_bytes() >= FLUSH_BYTES || wal.checkpoint_due();
    drop(p);
    drop(wal);
    if wake && let Some(t) = db.flusher.get() {
        t.unpark();
    }
    Ok(out)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn insert_batch(&self, batch: Vec<NewComment>) -> Vec<StoreResult<Inserted>> {
        let n = batch.len();
        match self.blocking(move |db| write_batch(db, batch)).await {
            Ok(v) => v.into_iter().map(Ok).collect(),
            // One transaction: it all failed, nothing was stored.
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    async fn newest(
        &self,
        post_id: &PostId,
        before: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        let lo = comment_key(post_id, "");
        let hi = match before {
            Some(id) => comment_key(post_id, id),
            None => post_end(post_id),
        };
        self.blocking(move |db| db.comments_between(&lo, &hi, Order::Newest, limit))
            .await
    }

    async fn after(
        &self,
        post_id: &PostId,
        after: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        let lo = key_after(post_id, after);
        let hi = post_end(post_id);
        self.blocking(move |db| db.comments_between(&lo, &hi, Order::Oldest, limit))
            .await
    }

    async fn deletions_after(
        &self,
        post_id: &PostId,
        after: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Tombstone>> {
        let lo = key_after(post_id, after);
        let hi = post_end(post_id);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = txn.open_table(DELETIONS).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t
                .range(lo.as_slice()..hi.as_slice())
                .map_err(unavailable)?
                .take(limit)
            {
                let (_, v) = row.map_err(unavailable)?;
                out.push(
                    wire::decode(v.value())
                        .map_err(|e| StoreError::failed(format!("corrupt deletion record: {e}")))?,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn get(&self, post_id: &PostId, id: &CommentId) -> StoreResult<Option<Comment>> {
        let k = comment_key(post_id, id);
        self.blocking(move |db| {
            db.read_one(wal::Table::Comments, &k)?
                .map(|v| decode_comment(&v))
                .transpose()
        })
        .await
    }

    async fn keyed(
        &self,
        user_id: &str,
        post_id: &PostId,
        key: &str,
    ) -> StoreResult<Option<Comment>> {
        let k = idem_key(user_id, post_id, key);
        self.blocking(move |db| match db.read_one(wal::Table::Idempotency, &k)? {
            Some(v) if created_ms(&v) >= now_millis() - IDEMPOTENCY_TTL_MS => {
                Ok(Some(decode_comment(&v[8..])?))
            }
            _ => Ok(None),
        })
        .await
    }

    async fn record_deletions(&self, batch: Vec<Tombstone>) -> Vec<StoreResult<()>> {
        let n = batch.len();
        let res = self
            .blocking(move |db| {
                let txn = db.begin_durable()?;
                {
                    let mut comments = txn.open_table(COMMENTS).map_err(unavailable)?;
                    let mut deletions = txn.open_table(DELETIONS).map_err(unavailable)?;
                    for t in &batch {
                        comments
                            .remove(comment_key(&t.post_id, &t.comment_id).as_slice())
                            .map_err(unavailable)?;
                        let v = wire::encode(t).map_err(unavailable)?;
                        deletions
                            .insert(comment_key(&t.post_id, &t.id).as_slice(), v.as_slice())
                            .map_err(unavailable)?;
                    }
                }
                db.commit_durable(txn)
            })
            .await;
        // One transaction: all or nothing.
        (0..n).map(|_| res.clone()).collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.blocking(|db| db.begin_read().map(|_| ()).map_err(unavailable))
            .await
    }

    async fn put_moderation(&self, records: &[Record]) -> StoreResult<()> {
        let records = records.to_vec();
        self.blocking(move |db| put_records(db, &records)).await
    }

    async fn moderation(&self, limit: usize) -> StoreResult<Vec<Record>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = txn.open_table(MODERATION).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(unavailable)?.take(limit) {
                let (_, v) = row.map_err(unavailable)?;
                out.push(decode_record(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn add_reactions(&self, counts: &[(PostId, Counts)]) -> StoreResult<()> {
        let counts = counts.to_vec();
        self.blocking(move |db| add_counts(db, &counts)).await
    }

    async fn reactions(&self, post_id: &PostId) -> StoreResult<Counts> {
        let post = post_id.clone();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = txn.open_table(REACTIONS).map_err(unavailable)?;
            Ok(t.get(post.as_bytes())
                .map_err(unavailable)?
                .map_or_else(Counts::default, |v| decode_counts(v.value())))
        })
        .await
    }

    async fn moderation_since(&self, after_ms: i64, limit: usize) -> StoreResult<Vec<Record>> {
        let lo = log_key(after_ms.saturating_add(1), "");
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = txn.open_table(MODERATION_LOG).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.range(lo.as_slice()..).map_err(unavailable)?.take(limit) {
                let (_, v) = row.map_err(unavailable)?;
                out.push(decode_record(v.value())?);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A batch whose log record would not fit in the whole log is stored durably all the
    /// same (and comes back after a reopen).
    #[tokio::test]
    async fn a_batch_bigger_than_the_log_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), 16).unwrap();
        let text = "\u{1F600}".repeat(2000); // 8,000 bytes
        let batch: Vec<NewComment> = (0..200u128)
            .map(|n| NewComment {
                comment: Comment {
                    id: ulid::Ulid::from_parts(1_700_000_000_000, n)
                        .to_string()
                        .into(),
                    post_id: "big".into(),
                    user_id: format!("u{n}"),
                    text: text.clone(),
                    timestamp: livecomments_shared::time::format_millis(1_700_000_000_000),
                    region: "eu".into(),
                    metadata: BTreeMap::new(),
                },
                idempotency_key: Some(format!("k{n}")),
                visible_by_ms: None,
            })
            .collect();
        for r in store.insert_batch(batch).await {
            assert!(matches!(r.unwrap(), Inserted::Created(_)));
        }
        drop(store);
        let store = EmbeddedStore::open(dir.path(), 16).unwrap();
        let back = store.after(&"big".into(), None, 1000).await.unwrap();
        assert_eq!(back.len(), 200);
        let keyed = store.keyed("u7", &"big".into(), "k7").await.unwrap();
        assert_eq!(keyed.map(|c| c.user_id), Some("u7".to_string()));
    }
}
