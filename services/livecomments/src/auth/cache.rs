//! Tokens already verified, so a keep-alive client posting many comments with one token pays
//! one signature check (issue 16; what high-rate gateways such as Envoy and Kong do).
//!
//! Keyed by the token's exact bytes (compared in full on a hit, so no hash collision can hand
//! one token another's identity; the map's hasher is randomly keyed against flooding). Only
//! successful verifications are kept, so refused tokens cannot fill it. An entry is used only
//! while `now < exp`: it never outlives its token. Bounded: two generations of
//! [`GENERATION`] entries each; when the current one is full the older is dropped whole (O(1)
//! eviction with a least-recently-used flavour: a hit in the older generation moves up).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::Caller;

/// Entries per generation (so at most twice this many tokens). The per-user rate limit lets a
/// user post about once a second sustained, so a hit needs the cache to hold every token seen
/// in the last second or so: 8192 covers a node taking 8k distinct users' POSTs a second.
/// At a typical 300-byte token that is ~6 MiB for both generations.
pub const GENERATION: usize = 8192;
/// Longer tokens are verified every time: with this cap the cache holds at most
/// 2 × 8192 × 1 KiB = 16 MiB of keys whatever clients send (the header allows 8 KiB).
pub const MAX_CACHED_TOKEN: usize = 1024;

pub struct VerifiedCache {
    inner: Mutex<Generations>,
    generation: usize,
}

#[derive(Default)]
struct Generations {
    current: HashMap<Box<str>, Arc<Caller>>,
    previous: HashMap<Box<str>, Arc<Caller>>,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self::with_generation(GENERATION)
    }
}

impl VerifiedCache {
    pub fn with_generation(generation: usize) -> Self {
        VerifiedCache {
            inner: Mutex::default(),
            generation: generation.max(1),
        }
    }

    /// The caller of a token verified before, if its `exp` is still ahead of `now_secs`.
    pub fn get(&self, token: &str, now_secs: u64) -> Option<Arc<Caller>> {
        if token.len() > MAX_CACHED_TOKEN {
            return None;
        }
        let mut g = self.inner.lock();
        if let Some(c) = g.current.get(token) {
            if now_secs < c.expires_at {
                return Some(c.clone());
            }
            g.current.remove(token);
            return None;
        }
        let (key, c) = g.previous.remove_entry(token)?;
        if now_secs >= c.expires_at {
            return None;
        }
        let found = c.clone();
        Self::insert_locked(&mut g, self.generation, key, c);
        Some(found)
    }

    /// Remembers a token that just passed verification.
    pub fn insert(&self, token: &str, caller: Arc<Caller>) {
        if token.len() > MAX_CACHED_TOKEN {
            return;
        }
        let mut g = self.inner.lock();
        Self::insert_locked(&mut g, self.generation, token.into(), caller);
    }

    fn insert_locked(g: &mut Generations, generation: usize, key: Box<str>, c: Arc<Caller>) {
        if g.current.len() >= generation && !g.current.contains_key(&key) {
            g.previous = std::mem::take(&mut g.current);
        }
        g.current.insert(key, c);
    }

    /// Tokens held (both generations).
    pub fn len(&self) -> usize {
        let g = self.inner.lock();
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;

    fn caller(user: &str, exp: u64) -> Arc<Caller> {
        Arc::new(Caller {
            user_id: user.into(),
            moderator: false,
            expires_at: exp,
            scope: Scope::Every,
        })
    }

    #[test]
    fn a_hit_returns_the_verified_caller_until_exp() {
        let c = VerifiedCache::default();
        c.insert("tok-a", caller("alice", 100));
        assert_eq!(c.get("tok-a", 99).unwrap().user_id, "alice");
        assert!(c.get("tok-b", 99).is_none(), "another token is not a hit");
        assert!(c.get("tok-", 99).is_none(), "nor a prefix of one");
        // At exp the entry is gone for good: the next use verifies again (and, with the
        // leeway, may still be accepted; the cache never decides that).
        assert!(c.get("tok-a", 100).is_none());
        assert!(c.get("tok-a", 50).is_none(), "an expired entry was dropped");
        assert!(c.is_empty());
    }

    #[test]
    fn the_cache_holds_at_most_two_generations() {
        let c = VerifiedCache::with_generation(4);
        for i in 0..100 {
            c.insert(&format!("t{i}"), caller("u", 1000));
            assert!(c.len() <= 8, "{} entries after {i}", c.len());
        }
        // The newest are still there, the oldest are gone.
        assert!(c.get("t99", 0).is_some());
        assert!(c.get("t0", 0).is_none());
    }

    #[test]
    fn a_token_used_often_survives_eviction() {
        let c = VerifiedCache::with_generation(4);
        c.insert("hot", caller("h", 1000));
        for i in 0..100 {
            c.insert(&format!("t{i}"), caller("u", 1000));
            assert!(c.get("hot", 0).is_some(), "hot evicted after {i}");
        }
    }

    #[test]
    fn long_tokens_are_not_kept() {
        let c = VerifiedCache::default();
        let long = "x".repeat(MAX_CACHED_TOKEN + 1);
        c.insert(&long, caller("u", 1000));
        assert!(c.get(&long, 0).is_none());
        assert!(c.is_empty());
    }
}
