//! The bus carries live events from ingest to every fanout: NATS between processes
//! (`comments.live.<region>.<post_id>`, MessagePack), or an in-process broadcast in standalone.
//!
//! The bus is best effort on purpose (core NATS is at-most-once): durability lives in the
//! store, and viewers repair anything the bus dropped by resuming from their position.

pub mod local;
pub mod nats;
pub mod rpc;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use livecomments_shared::moderation::ModChange;
use livecomments_shared::wire::{LiveEvent, ReactionBeat, ViewerBeat, WriterBeat};

use crate::trace::RequestId;

pub use local::LocalBus;
pub use nats::NatsBus;
pub use rpc::{Rpc, RpcError};

/// Live events of one post from every region, decoded. Dropping it unsubscribes.
pub type Subscription = Pin<Box<dyn Stream<Item = Delivery> + Send>>;

/// Moderation changes of every region (`comments.moderation.*`), decoded and validated.
pub type ModSubscription = Pin<Box<dyn Stream<Item = ModChange> + Send>>;

/// Counts that every node of every region reports each second (viewers, reactions),
/// decoded and checked. Dropping it unsubscribes.
pub type Beats<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// A live event as it came off the bus, with the id of the request that caused it (from the
/// message's `trace::BUS_HEADER`; the payload is the same MessagePack with or without it).
/// The NATS bus reads it only while the `livecomments::trace` lines are on (debug).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: LiveEvent,
    pub request_id: Option<RequestId>,
}

/// A writer (an ingest process) of `region` that stopped announcing itself: it died or froze,
/// maybe between committing comments and publishing them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWriter {
    pub region: String,
    pub writer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes on `comments.live.<region of the event>.<post_id>`. Returns once the event is
    /// handed to the transport; it does not wait for subscribers. `request_id` (the request
    /// that caused the event) travels beside the payload, in a header.
    async fn publish(
        &self,
        region: &str,
        event: &LiveEvent,
        request_id: Option<&RequestId>,
    ) -> Result<(), BusError>;

    /// Subscribes to one post's events from every region.
    async fn subscribe(&self, post_id: &str) -> Result<Subscription, BusError>;

    /// True while the transport is connected (in-process: always).
    fn is_connected(&self) -> bool;

    /// Resolves each time the transport reconnects after an outage, so fanouts can repair
    /// the events that were published meanwhile. In-process buses never reconnect.
    fn reconnects(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Announces a live writer on `comments.writers.<region>` (in-process: nothing to do, a
    /// writer cannot be lost without the whole process).
    async fn announce_writer(&self, beat: &WriterBeat) -> Result<(), BusError>;

    /// Writers that fell silent, as they are noticed (`wire::WRITER_LOST_MS` after their last
    /// announcement). In-process buses never report one.
    fn lost_writers(&self) -> tokio::sync::broadcast::Receiver<LostWriter>;

    /// A hub saw a live comment of a writer new to it: the writer counts as heard from now
    /// on, so one that dies before this fanout heard a single announcement of it is still
    /// given up (and swept for) `WRITER_LOST_MS` later. In-process buses ignore it.
    fn heard_writer(&self, region: &str, writer: &str);

    /// Publishes moderation changes made in `region` on `comments.moderation.<region>`
    /// (CONTRACT §8, §9). In-process: nothing to do, the one process holds the whole state.
    async fn publish_moderation(&self, _region: &str, _change: &ModChange) -> Result<(), BusError> {
        Ok(())
    }

    /// Every region's moderation changes, each record checked (`Record::is_sane`, its origin
    /// the region of its subject). In-process: none ever arrive.
    async fn subscribe_moderation(&self) -> Result<ModSubscription, BusError> {
        Ok(Box::pin(futures::stream::pending()))
    }

    /// Publishes a fanout's viewer counts on `comments.viewers.<region>` (CONTRACT §11).
    async fn publish_viewers(&self, beat: &ViewerBeat) -> Result<(), BusError>;

    /// Every region's viewer counts, each beat checked (`wire::ViewerBeat`; its region the
    /// one of its subject).
    async fn subscribe_viewers(&self) -> Result<Beats<ViewerBeat>, BusError>;

    /// Publishes an ingest node's reaction counts of one second on
    /// `comments.reactions.<region>`.
    async fn publish_reactions(&self, beat: &ReactionBeat) -> Result<(), BusError>;

    /// Every region's reaction counts, checked like viewer beats.
    async fn subscribe_reactions(&self) -> Result<Beats<ReactionBeat>, BusError>;
}
