//! The embedded store's write-ahead log: what makes a comment durable before its 201.
//!
//! Why it exists: a redb commit with `Durability::Immediate` syncs the B-tree's pages and its
//! header, 1–4 ms on this box's disk, and the ingest writer waits for it on every batch; an
//! `fdatasync` after overwriting part of a preallocated file costs 0.10 ms (p50; 0.32 ms p99,
//! against 0.28 / 4.3 ms for an append that grows the file — measured with a 300-write loop on
//! this VM). So a batch is written here first, as the exact table writes it makes, synced, and
//! then kept in memory (`pending`) until the flusher applies it to redb without a sync, every
//! 10 ms. A durable commit (a checkpoint) runs every second or when `CHECKPOINT_BYTES` are
//! logged since the last one (the flusher makes it; the writer only if the log fills up
//! first), and every other kind of write is one; it applies what is pending and stores the
//! sequence number of the last batch it covers and where the next record starts (the tail).
//!
//! The log is a ring: records are appended after the previous one and wrap to the file's
//! start when the next does not fit before its end; a checkpoint frees what lies before its
//! tail. So a checkpoint does not stop the writer while redb syncs (1–4 ms): batches go on
//! being appended after its mark. On open, redb is at its last durable commit; the log's
//! records after that checkpoint are read from the tail (and from offset 0 where the next one
//! is not found: a wrap), written again (the same puts, so a record applied twice changes
//! nothing) and committed durably before the store serves anything.
//!
//! A record: `magic u32 | len u32 | seq u64 | crc32 u32` (little endian, 20 bytes), then `len`
//! bytes of operations. Recovery reads while each record has the magic, the next sequence
//! number and a matching checksum: a torn write fails the checksum, and stale records carry
//! smaller sequence numbers than the one expected (numbers never repeat).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

const MAGIC: u32 = 0x4c43_5731; // "LCW1"
const HEADER: usize = 20;
/// The log's size, written with zeros when it is created so that no sync has to update the
/// file's size or extents: four times what starts a checkpoint, so batches keep coming while
/// one commits.
pub(crate) const SIZE: u64 = 4 * CHECKPOINT_BYTES;
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

/// The open log, a ring: records are appended at `head` and wrap to the start of the file
/// when the next one does not fit before its end; a checkpoint frees everything before the
/// `tail` it stores. Recovery starts at that tail and, where the next record is not found,
/// looks for it at offset 0 (sequence numbers never repeat, so a stale record cannot pass).
/// So a checkpoint need not hold the log while redb syncs: batches go on being appended.
pub(crate) struct Wal {
    file: File,
    /// Where the next record goes.
    head: u64,
    /// Where the oldest record no checkpoint covers starts (at or before it; `head` if none).
    tail: u64,
    /// The sequence number of the last record appended (or of the checkpoint, if none since).
    last_seq: u64,
    /// The last sequence number a durable checkpoint covers.
    covered_seq: u64,
    /// Bytes taken since the log was opened (ends skipped at a wrap included), and how many of
    /// them a checkpoint covers.
    appended: u64,
    covered: u64,
    last_durable: Instant,
    /// A sync failed: checkpoint before anything else is appended (the record may or may not
    /// be on disk, and the next one must not land over it uncovered).
    forced: bool,
}

/// Where the log stands when a checkpoint starts: it covers the records up to `seq`, and the
/// next record starts at `tail` or, after a wrap, at 0 (what recovery looks at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub seq: u64,
    pub tail: u64,
    appended: u64,
}

/// What became of a record given to [`Wal::log`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Logged {
    /// Synced in the log (or empty: nothing to log).
    Synced,
    /// No room left before a checkpoint: nothing appended; checkpoint, then log it again.
    Full,
}

impl Wal {
    /// Opens (or creates) the log and reads the records after `checkpoint`, in order, from
    /// `tail` (stored with the checkpoint).
    pub fn open(path: &Path, checkpoint: u64, tail: u64) -> io::Result<(Wal, Vec<Vec<Put>>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < SIZE {
            preallocate(&file, len)?;
        }
        let tail = if tail < SIZE { tail } else { 0 };
        let mut replay = Vec::new();
        let mut at = tail;
        let mut first = None;
        let mut seq = checkpoint;
        loop {
            let found = match read_record(&file, at, seq + 1)? {
                Some(r) => Some((at, r)),
                None if at != 0 => read_record(&file, 0, seq + 1)?.map(|r| (0, r)),
                None => None,
            };
            let Some((start, (puts, len))) = found else {
                break;
            };
            first.get_or_insert(start);
            replay.push(puts);
            at = start + len;
            seq += 1;
        }
        let wal = Wal {
            file,
            head: at,
            tail: first.unwrap_or(at),
            last_seq: seq,
            covered_seq: checkpoint,
            appended: 0,
            covered: 0,
            last_durable: Instant::now(),
            forced: false,
        };
        Ok((wal, replay))
    }

    #[cfg(test)]
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// What a checkpoint made now covers.
    pub fn mark(&self) -> Mark {
        Mark {
            seq: self.last_seq,
            tail: self.head,
            appended: self.appended,
        }
    }

    /// Appends and syncs the batch's record, unless there is no room for it before the
    /// oldest record a checkpoint does not cover (then the caller checkpoints and logs it
    /// again). An empty record (a batch of idempotent replays only) needs nothing.
    pub fn log(&mut self, rec: &mut Record) -> io::Result<Logged> {
        if rec.is_empty() {
            return Ok(Logged::Synced);
        }
        if self.forced {
            return Ok(Logged::Full);
        }
        let len = rec.buf.len() as u64;
        let live = self.last_seq > self.covered_seq;
        // Strictly before the tail: `head == tail` means an empty log.
        let at = if !live || self.head >= self.tail {
            let free_at_start = if live { self.tail } else { SIZE };
            if self.head + len <= SIZE {
                self.head
            } else if len < free_at_start {
                0
            } else {
                return Ok(Logged::Full);
            }
        } else if self.head + len < self.tail {
            self.head
        } else {
            return Ok(Logged::Full);
        };
        let seq = self.last_seq + 1;
        rec.seal(seq);
        if let Err(e) = self
            .file
            .write_all_at(&rec.buf, at)
            .and_then(|()| self.file.sync_data())
        {
            // Whether the record reached the disk is unknown: take its sequence number, so
            // the checkpoint forced now covers it, and a restart before that replays at most
            // a batch that was answered 503 (as a CQL write that timed out may land).
            self.last_seq = seq;
            self.forced = true;
            return Err(e);
        }
        if !live {
            self.tail = at;
        }
        let skipped = if at == self.head { 0 } else { SIZE - self.head };
        self.appended += skipped + len;
        self.head = at + len;
        self.last_seq = seq;
        Ok(Logged::Synced)
    }

    /// Whether a checkpoint is due: the log holds [`CHECKPOINT_BYTES`] no checkpoint covers,
    /// or [`CHECKPOINT_EVERY`] passed since the last one with something logged since.
    pub fn checkpoint_due(&self) -> bool {
        let live = self.last_seq > self.covered_seq;
        self.forced
            || (live
                && (self.appended - self.covered >= CHECKPOINT_BYTES
                    || self.last_durable.elapsed() >= CHECKPOINT_EVERY))
    }

    /// A durable commit storing `m` as its checkpoint succeeded: every record up to `m.seq`
    /// is in redb for good, and the ring before `m.tail` is free.
    pub fn checkpointed(&mut self, m: Mark) {
        if m.seq >= self.covered_seq {
            self.covered_seq = m.seq;
            self.covered = m.appended;
            self.tail = m.tail;
        }
        if self.covered_seq == self.last_seq {
            self.forced = false;
            self.tail = self.head;
        }
        self.last_durable = Instant::now();
    }
}

/// Zeros from the file's end to [`SIZE`]: what is there already (a smaller log of an older
/// version, records not yet replayed) stays.
fn preallocate(file: &File, from: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1024 * 1024];
    let mut at = from;
    while at < SIZE {
        let n = zeros.len().min((SIZE - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
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

    /// An empty log in a fresh directory (kept alive by the first value).
    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (wal, replay) = Wal::open(&path, 0, 0).unwrap();
        assert!(replay.is_empty());
        (dir, path, wal)
    }

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
        let (mut wal, replay) = Wal::open(&path, 7, 0).unwrap();
        assert!(replay.is_empty());
        for i in 0..3u8 {
            let mut r = record(&[
                (Table::Comments, &[i], b"v"),
                (Table::Idempotency, b"k", &[i]),
            ]);
            assert_eq!(wal.log(&mut r).unwrap(), Logged::Synced);
        }
        assert_eq!(wal.last_seq(), 10);
        let end = wal.mark();
        drop(wal);
        let (wal, replay) = Wal::open(&path, 7, 0).unwrap();
        assert_eq!(replay.len(), 3);
        assert_eq!(replay[2][0].key, vec![2]);
        assert_eq!(replay[1][1].table, Table::Idempotency);
        assert_eq!(wal.last_seq(), 10);
        // A checkpoint that covers them: nothing to replay.
        let (_, replay) = Wal::open(&path, end.seq, end.tail).unwrap();
        assert!(replay.is_empty());
    }

    /// Fills the ring past its end while checkpoints free its start, until a record wraps
    /// to offset 0: after a reopen at the last checkpoint, exactly the records it does not
    /// cover come back, in order, across the wrap.
    #[test]
    fn the_ring_wraps_and_recovery_follows_it() {
        let (_dir, path, mut wal) = fresh();
        let value = vec![3u8; 100 * 1024];
        let mut marks = std::collections::VecDeque::new();
        let mut stored = wal.mark();
        let mut n = 0u64;
        let mut wrapped_at = None;
        while wrapped_at.is_none_or(|w| n < w + 2) {
            let before = wal.head;
            let mut r = record(&[(Table::Comments, &n.to_be_bytes(), &value)]);
            assert_eq!(wal.log(&mut r).unwrap(), Logged::Synced, "record {n}");
            if wal.head < before && wrapped_at.is_none() {
                wrapped_at = Some(n);
            }
            n += 1;
            marks.push_back(wal.mark());
            // Every record until the wrap: a checkpoint covering all but the last 2 logged.
            if wrapped_at.is_none() && marks.len() > 2 {
                stored = marks.pop_front().unwrap();
                wal.checkpointed(stored);
            }
        }
        assert!(
            stored.tail > wal.head,
            "the live records cross the end of the file"
        );
        drop(wal);
        let (wal, replay) = Wal::open(&path, stored.seq, stored.tail).unwrap();
        let keys: Vec<u64> = replay
            .iter()
            .map(|puts| u64::from_be_bytes(puts[0].key.clone().try_into().unwrap()))
            .collect();
        let want: Vec<u64> = (stored.seq..n).collect();
        assert_eq!(keys, want, "the records after the checkpoint, in order");
        assert_eq!(wal.last_seq(), n);
    }

    #[test]
    fn a_torn_record_ends_the_replay() {
        let (_dir, path, mut wal) = fresh();
        wal.log(&mut record(&[(Table::Comments, b"a", b"1")]))
            .unwrap();
        let second_at = wal.head;
        wal.log(&mut record(&[(Table::Comments, b"b", b"2")]))
            .unwrap();
        drop(wal);
        // The second record's last byte never reached the disk.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let end = second_at + HEADER as u64 + (1 + 4 + 1 + 4 + 1) - 1;
        f.write_all_at(&[0xff], end).unwrap();
        let (wal, replay) = Wal::open(&path, 0, 0).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(wal.last_seq(), 1);
    }

    #[test]
    fn a_full_log_takes_nothing_until_a_checkpoint_and_says_when_one_is_due() {
        let (_dir, _, mut wal) = fresh();
        assert!(!wal.checkpoint_due(), "nothing logged");
        let value = vec![7u8; 64 * 1024];
        let mut n = 0;
        while wal
            .log(&mut record(&[(Table::Comments, b"k", &value)]))
            .unwrap()
            == Logged::Synced
        {
            n += 1;
            if wal.appended >= CHECKPOINT_BYTES {
                assert!(wal.checkpoint_due(), "a quarter full");
            }
        }
        let record_len = (HEADER + 1 + 4 + 1 + 4 + value.len()) as u64;
        assert_eq!(n, (SIZE / record_len) as usize, "as many as fit");
        let m = wal.mark();
        wal.checkpointed(m);
        assert!(!wal.checkpoint_due());
        assert_eq!(
            wal.log(&mut record(&[(Table::Comments, b"k", &value)]))
                .unwrap(),
            Logged::Synced,
            "room again after the checkpoint"
        );
    }

    #[test]
    fn a_smaller_log_of_an_older_version_keeps_its_records() {
        let (_dir, path, mut wal) = fresh();
        wal.log(&mut record(&[(Table::Comments, b"a", b"1")]))
            .unwrap();
        drop(wal);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(SIZE / 2).unwrap();
        let (_, replay) = Wal::open(&path, 0, 0).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE);
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
