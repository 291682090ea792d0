//! Answers `comments.since.<region>` from this region's store (queue group, so each request
//! is served by one reader). Requests are decoded and validated like HTTP input: a malformed
//! request gets an error reply, never a crash.

use std::sync::Arc;

use futures::StreamExt;
use livecomments_shared::{
    id, validate,
    wire::{self, SinceReply, SinceRequest},
};
use tokio::sync::Semaphore;

use super::history::page_from_store;
use crate::metrics::METRICS;
use crate::store::Store;

/// Concurrent since-queries per reader; more wait in the subscription's bounded buffer.
const MAX_IN_FLIGHT: usize = 64;

pub async fn serve(
    client: async_nats::Client,
    region: String,
    store: Arc<dyn Store>,
) -> anyhow::Result<()> {
    let mut sub = client
        .queue_subscribe(
            wire::since_subject(&region),
            wire::SINCE_QUEUE_GROUP.to_string(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to since-queries: {e}"))?;
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    tracing::info!(%region, "answering since-queries");
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (client, store, region) = (client.clone(), store.clone(), region.clone());
        tokio::spawn(async move {
            let reply = answer(&msg.payload, &region, store.as_ref()).await;
            if let Ok(bytes) = wire::encode(&reply) {
                let _ = client.publish(reply_to, bytes.into()).await;
            }
            METRICS.since_queries_served.inc();
            drop(permit);
        });
    }
    Ok(())
}

async fn answer(payload: &[u8], region: &str, store: &dyn Store) -> SinceReply {
    let refuse = |e: String| SinceReply {
        region: region.to_string(),
        comments: vec![],
        more: false,
        error: Some(e),
    };
    let q: SinceRequest = match wire::decode(payload) {
        Ok(q) => q,
        Err(_) => return refuse("malformed request".into()),
    };
    if validate::post_id(&q.post_id).is_err() {
        return refuse("invalid post_id".into());
    }
    if q.after.as_deref().is_some_and(|a| !id::is_valid(a))
        || q.before.as_deref().is_some_and(|b| !id::is_valid(b))
    {
        return refuse("invalid cursor".into());
    }
    match page_from_store(store, region, &q).await {
        Ok(page) => SinceReply {
            region: region.to_string(),
            comments: page.comments,
            more: page.more,
            error: None,
        },
        Err(_) => refuse("store unavailable".into()),
    }
}
