//! `GET /posts/<id>/reactions`' totals (CONTRACT §11): each region counts its own
//! reactions durably; a reader adds this region's totals (its store) to every other region's
//! (asked over `comments.reaction-totals.<region>`, answered by that region's readers).
//! A region that does not answer within the timeout is left out of the sum, like a region
//! missing from a `GET /comments` page: the totals degrade, they never block.

use std::sync::Arc;
use std::time::Duration;

use livecomments_shared::wire::{self, ReactionTotalsReply, ReactionTotalsRequest};
use livecomments_shared::{Counts, PostId, Region, validate};
use livecomments_store::{Store, StoreResult};

use crate::bus::Rpc;

/// Concurrent totals queries answered per reader.
const MAX_IN_FLIGHT: usize = 64;

pub struct ReactionTotals {
    pub store: Arc<dyn Store>,
    /// The other regions and how to reach them; `None` with one region.
    pub remote: Option<(Rpc, Vec<String>)>,
    pub timeout: Duration,
}

impl ReactionTotals {
    /// Totals over every region that answered: (totals, regions that did not).
    pub async fn of(&self, post: &PostId) -> StoreResult<(Counts, Vec<String>)> {
        let remote = async {
            let Some((rpc, regions)) = &self.remote else {
                return Vec::new();
            };
            let asks = regions.iter().map(|region| async move {
                let reply: Result<ReactionTotalsReply, _> = rpc
                    .request(
                        wire::reaction_totals_subject(region),
                        &ReactionTotalsRequest {
                            post_id: post.clone(),
                        },
                        self.timeout,
                    )
                    .await;
                match reply {
                    Ok(r) if r.error.is_none() => Ok(r.totals),
                    _ => Err(region.clone()),
                }
            });
            futures::future::join_all(asks).await
        };
        let (local, remote) = tokio::join!(self.store.reactions(post), remote);
        let mut total = local?;
        let mut missing = Vec::new();
        for r in remote {
            match r {
                Ok(c) => total.merge(&c),
                Err(region) => missing.push(region),
            }
        }
        Ok((total, missing))
    }
}

/// Answers other regions' totals queries from this region's store.
pub async fn serve(rpc: Rpc, region: String, store: Arc<dyn Store>) -> anyhow::Result<()> {
    rpc.serve(
        wire::reaction_totals_subject(&region),
        wire::SINCE_QUEUE_GROUP,
        MAX_IN_FLIGHT,
        move |q: Option<ReactionTotalsRequest>| {
            let (region, store) = (Region::trusted(region.clone()), store.clone());
            async move {
                let refuse = |e: String| ReactionTotalsReply {
                    region: region.clone(),
                    totals: Counts::default(),
                    error: Some(e),
                };
                let Some(q) = q else {
                    return refuse("malformed request".into());
                };
                if validate::post_id(&q.post_id).is_err() {
                    return refuse("invalid post_id".into());
                }
                match store.reactions(&q.post_id).await {
                    Ok(totals) => ReactionTotalsReply {
                        region: region.clone(),
                        totals,
                        error: None,
                    },
                    Err(e) => refuse(e.to_string()),
                }
            }
        },
    )
    .await
}
