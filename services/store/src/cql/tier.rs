//! Partition widths ("tiers") of `comments`: which partition a comment goes to, chosen by its
//! writer from the post's recent rate, and every partition a given id may be in.
//!
//! One-second partitions alone (schema 0001) cost a sparse post one partition read per
//! comment: a page of 100 of a post with one comment a minute read 127 partitions (waves of
//! 1, 2, ..., 32 until 100 rows). Wider partitions for quiet posts bound that, and the hot
//! post keeps its 1-second partitions, so no partition grows past today's sizing
//! (docs/CQL.md, "Partition arithmetic" and "Tiered partitions"):
//!
//! | width | used while this writer sees the post at | rows per partition per writer |
//! | --- | --- | --- |
//! | 3,600 s | ≤ [`HOUR_MAX_PER_MINUTE`] a minute (1.5/s) | ≤ [`PART_CAP`] |
//! | 60 s | ≤ [`MINUTE_MAX_PER_SECOND`] a second | ≤ [`PART_CAP`] |
//! | 1 s | more | as before (10,000 at 10,000/s) |

use std::collections::HashMap;

use livecomments_shared::{PostId, id};
use parking_lot::Mutex;

use super::{INDEX_CACHE_MAX, Partitions, SPAN_BUCKETS};

/// The widths in seconds, narrowest first. Each divides the next and the 6-hour span, so a
/// partition lies in one span and one partition of every wider width.
pub const WIDTHS: [i64; 3] = [1, 60, 3_600];

/// The hour tier while the post had at most this many comments in this minute and in the
/// previous one: 90 a minute is 1.5/s, so a post with one comment a second (3,600 an hour)
/// reads a page of 100 from one or two partitions.
pub const HOUR_MAX_PER_MINUTE: u32 = 90;
/// The minute tier while the post had at most this many in this second and the previous one:
/// 80/s fills a minute partition with 4,800 rows, under [`PART_CAP`].
pub const MINUTE_MAX_PER_SECOND: u32 = 80;
/// Most rows one writer puts in one 60 s or 3,600 s partition, whatever the rate says: half
/// of the 10,000 rows a 1-second partition holds at the sizing case (10,000/s), so two ingest
/// nodes together stay within it (50 MB at the realistic worst 10 KB a row, 125 MB at the
/// absolute maximum of 25 KB: ScyllaDB warns at 1,000 MB).
pub const PART_CAP: u32 = 5_000;

/// One partition of `comments`: `width_s` seconds from `start_s` (a multiple of `width_s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Part {
    pub start_s: i64,
    pub width_s: i64,
}

impl Part {
    /// The partition of width `width_s` that holds the instant `ms`.
    pub fn at(ms: i64, width_s: i64) -> Part {
        let s = ms.div_euclid(1_000);
        Part {
            start_s: s.div_euclid(width_s) * width_s,
            width_s,
        }
    }

    /// A partition as an index row names it; `None` for a width this binary does not know or
    /// a start that is not aligned to it (a row it did not write).
    pub fn from_index(start_s: i64, width_s: i64) -> Option<Part> {
        (WIDTHS.contains(&width_s) && start_s.rem_euclid(width_s) == 0)
            .then_some(Part { start_s, width_s })
    }

    /// The `bucket` column of its rows in `comments`: the second itself for 1-second
    /// partitions (the schema-0001 layout, unchanged), else `-(start * 10000 + width)`:
    /// negative, hence never a 1-second bucket (ULID times are >= 0), and distinct per
    /// (start, width) since every width is below 10,000. A ULID time (< 2^48 ms) times 10 is
    /// below 2^63, so it cannot overflow.
    pub fn bucket(&self) -> i64 {
        if self.width_s == 1 {
            self.start_s
        } else {
            -(self
                .start_s
                .saturating_mul(10_000)
                .saturating_add(self.width_s))
        }
    }

    pub fn span(&self) -> i64 {
        self.start_s.div_euclid(SPAN_BUCKETS)
    }

    pub fn start_ms(&self) -> i64 {
        self.start_s.saturating_mul(1_000)
    }

    /// Exclusive.
    pub fn end_ms(&self) -> i64 {
        self.start_s
            .saturating_add(self.width_s)
            .saturating_mul(1_000)
    }

    /// The `until` a writer records in the index row of this (wide) partition before it puts
    /// a row stamped `ms` there: the end of `ms`'s slot of 100 ms in the hour's partition (≤
    /// 1.5 comments a second: at most one index write per comment, as a quiet post's
    /// 1-second bucket rows cost before 0007; the first comments of a burst raise it within
    /// 100 ms, so the burst's newest page is past it), of 1 s in the minute's (≤ 80/s: one
    /// index write a second, as a 1-second bucket's), never past the partition's end.
    pub fn cover_until(&self, ms: i64) -> i64 {
        let slot = if self.width_s >= 3_600 { 100 } else { 1_000 };
        ms.div_euclid(slot)
            .saturating_add(1)
            .saturating_mul(slot)
            .min(self.end_ms())
    }

    /// Every partition a comment stamped at `ms` may be in, narrowest first: whichever tier
    /// its writer chose, and any other writer (a retry on another node) too.
    pub fn candidates(ms: i64) -> [Part; 3] {
        WIDTHS.map(|w| Part::at(ms, w))
    }

    /// The candidates of a comment id; `None` when it is not a ULID.
    pub fn candidates_of(id: &str) -> Option<[Part; 3]> {
        id::millis_of(id).map(Part::candidates)
    }
}

/// What a writer saw of one post lately: counts of its comments per minute and per second
/// (this one and the previous one), and how many rows it put in its current hour and minute
/// partitions.
#[derive(Default, Clone, Copy)]
struct Seen {
    minute: i64,
    this_minute: u32,
    prev_minute: u32,
    second: i64,
    this_second: u32,
    prev_second: u32,
    hour_part: i64,
    in_hour_part: u32,
    minute_part: i64,
    in_minute_part: u32,
}

/// Rolls a (window, this, previous) counter forward to `now` and counts one; a comment stamped
/// in an earlier window (tools writing the past; ingest stamps in order) counts in the current.
fn count(window: &mut i64, this: &mut u32, prev: &mut u32, now: i64) {
    if now > *window {
        *prev = if now == *window + 1 { *this } else { 0 };
        *this = 0;
        *window = now;
    }
    *this = this.saturating_add(1);
}

/// Rows put in the partition `part` so far by this writer, counting this one; a partition
/// other than the tracked one (a newer one replaces it) starts from zero.
fn fill(tracked: &mut i64, n: &mut u32, part: i64) -> u32 {
    if part != *tracked {
        *tracked = part;
        *n = 0;
    }
    *n = n.saturating_add(1);
    *n
}

/// One writer's tier choices: per post, what it saw lately ([`Seen`], 80 B). At most
/// [`INDEX_CACHE_MAX`] posts (8 MB); when full it forgets them all, and a post it forgot
/// starts again in the hour tier for at most [`HOUR_MAX_PER_MINUTE`] comments (a hot post
/// moves on within a second), so the caps hold within that many rows.
#[derive(Default)]
pub struct Placer {
    widths: Partitions,
    posts: Mutex<HashMap<PostId, Seen>>,
}

impl Placer {
    pub fn new(widths: Partitions) -> Self {
        Placer {
            widths,
            posts: Mutex::default(),
        }
    }

    /// The partition for a comment of `post` stamped at `ms`, counted as written.
    pub fn place(&self, post: &PostId, ms: i64) -> Part {
        if self.widths == Partitions::Seconds {
            return Part::at(ms, 1);
        }
        let mut posts = self.posts.lock();
        if posts.len() >= INDEX_CACHE_MAX && !posts.contains_key(post) {
            posts.clear();
        }
        let seen = posts.entry(post.clone()).or_insert_with(|| Seen {
            minute: ms.div_euclid(60_000),
            second: ms.div_euclid(1_000),
            hour_part: i64::MIN,
            minute_part: i64::MIN,
            ..Seen::default()
        });
        count(
            &mut seen.minute,
            &mut seen.this_minute,
            &mut seen.prev_minute,
            ms.div_euclid(60_000),
        );
        count(
            &mut seen.second,
            &mut seen.this_second,
            &mut seen.prev_second,
            ms.div_euclid(1_000),
        );
        let per_minute = seen.this_minute.max(seen.prev_minute);
        let per_second = seen.this_second.max(seen.prev_second);
        let hour = Part::at(ms, 3_600);
        if per_minute <= HOUR_MAX_PER_MINUTE
            && fill(&mut seen.hour_part, &mut seen.in_hour_part, hour.start_s) <= PART_CAP
        {
            return hour;
        }
        let minute = Part::at(ms, 60);
        if per_second <= MINUTE_MAX_PER_SECOND
            && fill(
                &mut seen.minute_part,
                &mut seen.in_minute_part,
                minute.start_s,
            ) <= PART_CAP
        {
            return minute;
        }
        Part::at(ms, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_500_000_000; // an hour (and 6-hour span) boundary

    #[test]
    fn buckets_of_parts_never_collide() {
        let s = T0 / 1000;
        let a = Part::at(T0 + 61_500, 1);
        assert_eq!(a.bucket(), s + 61);
        let m = Part::at(T0 + 61_500, 60);
        assert_eq!((m.start_s, m.bucket()), (s + 60, -((s + 60) * 10_000 + 60)));
        let h = Part::at(T0 + 61_500, 3_600);
        assert_eq!(h.bucket(), -(s * 10_000 + 3_600));
        assert_ne!(Part::at(T0, 60).bucket(), Part::at(T0, 3_600).bucket());
        assert!(m.bucket() < 0 && h.bucket() < 0 && Part::at(0, 1).bucket() == 0);
        assert_eq!((h.start_ms(), h.end_ms()), (T0, T0 + 3_600_000));
        assert_eq!(h.span(), a.span());
        assert_eq!(Part::from_index(s + 60, 60), Some(m));
        assert_eq!(Part::from_index(s + 30, 60), None);
        assert_eq!(Part::from_index(s, 7), None);
        let max = Part::at((1 << 48) - 1, 60);
        assert!(max.bucket() < 0);
    }

    #[test]
    fn sparse_posts_get_hours_and_hot_posts_seconds() {
        let p = Placer::default();
        let post: PostId = "sparse".into();
        for k in 0..300 {
            assert_eq!(
                p.place(&post, T0 + k * 60_000).width_s,
                3_600,
                "comment {k}"
            );
        }
        let one_a_second: PostId = "steady".into();
        for k in 0..3_600 {
            assert_eq!(p.place(&one_a_second, T0 + k * 1_000).width_s, 3_600);
        }
        // 10,000/s: a burst's first comments land wide, then everything is 1 s.
        let hot: PostId = "hot".into();
        let widths: Vec<i64> = (0..20_000)
            .map(|k| p.place(&hot, T0 + k / 10).width_s)
            .collect();
        let wide = widths.iter().filter(|&&w| w > 1).count();
        assert!(
            wide <= (HOUR_MAX_PER_MINUTE + MINUTE_MAX_PER_SECOND) as usize,
            "{wide}"
        );
        assert!(widths[200..].iter().all(|&w| w == 1));
        // Quiet again: the minute tier after a quiet second, the hour after a quiet minute.
        assert_eq!(p.place(&hot, T0 + 3_000).width_s, 60);
        assert_eq!(p.place(&hot, T0 + 300_000).width_s, 3_600);
    }

    #[test]
    fn the_cover_bound_is_past_the_stamp_and_within_the_partition() {
        let hour = Part::at(T0, 3_600);
        let minute = Part::at(T0, 60);
        for ms in [T0, T0 + 1, T0 + 99, T0 + 100, T0 + 59_999] {
            let (h, m) = (hour.cover_until(ms), minute.cover_until(ms));
            assert!(h > ms && h - ms <= 100 && h <= hour.end_ms(), "{ms}: {h}");
            assert!(
                m > ms && m - ms <= 1_000 && m <= minute.end_ms(),
                "{ms}: {m}"
            );
        }
        assert_eq!(hour.cover_until(hour.end_ms() - 1), hour.end_ms());
    }

    #[test]
    fn seconds_only_while_a_rolling_upgrade_needs_it() {
        let p = Placer::new(Partitions::Seconds);
        let quiet: PostId = "quiet".into();
        // One a minute would be the hour tier; `seconds` keeps the pre-0007 layout.
        assert!((0..10).all(|k| p.place(&quiet, T0 + k * 60_000) == Part::at(T0 + k * 60_000, 1)));
    }

    #[test]
    fn a_wide_partition_holds_at_most_the_cap() {
        let p = Placer::default();
        let post: PostId = "steady-70".into();
        // 70 a second: minute tier, 4,200 a minute, under the cap; 83/s would be 1 s.
        let mut in_minute = 0;
        for k in 0..(70 * 60) {
            if p.place(&post, T0 + 120_000 + k * 1_000 / 70).width_s == 60 {
                in_minute += 1;
            }
        }
        assert!(in_minute > 4_000 && in_minute <= PART_CAP, "{in_minute}");
        // 88 a minute for an hour is 5,280: the hour tier until its cap, then minutes.
        let busy: PostId = "busy".into();
        let in_hour = (0..88 * 60)
            .filter(|k| p.place(&busy, T0 + k * 60_000 / 88).width_s == 3_600)
            .count();
        assert_eq!(in_hour, PART_CAP as usize);
    }
}
