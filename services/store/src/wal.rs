//! The embedded store's write-ahead log: what makes a comment durable before its 201.
//!
//! Why it exists: a redb commit with `Durability::Immediate` syncs the B-tree's pages and its
//! header, 1–4 ms on this box's disk, and the ingest writer waits for it on every batch; an
//! `fdatasync` after overwriting part of a preallocated file costs 0.10 ms (p50; 0.32 ms p99,
//! against 0.28 / 4.3 ms for an append that grows the file — measured with a 300-write loop on
//! this VM). So a batch is written here first, as the exact table writes it makes, synced, and
//! only then committed to redb without a sync (`Durability::None`: visible to readers at once,
//! persisted by the next durable commit). A durable commit (a checkpoint) runs every second or
//! when the log holds `CHECKPOINT_BYTES`, and every other kind of write is one; it stores the sequence
//! number of the last logged batch in redb, and the log starts over from its first byte.
//!
//! On open, redb is at its last durable commit; the log's records after that checkpoint are
//! written again (the same puts, so a record applied twice changes nothing) and
//! committed durably before the store serves anything.
//!
//! A record: `magic u32 | len u32 | seq u64 | crc32 u32` (little endian, 20 bytes), then `len`
//! bytes of operations. Recovery reads from offset 0 while each record has the magic, the next
//! sequence number and a matching checksum: a torn write fails the checksum, and the records
//! of before the last rewind carry smaller sequence numbers than the ones written over them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

const MAGIC: u32 = 0x4c43_5731; // "LCW1"
const HEADER: usize = 20;
/// The log's size, written with zeros when it is created so that no sync has to update the
/// file's size or extents: twice what a checkpoint lets it hold.
pub(crate) const SIZE: u64 = 2 * CHECKPOINT_BYTES;
/// A checkpoint comes once the log holds this much (~1,300 comments with their idempotency
/// records; ~35 checkpoints a second at 48,000 comments/s). Its cost grows with the pages the
/// batches since the last one dirtied; measured with wrk -t1 -c64 against a standalone
/// (bench/results/2026-12-03-wal): 8 MiB: 43.6k POSTs/s, p99 13.0 ms; 2 MiB: 52.1k, 6.8 ms;
/// 1 MiB: 47.2k, 5.5 ms; 512 KiB: 48.7k, 4.8 ms; 256 KiB: 44.2k, 4.3 ms.
const CHECKPOINT_BYTES: u64 = 512 * 1024;
/// At most this long between durable redb commits: bounds what a restart replays.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// One operation's key or value is bounded by a comment's size (text ≤ 2,000 chars, metadata);
/// anything above 1 MiB in a log is corruption.
const MAX_FIELD: usize = 1024 * 1024;

/// The tables a log record may write (the hot ones: comments and what a comment writes with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Table {
    Comments = 1,
    Idempotency = 2,
}

impl Table {
    fn from_byte(b: u8) -> Option<Table> {
        match b {
            1 => Some(Table::Comments),
            2 => Some(Table::Idempotency),
            _ => None,
        }
    }
}

/// One table write, as recovered from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Put {
    pub table: Table,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// The writes of one batch, encoded as they are added (after room for the header).
pub(crate) struct Record {
    buf: Vec<u8>,
}

impl Record {
    pub fn new() -> Record {
        Record {
            buf: vec![0; HEADER],
        }
    }

    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.buf.push(table as u8);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    fn is_empty(&self) -> bool {
        self.buf.len() == HEADER
    }

    fn seal(&mut self, seq: u64) {
        let len = (self.buf.len() - HEADER) as u32;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq.to_le_bytes());
        crc.update(&self.buf[HEADER..]);
        self.buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&len.to_le_bytes());
        self.buf[8..16].copy_from_slice(&seq.to_le_bytes());
        self.buf[16..20].copy_from_slice(&crc.finalize().to_le_bytes());
    }
}

/// The open log. The store holds it behind a lock taken only inside redb write transactions,
/// so its appends follow the transactions' order.
pub(crate) struct Wal {
    file: File,
    offset: u64,
    /// The sequence number of the last record appended (or of the checkpoint, if none since).
    last_seq: u64,
    last_durable: Instant,
}

/// What to do with the transaction being committed.
pub(crate) enum Commit {
    /// The record is synced in the log: commit without a sync.
    Logged,
    /// Commit durably, with this checkpoint stored in it (then call [`Wal::checkpointed`]).
    Durable(u64),
}

impl Wal {
    /// Opens (or creates) the log and reads the records after `checkpoint`, in order.
    pub fn open(path: &Path, checkpoint: u64) -> io::Result<(Wal, Vec<Vec<Put>>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() < SIZE {
            preallocate(&file)?;
        }
        let mut replay = Vec::new();
        let mut offset = 0u64;
        let mut seq = checkpoint;
        while let Some((puts, len)) = read_record(&file, offset, seq + 1)? {
            replay.push(puts);
            offset += len;
            seq += 1;
        }
        let wal = Wal {
            file,
            offset: 0,
            last_seq: seq,
            last_durable: Instant::now(),
        };
        Ok((wal, replay))
    }

    /// The sequence number a checkpoint made now would store.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends and syncs the batch's record, unless a checkpoint is due or it does not fit:
    /// then the caller commits durably instead (and nothing is appended). An empty record
    /// (a batch of idempotent replays only) needs neither.
    pub fn log(&mut self, rec: &mut Record) -> io::Result<Commit> {
        let len = rec.buf.len() as u64;
        let due = self.last_durable.elapsed() >= CHECKPOINT_EVERY;
        if due || self.offset + len > CHECKPOINT_BYTES {
            return Ok(Commit::Durable(self.last_seq));
        }
        if rec.is_empty() {
            return Ok(Commit::Logged);
        }
        let seq = self.last_seq + 1;
        rec.seal(seq);
        if let Err(e) = self
            .file
            .write_all_at(&rec.buf, self.offset)
            .and_then(|()| self.file.sync_data())
        {
            // Whether the record reached the disk is unknown: take its sequence number, so
            // the next checkpoint (forced now) covers it, and a restart before that replays
            // at most a batch that was answered 503 (as a CQL write that timed out may land).
            self.last_seq = seq;
            self.last_durable = Instant::now() - CHECKPOINT_EVERY;
            return Err(e);
        }
        self.offset += len;
        self.last_seq = seq;
        Ok(Commit::Logged)
    }

    /// A durable commit storing `seq` as its checkpoint succeeded: every record up to it is in
    /// redb for good, so the log starts over.
    pub fn checkpointed(&mut self, seq: u64) {
        if seq == self.last_seq {
            self.offset = 0;
        }
        self.last_durable = Instant::now();
    }
}

fn preallocate(file: &File) -> io::Result<()> {
    let zeros = vec![0u8; 1024 * 1024];
    let mut at = 0;
    while at < SIZE {
        file.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    file.sync_all()
}

/// The record at `offset` if it is whole and has sequence number `seq`; its puts and length.
fn read_record(file: &File, offset: u64, seq: u64) -> io::Result<Option<(Vec<Put>, u64)>> {
    let mut head = [0u8; HEADER];
    if offset + HEADER as u64 > SIZE || !read_exact_at(file, &mut head, offset)? {
        return Ok(None);
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&head[r]);
        u32::from_le_bytes(b)
    };
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&head[8..16]);
    let len = word(4..8) as u64;
    if word(0..4) != MAGIC || u64::from_le_bytes(seq_bytes) != seq {
        return Ok(None);
    }
    if offset + HEADER as u64 + len > SIZE {
        return Ok(None);
    }
    let mut body = vec![0u8; len as usize];
    if !read_exact_at(file, &mut body, offset + HEADER as u64)? {
        return Ok(None);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq_bytes);
    crc.update(&body);
    if crc.finalize() != word(16..20) {
        return Ok(None);
    }
    Ok(decode(&body).map(|puts| (puts, HEADER as u64 + len)))
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The puts of a record body; `None` if it does not parse (then it is not a record of ours).
fn decode(mut body: &[u8]) -> Option<Vec<Put>> {
    fn field<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (len, rest) = body.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > MAX_FIELD || rest.len() < len {
            return None;
        }
        let (f, rest) = rest.split_at(len);
        *body = rest;
        Some(f)
    }
    let mut puts = Vec::new();
    while let Some((&table, rest)) = body.split_first() {
        body = rest;
        let table = Table::from_byte(table)?;
        let key = field(&mut body)?.to_vec();
        let value = field(&mut body)?.to_vec();
        puts.push(Put { table, key, value });
    }
    Some(puts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(puts: &[(Table, &[u8], &[u8])]) -> Record {
        let mut r = Record::new();
        for (t, k, v) in puts {
            r.put(*t, k, v);
        }
        r
    }

    #[test]
    fn records_after_the_checkpoint_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, replay) = Wal::open(&path, 7).unwrap();
        assert!(replay.is_empty());
        for i in 0..3u8 {
            let mut r = record(&[
                (Table::Comments, &[i], b"v"),
                (Table::Idempotency, b"k", &[i]),
            ]);
            assert!(matches!(wal.log(&mut r).unwrap(), Commit::Logged));
        }
        assert_eq!(wal.last_seq(), 10);
        drop(wal);
        let (wal, replay) = Wal::open(&path, 7).unwrap();
        assert_eq!(replay.len(), 3);
        assert_eq!(replay[2][0].key, vec![2]);
        assert_eq!(replay[1][1].table, Table::Idempotency);
        assert_eq!(wal.last_seq(), 10);
        // A checkpoint that covers them: nothing to replay.
        let (_, replay) = Wal::open(&path, 10).unwrap();
        assert!(replay.is_empty());
    }

    #[test]
    fn after_a_rewind_the_older_records_behind_the_new_ones_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 0).unwrap();
        for i in 0..4u8 {
            wal.log(&mut record(&[(Table::Comments, &[i], b"old")]))
                .unwrap();
        }
        wal.checkpointed(4);
        // Longer than the old first record: the new one ends inside the old second one.
        wal.log(&mut record(&[(Table::Comments, b"newer-key", b"new")]))
            .unwrap();
        drop(wal);
        let (_, replay) = Wal::open(&path, 4).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0][0].value, b"new".to_vec());
    }

    #[test]
    fn a_torn_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 0).unwrap();
        wal.log(&mut record(&[(Table::Comments, b"a", b"1")]))
            .unwrap();
        let second_at = wal.offset;
        wal.log(&mut record(&[(Table::Comments, b"b", b"2")]))
            .unwrap();
        drop(wal);
        // The second record's last byte never reached the disk.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let end = second_at + HEADER as u64 + (1 + 4 + 1 + 4 + 1) - 1;
        f.write_all_at(&[0xff], end).unwrap();
        let (wal, replay) = Wal::open(&path, 0).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(wal.last_seq(), 1);
    }

    #[test]
    fn garbage_is_not_a_record() {
        assert_eq!(decode(&[9, 0, 0, 0, 0]), None, "unknown table");
        assert_eq!(
            decode(&[1, 255, 255, 255, 255]),
            None,
            "key longer than the body"
        );
        assert_eq!(decode(&[]), Some(vec![]));
    }
}
