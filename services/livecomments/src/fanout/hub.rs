//! One post's live feed inside a fanout process: one bus subscription, its viewers, and the
//! hub's position (what it has delivered, per region).
//!
//! The hub's task writes every frame to every viewer itself ([`Conn::offer`]); events that
//! arrive together (a burst, a group commit, a hub busy with the previous walk) go out as one
//! frame, so a viewer gets one write for all of them.

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use livecomments_shared::{
    Comment, Position,
    wire::{LiveComment, LiveEvent},
};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::Fanout;
use super::conn::{Conn, End};
use super::frame::Frame;
use crate::bus::Subscription;
use crate::metrics::METRICS;

/// How far in the future a live comment's id may be (clocks of other regions drift a little).
const MAX_CLOCK_SKEW_MS: i64 = 60_000;
/// Ids further ahead than this are delivered only once history confirms them.
const VERIFY_AHEAD_MS: i64 = 2_000;
/// Most bus events taken together into one frame.
const MAX_BATCH: usize = 256;

pub struct Hub {
    fanout: Arc<Fanout>,
    post_id: String,
    state: Mutex<State>,
    /// The viewers the hub writes to, in shards walked in parallel (one per runtime worker):
    /// a write to a socket costs microseconds of kernel time, and 10k of them on one core
    /// would leave the other idle. Only the hub's task walks them, outside `state`'s lock, so
    /// joining and leaving never wait for a walk.
    shards: Vec<Mutex<Vec<Arc<Conn>>>>,
    /// Frames dispatched and not yet written: written together at the end of each turn.
    outbox: Mutex<Vec<Arc<Frame>>>,
    ready: watch::Sender<bool>,
}

struct State {
    /// Viewers joined since the last walk: they get every frame written from then on.
    joining: Vec<Arc<Conn>>,
    viewers: usize,
    /// Everything up to here (per region) was dispatched live or predates the hub.
    pos: Arc<Position>,
    closed: bool,
    task: Option<tokio::task::AbortHandle>,
    /// Regions with a known gap that history could not fill yet.
    pending: std::collections::HashSet<String>,
}

impl Hub {
    pub(super) fn start(fanout: Arc<Fanout>, post_id: String) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            fanout,
            post_id,
            state: Mutex::new(State {
                joining: Vec::new(),
                viewers: 0,
                pos: Arc::default(),
                closed: false,
                task: None,
                pending: Default::default(),
            }),
            shards: (0..walk_shards()).map(|_| Mutex::default()).collect(),
            outbox: Mutex::default(),
            ready: watch::channel(false).0,
        });
        let task = tokio::spawn(hub.clone().run());
        hub.state.lock().task = Some(task.abort_handle());
        hub
    }

    pub fn post_id(&self) -> &str {
        &self.post_id
    }

    pub(super) fn fanout(&self) -> &Arc<Fanout> {
        &self.fanout
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Closes the hub if it has no viewers; true when it did.
    pub(super) fn try_close(&self) -> bool {
        let mut st = self.state.lock();
        if st.viewers > 0 {
            return false;
        }
        st.closed = true;
        if let Some(t) = st.task.take() {
            t.abort();
        }
        true
    }

    /// Waits until the hub is subscribed, then adds a viewer, positioned at `resume` or, for
    /// a fresh viewer, at the hub's position at this instant. False if the hub closed
    /// meanwhile (the caller takes a new one).
    pub async fn join(&self, conn: &Arc<Conn>, resume: Option<&Position>) -> bool {
        let mut ready = self.ready.subscribe();
        if ready.wait_for(|r| *r).await.is_err() {
            return false;
        }
        let mut st = self.state.lock();
        if st.closed {
            return false;
        }
        conn.lock().pos = match resume {
            Some(p) => Arc::new(p.clone()),
            None => st.pos.clone(),
        };
        st.viewers += 1;
        st.joining.push(conn.clone());
        true
    }

    /// A viewer left (its connection is already ended; the next walk forgets it). The last
    /// one out closes the hub and releases the subscription.
    pub fn leave(self: &Arc<Self>) {
        let empty = {
            let mut st = self.state.lock();
            st.viewers = st.viewers.saturating_sub(1);
            st.viewers == 0 && !st.closed
        };
        if empty {
            self.fanout.retire(&self.post_id, self);
        }
    }

    async fn run(self: Arc<Self>) {
        let fanout = self.fanout.clone();
        // Position first, then subscribe: anything committed in between is history to a
        // fresh viewer (GET shows it), and a resuming viewer's replay covers it.
        let mut start = fanout.history.latest(&self.post_id).await;
        // Regions with no comment on the post (or that did not answer) start from "now, less a
        // second", so even a viewer of a silent post has a position to resume from.
        let floor = livecomments_shared::id::max_at(livecomments_shared::time::now_millis() - 1000);
        for region in fanout.history.regions() {
            if start.get(region).is_none() {
                start.advance(region, &floor);
            }
        }
        let mut sub = loop {
            match fanout.bus.subscribe(&self.post_id).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(post_id = %self.post_id, error = %e, "subscribe failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        };
        self.state.lock().pos = Arc::new(start);
        let _ = self.ready.send(true);

        let mut heartbeat = tokio::time::interval(fanout.cfg.heartbeat);
        heartbeat.tick().await;
        let mut retry = tokio::time::interval(std::time::Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconnects = fanout.bus.reconnects();
        reconnects.mark_unchanged();
        let mut closing = fanout.closing.subscribe();
        loop {
            tokio::select! {
                ev = sub.next() => {
                    self.on_event(ev, &mut sub).await;
                    // Whatever else is already waiting goes out in the same frame.
                    for _ in 1..MAX_BATCH {
                        match sub.next().now_or_never() {
                            Some(ev) => self.on_event(ev, &mut sub).await,
                            None => break,
                        }
                    }
                }
                _ = heartbeat.tick() => self.broadcast(Arc::new(Frame::ping())),
                _ = retry.tick(), if !self.state.lock().pending.is_empty() => self.retry_pending().await,
                Ok(()) = reconnects.changed() => self.repair().await,
                Ok(()) = closing.changed() => {
                    self.broadcast(Arc::new(Frame::reconnect()));
                    self.flush().await;
                    let joining = std::mem::take(&mut self.state.lock().joining);
                    for conn in joining {
                        conn.end(End::Finish);
                    }
                    for shard in &self.shards {
                        for conn in shard.lock().drain(..) {
                            conn.end(End::Finish);
                        }
                    }
                    return;
                }
            }
            self.flush().await;
        }
    }

    async fn on_event(&self, ev: Option<LiveEvent>, sub: &mut Subscription) {
        match ev {
            Some(LiveEvent::Comment(c)) => self.on_live_comment(c).await,
            Some(LiveEvent::Delete(d)) => self.broadcast(Arc::new(Frame::delete(&d))),
            None => {
                // The transport closed the subscription: take a new one and repair.
                match self.fanout.bus.subscribe(&self.post_id).await {
                    Ok(s) => {
                        *sub = s;
                        self.repair().await;
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
                }
            }
        }
    }

    /// After a bus outage: fetch from history what the hub missed and dispatch it (the
    /// position de-duplicates whatever the bus still delivers late).
    /// Retried for a while: right after a reconnect the readers may not have re-subscribed yet.
    async fn repair(&self) {
        for attempt in 0..20u64 {
            let pos = Position::clone(&self.state.lock().pos);
            let replay = self
                .fanout
                .history
                .replay(&self.post_id, &pos, self.fanout.cfg.replay_max)
                .await;
            if !replay.comments.is_empty() {
                tracing::info!(post_id = %self.post_id, n = replay.comments.len(), "repaired after bus reconnect");
            }
            for c in &replay.comments {
                self.dispatch_comment(c);
            }
            if replay.failed.is_empty() {
                return;
            }
            tracing::warn!(post_id = %self.post_id, failed = ?replay.failed, attempt, "repair incomplete; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(250 * (attempt + 1).min(4))).await;
        }
    }

    /// A live comment whose `prev` is not the hub's last id of that region means the bus lost
    /// something in between (a gateway cut, a dropped message): fetch that region's comments
    /// since the hub's position from history first, so viewers get them all, in order.
    async fn on_live_comment(&self, lc: LiveComment) {
        let c = &lc.comment;
        // A publisher on the bus is not trusted with positions: a region outside the
        // deployment, or an id from the future, could otherwise silence the post.
        let max_ms = livecomments_shared::time::now_millis() + MAX_CLOCK_SKEW_MS;
        if !self.fanout.history.regions().any(|r| r == c.region) || c.timestamp_millis() > max_ms {
            METRICS.bus_decode_errors.inc();
            return;
        }
        let expected = {
            let st = self.state.lock();
            if st.pos.covers(&c.region, &c.id) {
                return;
            }
            st.pos.get(&c.region).map(str::to_string)
        };
        let in_sequence = match (&expected, &lc.prev) {
            (None, _) => true,
            (Some(have), Some(prev)) => have == prev,
            // The publisher does not know its previous comment (it restarted): it may have
            // stored comments it never published, so check with history.
            (Some(_), None) => false,
        };
        // Real ids are at most clock skew ahead of us; one further ahead is checked with
        // history first, so a forged id cannot run the position ahead of real comments.
        let from_the_future =
            c.timestamp_millis() > livecomments_shared::time::now_millis() + VERIFY_AHEAD_MS;
        if !in_sequence || from_the_future || self.state.lock().pending.contains(&c.region) {
            // Every real comment is durable before it is published, so the repair brings `c`
            // along with whatever was missed; an event history does not know is dropped.
            self.repair_region(&c.region).await;
            return;
        }
        self.dispatch_comment(c);
    }

    /// Fetches a region's comments after the hub's position and dispatches them. On failure
    /// the region stays pending (retried by the tick and by its next live event).
    async fn repair_region(&self, region: &str) {
        let after = self.state.lock().pos.get(region).map(str::to_string);
        match self
            .fanout
            .history
            .region_after(
                region,
                &self.post_id,
                after.as_deref(),
                self.fanout.cfg.replay_max,
            )
            .await
        {
            Ok(missed) => {
                if !missed.is_empty() {
                    tracing::info!(post_id = %self.post_id, region, n = missed.len(), "repaired a gap in the live stream");
                }
                for m in &missed {
                    self.dispatch_comment(m);
                }
                self.state.lock().pending.remove(region);
            }
            Err(e) => {
                tracing::warn!(post_id = %self.post_id, region, error = %e, "gap repair failed; holding the region back");
                self.state.lock().pending.insert(region.to_string());
            }
        }
    }

    async fn retry_pending(&self) {
        let pending: Vec<String> = self.state.lock().pending.iter().cloned().collect();
        for region in pending {
            self.repair_region(&region).await;
        }
    }

    fn dispatch_comment(&self, c: &Comment) {
        let (before, after) = {
            let mut st = self.state.lock();
            if st.pos.covers(&c.region, &c.id) {
                return;
            }
            let mut pos = Position::clone(&st.pos);
            pos.advance(&c.region, &c.id);
            let after = Arc::new(pos);
            (std::mem::replace(&mut st.pos, after.clone()), after)
        };
        self.broadcast(Arc::new(Frame::comment(c, before, after)));
    }

    fn broadcast(&self, frame: Arc<Frame>) {
        self.outbox.lock().push(frame);
    }

    /// Writes what was dispatched this turn to every viewer, as one frame. Returns when every
    /// shard is done, so each viewer gets its frames in order.
    async fn flush(self: &Arc<Self>) {
        let frames = std::mem::take(&mut *self.outbox.lock());
        if frames.is_empty() {
            return;
        }
        let frame = Frame::batch(frames);
        // Joiners are taken only now: one that joined after a frame was dispatched already
        // has it in its position (or its replay), and the render skips it.
        let joining = std::mem::take(&mut self.state.lock().joining);
        let mut total = 0;
        {
            let mut shards: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
            for conn in joining {
                if let Some(smallest) = shards.iter_mut().min_by_key(|s| s.len()) {
                    smallest.push(conn);
                }
            }
            for s in &shards {
                total += s.len();
            }
        }
        let delivered = if total < PARALLEL_WALK_MIN {
            let mut n = 0;
            for i in 0..self.shards.len() {
                n += self.walk_shard(i, &frame).await;
            }
            n
        } else {
            let others: Vec<_> = (1..self.shards.len())
                .map(|i| {
                    let (hub, frame) = (self.clone(), frame.clone());
                    tokio::spawn(async move { hub.walk_shard(i, &frame).await })
                })
                .collect();
            let mut n = self.walk_shard(0, &frame).await;
            for o in others {
                n += o.await.unwrap_or(0);
            }
            n
        };
        METRICS
            .sse_events_delivered
            .add((delivered * frame.events()) as u64);
    }

    /// Offers `frame` to one shard's viewers, forgetting those gone; returns how many took it.
    /// Yields between slices of the walk, so a walk of a big post does not hold a worker
    /// from everything else (POSTs, smaller posts) for tens of milliseconds.
    async fn walk_shard(&self, shard: usize, frame: &Arc<Frame>) -> usize {
        // Only the hub's task (and the walks it awaits) touches a shard: taking the list out
        // while walking it is safe, and keeps the lock off the awaits.
        let mut walk = std::mem::take(&mut *self.shards[shard].lock());
        let max = self.fanout.cfg.viewer_buffer;
        let mut kept = 0;
        let mut at = 0;
        while at < walk.len() {
            let end = (at + WALK_SLICE).min(walk.len());
            for i in at..end {
                if walk[i].offer(frame, max) {
                    walk.swap(kept, i);
                    kept += 1;
                }
            }
            at = end;
            if at < walk.len() {
                tokio::task::yield_now().await;
            }
        }
        walk.truncate(kept);
        *self.shards[shard].lock() = walk;
        kept
    }
}

/// Viewers written between two yields of a walk (~5 ms of socket writes here).
const WALK_SLICE: usize = 1024;
/// Below this many viewers a hub walks them all on its own task: a spawn costs more.
const PARALLEL_WALK_MIN: usize = 512;

fn walk_shards() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(1)
        .clamp(1, 16)
}
