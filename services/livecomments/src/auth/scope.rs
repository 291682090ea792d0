//! Token scopes (CONTRACT §12): a token with a `posts` claim — exact post ids, or prefixes
//! ending in `*` (`["match-42", "cup-*"]`) — is valid only for those posts.
//!
//! A claim that cannot be read exactly is refused as a whole (401 `invalid_token`, what a
//! gateway does with a token it cannot make sense of), never read loosely: a scope that is
//! half understood would either widen what the token may do or silently lock its holder out.

use std::sync::Arc;

use livecomments_shared::{ErrorCode, Rejection, validate};
use serde_json::Value;

/// Most patterns in one `posts` claim. Matching is a linear walk on every scoped request, and
/// 256 covers a broadcaster's whole schedule of events per token (a token per viewer names
/// one or a few posts); the 8 KiB token limit already caps it near 700.
pub const MAX_PATTERNS: usize = 256;

/// The posts a token may act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// No `posts` claim: every post.
    #[default]
    Every,
    /// Only posts matching one of these (never empty).
    Only(Arc<[Pattern]>),
}

/// One entry of a `posts` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `"match-42"`: that post only.
    Exact(Box<str>),
    /// `"cup-*"`: every post whose id starts with `cup-` (`"*"` alone: every post).
    Prefix(Box<str>),
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, &'static str> {
        let (body, prefix) = match s.strip_suffix('*') {
            Some(p) => (p, true),
            None => (s, false),
        };
        // A prefix is a post id cut short (possibly to nothing); an exact entry is a post id.
        // Anything else (a `*` elsewhere, `**`, a `.` or a space) names no post id at all.
        let chars_ok = body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if prefix {
            if chars_ok && body.len() <= validate::POST_ID_MAX {
                return Ok(Pattern::Prefix(body.into()));
            }
            return Err("posts claim: a pattern is not a post id prefix followed by '*'");
        }
        validate::post_id(body)
            .map(|id| Pattern::Exact(id.into()))
            .map_err(|_| "posts claim: an entry is neither a post id nor a prefix ending in '*'")
    }

    fn matches(&self, post_id: &str) -> bool {
        match self {
            Pattern::Exact(id) => &**id == post_id,
            Pattern::Prefix(p) => post_id.starts_with(&**p),
        }
    }
}

impl Scope {
    /// The scope of a token's `posts` claim: `None` when the token has none. Present, it must
    /// be a non-empty array of at most [`MAX_PATTERNS`] valid patterns; `null`, an empty
    /// array (a token for no post is a mistake of its issuer, not a useful credential) or any
    /// other shape is an error, and the token is refused.
    pub fn from_claim(claim: Option<&Value>) -> Result<Scope, &'static str> {
        let Some(claim) = claim else {
            return Ok(Scope::Every);
        };
        let Value::Array(items) = claim else {
            return Err("posts claim must be an array of post ids or prefixes ending in '*'");
        };
        if items.is_empty() {
            return Err("posts claim must not be empty");
        }
        if items.len() > MAX_PATTERNS {
            return Err("posts claim has too many entries");
        }
        let patterns = items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or("posts claim entries must be strings")
                    .and_then(Pattern::parse)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scope::Only(patterns.into()))
    }

    /// True when the token may act on `post_id`.
    pub fn allows(&self, post_id: &str) -> bool {
        match self {
            Scope::Every => true,
            Scope::Only(patterns) => patterns.iter().any(|p| p.matches(post_id)),
        }
    }

    /// The contract's refusal of a post outside the scope: 403 `forbidden`.
    pub fn require(&self, post_id: &str) -> Result<(), Rejection> {
        if self.allows(post_id) {
            return Ok(());
        }
        Err(Rejection::new(
            ErrorCode::Forbidden,
            format!("this token is not valid for post {post_id}"),
        ))
    }

    /// For acts on every post at once (a global ban, listing every ban): only a token
    /// without a `posts` claim may, as no list of posts covers posts not made yet.
    pub fn require_every(&self) -> Result<(), Rejection> {
        match self {
            Scope::Every => Ok(()),
            Scope::Only(_) => Err(Rejection::new(
                ErrorCode::Forbidden,
                "this token is limited to some posts; acting on every post needs a token \
                 without a posts claim",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope(v: Value) -> Result<Scope, &'static str> {
        Scope::from_claim(Some(&v))
    }

    #[test]
    fn no_claim_allows_every_post() {
        let s = Scope::from_claim(None).unwrap();
        assert_eq!(s, Scope::Every);
        assert!(s.allows("anything"));
        assert!(s.require_every().is_ok());
    }

    #[test]
    fn exact_ids_and_prefixes() {
        let s = scope(json!(["match-42", "cup-*"])).unwrap();
        assert!(s.allows("match-42"));
        assert!(!s.allows("match-421"), "exact means exact");
        assert!(!s.allows("match-4"));
        assert!(!s.allows("Match-42"), "post ids are case-sensitive");
        assert!(s.allows("cup-"));
        assert!(s.allows("cup-final"));
        assert!(!s.allows("cu"));
        assert!(!s.allows("xcup-final"));
        let e = s.require("other").unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(s.require_every().unwrap_err().code, ErrorCode::Forbidden);
        assert!(scope(json!(["*"])).unwrap().allows("any-post"));
    }

    #[test]
    fn malformed_claims_are_refused() {
        for bad in [
            json!(null),
            json!("match-42"),
            json!({"match-42": true}),
            json!([]),
            json!([42]),
            json!(["match-42", null]),
            json!(["cup-*-final"]),
            json!(["*cup"]),
            json!(["cup**"]),
            json!(["**"]),
            json!([""]),
            json!(["has space"]),
            json!(["dot.ted*"]),
            json!(["a>"]),
            json!(["x".repeat(65)]),
            json!([format!("{}*", "x".repeat(65))]),
            Value::Array((0..=MAX_PATTERNS).map(|i| json!(format!("p{i}"))).collect()),
        ] {
            assert!(scope(bad.clone()).is_err(), "{bad} was accepted");
        }
        // The longest exact id and prefix are fine.
        assert!(scope(json!(["x".repeat(64), format!("{}*", "y".repeat(64))])).is_ok());
        assert!(
            scope(Value::Array(
                (0..MAX_PATTERNS).map(|i| json!(format!("p{i}"))).collect()
            ))
            .is_ok()
        );
    }
}
