//! One post's live feed inside a fanout process: one bus subscription, the viewers' queues,
//! and the hub's position (what it has delivered, per region).

use std::sync::Arc;

use futures::StreamExt;
use livecomments_shared::{
    Comment, Position,
    wire::{LiveComment, LiveEvent},
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::Fanout;
use super::frame::Frame;
use crate::metrics::METRICS;

pub type ViewerTx = mpsc::Sender<Arc<Frame>>;

/// How far in the future a live comment's id may be (clocks of other regions drift a little).
const MAX_CLOCK_SKEW_MS: i64 = 60_000;
/// Ids further ahead than this are delivered only once history confirms them.
const VERIFY_AHEAD_MS: i64 = 2_000;

pub struct Hub {
    fanout: Arc<Fanout>,
    post_id: String,
    state: Mutex<State>,
    ready: watch::Sender<bool>,
}

struct State {
    viewers: Vec<(u64, ViewerTx)>,
    next_viewer: u64,
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
                viewers: Vec::new(),
                next_viewer: 0,
                pos: Arc::default(),
                closed: false,
                task: None,
                pending: Default::default(),
            }),
            ready: watch::channel(false).0,
        });
        let task = tokio::spawn(hub.clone().run());
        hub.state.lock().task = Some(task.abort_handle());
        hub
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Closes the hub if it has no viewers; true when it did.
    pub(super) fn try_close(&self) -> bool {
        let mut st = self.state.lock();
        if !st.viewers.is_empty() {
            return false;
        }
        st.closed = true;
        if let Some(t) = st.task.take() {
            t.abort();
        }
        true
    }

    /// Waits until the hub is subscribed, then registers a viewer queue. Returns the viewer's
    /// id and the hub position at that instant (a fresh viewer's starting position), or
    /// `None` if the hub closed meanwhile (the caller takes a new one).
    pub async fn join(&self, tx: ViewerTx) -> Option<(u64, Position)> {
        let mut ready = self.ready.subscribe();
        if ready.wait_for(|r| *r).await.is_err() {
            return None;
        }
        let mut st = self.state.lock();
        if st.closed {
            return None;
        }
        let id = st.next_viewer;
        st.next_viewer += 1;
        st.viewers.push((id, tx));
        Some((id, Position::clone(&st.pos)))
    }

    /// Removes a viewer; the last one out closes the hub and releases the subscription.
    pub fn leave(self: &Arc<Self>, viewer: u64) {
        let empty = {
            let mut st = self.state.lock();
            st.viewers.retain(|(id, _)| *id != viewer);
            st.viewers.is_empty() && !st.closed
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
                ev = sub.next() => match ev {
                    Some(LiveEvent::Comment(c)) => self.on_live_comment(c).await,
                    Some(LiveEvent::Delete(d)) => self.broadcast(Arc::new(Frame::delete(&d))),
                    None => {
                        // The transport closed the subscription: take a new one and repair.
                        match fanout.bus.subscribe(&self.post_id).await {
                            Ok(s) => { sub = s; self.repair().await; }
                            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
                        }
                    }
                },
                _ = heartbeat.tick() => self.broadcast(Arc::new(Frame::ping())),
                _ = retry.tick(), if !self.state.lock().pending.is_empty() => self.retry_pending().await,
                Ok(()) = reconnects.changed() => self.repair().await,
                Ok(()) = closing.changed() => {
                    self.broadcast(Arc::new(Frame::reconnect()));
                    self.state.lock().viewers.clear();
                    return;
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
        let mut st = self.state.lock();
        if st.pos.covers(&c.region, &c.id) {
            return;
        }
        let mut pos = Position::clone(&st.pos);
        pos.advance(&c.region, &c.id);
        let pos = Arc::new(pos);
        st.pos = pos.clone();
        let frame = Arc::new(Frame::comment(c, pos));
        Self::send_all(&mut st, frame);
    }

    fn broadcast(&self, frame: Arc<Frame>) {
        let mut st = self.state.lock();
        Self::send_all(&mut st, frame);
    }

    fn send_all(st: &mut State, frame: Arc<Frame>) {
        st.viewers
            .retain(|(_, tx)| match tx.try_send(frame.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Never wait for a slow viewer: cut it off; it resumes with Last-Event-ID.
                    METRICS.sse_slow_disconnects.inc();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        METRICS.sse_events_delivered.add(st.viewers.len() as u64);
    }
}
