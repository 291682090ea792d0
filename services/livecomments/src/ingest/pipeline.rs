//! Group commit and ordered publish.
//!
//! Every accepted comment goes through one task per process: it takes whatever requests are
//! waiting (up to `MAX_BATCH`), assigns ids from one monotonic generator, writes the batch to
//! the store in one commit, then publishes the created comments *in id order* and answers
//! the callers. While a batch is being written the next one accumulates, so throughput grows
//! with load instead of paying one fsync per comment; a store whose batches are independent
//! round trips (CQL) has several being written at once, finished in the order they formed.
//!
//! Why one task: the process is one *writer* (its ids carry its writer part, `id::writer_of`),
//! and a writer's comments of a post must reach the stream in id order, chained by `prev`,
//! so that a fanout's position can be one id per writer (see `shared::position`). A region
//! may run many such processes; their chains interleave on the subject and fanouts track
//! each one apart. Three things cover what a chain alone cannot see:
//! - the last comments a writer published before the bus lost them: after a reconnect the
//!   writer publishes again what it sent in the last `REPUBLISH_MS` (fanouts de-duplicate);
//! - a writer that died between its commit and its publish: it announces itself every second
//!   on `comments.writers.<region>` and fanouts fetch from history when it falls silent;
//! - a comment another node claimed for an Idempotency-Key and this one finished: published
//!   as `adopted`, which fanouts check with history.
//!
//! Deletions go through the same task (CONTRACT §10): each gets an id of this writer, its
//! tombstone is committed with the removal of the comment, and it is published in the same
//! chain as the writer's comments of the post, so a fanout sequences, repairs and resumes
//! deletions exactly as it does comments.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livecomments_shared::{
    Comment, CommentId, PostId, Region, Tombstone,
    id::{self, IdGenerator},
    time,
    wire::{self, Deletion, LiveComment, LiveEvent, WriterBeat},
};
use tokio::sync::{mpsc, oneshot};

use crate::bus::Bus;
use crate::metrics::METRICS;
use crate::trace::{self, RequestId};
use livecomments_store::{Inserted, NewComment, Store, StoreError, StoreResult, Withdrawal};

const MAX_BATCH: usize = 512;
/// Requests waiting for the writer; beyond this POST answers 503 rather than queue unbounded.
const QUEUE: usize = 8192;
/// Posts whose last published id is remembered for `prev`; past it the map starts over and
/// the next comment of each post goes out with `prev: None` (subscribers check with history).
const MAX_TRACKED_POSTS: usize = 100_000;
/// What is published again after a bus reconnect: the events of the last 5 s (half the
/// position's settle time, so a fanout still tells them apart from what it has), at most
/// 16,384 of them (~3 s of a 5,000/s node).
const REPUBLISH_MS: u64 = 5_000;
/// A comment not visible in the store within 3 s of its stamp is not written at all (503):
/// with the 2 s CQL write timeout, every comment is visible 5 s after its stamp or never
/// (or, when a write given up on lands anyway, is retracted: see [`withdraw`]), which is
/// what lets a fanout hand out from history what is older than that
/// (`fanout::hub`, `RIPE_MS`) and settle positions at 10 s (`position::SETTLE_MS`).
const STAMP_MAX_AGE_MS: i64 = 3_000;
/// Batches of failed comments being withdrawn at once (each a task retrying for a minute).
const WITHDRAWING_MAX: usize = 1024;
const REPUBLISH_MAX: usize = 16_384;

pub struct Submission {
    pub post_id: PostId,
    pub user_id: String,
    pub text: String,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// The request that submitted it: its live event carries it on the bus.
    pub request_id: Option<RequestId>,
}

/// Why a submission was not written.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// [`QUEUE`] requests are already waiting for the writer: the store is slower than the
    /// arrivals. Nothing was queued.
    #[error("the write queue is full")]
    QueueFull,
    /// The writer task is gone (the process is shutting down).
    #[error("the writer has stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A live event to publish, with the request that caused it.
type Outgoing = (LiveEvent, Option<RequestId>);

enum Job {
    Comment {
        sub: Submission,
        reply: oneshot::Sender<StoreResult<Inserted>>,
    },
    Delete {
        del: Removal,
        reply: oneshot::Sender<StoreResult<Tombstone>>,
    },
}

/// A deletion the caller has checked (the comment exists here, and whoever asked may delete it).
pub struct Removal {
    pub post_id: PostId,
    pub comment_id: CommentId,
    /// The comment's region: this one (a comment is deleted where it is stored).
    pub region: Region,
    pub request_id: Option<RequestId>,
}

#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Job>,
    writer: Arc<str>,
}

impl Pipeline {
    /// Starts this process's writer: a fresh writer id (made here, never configured, so that
    /// every node of a region runs with the same flags), the write task and its announcements.
    pub fn start(region: String, store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Self {
        let ids = IdGenerator::new(rand::random::<u64>());
        let writer: Arc<str> = ids.writer().into();
        tracing::info!(%region, writer = %writer, "ingest writer started");
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(announce(region.clone(), writer.to_string(), bus.clone()));
        tokio::spawn(run(region, ids, store, bus, rx, tx.downgrade()));
        Pipeline { tx, writer }
    }

    /// The writer part of the ids this process makes.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Resolves once the comment is durable (or known from its idempotency key).
    pub async fn submit(&self, sub: Submission) -> Result<Inserted, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Job::Comment { sub, reply })?;
        Ok(rx.await.map_err(|_| SubmitError::Stopped)??)
    }

    /// Resolves once the deletion's tombstone is durable (it is published right after).
    pub async fn delete(&self, del: Removal) -> Result<Tombstone, SubmitError> {
        delete_through(&self.tx, del).await
    }

    fn enqueue(&self, job: Job) -> Result<(), SubmitError> {
        enqueue(&self.tx, job)
    }
}

async fn delete_through(tx: &mpsc::Sender<Job>, del: Removal) -> Result<Tombstone, SubmitError> {
    let (reply, rx) = oneshot::channel();
    enqueue(tx, Job::Delete { del, reply })?;
    Ok(rx.await.map_err(|_| SubmitError::Stopped)??)
}

fn enqueue(tx: &mpsc::Sender<Job>, job: Job) -> Result<(), SubmitError> {
    tx.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => {
            METRICS.write_queue_full.inc();
            SubmitError::QueueFull
        }
        mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
    })
}

/// One announcement a second while the process runs (and is not frozen).
async fn announce(region: String, writer: String, bus: Arc<dyn Bus>) {
    let beat = WriterBeat {
        region: region.into(),
        writer,
    };
    let mut every = tokio::time::interval(Duration::from_millis(wire::WRITER_BEAT_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if bus.is_connected() {
            let _ = bus.announce_writer(&beat).await;
        }
    }
}

/// What this writer published lately, for a republish after the bus reconnects.
struct Recent {
    events: VecDeque<(Instant, Outgoing)>,
}

impl Recent {
    fn push(&mut self, ev: Outgoing) {
        if self.events.len() >= REPUBLISH_MAX {
            self.events.pop_front();
        }
        self.events.push_back((Instant::now(), ev));
    }

    fn fresh(&mut self) -> impl Iterator<Item = &Outgoing> {
        let keep = Duration::from_millis(REPUBLISH_MS);
        while self
            .events
            .front()
            .is_some_and(|(at, _)| at.elapsed() > keep)
        {
            self.events.pop_front();
        }
        self.events.iter().map(|(_, ev)| ev)
    }
}

/// A batch taken from the queue, its ids assigned, waiting for its commit.
struct Formed {
    replies: Vec<oneshot::Sender<StoreResult<Inserted>>>,
    request_ids: Vec<Option<RequestId>>,
    withdrawals: Vec<Withdrawal>,
    removals: Vec<(oneshot::Sender<StoreResult<Tombstone>>, Option<RequestId>)>,
    tombstones: Vec<Tombstone>,
}

/// What a batch's commit returned: per comment, per deletion.
type Committed = (Vec<StoreResult<Inserted>>, Vec<StoreResult<()>>);

async fn run(
    region: String,
    mut ids: IdGenerator,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    mut rx: mpsc::Receiver<Job>,
    jobs_tx: mpsc::WeakSender<Job>,
) {
    let writer = ids.writer();
    let mut last_published: HashMap<PostId, CommentId> = HashMap::new();
    let mut recent = Recent {
        events: VecDeque::new(),
    };
    let mut reconnects = bus.reconnects();
    reconnects.mark_unchanged();
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    // Commits run as tasks of their own, so a batch's later round trips (CQL: index rows,
    // then rows) go on while this task publishes; they are finished strictly in the order
    // they were formed, which is id order, so each post's chain still reaches the bus in id
    // order. How many may overlap is the store's to say (`Store::batches_in_flight`).
    let depth = store.batches_in_flight().max(1);
    let mut in_flight: VecDeque<(Formed, tokio::task::JoinHandle<Committed>)> = VecDeque::new();
    let mut open = true;
    loop {
        if !open && in_flight.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            done = async {
                match in_flight.front_mut() {
                    Some((_, commit)) => commit.await,
                    None => std::future::pending().await,
                }
            }, if !in_flight.is_empty() =>
            {
                let Some((formed, _)) = in_flight.pop_front() else { continue };
                let committed = done.unwrap_or_else(|e| {
                    // A panicked commit: every caller gets an error (their 503), and the
                    // comments are withdrawn like any failed write.
                    let err = || StoreError::failed(format!("store commit task failed: {e}"));
                    (
                        formed.replies.iter().map(|_| Err(err())).collect(),
                        formed.tombstones.iter().map(|_| Err(err())).collect(),
                    )
                });
                let created = finish(formed, committed, &store, &region, &jobs_tx);
                let created: Vec<Outgoing> = created
                    .into_iter()
                    .map(|(_, (ev, rid))| (chain(ev, &writer, &mut last_published), rid))
                    .collect();
                publish_all(&bus, &region, &created).await;
                for ev in created {
                    recent.push(ev);
                }
            }
            n = rx.recv_many(&mut jobs, MAX_BATCH), if open && in_flight.len() < depth => {
                if n == 0 {
                    open = false;
                    continue;
                }
                let (formed, batch) = form(&mut jobs, &mut ids, &region);
                let store = store.clone();
                let tombstones = formed.tombstones.clone();
                let commit = tokio::spawn(async move { commit(store.as_ref(), batch, tombstones).await });
                in_flight.push_back((formed, commit));
            }
            Ok(()) = reconnects.changed() => {
                let again: Vec<Outgoing> = recent.fresh().cloned().collect();
                tracing::info!(n = again.len(), "bus reconnected: publishing recent events again");
                publish_all(&bus, &region, &again).await;
            }
        }
    }
}

/// Takes the waiting jobs as one batch: ids in arrival order, for both kinds (the chain of
/// each post follows them).
fn form(jobs: &mut Vec<Job>, ids: &mut IdGenerator, region: &str) -> (Formed, Vec<NewComment>) {
    let now = time::now_millis();
    let mut formed = Formed {
        replies: Vec::with_capacity(jobs.len()),
        request_ids: Vec::with_capacity(jobs.len()),
        withdrawals: Vec::new(),
        removals: Vec::new(),
        tombstones: Vec::new(),
    };
    let mut batch: Vec<NewComment> = Vec::with_capacity(jobs.len());
    for job in jobs.drain(..) {
        let id = ids.next(now, rand::random::<u128>());
        match job {
            Job::Comment { sub, reply } => {
                formed.replies.push(reply);
                formed.request_ids.push(sub.request_id);
                batch.push(NewComment {
                    comment: Comment {
                        id: id.to_string().into(),
                        post_id: sub.post_id,
                        user_id: sub.user_id,
                        text: sub.text,
                        timestamp: time::format_millis(id.timestamp_ms() as i64),
                        region: region.to_string().into(),
                        metadata: sub.metadata,
                    },
                    idempotency_key: sub.idempotency_key,
                    visible_by_ms: Some(now + STAMP_MAX_AGE_MS),
                });
            }
            Job::Delete { del, reply } => {
                formed.tombstones.push(Tombstone {
                    id: id.to_string().into(),
                    post_id: del.post_id,
                    comment_id: del.comment_id,
                    region: del.region,
                });
                formed.removals.push((reply, del.request_id));
            }
        }
    }
    formed.withdrawals = batch.iter().map(Withdrawal::of).collect();
    (formed, batch)
}

/// One batch's commit: its comments and its deletions, at once when it has both.
async fn commit(
    store: &dyn Store,
    batch: Vec<NewComment>,
    tombstones: Vec<Tombstone>,
) -> Committed {
    let committing = std::time::Instant::now();
    let committed = if tombstones.is_empty() {
        (store.insert_batch(batch).await, Vec::new())
    } else if batch.is_empty() {
        (Vec::new(), store.record_deletions(tombstones).await)
    } else {
        tokio::join!(
            store.insert_batch(batch),
            store.record_deletions(tombstones)
        )
    };
    METRICS
        .store_commit_seconds
        .observe(committing.elapsed().as_secs_f64());
    METRICS.store_batches.inc();
    committed
}

/// Answers a committed batch's callers (the events are durable) and returns what to publish,
/// in id order; failed comments are withdrawn in the background.
fn finish(
    formed: Formed,
    (results, deleted): Committed,
    store: &Arc<dyn Store>,
    region: &str,
    jobs_tx: &mpsc::WeakSender<Job>,
) -> Vec<(CommentId, Outgoing)> {
    let Formed {
        replies,
        request_ids,
        withdrawals,
        removals,
        tombstones,
    } = formed;
    let mut created: Vec<(CommentId, Outgoing)> = Vec::new();
    let mut failed = Vec::new();
    let answers = results.into_iter().zip(replies).zip(withdrawals);
    for (((res, reply), withdrawal), request_id) in answers.zip(request_ids) {
        match &res {
            Ok(Inserted::Created(c)) => {
                METRICS.comments_created.inc();
                created.push((
                    c.id.clone(),
                    (
                        LiveEvent::Comment(LiveComment {
                            comment: c.clone(),
                            prev: None,
                            adopted: false,
                        }),
                        request_id,
                    ),
                ));
            }
            Ok(Inserted::Existing(_)) => {
                METRICS.comments_idempotent_replays.inc();
            }
            Err(e) => {
                METRICS.store_errors.inc();
                tracing::warn!(error = %e, "store write failed");
                // A retry waiting out an earlier attempt wrote nothing.
                if !matches!(e, StoreError::KeyInProgress(_)) {
                    failed.push(withdrawal);
                }
            }
        }
        let _ = reply.send(res);
    }
    for ((res, (reply, request_id)), t) in deleted.into_iter().zip(removals).zip(tombstones) {
        match res {
            Ok(()) => {
                METRICS.comments_deleted.inc();
                created.push((
                    t.id.clone(),
                    (
                        LiveEvent::Delete(Deletion {
                            id: t.comment_id.clone(),
                            post_id: t.post_id.clone(),
                            region: t.region.clone(),
                            event_id: Some(t.id.clone()),
                            prev: None,
                        }),
                        request_id,
                    ),
                ));
                let _ = reply.send(Ok(t));
            }
            Err(e) => {
                METRICS.store_errors.inc();
                tracing::warn!(error = %e, comment_id = %t.comment_id, "deletion failed");
                let _ = reply.send(Err(e));
            }
        }
    }
    if !failed.is_empty() {
        withdraw(store.clone(), failed, region.to_string(), jobs_tx.clone());
    }
    // Ids were handed out in job order: sorting by them restores it across both kinds.
    created.sort_by(|a, b| a.0.cmp(&b.0));
    created
}

/// Comments answered 503 may still appear: a write reported failed can reach replicas
/// anyway, and the driver may send it again. Never published, they would be in history but
/// behind this writer's stream in every fanout, so they are withdrawn (a delete shadowing
/// every copy: rows carry their stamp's time). A write whose outcome was unknown can also
/// land *before* the withdrawal, late (a coordinator frozen for seconds runs it when it
/// wakes), and a fanout's repair hands out what history holds: so each comment removed is
/// then retracted in the stream, with a deletion in this writer's chain (a tombstone like a
/// user's, replayed on resume), and every viewer ends with what the store holds. Retried
/// for a minute in the background; at most `WITHDRAWING_MAX` batches at once (then counted
/// and left: the store is down for long).
fn withdraw(
    store: Arc<dyn Store>,
    failed: Vec<Withdrawal>,
    region: String,
    jobs: mpsc::WeakSender<Job>,
) {
    static WITHDRAWING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    use std::sync::atomic::Ordering::Relaxed;
    if WITHDRAWING.fetch_add(1, Relaxed) >= WITHDRAWING_MAX {
        WITHDRAWING.fetch_sub(1, Relaxed);
        METRICS.withdraw_failures.inc_by(failed.len() as u64);
        tracing::error!(
            n = failed.len(),
            "too many withdrawals pending; these may appear in history unstreamed"
        );
        return;
    }
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(100);
        let mut removed: Option<Vec<Withdrawal>> = None;
        for attempt in 0.. {
            let step: Result<(), SubmitError> = match removed.as_mut() {
                None => match store.withdraw(&failed).await {
                    Ok(r) => {
                        removed = Some(r);
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                },
                Some(left) => retract(&jobs, left, &region).await,
            };
            match step {
                Ok(()) if removed.as_ref().is_some_and(|r| r.is_empty()) => break,
                Ok(()) => continue,
                Err(e) if attempt < 12 => {
                    tracing::warn!(error = %e, attempt, "withdrawing failed comments; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(8));
                }
                Err(e) => {
                    METRICS.withdraw_failures.inc_by(failed.len() as u64);
                    tracing::error!(error = %e, n = failed.len(), "could not withdraw failed comments");
                    break;
                }
            }
        }
        WITHDRAWING.fetch_sub(1, Relaxed);
    });
}

/// Publishes a deletion of each removed comment through the writer (so it is chained and
/// recorded as any deletion); what succeeded leaves `left`.
async fn retract(
    jobs: &mpsc::WeakSender<Job>,
    left: &mut Vec<Withdrawal>,
    region: &str,
) -> Result<(), SubmitError> {
    let Some(tx) = jobs.upgrade() else {
        left.clear(); // shutting down: the next start's repair reads the store, which holds none
        return Ok(());
    };
    while let Some(w) = left.last() {
        delete_through(
            &tx,
            Removal {
                post_id: w.post_id.clone(),
                comment_id: w.id.clone(),
                region: region.to_string().into(),
                request_id: None,
            },
        )
        .await?;
        METRICS.withdrawals_retracted.inc();
        left.pop();
    }
    Ok(())
}

/// Puts an event this writer made into its chain: `prev` is the writer's previous event of
/// the post (comment or deletion). A comment with another writer's id on it (finished for
/// an Idempotency-Key) stays outside every chain, as `adopted`.
fn chain(mut ev: LiveEvent, writer: &str, last: &mut HashMap<PostId, CommentId>) -> LiveEvent {
    let (post_id, id) = match &ev {
        LiveEvent::Comment(lc) => (lc.comment.post_id.clone(), lc.comment.id.clone()),
        LiveEvent::Delete(d) => match &d.event_id {
            Some(id) => (d.post_id.clone(), id.clone()),
            None => return ev,
        },
    };
    if id::writer_of(&id) != writer {
        if let LiveEvent::Comment(lc) = &mut ev {
            lc.adopted = true;
        }
        return ev;
    }
    if last.len() >= MAX_TRACKED_POSTS && !last.contains_key(&post_id) {
        last.clear();
    }
    let prev = last.insert(post_id, id);
    match &mut ev {
        LiveEvent::Comment(lc) => lc.prev = prev,
        LiveEvent::Delete(d) => d.prev = prev,
    }
    ev
}

async fn publish_all(bus: &Arc<dyn Bus>, region: &str, events: &[Outgoing]) {
    let mut failed = false;
    for (ev, request_id) in events {
        if failed || !bus.is_connected() {
            METRICS.bus_publish_errors.inc();
            failed = true;
            continue;
        }
        if let Err(e) = bus.publish(region, ev, request_id.as_ref()).await {
            METRICS.bus_publish_errors.inc();
            tracing::warn!(error = %e, "publish failed; published again after the reconnect");
            failed = true;
        } else if let LiveEvent::Comment(lc) = ev {
            tracing::debug!(
                target: trace::TARGET,
                request_id = request_id.as_ref().map(RequestId::as_str),
                comment_id = %lc.comment.id,
                post_id = %lc.comment.post_id,
                "published live comment"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(id: String, post: &str) -> Comment {
        Comment {
            id: id.into(),
            post_id: post.into(),
            user_id: "u".into(),
            text: "t".into(),
            timestamp: String::new(),
            region: "eu".into(),
            metadata: BTreeMap::new(),
        }
    }

    fn live(c: &Comment) -> LiveEvent {
        LiveEvent::Comment(LiveComment {
            comment: c.clone(),
            prev: None,
            adopted: false,
        })
    }

    fn prev_of(ev: LiveEvent) -> (Option<CommentId>, bool) {
        match ev {
            LiveEvent::Comment(lc) => (lc.prev, lc.adopted),
            LiveEvent::Delete(d) => (d.prev, false),
        }
    }

    #[test]
    fn own_comments_chain_per_post_and_adopted_ones_stay_outside() {
        let mut mine = IdGenerator::new(1);
        let mut other = IdGenerator::new(2);
        let w = mine.writer();
        let mut last = HashMap::new();
        let a = comment(mine.next(10, 0).to_string(), "p");
        let b = comment(mine.next(11, 0).to_string(), "q");
        let c = comment(mine.next(12, 0).to_string(), "p");
        let adopted = comment(other.next(12, 0).to_string(), "p");
        assert_eq!(prev_of(chain(live(&a), &w, &mut last)), (None, false));
        assert_eq!(prev_of(chain(live(&b), &w, &mut last)), (None, false));
        assert_eq!(prev_of(chain(live(&adopted), &w, &mut last)), (None, true));
        assert_eq!(
            prev_of(chain(live(&c), &w, &mut last)),
            (Some(a.id.clone()), false),
            "the adopted comment is not in this writer's chain"
        );
        // A deletion is the next link of the post's chain, and the next comment follows it.
        let del_id: CommentId = mine.next(13, 0).to_string().into();
        let del = LiveEvent::Delete(Deletion {
            id: a.id.clone(),
            post_id: "p".into(),
            region: "eu".into(),
            event_id: Some(del_id.clone()),
            prev: None,
        });
        assert_eq!(
            prev_of(chain(del, &w, &mut last)),
            (Some(c.id.clone()), false)
        );
        let d = comment(mine.next(14, 0).to_string(), "p");
        assert_eq!(
            prev_of(chain(live(&d), &w, &mut last)),
            (Some(del_id), false)
        );
    }
}
