//! The per-user rate limit (`limit` comments per `window`), held where every writer of the
//! region sees it (CONTRACT §7):
//! - on the embedded store there is exactly one writer (redb locks its file), so a token
//!   bucket in its memory is the whole truth;
//! - on CQL any number of ingest nodes share the region's keyspace, so the limit lives there
//!   (`CqlStore::take_rate`, a sliding window of accepted requests): spreading requests over
//!   nodes gains nothing. It costs two CQL round trips per POST; a bucket per node would cost
//!   none and let a user post `nodes × limit` per window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use livecomments_store::StoreResult;
use livecomments_store::cql::CqlStore;

/// Where the region's per-user limit is kept.
pub enum UserLimit {
    /// One writer process: in memory.
    Local(RateLimiter),
    /// Every ingest node of the region: in the CQL store.
    Shared {
        store: Arc<CqlStore>,
        limit: u32,
        window: Duration,
        /// Put before the user id in the store's window, so that two limits (comments,
        /// reactions) of one user keep apart there; `""` for the comment limit. (In memory
        /// each limit is a `RateLimiter` of its own.)
        namespace: &'static str,
    },
}

impl UserLimit {
    /// Whether `user` may post now: `Ok(Err(wait))` when over the limit, `Err` when the
    /// shared store cannot be asked (the POST answers 503, as it could not be stored either).
    /// In memory this takes the token at once; in the store the caller records the accepted
    /// request with [`UserLimit::record`], concurrently with the comment's write (one CQL
    /// round trip less per POST than recording first) and before it answers.
    pub async fn check(&self, user: &str) -> StoreResult<Result<(), Duration>> {
        match self {
            UserLimit::Local(rl) => Ok(rl.check(user)),
            UserLimit::Shared {
                store,
                limit,
                window,
                namespace,
            } => {
                store
                    .check_rate(&keyed(namespace, user), *limit, *window)
                    .await
            }
        }
    }

    /// Records an accepted request (nothing to do in memory: `check` took the token).
    pub async fn record(&self, user: &str) -> StoreResult<()> {
        match self {
            UserLimit::Local(_) => Ok(()),
            UserLimit::Shared {
                store,
                window,
                namespace,
                ..
            } => store.record_rate(&keyed(namespace, user), *window).await,
        }
    }
}

fn keyed<'a>(namespace: &str, user: &'a str) -> std::borrow::Cow<'a, str> {
    if namespace.is_empty() {
        user.into()
    } else {
        format!("{namespace}{user}").into()
    }
}

const MAX_TRACKED_USERS: usize = 200_000;

pub struct RateLimiter {
    capacity: f64,
    per_sec: f64,
    users: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        let capacity = f64::from(limit.max(1));
        RateLimiter {
            capacity,
            per_sec: capacity / window.as_secs_f64().max(0.001),
            users: Mutex::default(),
        }
    }

    /// Takes one token for `user`, or says how long until one is available.
    pub fn check(&self, user: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut users = self.users.lock();
        if users.len() >= MAX_TRACKED_USERS && !users.contains_key(user) {
            let (cap, rate) = (self.capacity, self.per_sec);
            users.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < cap
            });
            if users.len() >= MAX_TRACKED_USERS {
                // Every tracked user is active: refuse newcomers briefly rather than grow.
                return Err(Duration::from_secs(1));
            }
        }
        // A known user costs no allocation (the hot path: every POST and every reaction).
        // One lookup for a user already known (the hot case: 77k reactions/s spend their
        // time here otherwise hashing the id three times); the id is copied only when new.
        let (tokens, at) = match users.get_mut(user) {
            Some(entry) => entry,
            None => users
                .entry(user.to_string())
                .or_insert((self.capacity, now)),
        };
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_limit_then_refuses_with_a_wait() {
        let rl = RateLimiter::new(3, Duration::from_secs(10));
        for _ in 0..3 {
            assert!(rl.check("alice").is_ok());
        }
        let wait = rl.check("alice").unwrap_err();
        assert!(
            wait > Duration::from_secs(2) && wait <= Duration::from_secs(4),
            "{wait:?}"
        );
        assert!(rl.check("bob").is_ok(), "users are independent");
    }
}
