//! Deletions. A comment lives in the store of the region that accepted it; a DELETE that
//! lands in another region is forwarded over NATS (`comments.delete.<region>`) to the owner,
//! whose writer (`ingest::pipeline`) records a tombstone with an id of its own, removes the
//! comment and publishes `event: delete` in its chain, so every region's streams and reads
//! lose it, and a viewer that was away gets the deletion on resume (CONTRACT §10).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use futures::future::join_all;
use livecomments_shared::wire::{self, DeleteReply, DeleteRequest};

use livecomments_shared::{id, validate};

use super::pipeline::{Pipeline, Removal, SubmitError};
use crate::bus::Rpc;
use livecomments_store::Store;

const FORWARD_TIMEOUT: Duration = Duration::from_millis(1500);
const MAX_IN_FLIGHT: usize = 64;
/// Failed deletions being retried at once (each a task retrying for about a minute).
const RETRYING_MAX: usize = 1024;

/// What a deletion did (the same type answers forwarded deletions on NATS).
pub use livecomments_shared::wire::DeleteOutcome as Outcome;

/// Deletes from this region's store when the comment is here.
pub async fn delete_local(store: &dyn Store, pipeline: &Pipeline, req: &DeleteRequest) -> Outcome {
    let comment = match store.get(&req.post_id, &req.id).await {
        Ok(Some(c)) => c,
        Ok(None) => return Outcome::NotFound,
        Err(_) => return Outcome::Error,
    };
    if comment.user_id != req.user_id && !req.moderator {
        return Outcome::Forbidden;
    }
    let removal = || Removal {
        post_id: req.post_id.clone(),
        comment_id: req.id.clone(),
        region: comment.region.clone(),
        request_id: crate::trace::current(),
    };
    match pipeline.delete(removal()).await {
        Ok(_) => Outcome::Deleted,
        Err(SubmitError::Store(e)) => {
            // A CQL write reported failed may still be applied later (the batchlog replays
            // it): the comment would be gone with a tombstone nobody published. Recording
            // the deletion again, with a fresh id, publishes it whatever the first attempt
            // did; a second tombstone of one comment changes nothing for a viewer.
            tracing::warn!(error = %e, comment_id = %req.id, "deletion failed; retrying in the background");
            retry(pipeline.clone(), removal());
            Outcome::Error
        }
        Err(_) => Outcome::Error,
    }
}

/// Records a failed deletion again until it takes: every 100 ms doubling to 8 s, for about a
/// minute; at most [`RETRYING_MAX`] at once (past that the store has been down for long, and
/// the caller's own retry is what is left).
fn retry(pipeline: Pipeline, removal: Removal) {
    static RETRYING: AtomicUsize = AtomicUsize::new(0);
    if RETRYING.fetch_add(1, Relaxed) >= RETRYING_MAX {
        RETRYING.fetch_sub(1, Relaxed);
        return;
    }
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(100);
        for _ in 0..12 {
            tokio::time::sleep(wait).await;
            let again = Removal {
                post_id: removal.post_id.clone(),
                comment_id: removal.comment_id.clone(),
                region: removal.region.clone(),
                request_id: removal.request_id.clone(),
            };
            if pipeline.delete(again).await.is_ok() {
                break;
            }
            wait = (wait * 2).min(Duration::from_secs(8));
        }
        RETRYING.fetch_sub(1, Relaxed);
    });
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
    pipeline: Pipeline,
) -> anyhow::Result<()> {
    let subject = wire::delete_subject(&region);
    rpc.serve(
        subject,
        wire::DELETE_QUEUE_GROUP,
        MAX_IN_FLIGHT,
        move |req: Option<DeleteRequest>| {
            let (store, pipeline) = (store.clone(), pipeline.clone());
            async move {
                let outcome = match req {
                    Some(req)
                        if validate::post_id(&req.post_id).is_ok()
                            && id::is_valid(&req.id)
                            && validate::user_id(&req.user_id) =>
                    {
                        delete_local(store.as_ref(), &pipeline, &req).await
                    }
                    _ => Outcome::NotFound,
                };
                DeleteReply { outcome }
            }
        },
    )
    .await
}
