//! Viewer counts over every fanout of every region (CONTRACT §11).
//!
//! Each fanout reports, once a second, how many streams it holds open per post: one
//! [`ViewerBeat`] per node and second on `comments.viewers.<region>` (more only past 4,000
//! active posts), never a message per viewer, so the cost is bounded by fanout nodes × posts.
//! Every node that answers counts ([`ViewerCounts`]: the reader's `GET /posts/<id>/viewers`,
//! the fanout's `event: viewers`) sums the latest report of each node and forgets a node's
//! report after `VIEWER_STALE_MS` (3 s) without a new one: the viewers of a killed fanout
//! stop counting within 3–4 s. This is Centrifugo's presence, summed instead of listed: its
//! per-client presence is "not optimized for more than several thousand" subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use livecomments_shared::wire::{self, ViewerBeat};
use livecomments_shared::{PostId, Region};
use parking_lot::Mutex;

use crate::bus::Bus;
use crate::fanout::Fanout;

/// Posts whose counts a node keeps: beyond it new posts are not counted until old ones go
/// stale. 200,000 posts × a few nodes is tens of MB at most.
const MAX_POSTS: usize = 200_000;
const STALE: Duration = Duration::from_millis(wire::VIEWER_STALE_MS);
const BEAT: Duration = Duration::from_millis(wire::VIEWER_BEAT_MS);

/// The latest report of every fanout node, per post.
pub struct ViewerCounts {
    posts: Mutex<HashMap<PostId, Vec<NodeCount>>>,
    /// This process's own name in reports (`region/node`): a fanout adds its live count to
    /// the others' reports instead of waiting for its own to come back.
    own: Arc<str>,
    /// The node name this process's fanout reports under.
    node: String,
}

struct NodeCount {
    /// `region/node`: node names are made at start and only unique with their region.
    node: Arc<str>,
    viewers: u32,
    at: Instant,
}

impl ViewerCounts {
    pub fn new(region: &Region) -> Arc<ViewerCounts> {
        // Made at start (CONTRACT §7: no per-node flag); a restarted process is a new node,
        // and its old reports go stale.
        let node = format!("{:016x}", rand::random::<u64>());
        Arc::new(ViewerCounts {
            posts: Mutex::default(),
            own: format!("{region}/{node}").into(),
            node,
        })
    }

    /// Takes in one node's report.
    pub fn apply(&self, beat: &ViewerBeat) {
        let node: Arc<str> = format!("{}/{}", beat.region, beat.node).into();
        let now = Instant::now();
        let mut posts = self.posts.lock();
        for (post, viewers) in &beat.posts {
            if *viewers == 0 {
                if let Some(nodes) = posts.get_mut(post) {
                    nodes.retain(|n| n.node != node);
                    if nodes.is_empty() {
                        posts.remove(post);
                    }
                }
                continue;
            }
            if posts.len() >= MAX_POSTS && !posts.contains_key(post) {
                continue;
            }
            let nodes = posts.entry(post.clone()).or_default();
            match nodes.iter_mut().find(|n| n.node == node) {
                Some(n) => {
                    n.viewers = *viewers;
                    n.at = now;
                }
                None => nodes.push(NodeCount {
                    node: node.clone(),
                    viewers: *viewers,
                    at: now,
                }),
            }
        }
    }

    /// Open streams of `post` over every node that reported in the last 3 s.
    pub fn viewers(&self, post: &str) -> u64 {
        self.sum(post, false)
    }

    /// Like [`ViewerCounts::viewers`] with this process's own count as it is now.
    pub fn viewers_with_own(&self, post: &str, own: usize) -> u64 {
        self.sum(post, true) + own as u64
    }

    fn sum(&self, post: &str, skip_own: bool) -> u64 {
        let now = Instant::now();
        self.posts.lock().get(post).map_or(0, |nodes| {
            nodes
                .iter()
                .filter(|n| now.duration_since(n.at) < STALE && !(skip_own && n.node == self.own))
                .map(|n| u64::from(n.viewers))
                .sum()
        })
    }

    /// Forgets reports older than 3 s (their node died, froze or lost the bus).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.posts.lock().retain(|_, nodes| {
            nodes.retain(|n| now.duration_since(n.at) < STALE);
            !nodes.is_empty()
        });
    }

    /// Counts kept from every node's reports on `bus`, for as long as the process runs.
    pub fn listen(bus: Arc<dyn Bus>, region: &Region) -> Arc<ViewerCounts> {
        let counts = ViewerCounts::new(region);
        let weak = Arc::downgrade(&counts);
        tokio::spawn(async move {
            loop {
                let mut beats = match bus.subscribe_viewers().await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "viewer counts: subscribe failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let mut sweep = tokio::time::interval(BEAT);
                loop {
                    tokio::select! {
                        beat = beats.next() => match (beat, weak.upgrade()) {
                            (Some(b), Some(c)) => c.apply(&b),
                            (None, Some(_)) => break,
                            (_, None) => return,
                        },
                        _ = sweep.tick() => match weak.upgrade() {
                            Some(c) => c.sweep(),
                            None => return,
                        },
                    }
                }
            }
        });
        counts
    }
}

/// A fanout's reports: every second, its open streams per post, and once a `0` for each
/// post it stopped holding streams of.
pub fn report(fanout: Weak<Fanout>, bus: Arc<dyn Bus>, region: Region, counts: &ViewerCounts) {
    let node = counts.node.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(BEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: HashMap<PostId, u32> = HashMap::new();
        loop {
            every.tick().await;
            let Some(f) = fanout.upgrade() else { return };
            let now: HashMap<PostId, u32> = f.viewer_counts().into_iter().collect();
            drop(f);
            let mut posts: Vec<(PostId, u32)> = now.iter().map(|(p, n)| (p.clone(), *n)).collect();
            posts.extend(
                last.keys()
                    .filter(|p| !now.contains_key(*p))
                    .map(|p| (p.clone(), 0)),
            );
            last = now;
            for chunk in posts.chunks(wire::VIEWER_BEAT_MAX_POSTS) {
                let beat = ViewerBeat {
                    region: region.clone(),
                    node: node.clone(),
                    posts: chunk.to_vec(),
                };
                if let Err(e) = bus.publish_viewers(&beat).await {
                    tracing::debug!(error = %e, "viewer counts: publish failed");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(region: &str, node: &str, posts: &[(&str, u32)]) -> ViewerBeat {
        ViewerBeat {
            region: Region::trusted(region),
            node: node.into(),
            posts: posts
                .iter()
                .map(|(p, n)| (PostId::trusted(*p), *n))
                .collect(),
        }
    }

    #[test]
    fn counts_sum_the_latest_report_of_each_node() {
        let c = ViewerCounts::new(&Region::trusted("eu"));
        c.apply(&beat("eu", "a", &[("p", 3), ("q", 1)]));
        c.apply(&beat("eu", "b", &[("p", 2)]));
        // Same node name in another region is another node.
        c.apply(&beat("us", "a", &[("p", 10)]));
        assert_eq!(c.viewers("p"), 15);
        // A newer report replaces the node's previous one; a 0 removes it.
        c.apply(&beat("eu", "a", &[("p", 1), ("q", 0)]));
        assert_eq!(c.viewers("p"), 13);
        assert_eq!(c.viewers("q"), 0);
        assert_eq!(c.viewers("nobody"), 0);
        // Its own report is replaced by its live count.
        let own = beat("eu", &c.node, &[("p", 7)]);
        c.apply(&own);
        assert_eq!(c.viewers("p"), 20);
        assert_eq!(c.viewers_with_own("p", 2), 15);
    }
}
