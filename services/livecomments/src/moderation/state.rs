//! Every node's view of the moderation state: the winning [`Record`] of each key, in memory,
//! so that the POST path checks a ban, a closed post or a slow mode with two hash lookups
//! and no I/O (10,000 active bans cost nothing per POST; docs/BENCHMARKS.md).
//!
//! Records merge by last writer wins ([`Record::supersedes`]), so it does not matter in
//! which order, or how many times, the bus, the store re-read and the other regions' sync
//! replies deliver them (`sync.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use livecomments_shared::moderation::{
    Ban, PostSettings, Record, RecordBody, ban_key, settings_key, write_ban_key,
};
use livecomments_shared::{Comment, PostId, time::now_millis};
use parking_lot::RwLock;
use tokio::sync::broadcast;

/// Records held per node. 10,000 active bans is the scale measured; 200,000 leaves room for
/// that twenty times over, plus every post's settings, at ~300 bytes each (~60 MB at worst).
/// When full, expired bans and old tombstones are dropped first; a new key beyond that is
/// refused (and logged), never grown past the bound.
pub const MAX_RECORDS: usize = 200_000;
/// Pin changes waiting for a slow fanout listener; one that lags re-reads every hub's pin.
const PIN_CHANGES: usize = 1024;

/// A post's pinned comment changed: `pinned` is the new one, `None` when unpinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinChange {
    pub post_id: PostId,
    pub pinned: Option<Comment>,
}

pub struct ModState {
    records: RwLock<HashMap<String, Record>>,
    pins: broadcast::Sender<PinChange>,
}

impl Default for ModState {
    fn default() -> Self {
        ModState {
            records: RwLock::default(),
            pins: broadcast::channel(PIN_CHANGES).0,
        }
    }
}

impl ModState {
    pub fn new() -> Arc<ModState> {
        Arc::new(ModState::default())
    }

    /// Applies records by last writer wins; returns those that changed the state.
    pub fn apply(&self, records: impl IntoIterator<Item = Record>) -> Vec<Record> {
        // Most records a re-read or a sync round delivers are already known: they are sorted
        // out under the read lock, so POSTs (readers) never wait behind them; only changes
        // take the write lock. (10,000 bans re-read each second under the write lock doubled
        // POST p99.)
        let fresh: Vec<(String, Record)> = {
            let map = self.records.read();
            records
                .into_iter()
                .map(|r| (r.key(), r))
                .filter(|(k, r)| map.get(k).is_none_or(|o| r.supersedes(o)))
                .collect()
        };
        let mut won = Vec::new();
        let mut pins = Vec::new();
        if fresh.is_empty() {
            return won;
        }
        {
            let mut map = self.records.write();
            for (key, r) in fresh {
                let old = map.get(&key);
                if old.is_some_and(|o| !r.supersedes(o)) {
                    continue;
                }
                if old.is_none() && map.len() >= MAX_RECORDS {
                    let now = now_millis();
                    map.retain(|_, v| v.worth_keeping(now));
                    if map.len() >= MAX_RECORDS {
                        tracing::error!(key, "moderation state full; record not applied");
                        continue;
                    }
                }
                let old_pin = map.get(&key).and_then(pinned_id);
                if let RecordBody::Settings(s) = &r.body
                    && old_pin.as_deref() != s.pinned.as_ref().map(|c| c.id.as_str())
                {
                    pins.push(PinChange {
                        post_id: s.post_id.clone(),
                        pinned: s.pinned.clone(),
                    });
                }
                map.insert(key, r.clone());
                won.push(r);
            }
        }
        for p in pins {
            // Nobody listening (no fanout in this process) is fine.
            let _ = self.pins.send(p);
        }
        won
    }

    /// The ban that keeps `user` from posting on `post` now (the post's own, or the global
    /// one; the longer of the two when both hold).
    pub fn ban_of(&self, user: &str, post: &str) -> Option<Ban> {
        let map = self.records.read();
        if map.is_empty() {
            return None;
        }
        let now = now_millis();
        // Checked on every POST and reaction: one key buffer for both lookups, no `format!`
        // (two formatted keys were 1.3 % of a reaction's CPU with no ban at all).
        let mut key = String::new();
        let mut get = |post: Option<&str>| {
            write_ban_key(&mut key, user, post);
            match map.get(&key).map(|r| &r.body) {
                Some(RecordBody::Ban(b)) if b.active(now) => Some(b.clone()),
                _ => None,
            }
        };
        let scoped = get(Some(post));
        match (scoped, get(None)) {
            (Some(a), Some(b)) => Some(
                if b.expires_at_ms
                    .is_none_or(|e| a.expires_at_ms.is_some_and(|x| x < e))
                {
                    b
                } else {
                    a
                },
            ),
            (a, b) => a.or(b),
        }
    }

    /// The active ban stored under exactly this key (`post: None`: the global one).
    pub fn ban_exact(&self, user: &str, post: Option<&str>) -> Option<Ban> {
        let now = now_millis();
        match self
            .records
            .read()
            .get(&ban_key(user, post))
            .map(|r| &r.body)
        {
            Some(RecordBody::Ban(b)) if b.active(now) => Some(b.clone()),
            _ => None,
        }
    }

    /// Active bans of `post` plus global ones (`None`: every active ban), oldest first.
    pub fn bans(&self, post: Option<&str>) -> Vec<Ban> {
        let now = now_millis();
        let mut out: Vec<Ban> = self
            .records
            .read()
            .values()
            .filter_map(|r| match &r.body {
                RecordBody::Ban(b)
                    if b.active(now)
                        && (post.is_none()
                            || b.post_id.is_none()
                            || b.post_id.as_deref() == post) =>
                {
                    Some(b.clone())
                }
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| (a.created_at_ms, &a.user_id).cmp(&(b.created_at_ms, &b.user_id)));
        out
    }

    /// The post's settings (the defaults when none were set).
    pub fn settings(&self, post: &PostId) -> PostSettings {
        match self
            .records
            .read()
            .get(&settings_key(post))
            .map(|r| &r.body)
        {
            Some(RecordBody::Settings(s)) => s.clone(),
            _ => PostSettings::default_for(post.clone()),
        }
    }

    /// The time of the record under `key`, if any: a new write is stamped after it, so it
    /// supersedes what this node knows even when clocks disagree.
    pub fn updated_at(&self, key: &str) -> Option<i64> {
        self.records.read().get(key).map(|r| r.updated_at_ms)
    }

    /// Records after `(after_ms, after_key)` in `(updated_at_ms, key)` order, at most
    /// `limit`, and whether more follow (the answer to another region's sync request).
    pub fn since(
        &self,
        after_ms: i64,
        after_key: Option<&str>,
        limit: usize,
    ) -> (Vec<Record>, bool) {
        let now = now_millis();
        let after_key = after_key.unwrap_or("");
        let map = self.records.read();
        let mut rows: Vec<(i64, &String, &Record)> = map
            .iter()
            .filter(|(k, r)| {
                r.worth_keeping(now) && (r.updated_at_ms, k.as_str()) > (after_ms, after_key)
            })
            .map(|(k, r)| (r.updated_at_ms, k, r))
            .collect();
        rows.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let more = rows.len() > limit;
        (
            rows.into_iter()
                .take(limit)
                .map(|(_, _, r)| r.clone())
                .collect(),
            more,
        )
    }

    /// Pin changes from now on (for the fanout of this process).
    pub fn pin_changes(&self) -> broadcast::Receiver<PinChange> {
        self.pins.subscribe()
    }

    /// Forgets expired bans and old tombstones (each means "not banned" anyway).
    pub fn prune(&self) {
        let now = now_millis();
        self.records.write().retain(|_, r| r.worth_keeping(now));
    }

    pub fn len(&self) -> usize {
        self.records.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn pinned_id(r: &Record) -> Option<String> {
    match &r.body {
        RecordBody::Settings(s) => s.pinned.as_ref().map(|c| c.id.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(user: &str, post: Option<&str>, at: i64, expires: Option<i64>) -> Record {
        Record {
            updated_at_ms: at,
            origin: "eu".into(),
            body: RecordBody::Ban(Ban {
                user_id: user.into(),
                post_id: post.map(PostId::from),
                expires_at_ms: expires,
                reason: None,
                created_by: "m".into(),
                created_at_ms: at,
            }),
        }
    }

    #[test]
    fn a_later_unban_wins_and_an_older_ban_arriving_late_does_not_undo_it() {
        let st = ModState::default();
        let now = now_millis();
        st.apply([ban("u", Some("p"), now - 10, None)]);
        assert!(st.ban_of("u", "p").is_some());
        assert!(st.ban_of("u", "q").is_none());
        let unban = Record {
            updated_at_ms: now,
            origin: "eu".into(),
            body: RecordBody::Unban {
                user_id: "u".into(),
                post_id: Some("p".into()),
            },
        };
        assert_eq!(st.apply([unban]).len(), 1);
        assert!(st.apply([ban("u", Some("p"), now - 10, None)]).is_empty());
        assert!(st.ban_of("u", "p").is_none());
    }

    #[test]
    fn global_bans_hold_everywhere_and_expired_ones_nowhere() {
        let st = ModState::default();
        let now = now_millis();
        st.apply([
            ban("g", None, now, None),
            ban("t", None, now, Some(now - 1)),
        ]);
        assert!(st.ban_of("g", "any").is_some());
        assert!(st.ban_of("t", "any").is_none());
        assert_eq!(st.bans(Some("p")).len(), 1);
        st.prune();
        assert_eq!(st.len(), 1);
    }

    #[test]
    fn since_pages_in_time_then_key_order() {
        let st = ModState::default();
        let now = now_millis();
        st.apply([
            ban("a", None, now, None),
            ban("b", None, now, None),
            ban("c", None, now + 1, None),
        ]);
        let (page, more) = st.since(0, None, 2);
        assert!(more);
        let keys: Vec<String> = page.iter().map(Record::key).collect();
        assert_eq!(keys, ["b/*/a", "b/*/b"]);
        let (rest, more) = st.since(now, Some("b/*/b"), 2);
        assert!(!more);
        assert_eq!(rest[0].key(), "b/*/c");
    }
}
