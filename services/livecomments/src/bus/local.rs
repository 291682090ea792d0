//! In-process bus for standalone mode: one bounded broadcast channel per subscribed post.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use livecomments_shared::wire::{LiveEvent, ReactionBeat, ViewerBeat, WriterBeat};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::{Beats, Bus, BusError, Delivery, LostWriter, Subscription};
use crate::metrics::METRICS;
use crate::trace::RequestId;

/// Events buffered per post for its subscribers. A subscriber further behind loses events
/// (counted in `livecomments_bus_dropped_total`); its viewers repair from the store.
const CHANNEL_CAPACITY: usize = 4096;
/// Beats buffered for their listeners: one process sends a few a second.
const BEATS_CAPACITY: usize = 64;

pub struct LocalBus {
    posts: Mutex<HashMap<String, broadcast::Sender<Arc<Delivery>>>>,
    reconnects: Option<tokio::sync::watch::Sender<u64>>,
    /// Never sent on: kept so receivers stay open.
    lost: Option<broadcast::Sender<LostWriter>>,
    /// The one process's own beats, looped back: the same code counts viewers and
    /// reactions in standalone as over NATS.
    viewers: broadcast::Sender<ViewerBeat>,
    reactions: broadcast::Sender<ReactionBeat>,
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus::new()
    }
}

impl LocalBus {
    pub fn new() -> Self {
        LocalBus {
            posts: Mutex::default(),
            reconnects: Some(tokio::sync::watch::channel(0).0),
            lost: Some(broadcast::channel(1).0),
            viewers: broadcast::channel(BEATS_CAPACITY).0,
            reactions: broadcast::channel(BEATS_CAPACITY).0,
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(
        &self,
        _region: &str,
        event: &LiveEvent,
        request_id: Option<&RequestId>,
    ) -> Result<(), BusError> {
        let mut posts = self.posts.lock();
        if let Some(tx) = posts.get(event.post_id().as_str())
            && tx
                .send(Arc::new(Delivery {
                    event: event.clone(),
                    request_id: request_id.cloned(),
                }))
                .is_err()
        {
            // Nobody listens any more: forget the post so the map stays bounded by
            // the posts that have subscribers.
            posts.remove(event.post_id().as_str());
        }
        Ok(())
    }

    async fn subscribe(&self, post_id: &str) -> Result<Subscription, BusError> {
        let rx = {
            let mut posts = self.posts.lock();
            posts.retain(|_, tx| tx.receiver_count() > 0);
            posts
                .entry(post_id.to_string())
                .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
                .subscribe()
        };
        Ok(BroadcastStream::new(rx)
            .filter_map(|item| async move {
                match item {
                    Ok(ev) => Some(Arc::unwrap_or_clone(ev)),
                    Err(_lagged) => {
                        METRICS.bus_dropped.inc();
                        None
                    }
                }
            })
            .boxed())
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        match &self.reconnects {
            Some(tx) => tx.subscribe(),
            None => tokio::sync::watch::channel(0).1,
        }
    }

    async fn announce_writer(&self, _beat: &WriterBeat) -> Result<(), BusError> {
        Ok(())
    }

    fn heard_writer(&self, _region: &str, _writer: &str) {}

    fn lost_writers(&self) -> broadcast::Receiver<LostWriter> {
        match &self.lost {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    async fn publish_viewers(&self, beat: &ViewerBeat) -> Result<(), BusError> {
        let _ = self.viewers.send(beat.clone());
        Ok(())
    }

    async fn subscribe_viewers(&self) -> Result<Beats<ViewerBeat>, BusError> {
        Ok(beats(self.viewers.subscribe()))
    }

    async fn publish_reactions(&self, beat: &ReactionBeat) -> Result<(), BusError> {
        let _ = self.reactions.send(beat.clone());
        Ok(())
    }

    async fn subscribe_reactions(&self) -> Result<Beats<ReactionBeat>, BusError> {
        Ok(beats(self.reactions.subscribe()))
    }
}

fn beats<T: Clone + Send + 'static>(rx: broadcast::Receiver<T>) -> Beats<T> {
    BroadcastStream::new(rx)
        .filter_map(|item| async move { item.ok() })
        .boxed()
}
