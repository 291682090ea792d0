//! SSE frames, serialised once per event and shared by every viewer of the post.

use bytes::{BufMut, Bytes, BytesMut};
use livecomments_shared::{Comment, Position, wire::Deletion};
use std::sync::Arc;

/// A comment frame remembers which event it is and the position it leaves a viewer at, so
/// a viewer whose own position differs (just after a resume) can write its own `id:` line
/// and reuse the rest.
pub struct Frame {
    pub bytes: Bytes,
    pub comment: Option<CommentRef>,
}

pub struct CommentRef {
    pub region: String,
    pub id: String,
    /// The hub's position after this event: the `id:` of `bytes`.
    pub position: Arc<Position>,
    /// Where `event: comment` starts in `bytes` (after the `id:` line).
    pub body_at: usize,
}

impl Frame {
    pub fn comment(c: &Comment, position: Arc<Position>) -> Frame {
        let json = serde_json::to_vec(c).unwrap_or_default();
        let token = position.to_string();
        let mut b = BytesMut::with_capacity(json.len() + token.len() + 32);
        b.put_slice(b"id: ");
        b.put_slice(token.as_bytes());
        b.put_u8(b'\n');
        let body_at = b.len();
        b.put_slice(b"event: comment\ndata: ");
        b.put_slice(&json);
        b.put_slice(b"\n\n");
        Frame {
            bytes: b.freeze(),
            comment: Some(CommentRef {
                region: c.region.clone(),
                id: c.id.clone(),
                position,
                body_at,
            }),
        }
    }

    pub fn delete(d: &Deletion) -> Frame {
        let json = serde_json::json!({"id": d.id, "post_id": d.post_id});
        Frame {
            bytes: Bytes::from(format!("event: delete\ndata: {json}\n\n")),
            comment: None,
        }
    }

    pub fn ping() -> Frame {
        Frame {
            bytes: Bytes::from_static(b": ping\n\n"),
            comment: None,
        }
    }

    /// Tells the viewer to reconnect (it will resume elsewhere with Last-Event-ID).
    pub fn reconnect() -> Frame {
        Frame {
            bytes: Bytes::from_static(b"event: reconnect\ndata: {}\n\n"),
            comment: None,
        }
    }

    /// The same frame with a viewer-specific `id:` line.
    pub fn with_position(&self, pos: &Position) -> Bytes {
        match &self.comment {
            Some(c) => {
                let token = pos.to_string();
                let rest = &self.bytes[c.body_at..];
                let mut b = BytesMut::with_capacity(rest.len() + token.len() + 6);
                b.put_slice(b"id: ");
                b.put_slice(token.as_bytes());
                b.put_u8(b'\n');
                b.put_slice(rest);
                b.freeze()
            }
            None => self.bytes.clone(),
        }
    }
}

/// A replayed comment with the viewer's own position.
pub fn replayed(c: &Comment, pos: &Position) -> Bytes {
    Frame::comment(c, Arc::new(pos.clone())).bytes
}
