//! What the write-ahead log holds and redb does not yet: the comment batches of the last few
//! milliseconds, in memory, merged into every read.
//!
//! Why it exists: committing each batch to redb, even without a sync, cost ~14 % of the
//! server's CPU under wrk (a B-tree commit per batch of ~30 comments: page allocation,
//! checksums, the page cache; `perf`, 2026-12-04, docs/BENCHMARKS.md). So a batch is synced
//! in the log and put here; the POST is answered; a flusher thread applies what accumulated
//! into redb in one transaction every [`FLUSH_EVERY`] (hundreds of comments per commit),
//! and the durable checkpoints apply it too. This is the "B-tree updated behind the log"
//! layout of an LSM's memtable, with redb as the only level.
//!
//! Two layers: `active` takes new batches; a flush first *freezes* it (moves it into
//! `frozen`, shared by an `Arc` so the apply runs without the lock), commits, then drops the
//! frozen layer. A failed commit leaves it frozen, still read, and the next flush takes it
//! again with whatever came since. A reader takes this lock, opens its redb snapshot and
//! copies what it needs from both layers before letting go: a flush's commit either landed
//! before the snapshot (then the entry is in redb, perhaps here too: same bytes) or after it
//! (then the frozen layer cannot have been dropped yet: that needs this lock).
//!
//! Bounded: every flush empties it, and the log it mirrors has a fixed size (`wal::SIZE`):
//! when the log is full the writer checkpoints before it appends, so this never holds more
//! than the log does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::wal::Table;

/// How often the flusher applies what accumulated (~450 comments a commit at 45,000/s,
/// against ~30 when every batch committed).
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// The writer wakes the flusher early past this much (keeps the commit, and so what a
/// durable checkpoint has to apply on top of its sync, small).
pub(crate) const FLUSH_BYTES: usize = 256 * 1024;

/// A key and its value, as bytes (the hot tables' rows).
pub(crate) type Row = (Vec<u8>, Vec<u8>);

/// Table writes not yet in redb, by table, ordered by key as redb's tables are.
#[derive(Default)]
pub(crate) struct Layer {
    pub comments: BTreeMap<Vec<u8>, Vec<u8>>,
    pub idempotency: BTreeMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl Layer {
    pub fn is_empty(&self) -> bool {
        self.comments.is_empty() && self.idempotency.is_empty()
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        let t = match table {
            Table::Comments => &mut self.comments,
            Table::Idempotency => &mut self.idempotency,
        };
        t.insert(key, value);
    }

    fn absorb(&mut self, newer: Layer) {
        self.bytes += newer.bytes;
        self.comments.extend(newer.comments);
        self.idempotency.extend(newer.idempotency);
    }

    fn table(&self, table: Table) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        match table {
            Table::Comments => &self.comments,
            Table::Idempotency => &self.idempotency,
        }
    }
}

#[derive(Default)]
pub(crate) struct Pending {
    active: Layer,
    frozen: Arc<Layer>,
}

impl Pending {
    /// A logged batch's writes.
    pub fn put_all(&mut self, puts: Vec<(Table, Vec<u8>, Vec<u8>)>) {
        for (table, key, value) in puts {
            self.active.put(table, key, value);
        }
    }

    /// What the active layer holds, in bytes of keys and values.
    pub fn active_bytes(&self) -> usize {
        self.active.bytes
    }

    /// Moves the active layer behind the frozen one (with it, if a flush of it failed) and
    /// returns everything frozen, to apply.
    pub fn freeze(&mut self) -> Arc<Layer> {
        let active = std::mem::take(&mut self.active);
        if self.frozen.is_empty() {
            self.frozen = Arc::new(active);
        } else if !active.is_empty() {
            let mut merged = Layer::default();
            let old = std::mem::take(&mut self.frozen);
            let old = Arc::try_unwrap(old).unwrap_or_else(|shared| Layer {
                comments: shared.comments.clone(),
                idempotency: shared.idempotency.clone(),
                bytes: shared.bytes,
            });
            merged.absorb(old);
            merged.absorb(active);
            self.frozen = Arc::new(merged);
        }
        self.frozen.clone()
    }

    /// `flushed` is in redb for good (committed): stop reading it from here.
    pub fn thaw(&mut self, flushed: &Arc<Layer>) {
        if Arc::ptr_eq(&self.frozen, flushed) {
            self.frozen = Arc::new(Layer::default());
        }
    }

    /// The value of `key` if a layer holds it (the active one is newer).
    pub fn get(&self, table: Table, key: &[u8]) -> Option<Vec<u8>> {
        self.active
            .table(table)
            .get(key)
            .or_else(|| self.frozen.table(table).get(key))
            .cloned()
    }

    /// The comments with keys in `lo..hi`, ascending, the active layer's over the frozen one's.
    pub fn comments_in(&self, lo: &[u8], hi: &[u8]) -> Vec<Row> {
        let range = |l: &Layer| {
            l.comments
                .range::<[u8], _>((std::ops::Bound::Included(lo), std::ops::Bound::Excluded(hi)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let mut out = range(&self.frozen);
        out.extend(range(&self.active));
        out.into_iter().collect()
    }
}

/// Merges `redb` (ascending if `descending` is false, else descending, at most `limit`) with
/// `pending` (ascending) into at most `limit` rows in the same order, one row per key.
pub(crate) fn merge(
    redb: Vec<Row>,
    mut pending: Vec<Row>,
    descending: bool,
    limit: usize,
) -> Vec<Vec<u8>> {
    if descending {
        pending.reverse();
    }
    let before = |a: &[u8], b: &[u8]| if descending { a > b } else { a < b };
    let mut out = Vec::with_capacity(limit.min(redb.len() + pending.len()));
    let (mut r, mut p) = (redb.into_iter().peekable(), pending.into_iter().peekable());
    while out.len() < limit {
        let next = match (r.peek(), p.peek()) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                r.next();
                p.next()
            }
            (Some(a), Some(b)) if before(&a.0, &b.0) => r.next(),
            (Some(_), Some(_)) => p.next(),
            (Some(_), None) => r.next(),
            (None, Some(_)) => p.next(),
            (None, None) => None,
        };
        match next {
            Some((_, v)) => out.push(v),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str) -> Row {
        (k.as_bytes().to_vec(), format!("v{k}").into_bytes())
    }

    fn vals(v: Vec<Vec<u8>>) -> Vec<String> {
        v.into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect()
    }

    #[test]
    fn merges_in_order_without_duplicates_up_to_the_limit() {
        let redb = vec![kv("a"), kv("c"), kv("e")];
        let pending = vec![kv("b"), kv("c"), kv("f")];
        assert_eq!(
            vals(merge(redb.clone(), pending.clone(), false, 10)),
            ["va", "vb", "vc", "ve", "vf"]
        );
        assert_eq!(vals(merge(redb, pending, false, 3)), ["va", "vb", "vc"]);
        let desc = vec![kv("e"), kv("c"), kv("a")];
        assert_eq!(
            vals(merge(desc, vec![kv("b"), kv("c"), kv("f")], true, 4)),
            ["vf", "ve", "vc", "vb"]
        );
    }

    #[test]
    fn a_frozen_layer_stays_readable_until_thawed_and_a_failed_flush_is_taken_again() {
        let mut p = Pending::default();
        p.put_all(vec![(Table::Comments, b"p\0a".to_vec(), b"1".to_vec())]);
        let first = p.freeze();
        p.put_all(vec![(Table::Comments, b"p\0b".to_vec(), b"2".to_vec())]);
        assert_eq!(p.comments_in(b"p\0", b"p\x01").len(), 2);
        // The flush of `first` failed: the next freeze holds both.
        let second = p.freeze();
        assert_eq!(second.comments.len(), 2);
        p.thaw(&first); // stale: not the frozen layer any more
        assert_eq!(p.get(Table::Comments, b"p\0a"), Some(b"1".to_vec()));
        p.thaw(&second);
        assert!(p.comments_in(b"p\0", b"p\x01").is_empty());
        assert_eq!(p.get(Table::Comments, b"p\0a"), None);
    }
}
