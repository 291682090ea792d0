//! Moderation (CONTRACT §8 bans and timeouts, §9 post settings): what every node knows
//! ([`state::ModState`], in memory), how it learns it ([`sync`]: its store, the bus, the
//! other regions), and how a moderator's change is made ([`Moderator::commit`]).
//! `docs/MODERATION.md` tells the whole design and what happens when a region is cut off.

pub mod state;
pub mod sync;

use std::sync::Arc;

use livecomments_shared::PostId;
use livecomments_shared::moderation::{ModChange, Record, RecordBody};
use livecomments_shared::time::now_millis;
use livecomments_store::{Store, StoreError};

use crate::bus::Bus;
use crate::metrics::METRICS;
pub use state::{ModState, PinChange};

/// What a node holding the regional store needs to make moderation changes.
pub struct Moderator {
    pub state: Arc<ModState>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub region: String,
}

impl Moderator {
    /// Makes a change: durable in the regional store first (the answer is sent only after),
    /// then in this node's state (its next POST sees it), then on the bus for every other
    /// node of every region. A lost publish is repaired by the others' re-read of the store
    /// (same region, within a second) and sync requests (other regions, within a second).
    pub async fn commit(&self, body: RecordBody) -> Result<Record, StoreError> {
        let mut rec = Record {
            updated_at_ms: now_millis(),
            origin: self.region.clone().into(),
            body,
        };
        // Stamped after whatever this node knows of the key, so the change wins here even
        // when another node's clock ran ahead.
        if let Some(prev) = self.state.updated_at(&rec.key())
            && prev >= rec.updated_at_ms
        {
            rec.updated_at_ms = prev + 1;
        }
        self.store
            .put_moderation(std::slice::from_ref(&rec))
            .await?;
        self.state.apply([rec.clone()]);
        let change = ModChange {
            records: vec![rec.clone()],
        };
        if self
            .bus
            .publish_moderation(&self.region, &change)
            .await
            .is_err()
        {
            METRICS.bus_publish_errors.inc();
        }
        Ok(rec)
    }

    /// A comment was deleted: if it is the post's pinned comment, the post is unpinned
    /// (CONTRACT §9), and every stream gets `event: unpin`.
    pub async fn forget_comment(&self, post: &PostId, id: &str) {
        let mut s = self.state.settings(post);
        if s.pinned.as_ref().is_some_and(|c| c.id.as_str() == id) {
            s.pinned = None;
            if let Err(e) = self.commit(RecordBody::Settings(s)).await {
                tracing::warn!(error = %e, post_id = %post, "could not unpin a deleted comment");
            }
        }
    }
}
