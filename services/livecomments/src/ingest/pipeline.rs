//! Group commit and ordered publish.
//!
//! Every accepted comment goes through one task per process: it takes whatever requests are
//! waiting (up to `MAX_BATCH`), assigns ids from one monotonic generator, writes the batch to
//! the store in one commit, then publishes the created comments *in id order* and answers
//! the callers. While a batch is being written the next one accumulates, so throughput grows
//! with load instead of paying one fsync per comment.
//!
//! Why one task: the live stream of a region must carry a post's comments in id order —
//! resume positions are "everything up to id X" (see `shared::position`). Publishing from
//! the single writer keeps that true without coordination.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::collections::HashMap;

use livecomments_shared::{
    Comment,
    id::IdGenerator,
    time,
    wire::{LiveComment, LiveEvent},
};
use tokio::sync::{mpsc, oneshot};

use crate::bus::Bus;
use crate::metrics::METRICS;
use crate::store::{Inserted, NewComment, Store, StoreError, StoreResult};

const MAX_BATCH: usize = 512;
/// Requests waiting for the writer; beyond this POST answers 503 rather than queue unbounded.
const QUEUE: usize = 8192;
/// Posts whose last published id is remembered for `prev`; past it the map starts over and
/// the next comment of each post goes out with `prev: None` (subscribers accept it unchecked).
const MAX_TRACKED_POSTS: usize = 100_000;

pub struct Submission {
    pub post_id: String,
    pub user_id: String,
    pub text: String,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
}

struct Job {
    sub: Submission,
    reply: oneshot::Sender<StoreResult<Inserted>>,
}

#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Job>,
}

impl Pipeline {
    pub fn start(region: String, store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(region, store, bus, rx));
        Pipeline { tx }
    }

    /// Resolves once the comment is durable (or known from its idempotency key).
    pub async fn submit(&self, sub: Submission) -> StoreResult<Inserted> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job { sub, reply })
            .map_err(|_| StoreError::Unavailable("write queue full".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }
}

async fn run(
    region: String,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut ids = IdGenerator::new();
    let mut last_published: HashMap<String, String> = HashMap::new();
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return;
        }
        let now = time::now_millis();
        let mut replies = Vec::with_capacity(jobs.len());
        let batch: Vec<NewComment> = jobs
            .drain(..)
            .map(|Job { sub, reply }| {
                replies.push(reply);
                let id = ids.next(now, rand::random::<u128>());
                NewComment {
                    comment: Comment {
                        id: id.to_string(),
                        post_id: sub.post_id,
                        user_id: sub.user_id,
                        text: sub.text,
                        timestamp: time::format_millis(id.timestamp_ms() as i64),
                        region: region.clone(),
                        metadata: sub.metadata,
                    },
                    idempotency_key: sub.idempotency_key,
                }
            })
            .collect();
        let results = store.insert_batch(batch).await;
        METRICS.store_batches.inc();
        // Answer first (the comments are durable), then publish in id order. When the bus
        // is down, the first failed publish skips the rest of the batch instead of waiting
        // on each: viewers repair from the store either way.
        let mut created = Vec::new();
        for (res, reply) in results.into_iter().zip(replies) {
            match &res {
                Ok(Inserted::Created(c)) => {
                    METRICS.comments_created.inc();
                    if last_published.len() >= MAX_TRACKED_POSTS
                        && !last_published.contains_key(&c.post_id)
                    {
                        last_published.clear();
                    }
                    let prev = last_published.insert(c.post_id.clone(), c.id.clone());
                    created.push(LiveEvent::Comment(LiveComment {
                        comment: c.clone(),
                        prev,
                    }));
                }
                Ok(Inserted::Existing(_)) => METRICS.comments_idempotent_replays.inc(),
                Err(e) => {
                    METRICS.store_errors.inc();
                    tracing::warn!(error = %e, "store write failed");
                }
            }
            let _ = reply.send(res);
        }
        let mut failed = false;
        for ev in &created {
            if failed || !bus.is_connected() {
                METRICS.bus_publish_errors.inc();
                failed = true;
                continue;
            }
            if let Err(e) = bus.publish(&region, ev).await {
                METRICS.bus_publish_errors.inc();
                tracing::warn!(error = %e, "publish failed; viewers will repair from the store");
                failed = true;
            }
        }
    }
}
