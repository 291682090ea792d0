//! Answers `comments.since.<region>` from this region's store (queue group, so each request
//! is served by one reader). Requests are decoded and validated like HTTP input: a malformed
//! request gets an error reply, never a crash.

use std::sync::Arc;

use livecomments_shared::{
    id, validate,
    wire::{self, SinceReply, SinceRequest},
};

use super::history::page_from_store;
use crate::bus::Rpc;
use crate::metrics::METRICS;
use livecomments_store::Store;

/// Concurrent since-queries per reader; more wait in the subscription's bounded buffer.
const MAX_IN_FLIGHT: usize = 64;

pub async fn serve(rpc: Rpc, region: String, store: Arc<dyn Store>) -> anyhow::Result<()> {
    let subject = wire::since_subject(&region);
    rpc.serve(
        subject,
        wire::SINCE_QUEUE_GROUP,
        MAX_IN_FLIGHT,
        move |q: Option<SinceRequest>| {
            let (region, store) = (region.clone(), store.clone());
            async move {
                let reply = answer(q, &region, store.as_ref()).await;
                METRICS.since_queries_served.inc();
                reply
            }
        },
    )
    .await
}

async fn answer(q: Option<SinceRequest>, region: &str, store: &dyn Store) -> SinceReply {
    let refuse = |e: String| SinceReply {
        region: region.to_string().into(),
        comments: vec![],
        more: false,
        deletions: vec![],
        error: Some(e),
    };
    let Some(q) = q else {
        return refuse("malformed request".into());
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
            region: region.to_string().into(),
            comments: page.comments,
            more: page.more,
            deletions: page.deletions,
            error: None,
        },
        Err(_) => refuse("store unavailable".into()),
    }
}
