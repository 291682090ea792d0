//! Per-user token bucket: `limit` comments per `window`, refilled continuously. The map is
//! bounded: idle users (bucket full again) are forgotten when it fills up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

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
        let (tokens, at) = users
            .entry(user.to_string())
            .or_insert((self.capacity, now));
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
