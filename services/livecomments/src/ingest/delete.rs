//! Deletions. A comment lives in the store of the region that accepted it; a DELETE that
//! lands in another region is forwarded over NATS (`comments.delete.<region>`) to the owner,
//! which deletes it and publishes `event: delete` on its live subject, so every region's
//! streams and reads lose it.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use livecomments_shared::wire::{self, DeleteReply, DeleteRequest, Deletion, LiveEvent};

use livecomments_shared::{id, validate};

use crate::bus::{Bus, Rpc};
use crate::metrics::METRICS;
use livecomments_store::Store;

const FORWARD_TIMEOUT: Duration = Duration::from_millis(1500);
const MAX_IN_FLIGHT: usize = 64;

/// What a deletion did (the same type answers forwarded deletions on NATS).
pub use livecomments_shared::wire::DeleteOutcome as Outcome;

/// Deletes from this region's store when the comment is here.
pub async fn delete_local(
    store: &dyn Store,
    bus: &dyn Bus,
    region: &str,
    req: &DeleteRequest,
) -> Outcome {
    let comment = match store.get(&req.post_id, &req.id).await {
        Ok(Some(c)) => c,
        Ok(None) => return Outcome::NotFound,
        Err(_) => return Outcome::Error,
    };
    if comment.user_id != req.user_id && !req.moderator {
        return Outcome::Forbidden;
    }
    match store.delete(&req.post_id, &req.id).await {
        Ok(true) => {}
        Ok(false) => return Outcome::NotFound,
        Err(_) => return Outcome::Error,
    }
    METRICS.comments_deleted.inc();
    let ev = LiveEvent::Delete(Deletion {
        id: req.id.clone(),
        post_id: req.post_id.clone(),
        region: comment.region,
    });
    if bus
        .publish(region, &ev, crate::trace::current().as_ref())
        .await
        .is_err()
    {
        METRICS.bus_publish_errors.inc();
    }
    Outcome::Deleted
}

/// Asks every other region; the one holding the comment answers.
pub async fn delete_remote(rpc: &Rpc, regions: &[String], req: &DeleteRequest) -> Outcome {
    let answers = join_all(regions.iter().map(|r| async move {
        rpc.request::<_, DeleteReply>(wire::delete_subject(r), req, FORWARD_TIMEOUT)
            .await
            .map_or(Outcome::Error, |reply| reply.outcome)
    }))
    .await;
    for wanted in [Outcome::Deleted, Outcome::Forbidden, Outcome::Error] {
        if answers.contains(&wanted) {
            return wanted;
        }
    }
    Outcome::NotFound
}

/// Answers other regions' forwarded deletions for this region.
pub async fn serve(
    rpc: Rpc,
    region: String,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
) -> anyhow::Result<()> {
    let subject = wire::delete_subject(&region);
    rpc.serve(
        subject,
        wire::DELETE_QUEUE_GROUP,
        MAX_IN_FLIGHT,
        move |req: Option<DeleteRequest>| {
            let (region, store, bus) = (region.clone(), store.clone(), bus.clone());
            async move {
                let outcome = match req {
                    Some(req)
                        if validate::post_id(&req.post_id).is_ok()
                            && id::is_valid(&req.id)
                            && validate::user_id(&req.user_id) =>
                    {
                        delete_local(store.as_ref(), bus.as_ref(), &region, &req).await
                    }
                    _ => Outcome::NotFound,
                };
                DeleteReply { outcome }
            }
        },
    )
    .await
}
