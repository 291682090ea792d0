//! `event: reactions` (CONTRACT §11): every region's reaction counts reach each stream of a
//! post as one event a second, never one per reaction.
//!
//! Ingest nodes count per wall-clock second and publish each second's counts when it ends
//! (`ingest::reactions`). A fanout adds up what arrives for the posts it holds streams of and,
//! 300 ms into every second, sends each such post's sum to its streams: one frame per post
//! and second, written to every viewer as the hub writes comments. 300 ms leaves the ingest
//! nodes of every region time to publish (a beat crosses a gateway in well under 100 ms
//! here); a later beat counts in the next second's event, nothing is dropped for lateness.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use livecomments_shared::{Counts, PostId, time};

use super::Fanout;
use super::sse::Frame;
use crate::bus::Bus;

/// Into each second, when the previous second's counts go out.
const EMIT_AT_MS: i64 = 300;

/// Relays reaction counts to `fanout`'s streams for as long as it lives.
pub fn relay(fanout: Weak<Fanout>, bus: Arc<dyn Bus>) {
    tokio::spawn(async move {
        // Bounded by the posts this fanout has hubs for: others are not kept.
        let mut pending: HashMap<PostId, Counts> = HashMap::new();
        loop {
            let mut beats = match bus.subscribe_reactions().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "reactions: subscribe failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut tick_at = next_emit();
            loop {
                tokio::select! {
                    beat = beats.next() => {
                        // The bus closed the subscription: take a new one.
                        let Some(beat) = beat else { break };
                        let Some(f) = fanout.upgrade() else { return };
                        for (post, counts) in beat.posts {
                            if f.hub_of(&post).is_some() {
                                pending.entry(post).or_default().merge(&counts);
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(tick_at) => {
                        tick_at = next_emit();
                        let Some(f) = fanout.upgrade() else { return };
                        for (post, counts) in pending.drain() {
                            if let (Some(hub), false) = (f.hub_of(&post), counts.is_zero()) {
                                hub.control(Arc::new(Frame::reactions(&counts)));
                            }
                        }
                    }
                }
            }
        }
    });
}

/// `EMIT_AT_MS` into the next wall-clock second.
fn next_emit() -> tokio::time::Instant {
    let now = time::now_millis();
    let next = (now.div_euclid(1000) + 1) * 1000 + EMIT_AT_MS;
    tokio::time::Instant::now() + Duration::from_millis(u64::try_from(next - now).unwrap_or(0))
}
