//! Rate sampling (CONTRACT §11, Facebook's `comment_rate`): a stream opened with `rate=R`
//! gets at most R comments a second when its post runs faster.
//!
//! The decision is the hub's, once per rate and frame, not per viewer: every viewer of a
//! post at `rate=10` gets the same sample, so 10,000 sampled viewers cost one decision per
//! comment and then fewer, smaller writes than unsampled ones (docs/BENCHMARKS.md).
//!
//! What is kept:
//! - spread over the second: a token bucket refilled at R per second holds at most R/5 (at
//!   least 1), so a burst after a quiet spell shows its first fifth of a second's worth and
//!   then one comment every 1/R s, never "the first R of each second"; and no second,
//!   however it is cut, shows more than R (the bucket alone lets R + R/5 through one:
//!   measured, 11 a second at rate=10 in up to 4.6 % of viewer-seconds);
//! - spread over users: within a second a user gets at most ⌈R / (users of the previous
//!   second)⌉ comments, so one spammer posting 5,000 a second among 100 users posting one
//!   each gets 1 of the 10, not 9;
//! - every deletion (never sampled: a viewer must lose a comment it was shown);
//! - the position: skipped comments still move the viewer's resume token (`sse::Frame`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `rate=R` with R in 1..=1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rate(u16);

impl Rate {
    pub const MAX: u16 = 1000;

    pub fn parse(s: &str) -> Option<Rate> {
        // Digits only: "+5", " 5" and "5.0" are not rates.
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u16 = s.parse().ok()?;
        (1..=Rate::MAX).contains(&n).then_some(Rate(n))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// Users remembered per second: a second can show at most R ≤ 1000 comments, and counting
/// more distinct users than R changes no cap.
const MAX_USERS: usize = Rate::MAX as usize + 1;
const SECOND: Duration = Duration::from_secs(1);

/// One rate's sampling state in one hub.
pub struct Sampler {
    rate: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
    window_start: Instant,
    /// Comments shown per user in the current second (at most `rate` entries).
    shown_by_user: HashMap<String, u16>,
    /// Distinct users who posted in the current second (bounded by `MAX_USERS`).
    users_now: std::collections::HashSet<String>,
    users_before: usize,
    shown_now: u32,
    total_now: u32,
    /// When each comment of the last second was shown (at most `rate`): no second, however
    /// it is cut, shows more than R (the bucket alone would let R + R/5 through one).
    shown_at: std::collections::VecDeque<Instant>,
    /// The last complete second: (shown, total).
    last_second: (u32, u32),
    /// When an `id:`-only line was last sent for this rate (`sse::Frame::sampled`).
    pub(super) position_sent: Option<Instant>,
    /// The last sample ended with comments left out and no `id:`-only line: the hub sends
    /// one at its next second's tick.
    pub(super) unmarked: bool,
}

impl Sampler {
    pub fn new(rate: Rate, now: Instant) -> Sampler {
        let r = f64::from(rate.get());
        let capacity = (r / 5.0).max(1.0);
        Sampler {
            rate: r,
            capacity,
            tokens: capacity,
            refilled: now,
            window_start: now,
            shown_by_user: HashMap::new(),
            users_now: Default::default(),
            users_before: 0,
            shown_now: 0,
            total_now: 0,
            shown_at: std::collections::VecDeque::new(),
            last_second: (0, 0),
            position_sent: None,
            unmarked: false,
        }
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.window_start) < SECOND {
            return;
        }
        // Every arrival rolls first, so what was counted came within the window's first
        // second; the hub's once-a-second report rolls it up to ~2 s after its start, more
        // when its tick is late (a report at 2.01 s used to drop a burst's second, and the
        // `sampling` note with it: huge_streams.rs saw it fail). Older than 3 s: stale.
        let full = now.duration_since(self.window_start) < 3 * SECOND;
        self.last_second = if full {
            (self.shown_now, self.total_now)
        } else {
            (0, 0)
        };
        self.users_before = if full { self.users_now.len() } else { 0 };
        self.users_now.clear();
        self.shown_by_user.clear();
        self.shown_now = 0;
        self.total_now = 0;
        self.window_start = now;
    }

    /// Whether the comment of `user` arriving `now` is shown.
    pub fn admit(&mut self, user: &str, now: Instant) -> bool {
        self.roll(now);
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate)
            .min(self.capacity);
        self.refilled = now;
        self.total_now = self.total_now.saturating_add(1);
        if self.users_now.len() < MAX_USERS && !self.users_now.contains(user) {
            self.users_now.insert(user.to_string());
        }
        while self
            .shown_at
            .front()
            .is_some_and(|t| now.duration_since(*t) >= SECOND)
        {
            self.shown_at.pop_front();
        }
        if self.tokens < 1.0 || self.shown_at.len() >= self.rate as usize {
            return false;
        }
        let cap = (self.rate / self.users_before.max(1) as f64)
            .ceil()
            .max(1.0) as u16;
        let shown = self.shown_by_user.get(user).copied().unwrap_or(0);
        if shown >= cap {
            return false;
        }
        self.tokens -= 1.0;
        self.shown_at.push_back(now);
        self.shown_now += 1;
        self.shown_by_user.insert(user.to_string(), shown + 1);
        true
    }

    /// (shown, total) of the last complete second, when it skipped any; `None` otherwise.
    pub fn skipping(&mut self, now: Instant) -> Option<(u32, u32)> {
        self.roll(now);
        let (shown, total) = self.last_second;
        (total > shown).then_some((shown, total))
    }

    /// True when no comment came for a minute: the hub forgets the sampler.
    pub fn idle(&self, now: Instant) -> bool {
        now.duration_since(self.refilled) > Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_whole_numbers_from_1_to_1000() {
        assert_eq!(Rate::parse("1").map(Rate::get), Some(1));
        assert_eq!(Rate::parse("1000").map(Rate::get), Some(1000));
        for bad in ["0", "1001", "", "-1", "+5", "5.0", " 5", "10000", "abc"] {
            assert_eq!(Rate::parse(bad), None, "{bad:?}");
        }
    }

    /// `n` comments spread evenly over `secs` seconds from `users` users round robin:
    /// the times (ms from the start) of those shown.
    fn run(rate: u16, per_sec: u32, secs: u32, user_of: impl Fn(u32) -> String) -> Vec<u64> {
        let start = Instant::now();
        let mut s = Sampler::new(Rate::parse(&rate.to_string()).unwrap(), start);
        let n = per_sec * secs;
        let mut shown = Vec::new();
        for i in 0..n {
            let at_ms = u64::from(i) * 1000 / u64::from(per_sec);
            if s.admit(&user_of(i), start + Duration::from_millis(at_ms)) {
                shown.push(at_ms);
            }
        }
        shown
    }

    #[test]
    fn a_fast_post_is_cut_to_the_rate_spread_over_each_second() {
        let shown = run(10, 1000, 5, |i| format!("u{}", i % 200));
        // 5 s at 10/s.
        assert!((45..=50).contains(&shown.len()), "{}", shown.len());
        for sec in 1..5u64 {
            let in_sec: Vec<u64> = shown.iter().copied().filter(|t| t / 1000 == sec).collect();
            assert!((9..=11).contains(&in_sec.len()), "second {sec}: {in_sec:?}");
            // Spread: not bunched at the start of the second.
            assert!(in_sec.iter().any(|t| t % 1000 >= 500), "{in_sec:?}");
        }
    }

    #[test]
    fn no_second_however_cut_shows_more_than_the_rate() {
        for rate in [1u16, 5, 10, 100] {
            let shown = run(rate, 1000, 4, |i| format!("u{}", i % 300));
            for (i, t) in shown.iter().enumerate() {
                let in_window = shown[i..].iter().take_while(|u| **u < t + 1000).count();
                assert!(
                    in_window <= usize::from(rate),
                    "rate {rate}: {in_window} from {t} ms"
                );
            }
        }
    }

    #[test]
    fn a_slow_post_is_not_sampled() {
        assert_eq!(run(10, 5, 4, |i| format!("u{i}")).len(), 20);
    }

    #[test]
    fn one_spammer_cannot_fill_the_sample() {
        // Every other comment is the spammer's (500/s), the rest from 500 users.
        let start = Instant::now();
        let mut s = Sampler::new(Rate::parse("10").unwrap(), start);
        let mut by_spammer = 0;
        let mut total = 0;
        for i in 0..3000u32 {
            let user = if i % 2 == 0 {
                "spammer".to_string()
            } else {
                format!("u{i}")
            };
            let at = start + Duration::from_millis(u64::from(i) * 1000 / 1000);
            if s.admit(&user, at) && at.duration_since(start) >= SECOND {
                total += 1;
                by_spammer += usize::from(user == "spammer");
            }
        }
        assert!(total >= 15, "{total}");
        // After the first second: at most one a second.
        assert!(by_spammer <= 2, "{by_spammer} of {total}");
    }

    #[test]
    fn it_reports_what_the_last_second_skipped() {
        let start = Instant::now();
        let mut s = Sampler::new(Rate::parse("2").unwrap(), start);
        for i in 0..50u64 {
            s.admit(&format!("u{i}"), start + Duration::from_millis(i * 20));
        }
        let (shown, total) = s.skipping(start + Duration::from_millis(1001)).unwrap();
        assert_eq!(total, 50);
        assert!((2..=4).contains(&shown), "{shown}");
    }

    /// A burst inside one second, and the hub's report late: it still says what was left out.
    #[test]
    fn a_late_report_still_tells_the_burst() {
        let start = Instant::now();
        let mut s = Sampler::new(Rate::parse("5").unwrap(), start);
        for i in 0..200u64 {
            s.admit(
                &format!("u{}", i % 40),
                start + Duration::from_micros(i * 1500),
            );
        }
        assert_eq!(
            s.skipping(start + Duration::from_millis(990)),
            None,
            "not a second yet"
        );
        let (shown, total) = s.skipping(start + Duration::from_millis(2050)).unwrap();
        assert_eq!(total, 200);
        assert!(shown <= 6, "{shown}");
    }
}
