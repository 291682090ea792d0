//! Comment ids: ULIDs whose time part is the ingest timestamp, strictly increasing per
//! generator, so that within one writer ids sort in creation order (CONTRACT §1).
//!
//! A region may run many ingest nodes (CONTRACT §7), each one *writer*. The top 40 bits of a
//! ULID's 80 random bits name the writer that made it (characters 10..18 of the text form),
//! so any reader of an id — a fanout, a resume token, a store row — knows whose ordered stream
//! it belongs to without a new column or field. 40 random bits per process start: two of a
//! region's live writers collide with odds of about n²/2⁴¹ (10 nodes: 5·10⁻¹¹).

use ulid::Ulid;

pub const ID_LEN: usize = 26;
/// Where the writer sits in the text form of an id.
pub const WRITER_CHARS: std::ops::Range<usize> = 10..18;
const LOW_BITS: u32 = 40;
const LOW_MASK: u128 = (1u128 << LOW_BITS) - 1;
const WRITER_MASK: u64 = (1u64 << 40) - 1;

/// The writer part of an id (empty for text too short to be an id).
pub fn writer_of(id: &str) -> &str {
    id.get(WRITER_CHARS).unwrap_or("")
}

/// A monotonic ULID source for one writer. One per ingest pipeline; callers serialise access.
#[derive(Debug)]
pub struct IdGenerator {
    last: u128,
    writer: u64,
}

impl IdGenerator {
    /// `writer`: 40 bits that name this writer (made at random at process start).
    pub fn new(writer: u64) -> Self {
        IdGenerator {
            last: 0,
            writer: writer & WRITER_MASK,
        }
    }

    /// The writer part every id of this generator carries (see [`writer_of`]).
    pub fn writer(&self) -> String {
        let id = Ulid::from_parts(0, u128::from(self.writer) << LOW_BITS).to_string();
        writer_of(&id).to_string()
    }

    /// Returns an id strictly greater than every earlier one from this generator, with the
    /// time part `now_ms` unless the clock went backwards (then the previous time is kept),
    /// and always this generator's writer part.
    pub fn next(&mut self, now_ms: i64, random: u128) -> Ulid {
        let high = u128::from(self.writer) << LOW_BITS;
        let fresh = Ulid::from_parts(now_ms.max(0) as u64, high | (random & LOW_MASK)).0;
        let id = if fresh > self.last {
            fresh
        } else {
            let next = self.last + 1;
            if Ulid(next).random() & !LOW_MASK == high {
                next
            } else {
                // 2⁴⁰ ids in one millisecond: move to the next millisecond, keep the writer.
                Ulid::from_parts(Ulid(self.last).timestamp_ms() + 1, high).0
            }
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

/// The id just below `id` (as a 128-bit number): "after `predecessor(id)`" starts at `id`
/// itself, which lets a since-query (exclusive `after`) fetch one comment by id.
pub fn predecessor(id: &str) -> Option<String> {
    let u = Ulid::from_string(id).ok()?;
    Some(Ulid(u.0.checked_sub(1)?).to_string())
}

/// The greatest id with time part `ms`: "newer than t" is "id greater than `max_at(t)`".
pub fn max_at(ms: i64) -> String {
    Ulid::from_parts(ms.max(0) as u64, u128::MAX).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_predecessor_sorts_just_below() {
        let id = Ulid::from_parts(1_000, 5).to_string();
        let p = predecessor(&id).unwrap();
        assert!(p < id && is_valid(&p));
        assert_eq!(p, Ulid::from_parts(1_000, 4).to_string());
        assert!(predecessor(&Ulid(0).to_string()).is_none());
    }

    #[test]
    fn strictly_increasing_even_when_clock_goes_back() {
        let mut g = IdGenerator::new(42);
        let a = g.next(1000, 7);
        let b = g.next(1000, 0);
        let c = g.next(999, 5);
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
        assert_eq!(b.timestamp_ms(), 1000);
    }

    #[test]
    fn every_id_carries_the_writer() {
        let mut g = IdGenerator::new(0xAB_CDEF_0123);
        let w = g.writer();
        assert_eq!(w.len(), 8);
        let mut last = String::new();
        for (ms, random) in [(5, u128::MAX), (5, u128::MAX), (5, 0), (4, 1), (9, 3)] {
            let id = g.next(ms, random).to_string();
            assert_eq!(writer_of(&id), w, "{id}");
            assert!(id > last);
            last = id;
        }
        assert_ne!(IdGenerator::new(1).writer(), IdGenerator::new(2).writer());
    }

    #[test]
    fn overflow_of_the_low_bits_moves_time_not_the_writer() {
        let mut g = IdGenerator::new(7);
        let a = g.next(100, LOW_MASK);
        let b = g.next(100, LOW_MASK);
        assert!(b > a);
        assert_eq!(b.timestamp_ms(), 101);
        assert_eq!(writer_of(&b.to_string()), g.writer());
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
        assert_eq!(writer_of("short"), "");
    }
}
