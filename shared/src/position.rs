//! Resume positions: for each region, the id of the newest comment of that region a viewer
//! has received. Within a region ids grow in creation order and each region's comments reach
//! a post's stream in id order, so "everything of region R up to id X" is one id per region.
//! A remote comment that arrives after a newer local one is still caught, because each region
//! is tracked on its own.
//!
//! Text form (the SSE `id:` and the `Last-Event-ID` a browser sends back):
//! `<region>.<ulid>` joined by `~`, regions sorted: `eu.01JDQ7Z8XK3M4N5P6Q7R8S9T0V~us.01JD...`.
//! Only URL-unreserved characters, so it also fits `?last_event_id=` unescaped.

use crate::{id, validate};

/// At most this many regions in one token: bounds parsing work on hostile input.
pub const MAX_REGIONS: usize = 32;

/// Sorted by region. A few regions at most, so a vector beats a map: every SSE viewer holds
/// one, and a B-tree node alone would cost more than the rest of an idle viewer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(Vec<(String, String)>);

impl Position {
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, region: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(r, _)| r.as_str().cmp(region))
    }

    pub fn get(&self, region: &str) -> Option<&str> {
        self.find(region).ok().map(|i| self.0[i].1.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn regions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(r, i)| (r.as_str(), i.as_str()))
    }

    /// Records that `id` of `region` was delivered. Returns false (and changes nothing) when
    /// the position already covers it: the event is a duplicate.
    pub fn advance(&mut self, region: &str, id: &str) -> bool {
        match self.find(region) {
            Ok(i) if self.0[i].1.as_str() >= id => false,
            Ok(i) => {
                let cur = &mut self.0[i].1;
                cur.clear();
                cur.push_str(id);
                true
            }
            Err(i) => {
                self.0.insert(i, (region.to_string(), id.to_string()));
                true
            }
        }
    }

    /// True when `id` of `region` is already covered.
    pub fn covers(&self, region: &str, id: &str) -> bool {
        self.get(region).is_some_and(|cur| cur >= id)
    }

    /// Every region moved to the larger of both.
    pub fn merge(&mut self, other: &Position) {
        for (r, i) in other.regions() {
            self.advance(r, i);
        }
    }

    /// Parses the text form; `None` for anything malformed (the caller answers 400).
    pub fn parse(s: &str) -> Option<Position> {
        if s.is_empty() || s.len() > MAX_REGIONS * (validate::REGION_MAX + 1 + id::ID_LEN + 1) {
            return None;
        }
        let mut pos = Position::new();
        for part in s.split('~') {
            let (region, ulid) = part.split_once('.')?;
            if !validate::is_region(region) || !id::is_valid(ulid) {
                return None;
            }
            if pos.get(region).is_some() || pos.0.len() >= MAX_REGIONS {
                return None;
            }
            pos.advance(region, ulid);
        }
        Some(pos)
    }

    /// A position at time `ms` in every listed region: replay comments newer than `ms`.
    pub fn at_time(regions: &[String], ms: i64) -> Position {
        let mut pos = Position::new();
        let at = id::max_at(ms);
        for r in regions {
            pos.advance(r, &at);
        }
        pos
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, (r, i)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str("~")?;
            }
            write!(f, "{r}.{i}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "01JDQ7Z8XK3M4N5P6Q7R8S9T0V";
    const B: &str = "01JDQ7Z8XK3M4N5P6Q7R8S9T0W";

    #[test]
    fn text_round_trip() {
        let mut p = Position::new();
        assert!(p.advance("us", A));
        assert!(p.advance("eu", B));
        let s = p.to_string();
        assert_eq!(s, format!("eu.{B}~us.{A}"));
        assert_eq!(Position::parse(&s), Some(p));
    }

    #[test]
    fn advance_refuses_duplicates_and_older() {
        let mut p = Position::new();
        assert!(p.advance("eu", A));
        assert!(!p.advance("eu", A));
        assert!(p.advance("eu", B));
        assert!(!p.advance("eu", A));
        assert!(p.covers("eu", A));
        assert!(!p.covers("us", A));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "eu",
            "eu.",
            "eu.notaulid",
            &format!("EU.{A}"),
            &format!("eu.{A}~"),
            &format!("eu.{A}~eu.{B}"),
            &format!("e u.{A}"),
            &format!("eu.{}", A.to_lowercase()),
            &format!("eu.{A}x"),
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }
}
