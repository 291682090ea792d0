//! One post's live feed inside a fanout process: one bus subscription, its viewers, and the
//! hub's position (what it has delivered: per region a floor and one id per writer).
//!
//! The hub's task writes every frame to every viewer itself ([`Conn::offer`]); events that
//! arrive together (a burst, a group commit, a hub busy with the previous walk) go out as one
//! frame, so a viewer gets one write for all of them.
//!
//! What reaches viewers is decided in [`sequence`]: a live comment that continues its
//! writer's chain goes out at once; anything else (a gap, a writer's unexplained first
//! comment, an adopted comment, an id from the future) sends the hub to history first. A
//! repair takes from history only what is certainly complete — the revealing writer's
//! comments up to the one that revealed the gap, and anything older than `RIPE_MS` — and
//! looks again later for the rest, because one writer's batch becomes visible in a CQL store
//! row by row, in any order. See docs/WRITE-PATH.md.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use livecomments_shared::{
    CommentId, Entry, Position, id,
    position::SETTLE_MS,
    time,
    wire::{Deletion, LiveComment, LiveEvent},
};
use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};

use super::Fanout;
use super::conn::{Conn, End};
use super::recent::Recent;
use super::sample::{Rate, Sampler};
use super::sse::Frame;
use crate::bus::{Delivery, LostWriter, Subscription};
use crate::metrics::METRICS;
use crate::trace::{self, RequestId};

/// How far in the future a live comment's id may be (clocks of other regions drift a little).
const MAX_CLOCK_SKEW_MS: i64 = 60_000;
/// Ids further ahead than this are delivered only once history confirms them.
const VERIFY_AHEAD_MS: i64 = 2_000;
/// Most bus events taken together into one frame.
const MAX_BATCH: usize = 256;
/// A comment this old is visible in its store if it will ever be: ingest gives up on making
/// a comment visible 3 s after stamping it, and a write in flight then ends within the CQL
/// write timeout (2 s). A repair hands out younger comments only when a chain proves them.
const RIPE_MS: i64 = 5_000;
/// When a repair left comments that were not ripe yet, it looks again this much later.
const LOOK_AGAIN: Duration = Duration::from_millis(RIPE_MS as u64 + 1_000);
/// Every so often each region is read from the floor up: what the bus lost and no chain
/// revealed (the last comment of a writer) is found, and the floor moves up so positions
/// stay small and resumes read little. 30 s: one read of half a minute of the post's comments
/// per hub and region.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Comments read when a hub starts, to learn the writers active in the last `SETTLE_MS`.
const START_SCAN_MAX: usize = 10_000;

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
    /// Wakes the hub's task to look at `later` now (a viewer's replay found comments the hub
    /// does not have).
    nudge: tokio::sync::Notify,
    /// Rate sampling (CONTRACT §11): one sampler per rate its viewers asked for.
    samples: Mutex<Samples>,
}

#[derive(Default)]
struct Samples {
    samplers: HashMap<Rate, Sampler>,
    /// This turn's frame as each rate sees it (`None`: nothing left out), decided once per
    /// rate and turn by the first viewer of that rate the walk meets.
    this_turn: HashMap<Rate, Option<Arc<Frame>>>,
}

/// A sample's `id:`-only line (the resume token past comments left out) goes out at most
/// this often per rate: one per frame would cost a write per frame per viewer, which is what
/// sampling saves. A client that drops in between resumes at most this much earlier.
const SAMPLE_POSITION_EVERY: Duration = Duration::from_millis(100);
/// `event: viewers` at most this often (CONTRACT §11).
const VIEWERS_EVERY: Duration = Duration::from_secs(2);

struct State {
    /// Viewers joined since the last walk: they get every frame written from then on.
    joining: Vec<Arc<Conn>>,
    viewers: usize,
    /// Everything up to here (per region) was dispatched live or predates the hub.
    pos: Arc<Position>,
    closed: bool,
    task: Option<tokio::task::AbortHandle>,
    /// Regions with a known gap that history could not fill yet.
    pending: HashSet<String>,
    /// Regions to read again from the floor once the time comes (comments not ripe yet at the
    /// last repair, a writer that fell silent).
    later: HashMap<String, Instant>,
    /// The last seconds of dispatched events, for resumes from memory.
    recent: Recent,
}

/// What a viewer joined with.
pub struct Joined {
    /// The hub's position at the join (what a replay may hand out: everything after it
    /// comes through the hub).
    pub hub_at: Arc<Position>,
    /// For a resume from one of this hub's recent positions: the bytes of every event the
    /// viewer missed, as in-step viewers were sent them; it needs no replay from history.
    pub from_memory: Option<Vec<Bytes>>,
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
                later: Default::default(),
                recent: Recent::default(),
            }),
            shards: (0..walk_shards()).map(|_| Mutex::default()).collect(),
            outbox: Mutex::default(),
            ready: watch::channel(false).0,
            nudge: tokio::sync::Notify::new(),
            samples: Mutex::default(),
        });
        let task = hub.fanout.background.spawn(hub.clone().run());
        hub.state.lock().task = Some(task.abort_handle());
        hub
    }

    pub fn post_id(&self) -> &str {
        &self.post_id
    }

    pub(super) fn fanout(&self) -> &Arc<Fanout> {
        &self.fanout
    }

    /// Viewers joined and not yet gone.
    pub fn viewers(&self) -> usize {
        self.state.lock().viewers
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
    /// a fresh viewer, at the hub's position at this instant. `None` if the hub closed
    /// meanwhile (the caller takes a new one).
    pub async fn join(&self, conn: &Arc<Conn>, resume: Option<&Position>) -> Option<Joined> {
        let mut ready = self.ready.subscribe();
        if ready.wait_for(|r| *r).await.is_err() {
            return None;
        }
        // Outside the lock: a resume token is ~30–100 bytes to format.
        let resume = resume.map(|p| (p, p.to_string()));
        let mut st = self.state.lock();
        if st.closed {
            return None;
        }
        let mut from_memory = None;
        conn.lock().pos = match resume {
            None => st.pos.clone(),
            Some((p, token)) => match st.recent.after(&token, self.fanout.cfg.replay_max) {
                // Under the hub's lock, so no event is dispatched between what is rendered
                // here and what reaches the viewer through the hub.
                Some((mut pos, missed)) => {
                    let bytes = missed.filter_map(|f| f.render(&mut pos)).collect();
                    from_memory = Some(bytes);
                    pos
                }
                None => Arc::new(p.clone()),
            },
        };
        st.viewers += 1;
        st.joining.push(conn.clone());
        Some(Joined {
            hub_at: st.pos.clone(),
            from_memory,
        })
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
        let start = self.start_position().await;
        let mut sub = loop {
            match fanout.bus.subscribe(&self.post_id).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(post_id = %self.post_id, error = %e, "subscribe failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        self.state.lock().pos = Arc::new(start);
        // `send_replace`, not `send`: `send` stores nothing when no receiver exists yet, and
        // the first viewer subscribes in `join` only after `start` returned. A hub task that
        // got this far before it (it runs on the main runtime while the viewer's request may
        // be on a connection thread) left every viewer of the post waiting for good: 2 of ~30
        // benchmark runs with `--http-threads 2`, none of 12 once fixed.
        self.ready.send_replace(true);

        let mut heartbeat = tokio::time::interval(fanout.cfg.heartbeat);
        heartbeat.tick().await;
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Hubs started together sweep at different times.
        let first_sweep =
            tokio::time::Instant::now() + SWEEP_EVERY.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        let mut sweep = tokio::time::interval_at(first_sweep, SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconnects = fanout.bus.reconnects();
        reconnects.mark_unchanged();
        let mut viewers_tick = tokio::time::interval(VIEWERS_EVERY);
        viewers_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut viewers_sent: Option<u64> = None;
        let mut lost = fanout.bus.lost_writers();
        let mut lost_open = true;
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
                _ = heartbeat.tick() => {
                    self.state.lock().recent.trim(Instant::now());
                    self.broadcast(Arc::new(Frame::ping()));
                }
                _ = viewers_tick.tick() => self.send_viewer_count(&mut viewers_sent),
                _ = retry.tick(), if self.has_work_later() || self.is_sampling() => {
                    self.report_sampling();
                    if self.has_work_later() {
                        self.retry_later().await;
                    }
                }
                _ = self.nudge.notified() => self.retry_later().await,
                _ = sweep.tick() => self.sweep_all().await,
                Ok(()) = reconnects.changed() => self.sweep_all().await,
                gone = lost.recv(), if lost_open => match gone {
                    Err(broadcast::error::RecvError::Closed) => lost_open = false,
                    gone => self.on_lost_writer(gone).await,
                },
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

    /// Where a fresh hub starts, per region: a floor `SETTLE_MS` back, and the newest id of
    /// each writer seen above it. A fresh viewer gets this position: what lies at or before
    /// it is history (GET shows it), what comes after reaches it live.
    async fn start_position(&self) -> Position {
        let history = &self.fanout.history;
        let floor = id::max_at(time::now_millis() - SETTLE_MS);
        let regions: Vec<String> = history.regions().map(str::to_string).collect();
        let scans = futures::future::join_all(
            regions
                .iter()
                .map(|region| self.recent_writers(region, &floor)),
        )
        .await;
        let mut pos = Position::new();
        for (region, scan) in regions.iter().zip(scans) {
            pos.raise_floor(region, &floor);
            match scan {
                Ok((ids, cut_at)) => {
                    for id in &ids {
                        pos.advance(region, id);
                    }
                    if let Some(oldest) = cut_at {
                        pos.raise_floor(region, &oldest);
                    }
                }
                Err(e) => {
                    // Its first live comment finds no chain and sends the hub to history,
                    // which holds the region back until it answers.
                    tracing::warn!(post_id = %self.post_id, region, error = %e, "start: region history unavailable");
                }
            }
        }
        pos
    }

    /// The ids of a region's events above `floor`, comments and deletions (a writer's last
    /// event may be a deletion, and the hub must know it as its chain's end, or a resuming
    /// viewer's replay would leave it to the hub). Read oldest first; past `START_SCAN_MAX`
    /// (a post over ~1,000 events/s) the newest comments instead, and the floor is raised to
    /// the oldest of them (returned as the cut).
    async fn recent_writers(
        &self,
        region: &str,
        floor: &str,
    ) -> Result<(Vec<CommentId>, Option<CommentId>), crate::reader::history::HistoryError> {
        let history = &self.fanout.history;
        let (rows, cut) = history
            .region_after_where(region, &self.post_id, Some(floor), START_SCAN_MAX, |_| true)
            .await?;
        if !cut {
            return Ok((rows.iter().map(|e| e.id().clone()).collect(), None));
        }
        let (rows, cut) = history
            .region_newest_above(region, &self.post_id, floor, START_SCAN_MAX)
            .await?;
        let oldest = rows.last().filter(|_| cut).map(|c| c.id.clone());
        Ok((rows.into_iter().map(|c| c.id).collect(), oldest))
    }

    async fn on_event(&self, ev: Option<Delivery>, sub: &mut Subscription) {
        let Some(Delivery { event, request_id }) = ev else {
            // The transport closed the subscription: take a new one and repair.
            match self.fanout.bus.subscribe(&self.post_id).await {
                Ok(s) => {
                    *sub = s;
                    self.sweep_all().await;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
            return;
        };
        // Once per event and hub (not per viewer): lets a comment be followed from the POST
        // that made it (its request id) to every fanout that streamed it.
        match &event {
            LiveEvent::Comment(lc) => tracing::debug!(
                target: trace::TARGET,
                request_id = request_id.as_ref().map(RequestId::as_str),
                comment_id = %lc.comment.id,
                post_id = %self.post_id,
                region = %lc.comment.region,
                "live comment received"
            ),
            LiveEvent::Delete(d) => tracing::debug!(
                target: trace::TARGET,
                request_id = request_id.as_ref().map(RequestId::as_str),
                comment_id = %d.id,
                post_id = %self.post_id,
                "live deletion received"
            ),
        }
        match event {
            LiveEvent::Comment(lc) => {
                let link = Link::from(&lc);
                self.on_live(&link, Entry::Comment(lc.comment.clone()))
                    .await
            }
            LiveEvent::Delete(d) => match d.tombstone() {
                // A deletion is a link of its writer's chain like a comment (CONTRACT §10).
                Some(t) => {
                    let Some(link) = Link::of_deletion(&d) else {
                        return;
                    };
                    self.on_live(&link, Entry::Deleted(t)).await
                }
                // From a publisher older than tombstones: outside every chain.
                None => self.broadcast(Arc::new(Frame::delete(&d))),
            },
        }
    }

    /// Reads every region from its floor (after a bus outage, a dropped message, and
    /// periodically); a region that does not answer is held back and retried.
    async fn sweep_all(&self) {
        let regions: Vec<String> = self.fanout.history.regions().map(str::to_string).collect();
        for region in regions {
            self.repair_region(&region, Repair::FromFloor).await;
        }
    }

    /// A writer fell silent: it may have stored comments it never published. Its comments
    /// are ripe by now (it fell silent `WRITER_LOST_MS` ago), and a second look follows for
    /// writes that were still in flight in the store.
    async fn on_lost_writer(&self, gone: Result<LostWriter, broadcast::error::RecvError>) {
        match gone {
            Ok(w) => {
                if !self.fanout.history.regions().any(|r| r == w.region) {
                    return;
                }
                self.repair_region(
                    &w.region,
                    Repair::Writer {
                        writer: w.writer,
                        proven: None,
                    },
                )
                .await;
                self.state
                    .lock()
                    .later
                    .insert(w.region, Instant::now() + LOOK_AGAIN);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => self.sweep_all().await,
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    async fn on_live(&self, link: &Link<'_>, entry: Entry) {
        // A publisher on the bus is not trusted with positions: a region outside the
        // deployment, or an id from the future, could otherwise silence the post.
        let now = time::now_millis();
        if !self.fanout.history.regions().any(|r| r == link.region)
            || link.millis > now + MAX_CLOCK_SKEW_MS
        {
            METRICS.bus_decode_errors.inc();
            return;
        }
        let (verdict, new_writer) = {
            let st = self.state.lock();
            (
                sequence(&st.pos, *link, st.pending.contains(link.region), now),
                st.pos
                    .writer_id(link.region, id::writer_of(link.id))
                    .is_none(),
            )
        };
        if new_writer {
            self.fanout
                .bus
                .heard_writer(link.region, id::writer_of(link.id));
        }
        match verdict {
            Verdict::Duplicate => {}
            Verdict::Deliver => {
                self.dispatch(&entry);
            }
            Verdict::Repair(how) => {
                // Every real event is durable before it is published, so the repair brings
                // it along with whatever was missed; an event history does not know is dropped.
                self.repair_region(link.region, how).await;
            }
        }
    }

    /// Fetches a region's comments from history and dispatches what the hub lacks and is
    /// certainly complete. On failure the region stays pending (retried every second and by
    /// its next live event).
    async fn repair_region(&self, region: &str, how: Repair) {
        let (after, only) = {
            let st = self.state.lock();
            match &how {
                Repair::Writer { writer, .. } => match st.pos.writer_id(region, writer) {
                    // Only this writer's comments follow from its id; others' older ones
                    // may lie before it, so they are left to their own chains.
                    Some(id) => (Some(id.to_string()), Some(writer.as_str())),
                    None => (st.pos.floor(region).map(str::to_string), None),
                },
                Repair::FromFloor => (st.pos.floor(region).map(str::to_string), None),
            }
        };
        let from_floor = only.is_none();
        let read_at = time::now_millis();
        let max = self.fanout.cfg.replay_max;
        match self
            .fanout
            .history
            .region_after(region, &self.post_id, after.as_deref(), max)
            .await
        {
            Ok(rows) => {
                let ripe = id::max_at(read_at - RIPE_MS);
                let (writer, proven) = match &how {
                    Repair::Writer { writer, proven } => (Some(writer.as_str()), proven.as_deref()),
                    Repair::FromFloor => (None, None),
                };
                let mut handed = 0;
                let mut unripe = false;
                for e in &rows {
                    let of = id::writer_of(e.id());
                    if only.is_some_and(|w| w != of) {
                        continue;
                    }
                    let chained =
                        writer == Some(of) && proven.is_some_and(|p| e.id().as_str() <= p);
                    if chained || e.id().as_str() <= ripe.as_str() {
                        handed += usize::from(self.dispatch(e));
                    } else {
                        unripe = true;
                    }
                }
                if handed > 0 {
                    METRICS.hub_repairs.inc_by(handed as u64);
                    tracing::info!(post_id = %self.post_id, region, n = handed, "repaired from history");
                }
                let mut st = self.state.lock();
                st.pending.remove(region);
                if unripe {
                    st.later
                        .insert(region.to_string(), Instant::now() + LOOK_AGAIN);
                }
                if from_floor {
                    // Everything up to here is delivered and nothing older can still
                    // appear: the floor moves up, and writer ids below it are forgotten.
                    let settled = id::max_at(read_at - SETTLE_MS);
                    let floor = match rows.last() {
                        Some(last)
                            if rows.len() >= max && last.id().as_str() < settled.as_str() =>
                        {
                            last.id().clone()
                        }
                        _ => settled.into(),
                    };
                    if st.pos.floor(region).is_none_or(|f| f < floor.as_str()) {
                        let mut pos = Position::clone(&st.pos);
                        pos.raise_floor(region, &floor);
                        st.pos = Arc::new(pos);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(post_id = %self.post_id, region, error = %e, "repair failed; holding the region back");
                self.state.lock().pending.insert(region.to_string());
            }
        }
    }

    /// A viewer's replay read comments of `region` the hub has not sent: the bus lost them
    /// (or they are still on their way). The hub reads the region from its floor now rather
    /// than at its next sweep, so the viewer, which gets them through the hub, waits little.
    pub fn look_again(&self, region: &str) {
        self.state
            .lock()
            .later
            .insert(region.to_string(), Instant::now());
        self.nudge.notify_one();
    }

    fn has_work_later(&self) -> bool {
        let st = self.state.lock();
        !st.pending.is_empty() || !st.later.is_empty()
    }

    async fn retry_later(&self) {
        let due: Vec<String> = {
            let mut st = self.state.lock();
            let now = Instant::now();
            let mut due: Vec<String> = st.pending.iter().cloned().collect();
            st.later.retain(|region, at| {
                if *at <= now {
                    due.push(region.clone());
                    false
                } else {
                    true
                }
            });
            due.sort();
            due.dedup();
            due
        };
        for region in due {
            self.repair_region(&region, Repair::FromFloor).await;
        }
    }

    /// Sends `e` (a comment or a deletion) to every viewer unless the hub's position covers
    /// it; true when sent.
    fn dispatch(&self, e: &Entry) -> bool {
        let (before, after) = {
            let mut st = self.state.lock();
            if st.pos.covers(e.region(), e.id()) {
                return false;
            }
            let mut pos = Position::clone(&st.pos);
            pos.advance(e.region(), e.id());
            let after = Arc::new(pos);
            (std::mem::replace(&mut st.pos, after.clone()), after)
        };
        let frame = Arc::new(Frame::entry(e, before, after));
        // Only the hub's task dispatches: events are kept in the order they were dispatched.
        self.state.lock().recent.keep(&frame, Instant::now());
        self.broadcast(frame);
        true
    }

    /// Sends a control event (a pin, an unpin) to every viewer of the post, from outside the
    /// hub's task: it goes out with the hub's next turn, which the nudge starts now.
    pub(crate) fn control(&self, frame: Arc<Frame>) {
        self.broadcast(frame);
        self.nudge.notify_one();
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
        self.samples.lock().this_turn.clear();
        // Joiners are taken only now: one that joined after a frame was dispatched already
        // has it in its position (or its replay), and the render skips it.
        let total = self.take_joiners();
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
        METRICS.sse_events_delivered.inc_by(delivered as u64);
        // Once per comment per hub, not per viewer: the histogram takes a lock.
        let now = time::now_millis();
        for c in frame
            .each()
            .iter()
            .filter_map(|p| p.comment.as_ref())
            .filter(|c| c.is_comment)
        {
            // Another region's clock may run ahead of ours: a negative age counts as 0.
            let age_ms = (now - c.id_millis).max(0);
            METRICS
                .publish_to_sse_seconds
                .observe(age_ms as f64 / 1000.0);
        }
    }

    /// Offers `frame` to one shard's viewers (a sample of it to `rate` viewers), forgetting
    /// those gone; returns the events delivered.
    /// Yields between slices of the walk, so a walk of a big post does not hold a worker
    /// from everything else (POSTs, smaller posts) for tens of milliseconds.
    async fn walk_shard(&self, shard: usize, frame: &Arc<Frame>) -> usize {
        // Only the hub's task (and the walks it awaits) touches a shard: taking the list out
        // while walking it is safe, and keeps the lock off the awaits.
        let mut walk = std::mem::take(&mut *self.shards[shard].lock());
        let max = self.fanout.cfg.viewer_buffer;
        let mut kept = 0;
        let mut events = 0;
        let mut samples: Vec<(Rate, Arc<Frame>)> = Vec::new();
        let mut at = 0;
        while at < walk.len() {
            let end = (at + WALK_SLICE).min(walk.len());
            for i in at..end {
                let (taken, n) = match walk[i].opts.rate {
                    None => (walk[i].offer(frame, max), frame.events()),
                    Some(rate) => {
                        // The hub's decision for this rate, asked once per shard walk: a lock
                        // and a map lookup per sampled viewer per frame made the cost grow
                        // with the post's rate instead of with what is shown (BENCHMARKS.md).
                        let sample = match samples.iter().find(|(r, _)| *r == rate) {
                            Some((_, f)) => f.clone(),
                            None => {
                                let f = self.sample(rate, frame);
                                samples.push((rate, f.clone()));
                                f
                            }
                        };
                        (walk[i].offer(&sample, max), sample.events())
                    }
                };
                if taken {
                    walk.swap(kept, i);
                    kept += 1;
                    events += n;
                }
            }
            at = end;
            if at < walk.len() {
                tokio::task::yield_now().await;
            }
        }
        walk.truncate(kept);
        *self.shards[shard].lock() = walk;
        events
    }

    /// `frame` as viewers at `rate` get it: decided once per rate and turn.
    fn sample(&self, rate: Rate, frame: &Arc<Frame>) -> Arc<Frame> {
        let mut samples = self.samples.lock();
        let Samples {
            samplers,
            this_turn,
        } = &mut *samples;
        let decided = this_turn.entry(rate).or_insert_with(|| {
            let now = Instant::now();
            let sampler = samplers
                .entry(rate)
                .or_insert_with(|| Sampler::new(rate, now));
            let mark = sampler
                .position_sent
                .is_none_or(|at| now.duration_since(at) >= SAMPLE_POSITION_EVERY);
            let sampled = frame.sampled(|c| sampler.admit(&c.user_id, now), mark);
            match &sampled {
                Some(f) => {
                    if f.marked {
                        sampler.position_sent = Some(now);
                    }
                    sampler.unmarked = f.unmarked();
                }
                // Nothing left out: its last event's `id:` is the position.
                None if frame.span.is_some() => sampler.unmarked = false,
                None => {}
            }
            sampled
        });
        decided.clone().unwrap_or_else(|| frame.clone())
    }

    /// True while some rate's sampler is kept (a `rate` viewer came in the last minute): the
    /// hub's second tick then runs for it, and idle hubs are not woken every second.
    fn is_sampling(&self) -> bool {
        !self.samples.lock().samplers.is_empty()
    }

    /// Once a second: `event: sampling` to the viewers of each rate that left comments out
    /// in the last second, and the hub's position to those whose resume token lags behind
    /// comments left out (so a resume never replays them); samplers idle for a minute are
    /// forgotten.
    fn report_sampling(&self) {
        let now = Instant::now();
        let pos = self.state.lock().pos.clone();
        let reports: Vec<(Rate, Arc<Frame>)> = {
            let mut samples = self.samples.lock();
            samples.samplers.retain(|_, s| !s.idle(now));
            let mut out = Vec::new();
            for (rate, s) in samples.samplers.iter_mut() {
                if let Some((shown, total)) = s.skipping(now) {
                    out.push((*rate, Arc::new(Frame::sampling(rate.get(), shown, total))));
                }
                if std::mem::take(&mut s.unmarked) {
                    s.position_sent = Some(now);
                    out.push((*rate, Arc::new(Frame::position(pos.clone()))));
                }
            }
            out
        };
        for (rate, frame) in reports {
            self.offer_where(&frame, |c| c.opts.rate == Some(rate));
        }
    }

    /// Every 2 s at most: `event: viewers` to the viewers that asked (`viewers=1`) when the
    /// post's count over every fanout changed.
    fn send_viewer_count(&self, sent: &mut Option<u64>) {
        let n = self
            .fanout
            .counts
            .viewers_with_own(&self.post_id, self.viewers());
        if *sent == Some(n) {
            return;
        }
        if self.offer_where(&Arc::new(Frame::viewers(n)), |c| c.opts.viewers) > 0 {
            *sent = Some(n);
        }
    }

    /// Moves the viewers joined since the last walk into the shards (the smallest first);
    /// returns how many viewers the shards hold.
    fn take_joiners(&self) -> usize {
        let joining = std::mem::take(&mut self.state.lock().joining);
        let mut shards: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        for conn in joining {
            if let Some(smallest) = shards.iter_mut().min_by_key(|s| s.len()) {
                smallest.push(conn);
            }
        }
        shards.iter().map(|s| s.len()).sum()
    }

    /// Offers a frame of no position (a count, a note) to the viewers `to` picks, on the
    /// hub's task between turns; returns how many took it.
    fn offer_where(&self, frame: &Arc<Frame>, to: impl Fn(&Conn) -> bool) -> usize {
        self.take_joiners();
        let max = self.fanout.cfg.viewer_buffer;
        let mut n = 0;
        for shard in &self.shards {
            for conn in shard.lock().iter().filter(|c| to(c)) {
                n += usize::from(conn.offer(frame, max));
            }
        }
        n
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

/// How a repair reads a region.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repair {
    /// After the writer's id (its comments only), or from the floor when the hub has none.
    /// `proven`: the writer published this id, so its comments up to it are all visible.
    Writer {
        writer: String,
        proven: Option<String>,
    },
    /// From the floor, every writer's comments.
    FromFloor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The position covers it: sent before (a repair, another path of the bus).
    Duplicate,
    /// The next of its writer's chain: send it now.
    Deliver,
    /// Something may be missing before it: ask history.
    Repair(Repair),
}

/// What sequencing needs of a live event: where it sits in its writer's chain.
#[derive(Clone, Copy)]
struct Link<'a> {
    region: &'a str,
    id: &'a str,
    prev: Option<&'a str>,
    adopted: bool,
    millis: i64,
}

impl<'a> From<&'a LiveComment> for Link<'a> {
    fn from(lc: &'a LiveComment) -> Link<'a> {
        Link {
            region: &lc.comment.region,
            id: &lc.comment.id,
            prev: lc.prev.as_deref(),
            adopted: lc.adopted,
            millis: lc.comment.timestamp_millis(),
        }
    }
}

impl<'a> Link<'a> {
    /// A deletion's link: its tombstone's id (none from a publisher older than tombstones).
    fn of_deletion(d: &'a Deletion) -> Option<Link<'a>> {
        let id = d.event_id.as_deref()?;
        Some(Link {
            region: &d.region,
            id,
            prev: d.prev.as_deref(),
            adopted: false,
            millis: id::millis_of(id).unwrap_or(0),
        })
    }
}

/// The sequencing decision for a live event (comment or deletion) against the hub's
/// position (pure, so the cases are unit-tested one by one).
fn sequence<'a>(
    pos: &Position,
    link: impl Into<Link<'a>>,
    region_pending: bool,
    now_ms: i64,
) -> Verdict {
    let lc = link.into();
    if pos.covers(lc.region, lc.id) {
        return Verdict::Duplicate;
    }
    let writer = id::writer_of(lc.id);
    let have = pos.writer_id(lc.region, writer);
    if lc.adopted {
        // Finished by another node for an Idempotency-Key: outside every chain.
        return Verdict::Repair(Repair::FromFloor);
    }
    let in_chain = match (have, lc.prev) {
        (Some(have), Some(prev)) => have == prev,
        // The writer's previous comment of the post is at or below the floor.
        (None, Some(prev)) => pos.covers(lc.region, prev),
        // A writer's first comment of the post since it started: a fresh writer id each
        // process start, so nothing of this writer can precede it.
        (None, None) => true,
        // The writer forgot its previous comment (its post map overflowed).
        (Some(_), None) => false,
    };
    // Real ids are at most clock skew ahead of us; one further ahead is checked with history
    // first, so a forged id cannot run the position ahead of real comments.
    let from_the_future = lc.millis > now_ms + VERIFY_AHEAD_MS;
    if in_chain && !from_the_future && !region_pending {
        return Verdict::Deliver;
    }
    Verdict::Repair(Repair::Writer {
        writer: writer.to_string(),
        proven: (!from_the_future).then(|| lc.id.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use livecomments_shared::Comment;
    use livecomments_shared::id::IdGenerator;

    fn live(id: &str, prev: Option<&str>) -> LiveComment {
        LiveComment {
            comment: Comment {
                id: id.to_string().into(),
                post_id: "p".into(),
                user_id: "u".into(),
                text: "t".into(),
                timestamp: time::format_millis(id::millis_of(id).unwrap_or(0)),
                region: "eu".into(),
                metadata: Default::default(),
            },
            prev: prev.map(Into::into),
            adopted: false,
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    /// Two writers of one region, ids interleaved in time, and a position with a floor.
    fn setup() -> (Vec<String>, Vec<String>, Position) {
        let (mut x, mut y) = (IdGenerator::new(1), IdGenerator::new(2));
        let xs: Vec<String> = (0..4)
            .map(|i| x.next(NOW - 9_000 + 2 * i, 0).to_string())
            .collect();
        let ys: Vec<String> = (0..4)
            .map(|i| y.next(NOW - 8_999 + 2 * i, 0).to_string())
            .collect();
        let mut pos = Position::new();
        pos.raise_floor("eu", &id::max_at(NOW - 10_000));
        (xs, ys, pos)
    }

    fn writer_repair(id: &str) -> Verdict {
        Verdict::Repair(Repair::Writer {
            writer: id::writer_of(id).to_string(),
            proven: Some(id.to_string()),
        })
    }

    #[test]
    fn chains_of_two_writers_interleave_freely() {
        let (xs, ys, mut pos) = setup();
        // x's first comment of the post, then y's, then both chains in any order.
        assert_eq!(
            sequence(&pos, &live(&xs[0], None), false, NOW),
            Verdict::Deliver
        );
        pos.advance("eu", &xs[0]);
        assert_eq!(
            sequence(&pos, &live(&ys[1], None), false, NOW),
            Verdict::Deliver
        );
        pos.advance("eu", &ys[1]);
        // y's later comment arrives before x's older one: both still go out.
        assert_eq!(
            sequence(&pos, &live(&xs[1], Some(&xs[0])), false, NOW),
            Verdict::Deliver
        );
        pos.advance("eu", &xs[1]);
        assert_eq!(
            sequence(&pos, &live(&xs[1], Some(&xs[0])), false, NOW),
            Verdict::Duplicate
        );
        assert_eq!(
            sequence(&pos, &live(&ys[1], None), false, NOW),
            Verdict::Duplicate
        );
    }

    #[test]
    fn a_broken_chain_asks_history_with_proof_up_to_the_comment() {
        let (xs, _, mut pos) = setup();
        pos.advance("eu", &xs[0]);
        // xs[1] was lost on the bus.
        assert_eq!(
            sequence(&pos, &live(&xs[2], Some(&xs[1])), false, NOW),
            writer_repair(&xs[2])
        );
        // The writer forgot its previous comment: history decides too.
        assert_eq!(
            sequence(&pos, &live(&xs[2], None), false, NOW),
            writer_repair(&xs[2])
        );
        // An unknown writer whose previous comment lies above the floor: missed.
        let (_, ys, _) = setup();
        assert_eq!(
            sequence(&pos, &live(&ys[1], Some(&ys[0])), false, NOW),
            writer_repair(&ys[1])
        );
    }

    #[test]
    fn a_deletion_is_a_link_of_its_writers_chain() {
        let (xs, _, mut pos) = setup();
        pos.advance("eu", &xs[0]);
        // xs[1] is a deletion (of xs[0]) chained after xs[0]; xs[2] a comment after it.
        let del = |id: &str, prev: &str| Deletion {
            id: xs[0].clone().into(),
            post_id: "p".into(),
            region: "eu".into(),
            event_id: Some(id.to_string().into()),
            prev: Some(prev.to_string().into()),
        };
        let d = del(&xs[1], &xs[0]);
        let link = Link::of_deletion(&d).unwrap();
        assert_eq!(sequence(&pos, link, false, NOW), Verdict::Deliver);
        pos.advance("eu", &xs[1]);
        assert_eq!(
            sequence(&pos, Link::of_deletion(&d).unwrap(), false, NOW),
            Verdict::Duplicate
        );
        assert_eq!(
            sequence(&pos, &live(&xs[2], Some(&xs[1])), false, NOW),
            Verdict::Deliver
        );
        // A lost deletion breaks the chain like a lost comment: the next link asks history.
        let (xs, _, mut pos) = setup();
        pos.advance("eu", &xs[0]);
        assert_eq!(
            sequence(&pos, &live(&xs[2], Some(&xs[1])), false, NOW),
            writer_repair(&xs[2])
        );
        // Without an event id (an older publisher) there is no link at all.
        let mut old = del(&xs[1], &xs[0]);
        old.event_id = None;
        assert!(Link::of_deletion(&old).is_none());
    }

    #[test]
    fn a_previous_comment_below_the_floor_is_in_chain() {
        let (_, ys, mut pos) = setup();
        pos.raise_floor("eu", &ys[0]);
        assert_eq!(
            sequence(&pos, &live(&ys[1], Some(&ys[0])), false, NOW),
            Verdict::Deliver
        );
    }

    #[test]
    fn adopted_future_and_held_back_comments_go_through_history() {
        let (xs, _, pos) = setup();
        let mut adopted = live(&xs[0], None);
        adopted.adopted = true;
        assert_eq!(
            sequence(&pos, &adopted, false, NOW),
            Verdict::Repair(Repair::FromFloor)
        );
        assert_eq!(
            sequence(&pos, &live(&xs[0], None), true, NOW),
            writer_repair(&xs[0])
        );
        let ahead = IdGenerator::new(3).next(NOW + 10_000, 0).to_string();
        assert_eq!(
            sequence(&pos, &live(&ahead, None), false, NOW),
            Verdict::Repair(Repair::Writer {
                writer: id::writer_of(&ahead).to_string(),
                proven: None
            })
        );
        // At or below the floor: delivered before the hub started, or history.
        let old = IdGenerator::new(4).next(NOW - 20_000, 0).to_string();
        assert_eq!(
            sequence(&pos, &live(&old, None), false, NOW),
            Verdict::Duplicate
        );
    }
}
