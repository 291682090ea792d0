//! The hub's last few seconds of events, so that a viewer of this hub that resumes (cut off
//! for being slow, or its network dropped) is served from memory instead of from history.
//!
//! Why: past the fan-out ceiling every viewer of a hot post falls behind together, is cut off
//! together and resumes together. Each replay from history read the store and serialised every
//! missed comment to JSON again for that one viewer: with 10,000 viewers of a 600/s post that
//! took the server from 100 % to 150 % CPU, starved the clients, and turned a lag into a
//! minute of latency for everyone (docs/BENCHMARKS.md "Past the ceiling"; the collapsed
//! profile was JSON escaping, store decoding and malloc). Served from here, a resume costs a
//! `Bytes` handle per missed event: the bytes every in-step viewer was sent.
//!
//! Exactness: a viewer's resume token is the hub's position after one of its events
//! ([`Frame`]s carry it as their `id:`), and the events the hub dispatched after that one
//! are exactly what an in-step viewer received since; the viewer joins with that position,
//! so anything dispatched after the join reaches it through the hub as usual and the render
//! skips what it already has. A token this hub did not write (another fanout's, a
//! sampled-out position, older than what is kept) finds nothing, and the viewer replays from
//! history as before.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livecomments_shared::Position;

use super::sse::Frame;

/// How long events are kept: longer than a browser's reconnect delay (1–3 s, `viewer.rs`)
/// plus the time a viewer may be behind before it is cut (`--viewer-buffer`, 4096 events:
/// 6.8 s of a 600/s post), with room for a slow reconnect.
const KEEP_FOR: Duration = Duration::from_secs(10);
/// Most events kept per hub: twice the default viewer buffer, 10 s of an 800/s post. ~0.6 KB
/// each (the frame, its token, the index entry), so at most ~5 MB for a post that hot; a
/// post of a comment a second keeps 10.
const KEEP_MAX: usize = 8192;

#[derive(Default)]
pub(super) struct Recent {
    /// Single-event frames in dispatch order, with when each was dispatched.
    events: VecDeque<(Instant, Arc<Frame>)>,
    /// The sequence number of `events[0]`.
    first: u64,
    /// Each kept event's token (the hub's position after it) → its sequence number.
    by_token: HashMap<Box<str>, u64>,
}

impl Recent {
    /// Keeps a frame the hub just dispatched (one event, with a position); others are ignored.
    pub fn keep(&mut self, frame: &Arc<Frame>, now: Instant) {
        let Some(token) = frame.token() else {
            return;
        };
        let seq = self.first + self.events.len() as u64;
        self.by_token.insert(token.into(), seq);
        self.events.push_back((now, frame.clone()));
        self.trim(now);
    }

    /// Forgets what is older than `KEEP_FOR` or beyond `KEEP_MAX`.
    pub fn trim(&mut self, now: Instant) {
        while let Some((at, f)) = self.events.front() {
            if self.events.len() <= KEEP_MAX && now.duration_since(*at) < KEEP_FOR {
                break;
            }
            if let Some(token) = f.token() {
                self.by_token.remove(token);
            }
            self.events.pop_front();
            self.first += 1;
        }
    }

    /// For a viewer at `token`: the position it names (shared with the kept event, so the
    /// render takes the shared path) and the events after it, oldest first. `None` when the
    /// token is not one of the kept events, or more than `max` followed it (a replay from
    /// history then applies its own limit).
    pub fn after(
        &self,
        token: &str,
        max: usize,
    ) -> Option<(Arc<Position>, impl Iterator<Item = &Arc<Frame>>)> {
        let seq = *self.by_token.get(token)?;
        let at = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        let (_, event) = self.events.get(at)?;
        let pos = event.span.as_ref()?.after.clone();
        let missed = self.events.len() - at - 1;
        if missed > max {
            return None;
        }
        Some((pos, self.events.iter().skip(at + 1).map(|(_, f)| f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::sse::tests::{comment, dispatch};

    fn chain(n: u64) -> Vec<Arc<Frame>> {
        let comments: Vec<_> = (0..n).map(|i| comment("local", i)).collect();
        dispatch(&Arc::default(), &comments)
    }

    #[test]
    fn a_kept_token_gives_exactly_the_events_after_it() {
        let frames = chain(5);
        let mut r = Recent::default();
        let now = Instant::now();
        for f in &frames {
            r.keep(f, now);
        }
        let token = frames[1].token().unwrap().to_string();
        let (pos, after) = r.after(&token, 100).unwrap();
        assert!(Arc::ptr_eq(&pos, &frames[1].span.as_ref().unwrap().after));
        let want: Vec<_> = frames[2..].iter().map(|f| f.bytes.clone()).collect();
        assert_eq!(after.map(|f| f.bytes.clone()).collect::<Vec<_>>(), want);
        assert!(
            r.after(frames[4].token().unwrap(), 100)
                .unwrap()
                .1
                .next()
                .is_none()
        );
        assert!(r.after("local.0000", 100).is_none(), "a token never sent");
        assert!(r.after(&token, 2).is_none(), "more missed than the limit");
    }

    #[test]
    fn old_events_and_events_past_the_bound_are_forgotten() {
        let frames = chain(3);
        let mut r = Recent::default();
        let t0 = Instant::now();
        r.keep(&frames[0], t0);
        r.keep(&frames[1], t0 + Duration::from_secs(5));
        r.keep(&frames[2], t0 + KEEP_FOR + Duration::from_millis(1));
        assert_eq!(r.events.len(), 2);
        assert!(r.after(frames[0].token().unwrap(), 100).is_none());
        assert_eq!(
            r.after(frames[1].token().unwrap(), 100).unwrap().1.count(),
            1
        );
        r.trim(t0 + Duration::from_secs(30));
        assert_eq!(r.events.len(), 0);
        assert!(r.by_token.is_empty());
    }
}
