//! Resume positions: what a viewer has received, per region, as a *floor* and one id per
//! *writer* above it.
//!
//! A region runs any number of ingest nodes (CONTRACT §7). Each node is one writer: its ids
//! grow in creation order and it publishes a post's comments in that order (`prev` chains
//! them), but two writers' comments interleave in any order, so "everything up to id X" is
//! not one id per region any more. It is one id per writer (the writer is part of the id,
//! `id::writer_of`), plus a floor: every comment of the region with an id at or below the
//! floor is covered, whichever writer made it.
//!
//! Floors are what keeps a position small while nodes come and go (each process start is a
//! new writer): the fanout raises a region's floor to "now less `SETTLE_MS`", the bound
//! within which every comment becomes visible and every lost live event is repaired (see
//! docs/WRITE-PATH.md), and drops the writer ids below it. A position of a region with three
//! ingest nodes is the floor and up to three ids.
//!
//! Text form (the SSE `id:` and the `Last-Event-ID` a browser sends back), parts joined by `~`
//! and sorted: `<region>.<floor>` and `<region>_<id>`, e.g.
//! `eu.01JDQ7Z8XK3M4N5P6Q7R8S9T0V~eu_01JDQ7Z9A2...~us.01JD...`. A token of the one-writer era
//! (`eu.<id>~us.<id>`) reads as floors, which is exactly what it meant. Only URL-unreserved
//! characters, so it also fits `?last_event_id=` unescaped.

use crate::{id, validate};

/// At most this many regions in one token: bounds parsing work on hostile input.
pub const MAX_REGIONS: usize = 32;
/// At most this many writer ids per region in one token.
pub const MAX_WRITERS: usize = 32;
/// Every comment is visible in its region's store, and every live event a fanout lost is
/// repaired, within this long of its id's time; so a floor this far behind the clock covers
/// only what was delivered. 10 s: ingest refuses to make a comment visible later than 5 s
/// after stamping it (a frozen node), writer loss is noticed in 3 s, clocks agree within 1 s.
pub const SETTLE_MS: i64 = 10_000;

/// One region: the floor and the writers' ids above it, sorted by writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Region {
    name: String,
    floor: Option<String>,
    writers: Vec<String>,
}

impl Region {
    fn find(&self, writer: &str) -> Result<usize, usize> {
        self.writers
            .binary_search_by(|w| id::writer_of(w).cmp(writer))
    }

    fn covers(&self, id: &str) -> bool {
        if self.floor.as_deref().is_some_and(|f| f >= id) {
            return true;
        }
        match self.find(id::writer_of(id)) {
            Ok(i) => self.writers[i].as_str() >= id,
            Err(_) => false,
        }
    }

    fn raise_floor(&mut self, floor: &str) -> bool {
        if self.floor.as_deref().is_some_and(|f| f >= floor) {
            return false;
        }
        self.floor = Some(floor.to_string());
        self.writers.retain(|w| w.as_str() > floor);
        true
    }
}

/// Sorted by region. A few regions and writers at most, so vectors beat maps: every SSE
/// viewer holds one (shared with its hub while in step), and a B-tree node alone would cost
/// more than the rest of an idle viewer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(Vec<Region>);

impl Position {
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, region: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|r| r.name.as_str().cmp(region))
    }

    fn region_mut(&mut self, region: &str) -> &mut Region {
        let i = match self.find(region) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(
                    i,
                    Region {
                        name: region.to_string(),
                        ..Region::default()
                    },
                );
                i
            }
        };
        &mut self.0[i]
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The regions this position names.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| r.name.as_str())
    }

    /// Every id this position holds, floors and writers: `(region, id)`.
    pub fn ids(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().flat_map(|r| {
            r.floor
                .iter()
                .chain(r.writers.iter())
                .map(move |i| (r.name.as_str(), i.as_str()))
        })
    }

    /// Where a read of `region`'s history must start to find everything not covered:
    /// after the floor (`None`: from the beginning).
    pub fn floor(&self, region: &str) -> Option<&str> {
        self.find(region)
            .ok()
            .and_then(|i| self.0[i].floor.as_deref())
    }

    /// The newest id of `writer` in `region` this position holds above the floor.
    pub fn writer_id(&self, region: &str, writer: &str) -> Option<&str> {
        let r = &self.0[self.find(region).ok()?];
        r.find(writer).ok().map(|i| r.writers[i].as_str())
    }

    /// True when `id` of `region` is already covered: at or below the floor, or at or below
    /// the id of its writer.
    pub fn covers(&self, region: &str, id: &str) -> bool {
        self.find(region).is_ok_and(|i| self.0[i].covers(id))
    }

    /// Records that `id` of `region` was delivered. Returns false (and changes nothing) when
    /// the position already covers it: the event is a duplicate.
    pub fn advance(&mut self, region: &str, id: &str) -> bool {
        if self.covers(region, id) {
            return false;
        }
        let r = self.region_mut(region);
        match r.find(id::writer_of(id)) {
            Ok(i) => {
                let cur = &mut r.writers[i];
                cur.clear();
                cur.push_str(id);
            }
            Err(i) => {
                r.writers.insert(i, id.to_string());
                if r.writers.len() > MAX_WRITERS {
                    // More writers than a token may carry (node churn on a long-lived
                    // post): the oldest id becomes the floor. It is the writer silent the
                    // longest, so nothing below it is still on its way.
                    if let Some(oldest) = r.writers.iter().min().cloned() {
                        r.raise_floor(&oldest);
                    }
                }
            }
        }
        true
    }

    /// Raises `region`'s floor to `floor` (never lowers it) and forgets the writer ids it
    /// now covers. True when it changed.
    pub fn raise_floor(&mut self, region: &str, floor: &str) -> bool {
        self.region_mut(region).raise_floor(floor)
    }

    /// Raises every region's floor to at least `other`'s.
    pub fn raise_floors_to(&mut self, other: &Position) -> bool {
        let mut changed = false;
        for r in &other.0 {
            if let Some(f) = &r.floor {
                changed |= self.raise_floor(&r.name, f);
            }
        }
        changed
    }

    /// Covers everything either covers.
    pub fn merge(&mut self, other: &Position) {
        self.raise_floors_to(other);
        for r in &other.0 {
            for w in &r.writers {
                self.advance(&r.name, w);
            }
        }
    }

    /// Parses the text form; `None` for anything malformed (the caller answers 400).
    pub fn parse(s: &str) -> Option<Position> {
        const PART: usize = validate::REGION_MAX + 1 + id::ID_LEN + 1;
        if s.is_empty() || s.len() > MAX_REGIONS * (MAX_WRITERS + 1) * PART {
            return None;
        }
        let mut pos = Position::new();
        let mut writers = Vec::new();
        for part in s.split('~') {
            let (region, ulid, is_floor) = match (part.split_once('.'), part.split_once('_')) {
                (Some((r, i)), None) => (r, i, true),
                (None, Some((r, i))) => (r, i, false),
                _ => return None,
            };
            if !validate::is_region(region) || !id::is_valid(ulid) {
                return None;
            }
            let known = pos.find(region).is_ok();
            if !known && pos.0.len() >= MAX_REGIONS {
                return None;
            }
            if is_floor {
                // Two floors of one region (never written by us): the higher one covers both.
                pos.raise_floor(region, ulid);
            } else {
                writers.push((region, ulid));
            }
        }
        // A writer named twice keeps its higher id, and more writers than a position keeps
        // raise the floor, as `advance` does for a live stream: a token we never wrote still
        // means "what these ids cover".
        for (region, ulid) in writers {
            pos.advance(region, ulid);
        }
        Some(pos)
    }

    /// A position at time `ms` in every listed region: replay comments newer than `ms`.
    pub fn at_time(regions: &[String], ms: i64) -> Position {
        let mut pos = Position::new();
        let at = id::max_at(ms);
        for r in regions {
            pos.raise_floor(r, &at);
        }
        pos
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut std::fmt::Formatter<'_>| {
            if !std::mem::take(&mut first) {
                f.write_str("~")?;
            }
            Ok(())
        };
        for r in &self.0 {
            if let Some(floor) = &r.floor {
                sep(f)?;
                write!(f, "{}.{floor}", r.name)?;
            }
            for w in &r.writers {
                sep(f)?;
                write!(f, "{}_{w}", r.name)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::IdGenerator;

    const A: &str = "01JDQ7Z8XK3M4N5P6Q7R8S9T0V";
    const B: &str = "01JDQ7Z8XK3M4N5P6Q7R8S9T0W";

    /// Ids of two writers of one region, interleaved in time.
    fn two_writers() -> (Vec<String>, Vec<String>) {
        let (mut x, mut y) = (IdGenerator::new(1), IdGenerator::new(2));
        let xs = (0..3)
            .map(|i| x.next(1000 + 2 * i, 0).to_string())
            .collect();
        let ys = (0..3)
            .map(|i| y.next(1001 + 2 * i, 0).to_string())
            .collect();
        (xs, ys)
    }

    #[test]
    fn text_round_trip() {
        let mut p = Position::new();
        assert!(p.advance("us", A));
        assert!(p.raise_floor("eu", B));
        let s = p.to_string();
        assert_eq!(s, format!("eu.{B}~us_{A}"));
        assert_eq!(Position::parse(&s), Some(p));
    }

    #[test]
    fn a_one_writer_token_reads_as_floors() {
        let p = Position::parse(&format!("eu.{A}~us.{B}")).unwrap();
        assert_eq!(p.floor("eu"), Some(A));
        assert!(p.covers("eu", A) && !p.covers("eu", B));
        assert!(p.covers("us", B));
    }

    #[test]
    fn writers_are_tracked_apart() {
        // x's comments reach the fanout before y's older ones: both streams stay exact.
        let (xs, ys) = two_writers();
        let mut p = Position::new();
        assert!(p.advance("eu", &xs[2]));
        assert!(
            !p.covers("eu", &ys[0]),
            "an older id of another writer is not covered"
        );
        assert!(p.advance("eu", &ys[0]));
        assert!(p.covers("eu", &xs[1]), "an older id of the same writer is");
        assert!(!p.advance("eu", &xs[2]));
        let q = Position::parse(&p.to_string()).unwrap();
        assert_eq!(q, p);
        assert!(!q.covers("eu", &ys[1]) && q.covers("eu", &ys[0]));
    }

    #[test]
    fn a_floor_covers_every_writer_and_prunes() {
        let (xs, ys) = two_writers();
        let mut p = Position::new();
        p.advance("eu", &xs[0]);
        p.advance("eu", &ys[2]);
        assert!(p.raise_floor("eu", &xs[1]));
        assert!(!p.raise_floor("eu", &xs[0]), "floors never go down");
        assert_eq!(p.writer_id("eu", crate::id::writer_of(&xs[0])), None);
        assert!(p.covers("eu", &ys[0]) && p.covers("eu", &xs[1]));
        assert!(!p.covers("eu", &xs[2]));
        assert_eq!(p.ids().count(), 2, "{p}");
    }

    #[test]
    fn writers_past_the_cap_fold_into_the_floor() {
        let mut p = Position::new();
        let ids: Vec<String> = (0..=MAX_WRITERS as u64)
            .map(|w| IdGenerator::new(w + 1).next(1000 + w as i64, 0).to_string())
            .collect();
        for id in &ids {
            assert!(p.advance("eu", id));
        }
        assert_eq!(p.floor("eu"), Some(ids[0].as_str()));
        assert_eq!(
            p.ids().count(),
            MAX_WRITERS + 1,
            "the floor and the newest writers"
        );
        assert_eq!(Position::parse(&p.to_string()), Some(p.clone()));
    }

    #[test]
    fn merge_covers_both() {
        let (xs, ys) = two_writers();
        let mut a = Position::new();
        a.advance("eu", &xs[1]);
        let mut b = Position::new();
        b.raise_floor("eu", &ys[0]);
        b.advance("eu", &ys[2]);
        a.merge(&b);
        for id in [&xs[0], &xs[1], &ys[0], &ys[1], &ys[2]] {
            assert!(a.covers("eu", id), "{id}");
        }
        assert!(!a.covers("eu", &xs[2]));
    }

    #[test]
    fn a_region_or_writer_named_twice_keeps_the_higher_id() {
        // Never written by us, but meaningful: what both ids cover.
        let p = Position::parse(&format!("eu.{B}~eu.{A}")).unwrap();
        assert_eq!(p.floor("eu"), Some(B));
        let p = Position::parse(&format!("eu_{B}~eu_{A}")).unwrap();
        assert!(p.covers("eu", B) && p.covers("eu", A));
        assert_eq!(p.to_string(), format!("eu_{B}"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "eu",
            "eu.",
            "eu_",
            "eu.notaulid",
            &format!("EU.{A}"),
            &format!("eu.{A}~"),
            &format!("e u.{A}"),
            &format!("eu.{}", A.to_lowercase()),
            &format!("eu.{A}x"),
            &format!("eu_.{A}"),
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }
}
