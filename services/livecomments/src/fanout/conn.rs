//! A viewer's connection as its hub sees it.
//!
//! The hub writes each frame straight to the viewer's socket (`try_write`, never waiting):
//! one syscall per viewer per frame and no task wake-up, where a task per viewer draining a
//! queue would cost a wake-up, a poll and a queue slot per event. Only when the socket is
//! full (or the viewer is still replaying) do bytes wait here, and the viewer's own task
//! writes them when the socket drains. All writes happen under the connection's lock, and the
//! hub writes directly only when nothing is waiting, so bytes never overtake each other.
//!
//! What waits is a list of the frames' own bytes (`Bytes` handles on the buffer every viewer
//! of the post shares), not a copy: a viewer behind by a second of a 600/s post holds 600
//! handles of 32 bytes, where a private buffer held a copy of every event (~300 bytes each, for
//! each of 10k viewers: 1.8 GB/s of memcpy once every socket was full, issue 16). The viewer's
//! task writes them all with one vectored write when the socket drains: the more a viewer is
//! behind, the more each write carries.
//!
//! Without a socket (a stream served through hyper) the hub only appends, and the body
//! stream takes what is waiting.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use livecomments_shared::Position;
use parking_lot::{Mutex, MutexGuard};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::sse::Frame;
use crate::metrics::METRICS;

pub struct Conn {
    state: Mutex<ConnState>,
    /// What the stream asked for (`rate`, `viewers`): which frames the hub offers it.
    pub(super) opts: super::StreamOptions,
    /// Wakes the viewer's task: bytes or frames are waiting, or the connection ended.
    pub(super) wake: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Open,
    /// Write what is waiting, then close (server shutdown, history unreachable).
    Finish,
    /// Close now (too slow, gone).
    Abort,
}

pub(super) struct ConnState {
    socket: Option<Arc<TcpStream>>,
    pub(super) pos: Arc<Position>,
    /// Bytes not written yet, in order: the shared frames' bytes (a partly written one sliced).
    pending: VecDeque<Bytes>,
    /// Live events in `pending`: a viewer further behind than the configured buffer is cut.
    pending_events: usize,
    /// Live events in `queue`.
    queued_events: usize,
    /// `Some` while the viewer replays or holds a region back: the hub queues frames here
    /// and the viewer's task renders them.
    pub(super) queue: Option<VecDeque<Arc<Frame>>>,
    pub(super) end: End,
}

impl ConnState {
    /// Further behind than a viewer may be: more live events than `max_events`, or more
    /// chunks than `MAX_CHUNKS` (replayed ones included).
    fn over_bound(&self, max_events: usize) -> bool {
        self.pending_events > max_events || self.pending.len() > MAX_CHUNKS
    }
}

impl Conn {
    pub fn new(socket: Option<Arc<TcpStream>>, opts: super::StreamOptions) -> Conn {
        Conn {
            opts,
            state: Mutex::new(ConnState {
                socket,
                pos: Arc::default(),
                pending: VecDeque::new(),
                pending_events: 0,
                queued_events: 0,
                queue: Some(VecDeque::new()),
                end: End::Open,
            }),
            wake: Notify::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock()
    }

    /// The hub's delivery of one frame. False when the viewer is gone or was cut off (the hub
    /// forgets it). Never waits.
    pub(super) fn offer(&self, frame: &Arc<Frame>, max_events: usize) -> bool {
        let mut st = self.state.lock();
        if st.end != End::Open {
            return false;
        }
        let events = frame.events();
        if st.queue.is_some() {
            st.queued_events += events;
            if st.queued_events > max_events {
                METRICS.sse_slow_disconnects.inc();
                return self.end_locked(st, End::Abort);
            }
            if let Some(queue) = st.queue.as_mut() {
                queue.push_back(frame.clone());
            }
            drop(st);
            self.wake.notify_one();
            return true;
        }
        let Some(bytes) = frame.render(&mut st.pos) else {
            return true;
        };
        if st.pending.is_empty()
            && let Some(socket) = &st.socket
        {
            match socket.try_write(&bytes) {
                Ok(n) if n == bytes.len() => return true,
                Ok(n) => st.pending.push_back(bytes.slice(n..)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => st.pending.push_back(bytes),
                Err(_) => return self.end_locked(st, End::Abort),
            }
            st.pending_events = events;
            drop(st);
            self.wake.notify_one();
            return true;
        }
        st.pending.push_back(bytes);
        st.pending_events += events;
        if st.over_bound(max_events) {
            // Never wait for a slow viewer: cut it off; it resumes with Last-Event-ID.
            METRICS.sse_slow_disconnects.inc();
            return self.end_locked(st, End::Abort);
        }
        drop(st);
        self.wake.notify_one();
        true
    }

    fn end_locked(&self, mut st: MutexGuard<'_, ConnState>, end: End) -> bool {
        if st.end != End::Abort {
            st.end = end;
        }
        if end == End::Abort {
            st.pending = VecDeque::new();
            st.queue = None;
            st.socket = None;
        }
        drop(st);
        self.wake.notify_one();
        false
    }

    /// Ends an open stream with `last` as its final bytes (a control event such as
    /// `event: reconnect`), all under one lock so no live frame follows it; frames queued
    /// during a replay are dropped (the client resumes from the last event it got). False
    /// when the stream had already ended.
    pub(super) fn finish_with(&self, last: &[u8]) -> bool {
        let mut st = self.state.lock();
        if st.end != End::Open {
            return false;
        }
        st.queue = None;
        st.queued_events = 0;
        st.pending.push_back(Bytes::copy_from_slice(last));
        self.end_locked(st, End::Finish);
        true
    }

    /// Ends the connection (see [`End`]).
    pub fn end(&self, end: End) {
        let st = self.state.lock();
        self.end_locked(st, end);
    }

    pub fn ended(&self) -> End {
        self.state.lock().end
    }

    /// The next frame queued during the viewer's replay.
    pub(super) fn pop_queued(st: &mut ConnState) -> Option<Arc<Frame>> {
        let f = st.queue.as_mut()?.pop_front()?;
        st.queued_events = st.queued_events.saturating_sub(f.events());
        Some(f)
    }

    /// Appends bytes the viewer's task produced (replay, catch-up). Not counted against the
    /// event bound (a replay is bounded by its own limit), but its chunks count against
    /// `MAX_CHUNKS` at the next live frame.
    pub(super) fn push(st: &mut ConnState, bytes: Bytes) {
        if !bytes.is_empty() {
            st.pending.push_back(bytes);
        }
    }

    /// Appends a live event the viewer's task rendered from its queue; false (and the
    /// connection is cut) when the viewer is further behind than `max_events`.
    pub(super) fn push_event(
        &self,
        mut st: MutexGuard<'_, ConnState>,
        bytes: Bytes,
        max_events: usize,
    ) -> bool {
        st.pending.push_back(bytes);
        st.pending_events += 1;
        if st.over_bound(max_events) {
            METRICS.sse_slow_disconnects.inc();
            return self.end_locked(st, End::Abort);
        }
        true
    }

    /// Everything waiting, for a stream served through hyper; `None` when nothing is.
    pub fn take_pending(&self) -> Option<Bytes> {
        let mut st = self.state.lock();
        if st.pending.is_empty() || st.end == End::Abort {
            return None;
        }
        st.pending_events = 0;
        let chunks = std::mem::take(&mut st.pending);
        if chunks.len() == 1 {
            return chunks.into_iter().next();
        }
        let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
        for c in &chunks {
            all.extend_from_slice(c);
        }
        Some(all.freeze())
    }

    /// True when the stream is over: aborted, or finished with nothing left to write.
    pub fn done(&self) -> bool {
        let st = self.state.lock();
        match st.end {
            End::Open => false,
            End::Finish => st.pending.is_empty(),
            End::Abort => true,
        }
    }

    /// Writes what is waiting to the socket until nothing is left or the socket is full.
    /// `Ok(true)` when everything was written.
    pub fn try_flush(&self, socket: &TcpStream) -> io::Result<bool> {
        let mut st = self.state.lock();
        loop {
            if st.end == End::Abort {
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
            if st.pending.is_empty() {
                st.pending_events = 0;
                if st.pending.capacity() > 0 {
                    // An idle viewer keeps no buffer.
                    st.pending = VecDeque::new();
                }
                return Ok(true);
            }
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let n_slices = st.pending.len().min(WRITE_SLICES);
            for (slot, chunk) in slices.iter_mut().zip(&st.pending) {
                *slot = IoSlice::new(chunk);
            }
            match socket.try_write_vectored(&slices[..n_slices]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => consume(&mut st.pending, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Chunks one vectored write takes (Linux's `IOV_MAX` is 1024; 64 chunks of a backlog are
/// already tens of KiB, more than a socket buffer takes at once).
const WRITE_SLICES: usize = 64;
/// Chunks a viewer may hold, besides the event bound: 32 KiB of handles at most. A stalled
/// viewer of a post whose frames carry one event each is cut here (a private copy of 256
/// events, the old bound, was 63 KiB); one behind a busy post holds batches of many events
/// per chunk and meets the event bound first. Frames that carry no event (pings, counts,
/// reactions) count here too, and so does a resume from the hub's memory (a chunk per missed
/// event): that keeps a viewer's whole backlog within what the hub's memory can serve when it
/// resumes again. Exempting the replay let viewers fall beyond it and resume from history:
/// at 600/s on 10k viewers, one run in five collapsed again (2.3M deliveries/s, 112 % CPU).
const MAX_CHUNKS: usize = 1024;

/// Drops the first `n` bytes of `chunks` (what a write took).
fn consume(chunks: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = chunks.front_mut() else {
            return;
        };
        if n < front.len() {
            bytes::Buf::advance(front, n);
            return;
        }
        n -= front.len();
        chunks.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_drops_whole_chunks_and_slices_a_partly_written_one() {
        let mut chunks: VecDeque<Bytes> = [&b"abc"[..], b"de", b"fghi"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        consume(&mut chunks, 4);
        assert_eq!(
            chunks,
            [Bytes::from_static(b"e"), Bytes::from_static(b"fghi")]
        );
        consume(&mut chunks, 1);
        assert_eq!(chunks, [Bytes::from_static(b"fghi")]);
        consume(&mut chunks, 4);
        assert!(chunks.is_empty());
    }

    /// A viewer resumed from the hub's memory holds one chunk per missed event; the bound on
    /// chunks counts them, so one that cannot take its replay is cut at the next live frame.
    #[test]
    fn a_backlog_over_the_chunk_bound_is_cut_at_the_next_live_frame() {
        let ping = Arc::new(Frame::ping());
        for (replayed, open) in [(MAX_CHUNKS - 1, true), (MAX_CHUNKS, false)] {
            let conn = Conn::new(None, Default::default());
            {
                let mut st = conn.lock();
                st.queue = None;
                for _ in 0..replayed {
                    Conn::push(&mut st, Bytes::from_static(b"replayed"));
                }
            }
            assert_eq!(conn.offer(&ping, 4096), open, "{replayed} chunks waiting");
            assert_eq!(conn.ended() == End::Open, open);
        }
    }
}
