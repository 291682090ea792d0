//! One SSE viewer: its replay, its hand-over to live delivery, and the stream it writes.
//!
//! The seam between replay and live is exact because the viewer joins its hub *before* it
//! reads history: every frame dispatched after the join reaches its queue, everything before
//! is in the replay, and the viewer's own position drops what both contain. Once the queue is
//! drained (and every region replayed) the viewer goes live: the hub writes to it directly
//! ([`Conn`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use livecomments_shared::{Entry, Position};
use tokio::net::TcpStream;

use super::conn::{Conn, End};
use super::hub::Hub;
use super::sse::{self, Frame};
use super::{Fanout, Slot, StreamOptions};
use crate::metrics::METRICS;

pub struct Viewer {
    conn: Arc<Conn>,
    /// The viewer's post and fanout are its hub's.
    hub: Arc<Hub>,
    /// Set until `start`: where to replay from.
    resume: Option<Position>,
    /// The hub's position when the viewer joined: a replay hands out only what it covers
    /// (the hub sent it before the join); everything else reaches the viewer through the hub,
    /// once the hub has it complete. Replaying a comment the hub does not have yet could skip
    /// an older one of the same writer still on its way into the store.
    hub_at_join: Arc<Position>,
    /// A resume the hub served from memory ([`super::recent`]): the missed events' bytes,
    /// written instead of a replay from history.
    from_memory: Option<Vec<Bytes>>,
    /// Regions whose history could not be replayed yet: the viewer stays on its queue (its
    /// position keeps pointing before the gap) until a replay of each succeeds.
    unreplayed: Vec<String>,
    _slot: Slot,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.conn.end(End::Abort);
        self.hub.leave();
    }
}

impl Viewer {
    /// Joins the post's hub (subscribing if first). `socket`: the hub may write to it
    /// directly; without one, the bytes are read with [`Viewer::into_stream`].
    pub async fn open(
        fanout: Arc<Fanout>,
        post_id: String,
        resume: Option<Position>,
        opts: StreamOptions,
        slot: Slot,
        socket: Option<Arc<TcpStream>>,
    ) -> Viewer {
        loop {
            let hub = fanout.hub(&post_id);
            let conn = Arc::new(Conn::new(socket.clone(), opts));
            if let Some(joined) = hub.join(&conn, resume.as_ref()).await {
                return Viewer {
                    conn,
                    hub,
                    resume,
                    hub_at_join: joined.hub_at,
                    from_memory: joined.from_memory,
                    unreplayed: Vec::new(),
                    _slot: slot,
                };
            }
        }
    }

    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// The stream's first bytes (`head`, a reconnect delay, the replay, the position), then
    /// whatever arrived meanwhile; afterwards they wait in the connection to be written.
    pub async fn start(&mut self, head: &[u8]) {
        // Jittered reconnect delay spreads a mass reconnect (deploy, fanout loss) over time.
        let retry_ms = 1000 + rand::random::<u64>() % 2000;
        let mut out = BytesMut::from(head);
        out.extend_from_slice(&sse::retry(retry_ms));
        if let Some(pinned) = self.hub.fanout().pinned(self.hub.post_id()) {
            out.extend_from_slice(&sse::pin(&pinned));
        }
        if self.conn.opts.viewers {
            // The count as it stands; the hub sends changes (CONTRACT §11).
            let n = self
                .hub
                .fanout()
                .counts
                .viewers_with_own(self.hub.post_id(), self.hub.viewers());
            out.extend_from_slice(&Frame::viewers(n).bytes);
        }
        if let Some(missed) = self.from_memory.take() {
            self.resume = None;
            METRICS.sse_resumes_from_memory.inc();
            {
                let mut st = self.conn.lock();
                Conn::push(&mut st, out.freeze());
                for bytes in missed {
                    Conn::push(&mut st, bytes);
                }
            }
            self.drain_queue().await;
            return;
        }
        if let Some(from) = self.resume.take() {
            let replay = self
                .hub
                .fanout()
                .history
                .replay(self.hub.post_id(), &from, self.hub.fanout().cfg.replay_max)
                .await;
            if replay.failed.len() == self.hub.fanout().history.regions().count() {
                tracing::warn!(post_id = %self.hub.post_id(), "no history reachable; closing stream");
                out.extend_from_slice(&sse::reconnect_because("history_unavailable"));
                let mut st = self.conn.lock();
                st.queue = None;
                Conn::push(&mut st, out.freeze());
                drop(st);
                self.conn.end(End::Finish);
                return;
            }
            let replayed = self.emit_replayed(&replay.entries, &mut out);
            METRICS.sse_replay_length.observe(replayed as f64);
            if replay.truncated {
                out.extend_from_slice(&sse::truncated());
            } else if replay.failed.is_empty() {
                // Everything the hub covered at the join is now sent (the replay read
                // after the join holds all of it): take the hub's floors, so the viewer's
                // position is the hub's again and later frames take the shared path.
                let mut st = self.conn.lock();
                Arc::make_mut(&mut st.pos).merge(&self.hub_at_join);
            }
            self.unreplayed = replay.failed;
        }
        {
            let mut st = self.conn.lock();
            if !st.pos.is_empty() {
                out.extend_from_slice(&sse::position_only(&st.pos));
            }
            Conn::push(&mut st, out.freeze());
        }
        self.drain_queue().await;
    }

    /// Writes the replayed events the viewer lacks into `out`; returns how many comments. A deletion
    /// goes out only when the viewer was shown its comment (CONTRACT §10: a comment both
    /// created and deleted while the viewer was away is not replayed at all); either way
    /// the viewer's position moves past it.
    fn emit_replayed(&self, entries: &[Entry], out: &mut BytesMut) -> usize {
        let mut replayed = 0;
        let mut hub_lacks: Vec<&str> = Vec::new();
        let mut st = self.conn.lock();
        for e in entries {
            let (region, id) = (e.region(), e.id());
            if st.pos.covers(region, id) {
                continue;
            }
            if !self.hub_at_join.covers(region, id) {
                if !hub_lacks.contains(&region.as_str()) {
                    hub_lacks.push(region);
                }
                continue;
            }
            let shown = match e {
                Entry::Comment(_) => true,
                Entry::Deleted(t) => st.pos.covers(&t.region, &t.comment_id),
            };
            Arc::make_mut(&mut st.pos).advance(region, id);
            if !shown {
                continue;
            }
            out.extend_from_slice(&sse::replayed(e, &st.pos));
            // The replay metrics count comments (docs/METRICS.md); deletions ride along.
            if matches!(e, Entry::Comment(_)) {
                METRICS.sse_replayed.inc();
                replayed += 1;
            }
        }
        drop(st);
        for region in hub_lacks {
            self.hub.look_again(region);
        }
        replayed
    }

    /// Renders the frames queued during the replay; goes live when none is left and every
    /// region was replayed.
    async fn drain_queue(&mut self) {
        loop {
            let next = {
                let mut st = self.conn.lock();
                if st.queue.is_none() {
                    return;
                }
                match Conn::pop_queued(&mut st) {
                    Some(f) => f,
                    None => {
                        if self.unreplayed.is_empty() {
                            st.queue = None;
                        }
                        return;
                    }
                }
            };
            self.render_queued(&next).await;
        }
    }

    async fn render_queued(&mut self, f: &Arc<Frame>) {
        // A sample's left-out comments move the position and write nothing, as in
        // `Frame::render`; an `id:`-only line follows when the frame ends with them.
        let mut unmarked = false;
        for (part, skip) in f.each_with_skips() {
            let held = part
                .comment
                .as_ref()
                .map(|c| c.region.as_str())
                .filter(|r| self.unreplayed.iter().any(|u| u == r));
            if let Some(region) = held {
                // A live event from a region this viewer could not replay: try again now (the
                // replay brings this event along when it succeeds).
                let region = region.to_string();
                Box::pin(self.catch_up_region(&region)).await;
                continue;
            }
            let mut st = self.conn.lock();
            let Some(bytes) = part.render(&mut st.pos) else {
                continue;
            };
            unmarked = skip;
            if !skip
                && !self
                    .conn
                    .push_event(st, bytes, self.hub.fanout().cfg.viewer_buffer)
            {
                return;
            }
        }
        if unmarked && f.marked {
            let mut st = self.conn.lock();
            let line = sse::position_only(&st.pos);
            Conn::push(&mut st, line);
        }
    }

    /// Replays `region` after the viewer's position; on success the region is live again.
    async fn catch_up_region(&mut self, region: &str) {
        let pos = self.conn.lock().pos.clone();
        let after = pos.floor(region).map(str::to_string);
        let max = self.hub.fanout().cfg.replay_max;
        if let Ok((rows, _)) = self
            .hub
            .fanout()
            .history
            .region_after_where(region, self.hub.post_id(), after.as_deref(), max, |e| {
                !pos.covers(e.region(), e.id())
            })
            .await
        {
            self.unreplayed.retain(|r| r != region);
            let mut out = BytesMut::new();
            self.emit_replayed(&rows, &mut out);
            Conn::push(&mut self.conn.lock(), out.freeze());
        }
    }

    /// Waits until the hub or a retry has something for this viewer, and renders it.
    pub async fn changed(&mut self) {
        if self.unreplayed.is_empty() {
            self.conn.wake.notified().await;
        } else {
            // Some region could not be replayed yet: retry it every second even when nothing
            // arrives from it.
            let woken = Box::pin(tokio::time::timeout(
                Duration::from_secs(1),
                self.conn.wake.notified(),
            ))
            .await;
            if woken.is_err() {
                for region in self.unreplayed.clone() {
                    Box::pin(self.catch_up_region(&region)).await;
                }
            }
        }
        self.drain_queue().await;
    }

    /// The stream as body chunks, for a response served through hyper.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        futures::stream::unfold((self, false), |(mut v, started)| async move {
            if !started {
                v.start(b"").await;
            }
            loop {
                if let Some(bytes) = v.conn.take_pending() {
                    return Some((Ok(bytes), (v, true)));
                }
                if v.conn.done() {
                    return None;
                }
                v.changed().await;
            }
        })
    }
}
