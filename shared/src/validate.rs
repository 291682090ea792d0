//! The input rules of CONTRACT §1, in one place. Anything that reaches a NATS subject or a CQL
//! statement has passed through here first.

use std::collections::BTreeMap;

use crate::error::{ErrorCode, Rejection};

pub const POST_ID_MAX: usize = 64;
pub const TEXT_MAX_CHARS: usize = 2000;
pub const METADATA_MAX_ENTRIES: usize = 16;
pub const METADATA_KEY_MAX: usize = 32;
pub const METADATA_VALUE_MAX: usize = 256;
pub const IDEMPOTENCY_KEY_MAX: usize = 128;
pub const REGION_MAX: usize = 16;
pub const USER_ID_MAX: usize = 128;

/// `post_id`: 1..=64 of `[A-Za-z0-9_-]`, so it can never change a NATS subject's meaning.
pub fn post_id(s: &str) -> Result<&str, Rejection> {
    let ok = !s.is_empty()
        && s.len() <= POST_ID_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(s)
    } else {
        Err(Rejection::new(
            ErrorCode::InvalidPostId,
            "post_id must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'",
        ))
    }
}

/// `region`: `[a-z0-9-]{1,16}`.
pub fn is_region(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= REGION_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Comment text: trimmed, 1..=2000 scalar values, no control characters but `\n` and `\t`.
pub fn text(s: &str) -> Result<String, Rejection> {
    let t = s.trim();
    if t.is_empty() {
        return Err(Rejection::new(
            ErrorCode::InvalidText,
            "text must not be empty",
        ));
    }
    if t.chars().count() > TEXT_MAX_CHARS {
        return Err(Rejection::new(
            ErrorCode::InvalidText,
            format!("text must be at most {TEXT_MAX_CHARS} characters"),
        ));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Rejection::new(
            ErrorCode::InvalidText,
            "text must not contain control characters other than newline and tab",
        ));
    }
    Ok(t.to_string())
}

/// Metadata: at most 16 entries, keys 1..=32 characters, values at most 256 characters.
pub fn metadata(m: &BTreeMap<String, String>) -> Result<(), Rejection> {
    let bad = |msg: String| Err(Rejection::new(ErrorCode::InvalidMetadata, msg));
    if m.len() > METADATA_MAX_ENTRIES {
        return bad(format!(
            "metadata must have at most {METADATA_MAX_ENTRIES} entries"
        ));
    }
    for (k, v) in m {
        let kl = k.chars().count();
        if kl == 0 || kl > METADATA_KEY_MAX {
            return bad(format!(
                "metadata keys must be 1 to {METADATA_KEY_MAX} characters"
            ));
        }
        if v.chars().count() > METADATA_VALUE_MAX {
            return bad(format!(
                "metadata values must be at most {METADATA_VALUE_MAX} characters"
            ));
        }
    }
    Ok(())
}

/// `Idempotency-Key`: 1..=128 visible ASCII characters.
pub fn idempotency_key(s: &str) -> Result<&str, Rejection> {
    if !s.is_empty() && s.len() <= IDEMPOTENCY_KEY_MAX && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s)
    } else {
        Err(Rejection::new(
            ErrorCode::InvalidIdempotencyKey,
            "Idempotency-Key must be 1 to 128 visible ASCII characters",
        ))
    }
}

/// A token's `sub` becomes `user_id`; keep it bounded and printable so it is safe in keys and logs.
pub fn user_id(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= USER_ID_MAX && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_ids() {
        assert!(post_id("match-42").is_ok());
        assert!(post_id(&"a".repeat(64)).is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", "é", &"a".repeat(65), "a\0"] {
            assert!(post_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn texts() {
        assert_eq!(text("  hi\n ").unwrap(), "hi");
        assert!(text("a\tb\nc").is_ok());
        assert!(text("   ").is_err());
        assert!(text("a\u{7}b").is_err());
        assert!(text(&"é".repeat(2000)).is_ok());
        assert!(text(&"é".repeat(2001)).is_err());
    }

    #[test]
    fn metadata_bounds() {
        let mut m = BTreeMap::new();
        m.insert("lang".to_string(), "en".to_string());
        assert!(metadata(&m).is_ok());
        m.insert(String::new(), "x".into());
        assert!(metadata(&m).is_err());
        let many: BTreeMap<_, _> = (0..17)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(metadata(&many).is_err());
        let long: BTreeMap<_, _> = [("k".to_string(), "v".repeat(257))].into();
        assert!(metadata(&long).is_err());
    }

    #[test]
    fn regions_and_keys() {
        assert!(is_region("eu-west-1"));
        assert!(!is_region("EU"));
        assert!(!is_region("a.b"));
        assert!(!is_region(""));
        assert!(idempotency_key("abc-123").is_ok());
        assert!(idempotency_key("a b").is_err());
        assert!(idempotency_key(&"k".repeat(129)).is_err());
    }
}
