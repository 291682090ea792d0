//! Slow mode (CONTRACT §9): at most one accepted comment per user and post every
//! `slow_mode_secs`, held where every writer of the region sees it, like the per-user rate
//! limit (`ratelimit.rs`): in memory on the embedded store (one writer by nature), in the
//! CQL store's `user_rate` window with several nodes — a window of one request per
//! `slow_mode_secs` is exactly "not less than N s after the previous accepted comment".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livecomments_shared::moderation::SLOW_MODE_MAX_SECS;
use livecomments_store::StoreResult;
use livecomments_store::cql::CqlStore;
use parking_lot::Mutex;

/// (user, post) pairs remembered in memory. Each entry matters for at most an hour (the
/// longest slow mode); 200k is the rate limiter's bound, for the same reason.
const MAX_TRACKED: usize = 200_000;

pub enum SlowMode {
    /// One writer process: the last accepted comment per (user, post), in memory.
    Local(Mutex<HashMap<(String, String), Instant>>),
    /// Every ingest node of the region: in the CQL store.
    Shared(Arc<CqlStore>),
}

/// The `user_rate` row key of a (user, post) slow-mode window. A user id never contains a
/// control character (`validate::user_id`), so this never names a real user's window.
fn shared_key(user: &str, post: &str) -> String {
    format!("\u{1}slow\u{1}{post}\u{1}{user}")
}

impl SlowMode {
    pub fn local() -> SlowMode {
        SlowMode::Local(Mutex::default())
    }

    /// Whether `user` may comment on `post` under a slow mode of `secs` (0: off); `Ok(Err)`
    /// with the wait when not. In memory this takes the slot at once; in the store the
    /// caller records the accepted comment with [`SlowMode::record`] before it answers.
    pub async fn check(
        &self,
        user: &str,
        post: &str,
        secs: u32,
    ) -> StoreResult<Result<(), Duration>> {
        if secs == 0 {
            return Ok(Ok(()));
        }
        let window = Duration::from_secs(u64::from(secs));
        match self {
            SlowMode::Local(map) => {
                let now = Instant::now();
                let mut map = map.lock();
                let key = (user.to_string(), post.to_string());
                if let Some(at) = map.get(&key) {
                    let since = now.duration_since(*at);
                    if since < window {
                        return Ok(Err(window - since));
                    }
                }
                if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
                    let longest = Duration::from_secs(u64::from(SLOW_MODE_MAX_SECS));
                    map.retain(|_, at| now.duration_since(*at) < longest);
                    if map.len() >= MAX_TRACKED {
                        return Ok(Err(Duration::from_secs(1)));
                    }
                }
                map.insert(key, now);
                Ok(Ok(()))
            }
            SlowMode::Shared(store) => store.check_rate(&shared_key(user, post), 1, window).await,
        }
    }

    /// Records an accepted comment (nothing to do in memory: `check` took the slot).
    pub async fn record(&self, user: &str, post: &str, secs: u32) -> StoreResult<()> {
        match self {
            SlowMode::Shared(store) if secs > 0 => {
                store
                    .record_rate(
                        &shared_key(user, post),
                        Duration::from_secs(u64::from(secs)),
                    )
                    .await
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_comment_per_window_per_user_and_post() {
        let s = SlowMode::local();
        assert!(s.check("a", "p", 30).await.unwrap().is_ok());
        let wait = s.check("a", "p", 30).await.unwrap().unwrap_err();
        assert!(wait > Duration::from_secs(29), "{wait:?}");
        assert!(s.check("a", "q", 30).await.unwrap().is_ok(), "per post");
        assert!(s.check("b", "p", 30).await.unwrap().is_ok(), "per user");
        assert!(s.check("a", "p", 0).await.unwrap().is_ok(), "off");
    }
}
