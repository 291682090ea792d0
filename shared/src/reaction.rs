//! Reactions (CONTRACT §11, Facebook Live's hearts): six kinds, counted and never stored one
//! by one. [`Counts`] is what every layer passes around — a second's counts of one post on
//! the bus, a post's totals in the store, the `data:` of `event: reactions` — with the kinds
//! always in [`ReactionKind::ALL`] order.

use serde::{Deserialize, Serialize};

/// One kind of reaction; on the wire (JSON body, JSON answers) its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReactionKind {
    Like,
    Love,
    Haha,
    Wow,
    Sad,
    Angry,
}

impl ReactionKind {
    /// Every kind, in the order of [`Counts`].
    pub const ALL: [ReactionKind; 6] = [
        ReactionKind::Like,
        ReactionKind::Love,
        ReactionKind::Haha,
        ReactionKind::Wow,
        ReactionKind::Sad,
        ReactionKind::Angry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReactionKind::Like => "like",
            ReactionKind::Love => "love",
            ReactionKind::Haha => "haha",
            ReactionKind::Wow => "wow",
            ReactionKind::Sad => "sad",
            ReactionKind::Angry => "angry",
        }
    }

    pub fn parse(s: &str) -> Option<ReactionKind> {
        ReactionKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A count per kind, in [`ReactionKind::ALL`] order. On NATS and in the store it is the bare
/// array of six integers (compact: a beat carries one per active post); in JSON an object
/// with every kind by name (`{"like": 3, "love": 0, ...}`), so clients never meet a missing key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts(pub [u64; 6]);

impl Counts {
    pub fn add(&mut self, kind: ReactionKind, n: u64) {
        let slot = &mut self.0[kind.index()];
        *slot = slot.saturating_add(n);
    }

    pub fn merge(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    pub fn get(&self, kind: ReactionKind) -> u64 {
        self.0[kind.index()]
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }

    /// `{"like": n, "love": n, "haha": n, "wow": n, "sad": n, "angry": n}`.
    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = ReactionKind::ALL
            .into_iter()
            .map(|k| (k.as_str().to_string(), self.get(k).into()))
            .collect();
        serde_json::Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_by_their_wire_names_and_nothing_else() {
        for k in ReactionKind::ALL {
            assert_eq!(ReactionKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(ReactionKind::parse("Like"), None);
        assert_eq!(ReactionKind::parse("heart"), None);
        assert_eq!(ReactionKind::parse(""), None);
    }

    #[test]
    fn counts_merge_and_render_every_kind() {
        let mut a = Counts::default();
        a.add(ReactionKind::Like, 2);
        a.add(ReactionKind::Angry, 1);
        let mut b = Counts::default();
        b.add(ReactionKind::Like, 3);
        a.merge(&b);
        assert_eq!(
            a.to_json(),
            serde_json::json!({"like": 5, "love": 0, "haha": 0, "wow": 0, "sad": 0, "angry": 1})
        );
        assert!(!a.is_zero());
        assert!(Counts::default().is_zero());
        // On the bus: the bare array.
        let bytes = rmp_serde::to_vec_named(&a).unwrap();
        let back: Counts = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, a);
    }
}
