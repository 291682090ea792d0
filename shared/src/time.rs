//! Timestamps: milliseconds since the Unix epoch inside, RFC 3339 UTC with milliseconds outside.

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats epoch milliseconds as `2026-11-25T19:44:32.123Z`.
pub fn format_millis(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// Parses a `since` value: RFC 3339 (any offset) or integer milliseconds since the epoch.
pub fn parse_since(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let ms: i64 = s.parse().ok()?;
        // Beyond year 9999 is not a time anyone means; refuse rather than overflow later.
        return (ms <= 253_402_300_799_999).then_some(ms);
    }
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    // Before the epoch there are no comments: "since then" is "since the start".
    Some(t.timestamp_millis().max(0))
}

/// Parses the RFC 3339 form written by [`format_millis`].
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_parses_both_forms() {
        let ms = 1_795_808_672_123;
        let s = format_millis(ms);
        assert_eq!(s, "2026-11-27T19:44:32.123Z");
        assert_eq!(parse_since(&s), Some(ms));
        assert_eq!(parse_since("1795808672123"), Some(ms));
        assert_eq!(parse_since("2026-11-27T20:44:32.123+01:00"), Some(ms));
        assert_eq!(parse_since("yesterday"), None);
        assert_eq!(parse_since(""), None);
        assert_eq!(parse_since("99999999999999999999999"), None);
        assert_eq!(parse_since("-5"), None);
    }
}
