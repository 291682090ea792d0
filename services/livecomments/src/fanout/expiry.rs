//! Streams opened with a token end when the token does (CONTRACT §12, with
//! `--read-requires-token`): at its `exp` the stream gets `event: reconnect` with
//! `{"reason": "token_expired"}` and is closed; the client comes back with a fresh token and
//! its Last-Event-ID, and loses nothing.
//!
//! One sweeper per fanout process, not a timer per viewer: the lean path holds ~1.8 KiB per
//! idle viewer, and a tokio timer entry plus a task would add several hundred bytes to each.
//! Here a viewer costs one `Weak` (8 bytes) in the bucket of its token's `exp` second; the
//! sweeper sleeps until the earliest bucket is due.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::conn::Conn;
use super::sse;
use crate::metrics::METRICS;

/// Dead entries (viewers gone before their token expired) are dropped when the map holds
/// more than twice the live ones of the last compaction plus this many: the map stays within
/// about twice the open streams (themselves capped by `--max-streams`), and compaction's
/// walk is amortised over at least 1024 registrations.
const COMPACT_SLACK: usize = 1024;
/// When nothing is due the sweeper still wakes this often (a registration wakes it sooner).
const IDLE_WAKE: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct Expiries {
    state: Mutex<State>,
    /// Wakes the sweeper: a registration earlier than everything it waits for.
    earlier: Notify,
    started: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Per `exp` second, the viewers whose token expires then.
    due: BTreeMap<u64, Vec<Weak<Conn>>>,
    entries: usize,
    /// Entries left after the last compaction.
    live_at_compaction: usize,
}

impl Expiries {
    /// Starts the sweeper on the calling runtime, once. `Fanout::new` calls it on the main
    /// runtime, so that a connection thread's runtime (`server.rs`) never holds it.
    pub fn start(self: &Arc<Self>) {
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().sweep());
        }
    }

    /// Closes `conn` with `event: reconnect` once `exp` (Unix seconds) has passed.
    pub fn watch(self: &Arc<Self>, conn: &Arc<Conn>, exp: u64) {
        self.start();
        let earliest = {
            let mut st = self.state.lock();
            let earliest = st
                .due
                .first_key_value()
                .is_none_or(|(first, _)| exp < *first);
            st.due.entry(exp).or_default().push(Arc::downgrade(conn));
            st.entries += 1;
            if st.entries > 2 * st.live_at_compaction + COMPACT_SLACK {
                st.compact();
            }
            earliest
        };
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Viewers waiting for their token's expiry (live or not yet compacted away).
    pub fn len(&self) -> usize {
        self.state.lock().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn sweep(self: Arc<Self>) {
        loop {
            let next = self.state.lock().due.first_key_value().map(|(k, _)| *k);
            let wait = match next {
                Some(exp) => {
                    let now_ms = livecomments_shared::time::now_millis().max(0) as u64;
                    Duration::from_millis((exp.saturating_mul(1000)).saturating_sub(now_ms))
                }
                None => IDLE_WAKE,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.earlier.notified() => {}
            }
            self.close_due();
        }
    }

    /// Ends every stream whose token's `exp` has passed.
    fn close_due(&self) {
        let now_ms = livecomments_shared::time::now_millis().max(0) as u64;
        // `exp` is valid through its second's start: a bucket is due once now ≥ exp × 1000.
        let due = {
            let mut st = self.state.lock();
            let later = st.due.split_off(&(now_ms / 1000 + 1));
            let due = std::mem::replace(&mut st.due, later);
            let n: usize = due.values().map(Vec::len).sum();
            st.entries = st.entries.saturating_sub(n);
            st.live_at_compaction = st.live_at_compaction.saturating_sub(n);
            due
        };
        let bytes = sse::reconnect_because("token_expired");
        for conn in due.into_values().flatten().filter_map(|w| w.upgrade()) {
            if conn.finish_with(&bytes) {
                METRICS.sse_token_expired.inc();
            }
        }
    }
}

impl State {
    fn compact(&mut self) {
        self.due.retain(|_, v| {
            v.retain(|w| w.strong_count() > 0);
            !v.is_empty()
        });
        self.entries = self.due.values().map(Vec::len).sum();
        self.live_at_compaction = self.entries;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_of_viewers_gone_are_compacted_away() {
        let e = Arc::new(Expiries::default());
        let far = 4_000_000_000;
        let kept: Vec<_> = (0..10)
            .map(|_| Arc::new(Conn::new(None, Default::default())))
            .collect();
        for c in &kept {
            e.watch(c, far);
        }
        for _ in 0..10 * COMPACT_SLACK {
            let gone = Arc::new(Conn::new(None, Default::default()));
            e.watch(&gone, far);
            // Live at a compaction: the 10 kept and the one being registered.
            assert!(e.len() <= 2 * 11 + COMPACT_SLACK, "{}", e.len());
        }
    }

    #[tokio::test]
    async fn a_stream_past_its_exp_is_finished_with_reconnect() {
        let e = Arc::new(Expiries::default());
        let now = livecomments_shared::time::now_millis() as u64 / 1000;
        let expired = Arc::new(Conn::new(None, Default::default()));
        let later = Arc::new(Conn::new(None, Default::default()));
        // Live viewers (not replaying): what the hub writes goes straight to them.
        expired.lock().queue = None;
        later.lock().queue = None;
        e.watch(&expired, now.saturating_sub(1));
        e.watch(&later, now + 3600);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while expired.ended() == super::super::conn::End::Open {
            assert!(std::time::Instant::now() < deadline, "never closed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let bytes = expired.take_pending().unwrap();
        // The shutdown's control event, with its reason (the JS client drops its token on it).
        assert_eq!(bytes, sse::reconnect_because("token_expired"));
        assert!(
            std::str::from_utf8(&bytes)
                .unwrap()
                .contains("token_expired")
        );
        assert_eq!(later.ended(), super::super::conn::End::Open);
        assert_eq!(e.len(), 1);
    }
}
