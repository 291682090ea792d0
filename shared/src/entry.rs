//! What a post's stream is made of: comments and deletions (CONTRACT §10). A deletion is a
//! durable tombstone with an id of its own, made by the writer that recorded it, so it takes a
//! place among the post's comments in id order: a resume position covers it or not like a
//! comment, history returns it in order with the comments, and a writer's chain (`prev`)
//! runs through both.

use serde::{Deserialize, Serialize};

use crate::comment::Comment;
use crate::names::{CommentId, PostId, Region};

/// A comment was deleted. Kept as long as comments are (the store's retention).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The deletion's own id: a ULID of the writer that recorded it, stamped at deletion time.
    pub id: CommentId,
    pub post_id: PostId,
    /// The deleted comment.
    pub comment_id: CommentId,
    /// The region that stored the comment, and so the tombstone.
    pub region: Region,
}

impl Tombstone {
    pub fn millis(&self) -> i64 {
        crate::id::millis_of(&self.id).unwrap_or(0)
    }
}

/// One event of a post's stream, as history returns them: oldest first by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Comment(Comment),
    Deleted(Tombstone),
}

impl Entry {
    /// The event's id: the comment's, or the tombstone's own (never the deleted comment's).
    pub fn id(&self) -> &CommentId {
        match self {
            Entry::Comment(c) => &c.id,
            Entry::Deleted(t) => &t.id,
        }
    }

    pub fn region(&self) -> &Region {
        match self {
            Entry::Comment(c) => &c.region,
            Entry::Deleted(t) => &t.region,
        }
    }

    pub fn post_id(&self) -> &PostId {
        match self {
            Entry::Comment(c) => &c.post_id,
            Entry::Deleted(t) => &t.post_id,
        }
    }

    pub fn millis(&self) -> i64 {
        crate::id::millis_of(self.id()).unwrap_or(0)
    }
}

/// Comments and tombstones of one range, oldest first by id (both inputs oldest first).
pub fn interleave(comments: Vec<Comment>, tombstones: Vec<Tombstone>) -> Vec<Entry> {
    let mut out = Vec::with_capacity(comments.len() + tombstones.len());
    let mut ts = tombstones.into_iter().peekable();
    for c in comments {
        while let Some(t) = ts.next_if(|t| t.id < c.id) {
            out.push(Entry::Deleted(t));
        }
        out.push(Entry::Comment(c));
    }
    out.extend(ts.map(Entry::Deleted));
    out
}

/// The reverse of [`interleave`].
pub fn split(entries: Vec<Entry>) -> (Vec<Comment>, Vec<Tombstone>) {
    let mut comments = Vec::with_capacity(entries.len());
    let mut tombstones = Vec::new();
    for e in entries {
        match e {
            Entry::Comment(c) => comments.push(c),
            Entry::Deleted(t) => tombstones.push(t),
        }
    }
    (comments, tombstones)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str) -> Comment {
        Comment {
            id: id.into(),
            post_id: "p".into(),
            user_id: "u".into(),
            text: "t".into(),
            timestamp: String::new(),
            region: "eu".into(),
            metadata: Default::default(),
        }
    }

    fn t(id: &str, of: &str) -> Tombstone {
        Tombstone {
            id: id.into(),
            post_id: "p".into(),
            comment_id: of.into(),
            region: "eu".into(),
        }
    }

    #[test]
    fn interleaves_by_id_and_splits_back() {
        let entries = interleave(
            vec![c("B"), c("D")],
            vec![t("A", "x"), t("C", "B"), t("E", "D")],
        );
        let ids: Vec<&str> = entries.iter().map(|e| e.id().as_str()).collect();
        assert_eq!(ids, ["A", "B", "C", "D", "E"]);
        let (cs, ts) = split(entries);
        assert_eq!(cs.len(), 2);
        assert_eq!(ts.len(), 3);
        assert_eq!(ts[1].comment_id.as_str(), "B");
    }
}
