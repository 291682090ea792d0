//! Reactions (CONTRACT §11, Facebook Live's hearts): counted, never stored one by one.
//!
//! `POST /reaction` adds 1 to the post's count of the current wall-clock second in this
//! node's memory (no I/O on the request but the per-user limit's) and answers 202. When a
//! second is over, the node
//! 1. publishes that second's counts on `comments.reactions.<region>` (one message per node
//!    and second, whatever the number of reactions), from which every fanout sends
//!    `event: reactions` to the post's streams (`fanout::reactions`);
//! 2. adds them to the durable totals (`Store::add_reactions`: one redb transaction, or one
//!    CQL counter batch per post).
//!
//! What a crash can lose: the counts of the second in progress and of the one being written
//! (at most ~1 s of reactions, as the contract allows). What it never does: count one twice
//! — a failed write is not retried (a CQL counter update that timed out may have counted).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use livecomments_shared::wire::{self, ReactionBeat};
use livecomments_shared::{Counts, PostId, ReactionKind, Region, time};
use livecomments_store::Store;
use parking_lot::Mutex;

use super::UserLimit;
use crate::bus::Bus;
use crate::metrics::METRICS;

/// Posts one node counts reactions for within one second; a reaction to one more post in
/// that second is refused (503) rather than letting the map grow.
const MAX_POSTS_PER_SECOND: usize = 100_000;
/// Into each second, when the node writes the previous one: late enough that a reaction
/// counted as the second turned is in it.
const FLUSH_AT_MS: i64 = 5;

/// Why a reaction was not counted.
#[derive(Debug)]
pub enum Refused {
    /// The user's limit (20 a second): wait this long.
    Limited(Duration),
    /// The shared limit's store could not be asked, or this second holds too many posts.
    Unavailable(&'static str),
}

pub struct Reactions {
    /// Counts per second (Unix seconds) not yet written: the current one and, briefly, the
    /// one being flushed.
    seconds: Mutex<HashMap<i64, HashMap<PostId, Counts>>>,
    limit: UserLimit,
}

impl Reactions {
    /// Counts reactions with `limit` per user, and writes and publishes each second's counts.
    pub fn start(
        region: Region,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        limit: UserLimit,
    ) -> Arc<Reactions> {
        let r = Arc::new(Reactions {
            seconds: Mutex::default(),
            limit,
        });
        let weak = Arc::downgrade(&r);
        // Made at start (CONTRACT §7: no per-node flag).
        let node = format!("{:016x}", rand::random::<u64>());
        tokio::spawn(async move {
            loop {
                let now = time::now_millis();
                let next = (now.div_euclid(1000) + 1) * 1000 + FLUSH_AT_MS;
                tokio::time::sleep(Duration::from_millis(
                    u64::try_from(next - now).unwrap_or(0),
                ))
                .await;
                let Some(r) = weak.upgrade() else { return };
                let done = r.take_before(time::now_millis().div_euclid(1000));
                drop(r);
                for (second, posts) in done {
                    flush(&region, &node, second, posts, store.as_ref(), bus.as_ref()).await;
                }
            }
        });
        r
    }

    /// Counts one reaction of `user` to `post`, within the user's limit.
    pub async fn react(
        &self,
        user: &str,
        post: &PostId,
        kind: ReactionKind,
    ) -> Result<(), Refused> {
        match self.limit.check(user).await {
            Ok(Ok(())) => {}
            Ok(Err(wait)) => return Err(Refused::Limited(wait)),
            Err(_) => return Err(Refused::Unavailable("the rate-limit store")),
        }
        {
            let second = time::now_millis().div_euclid(1000);
            let mut seconds = self.seconds.lock();
            let posts = seconds.entry(second).or_default();
            if posts.len() >= MAX_POSTS_PER_SECOND && !posts.contains_key(post) {
                return Err(Refused::Unavailable(
                    "the reaction counter (too many posts)",
                ));
            }
            match posts.get_mut(post) {
                Some(counts) => counts.add(kind, 1),
                // The id is copied once per post and second, not per reaction.
                None => posts.entry(post.clone()).or_default().add(kind, 1),
            }
        }
        METRICS.reactions_accepted.inc();
        self.limit
            .record(user)
            .await
            .map_err(|_| Refused::Unavailable("the rate-limit store"))
    }

    /// The counts of every second before `second`, oldest first.
    fn take_before(&self, second: i64) -> Vec<(i64, HashMap<PostId, Counts>)> {
        let mut seconds = self.seconds.lock();
        let done: Vec<i64> = seconds.keys().copied().filter(|s| *s < second).collect();
        let mut out: Vec<_> = done
            .into_iter()
            .filter_map(|s| seconds.remove(&s).map(|p| (s, p)))
            .collect();
        out.sort_by_key(|(s, _)| *s);
        out
    }
}

/// Publishes one second's counts, then adds them to the totals.
async fn flush(
    region: &Region,
    node: &str,
    second: i64,
    posts: HashMap<PostId, Counts>,
    store: &dyn Store,
    bus: &dyn Bus,
) {
    let posts: Vec<(PostId, Counts)> = posts.into_iter().collect();
    // The streams first: their event is due now, the totals can take a few ms more.
    for chunk in posts.chunks(wire::REACTION_BEAT_MAX_POSTS) {
        let beat = ReactionBeat {
            region: region.clone(),
            node: node.to_string(),
            second,
            posts: chunk.to_vec(),
        };
        if let Err(e) = bus.publish_reactions(&beat).await {
            tracing::debug!(error = %e, "reactions: publish failed");
        }
    }
    if let Err(e) = store.add_reactions(&posts).await {
        let lost: u64 = posts.iter().map(|(_, c)| c.0.iter().sum::<u64>()).sum();
        METRICS.reactions_lost.inc_by(lost);
        tracing::warn!(error = %e, second, lost, "reactions: totals not written (not retried: never count twice)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::RateLimiter;

    #[tokio::test]
    async fn reactions_count_per_second_and_the_limit_is_per_user() {
        let r = Reactions {
            seconds: Mutex::default(),
            limit: UserLimit::Local(RateLimiter::new(20, Duration::from_secs(1))),
        };
        let post = PostId::trusted("p");
        for _ in 0..20 {
            r.react("alice", &post, ReactionKind::Love).await.unwrap();
        }
        assert!(matches!(
            r.react("alice", &post, ReactionKind::Love).await,
            Err(Refused::Limited(_))
        ));
        r.react("bob", &post, ReactionKind::Wow).await.unwrap();
        let all = r.take_before(i64::MAX);
        let mut total = Counts::default();
        for (_, posts) in &all {
            total.merge(&posts[&post]);
        }
        assert_eq!(total.get(ReactionKind::Love), 20);
        assert_eq!(total.get(ReactionKind::Wow), 1);
        assert!(r.take_before(i64::MAX).is_empty(), "taken once");
    }
}
