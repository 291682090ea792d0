//! How a node learns the moderation state (docs/MODERATION.md):
//!
//! 1. at start, from its regional store (`Store::moderation`), before it serves: a node
//!    never accepts a POST without knowing the region's bans;
//! 2. live, from `comments.moderation.*` on the bus: every change of every region, applied
//!    within milliseconds; a change from another region is also written to this region's
//!    store, so the region enforces it after any restart, even while that region is cut off;
//! 3. every second, from its store's log (`Store::moderation_since`, the last seconds):
//!    what another node of the region wrote while this node's bus was down;
//! 4. every second, from every other region (`comments.modsync.<region>`, request/reply
//!    answered from memory): everything changed there since the last answer. A region that
//!    was cut off learns what it missed within a second of being reachable again, and a
//!    restarted process (or a fanout, which has no store) gets the whole state this way.
//!
//! Records merge by last writer wins, so the four paths may deliver the same change in any
//! order and any number of times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use livecomments_shared::moderation::{self, Record, SyncReply, SyncRequest};
use livecomments_shared::time::now_millis;
use livecomments_shared::validate;
use livecomments_store::{MODERATION_MAX_RECORDS, Store};

use super::ModState;
use crate::bus::{Bus, Rpc};

/// How often the store's log and the other regions are asked: the contract's 2 s, with one
/// second left for the ask itself.
const EVERY: Duration = Duration::from_secs(1);
/// Re-read this far back: a record is stamped before it is written, and a write may take up
/// to the CQL write timeout (2 s) plus clock skew between nodes; 10 s covers both with room.
/// Re-reading a record costs nothing (last writer wins).
const SLACK_MS: i64 = 10_000;
/// A sync request waits this long for the other region (same bound as a since-query).
const SYNC_TIMEOUT: Duration = Duration::from_millis(1500);
/// Sync requests answered at once per node; more wait in the subscription's buffer.
const SYNC_IN_FLIGHT: usize = 16;
/// Pages of one sync round: 200 × 500 records = the whole of `MODERATION_MAX_RECORDS`.
const MAX_PAGES: usize = 200;

/// Loads the state from the regional store (the first step, before serving).
pub async fn load(state: &ModState, store: &dyn Store) -> anyhow::Result<()> {
    let records = store
        .moderation(MODERATION_MAX_RECORDS)
        .await
        .map_err(|e| anyhow::anyhow!("loading bans and post settings from the store: {e}"))?;
    let n = records.len();
    state.apply(records);
    state.prune();
    tracing::info!(records = n, active = state.len(), "moderation state loaded");
    Ok(())
}

/// What a node runs to stay current. `store`: this region's, when the node holds it;
/// `remote`: the regions it asks (the other ones; every region, its own included, for a node
/// without a store).
pub struct Syncer {
    pub state: Arc<ModState>,
    pub store: Option<Arc<dyn Store>>,
    pub bus: Arc<dyn Bus>,
    pub rpc: Option<Rpc>,
    pub region: String,
    pub remote: Vec<String>,
}

impl Syncer {
    /// Starts the background tasks (steps 2–4; and answering other regions when this node
    /// holds the store).
    pub fn spawn(self) {
        let me = Arc::new(self);
        tokio::spawn(me.clone().follow_bus());
        if me.store.is_some() {
            tokio::spawn(me.clone().reread_store());
        }
        if let Some(rpc) = me.rpc.clone() {
            if me.store.is_some() {
                tokio::spawn(me.clone().answer(rpc.clone()));
            }
            if !me.remote.is_empty() {
                tokio::spawn(me.clone().ask_regions(rpc));
            }
        }
        let pruner = me.state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                pruner.prune();
            }
        });
    }

    /// Applies `records`; those of other regions that won are written to this region's
    /// store too (once per node that hears them: the same write, harmless).
    async fn take(&self, records: Vec<Record>) {
        let won = self.state.apply(records);
        let foreign: Vec<Record> = won
            .into_iter()
            .filter(|r| r.origin.as_str() != self.region)
            .collect();
        if let (Some(store), false) = (&self.store, foreign.is_empty())
            && let Err(e) = store.put_moderation(&foreign).await
        {
            // Still enforced from memory; the next sync round after a restart brings it again.
            tracing::warn!(error = %e, "could not store moderation records of another region");
        }
    }

    async fn follow_bus(self: Arc<Self>) {
        loop {
            match self.bus.subscribe_moderation().await {
                Ok(mut sub) => {
                    while let Some(change) = sub.next().await {
                        self.take(change.records).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "subscribing to moderation changes failed"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn reread_store(self: Arc<Self>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        // The start of the last read that succeeded: everything stamped `SLACK_MS` before
        // it was visible then (see `SLACK_MS`), so the next read starts there.
        let mut last = now_millis();
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let started = now_millis();
            match store
                .moderation_since(last - SLACK_MS, MODERATION_MAX_RECORDS)
                .await
            {
                Ok(rows) => {
                    last = started;
                    self.state.apply(rows);
                }
                Err(e) => tracing::debug!(error = %e, "moderation re-read failed; next second"),
            }
        }
    }

    async fn answer(self: Arc<Self>, rpc: Rpc) {
        let state = self.state.clone();
        let region = self.region.clone();
        let served = rpc
            .serve(
                moderation::sync_subject(&self.region),
                moderation::SYNC_QUEUE_GROUP,
                SYNC_IN_FLIGHT,
                move |q: Option<SyncRequest>| {
                    let (state, region) = (state.clone(), region.clone());
                    async move {
                        let (records, more) = match q {
                            Some(q) => state.since(
                                q.after_ms,
                                q.after_key.as_deref(),
                                q.limit.clamp(1, moderation::SYNC_MAX_LIMIT) as usize,
                            ),
                            None => (Vec::new(), false),
                        };
                        SyncReply {
                            region: region.into(),
                            records,
                            more,
                        }
                    }
                },
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "moderation sync responder stopped");
        }
    }

    async fn ask_regions(self: Arc<Self>, rpc: Rpc) {
        // Per region: when the last round that it answered started (our clock); absent =
        // never answered yet, so the whole state is asked for (a fresh process, a fanout).
        let mut answered: HashMap<String, i64> = HashMap::new();
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let started = now_millis();
            let me = &self;
            let rounds = self.remote.iter().map(|region| {
                // Everything stamped `SLACK_MS` before the last answered round was in the
                // other region's memory then (see `SLACK_MS`).
                let after = answered.get(region).map_or(0, |t| t - SLACK_MS);
                let rpc = rpc.clone();
                async move { (region.clone(), me.ask(&rpc, region, after).await) }
            });
            for (region, ok) in futures::future::join_all(rounds).await {
                if ok {
                    answered.insert(region, started);
                }
            }
        }
    }

    /// One round with `region`: every page of records changed after `after_ms`. False when
    /// the region did not answer (asked again next second from the same point).
    async fn ask(&self, rpc: &Rpc, region: &str, after_ms: i64) -> bool {
        let mut q = SyncRequest {
            after_ms,
            after_key: None,
            limit: moderation::SYNC_MAX_LIMIT,
        };
        for _ in 0..MAX_PAGES {
            let reply: SyncReply = match rpc
                .request(moderation::sync_subject(region), &q, SYNC_TIMEOUT)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(region, error = %e, "moderation sync: no answer");
                    return false;
                }
            };
            if !validate::is_region(&reply.region) || reply.region.as_str() != region {
                return false;
            }
            let last = reply.records.last().map(|r| (r.updated_at_ms, r.key()));
            // Foreign input: only records that pass the rules.
            let records: Vec<Record> = reply.records.into_iter().filter(Record::is_sane).collect();
            self.take(records).await;
            match (reply.more, last) {
                (true, Some((at, key))) => {
                    q.after_ms = at;
                    q.after_key = Some(key);
                }
                _ => return true,
            }
        }
        true
    }
}
