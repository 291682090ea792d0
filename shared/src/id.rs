//! Comment ids: ULIDs whose time part is the ingest timestamp, strictly increasing per
//! generator, so that within a region ids sort in creation order (CONTRACT §1).

use ulid::Ulid;

pub const ID_LEN: usize = 26;

/// A monotonic ULID source. One per ingest pipeline; callers serialise access.
#[derive(Debug, Default)]
pub struct IdGenerator {
    last: u128,
}

impl IdGenerator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns an id strictly greater than every earlier one from this generator, with the
    /// time part `now_ms` unless the clock went backwards (then the previous time is kept).
    pub fn next(&mut self, now_ms: i64, random: u128) -> Ulid {
        let fresh = Ulid::from_parts(now_ms.max(0) as u64, random).0;
        let id = if fresh > self.last {
            fresh
        } else {
            self.last + 1
        };
        self.last = id;
        Ulid(id)
    }
}

/// True for a canonical (uppercase Crockford) ULID string.
pub fn is_valid(s: &str) -> bool {
    s.len() == ID_LEN && Ulid::from_string(s).is_ok_and(|u| u.to_string() == s)
}

pub fn millis_of(s: &str) -> Option<i64> {
    Ulid::from_string(s).ok().map(|u| u.timestamp_ms() as i64)
}

/// The greatest id with time part `ms`: "newer than t" is "id greater than `max_at(t)`".
pub fn max_at(ms: i64) -> String {
    Ulid::from_parts(ms.max(0) as u64, u128::MAX).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_even_when_clock_goes_back() {
        let mut g = IdGenerator::new();
        let a = g.next(1000, 7);
        let b = g.next(1000, 0);
        let c = g.next(999, 5);
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
        assert_eq!(b.timestamp_ms(), 1000);
    }

    #[test]
    fn validity_and_bounds() {
        let id = Ulid::from_parts(1234, 99).to_string();
        assert!(is_valid(&id));
        assert!(!is_valid(&id.to_lowercase()));
        assert!(!is_valid("nope"));
        assert_eq!(millis_of(&id), Some(1234));
        assert!(max_at(1234) > id);
        assert!(max_at(1233) < id);
    }
}
