//! What a string names, in its type: a [`PostId`], a [`CommentId`], a [`Region`]. A function
//! taking a post id and a comment id can no longer be handed them the other way round, and
//! a value of one of these types passed its rule (`validate`) where it entered: at the HTTP
//! edge, on the NATS wire (`bus`), or from the store, which only holds what passed.
//!
//! They serialise as the plain string (`serde(transparent)`), so the JSON API and the
//! MessagePack on NATS are unchanged, and deref to `str` for reading. Text from outside
//! becomes one through `parse` (the rule of `validate`); `From<&str>`/`From<String>` are
//! for text that already passed it (our own store, our generator, tests).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, Rejection};
use crate::validate;

macro_rules! name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Text that already passed the rule: read back from our own store, or made
            /// by our own generator.
            pub fn trusted(s: impl Into<String>) -> Self {
                $name(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                $name(s.clone())
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
    };
}

name!(
    /// A post: 1..=64 of `[A-Za-z0-9_-]` (CONTRACT §1), so it never changes a NATS
    /// subject's meaning.
    PostId
);
name!(
    /// A comment: a canonical ULID whose time part is its timestamp and whose characters
    /// 10..18 name its writer (`id`). Ordering ids orders comments by time.
    CommentId
);
name!(
    /// A region: `[a-z0-9-]{1,16}`.
    Region
);

impl PostId {
    pub fn parse(s: &str) -> Result<PostId, Rejection> {
        validate::post_id(s).map(|s| PostId(s.to_string()))
    }
}

impl CommentId {
    pub fn parse(s: &str) -> Result<CommentId, Rejection> {
        if crate::id::is_valid(s) {
            Ok(CommentId(s.to_string()))
        } else {
            Err(Rejection::new(
                ErrorCode::InvalidCursor,
                "a comment id is a 26-character ULID",
            ))
        }
    }

    /// Epoch milliseconds of the id's time part.
    pub fn millis(&self) -> Option<i64> {
        crate::id::millis_of(&self.0)
    }
}

impl Region {
    /// None unless `s` follows the rule.
    pub fn parse(s: &str) -> Option<Region> {
        validate::is_region(s).then(|| Region(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_parses_only_what_its_rule_allows() {
        assert!(PostId::parse("match-42_final").is_ok());
        assert!(PostId::parse("a.b").is_err());
        assert!(PostId::parse("").is_err());
        assert!(CommentId::parse("01JCZ3N6K0ABCDEFGHJKMNPQRS").is_ok());
        assert!(
            CommentId::parse("01jcz3n6k0abcdefghjkmnpqrs").is_err(),
            "not canonical"
        );
        assert!(Region::parse("eu-west").is_some());
        assert!(Region::parse("EU").is_none());
    }

    #[test]
    fn they_serialise_as_plain_strings() {
        let p = PostId::parse("p1").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"p1\"");
        let back: PostId = serde_json::from_str("\"p1\"").unwrap();
        assert_eq!(back, p);
        assert_eq!(
            rmp_serde::to_vec(&p).unwrap(),
            rmp_serde::to_vec("p1").unwrap()
        );
    }
}
