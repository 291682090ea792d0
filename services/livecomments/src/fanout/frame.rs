//! SSE frames, serialised once per event and shared by every viewer of the post.

use bytes::{BufMut, Bytes, BytesMut};
use livecomments_shared::{Comment, Position, wire::Deletion};
use std::sync::Arc;

/// What a viewer writes for one hub dispatch: a single event, or several that arrived
/// together (one socket write for all of them).
pub struct Frame {
    pub bytes: Bytes,
    /// The hub's position before and after this frame; `None` when it moves no position
    /// (pings, deletions, a batch of only those). A viewer exactly at `before` writes
    /// `bytes` as they are and ends at `after`: the common case costs no per-viewer work.
    pub span: Option<Span>,
    pub comment: Option<CommentRef>,
    /// For a batch: the frames whose bytes `bytes` concatenates (empty otherwise).
    pub parts: Vec<Arc<Frame>>,
}

pub struct Span {
    pub before: Arc<Position>,
    pub after: Arc<Position>,
}

pub struct CommentRef {
    pub region: String,
    pub id: String,
    /// Where `event: comment` starts in `bytes` (after the `id:` line).
    pub body_at: usize,
}

impl Frame {
    fn plain(bytes: Bytes) -> Frame {
        Frame {
            bytes,
            span: None,
            comment: None,
            parts: Vec::new(),
        }
    }

    pub fn comment(c: &Comment, before: Arc<Position>, after: Arc<Position>) -> Frame {
        let (bytes, body_at) = comment_bytes(c, &after);
        Frame {
            bytes,
            span: Some(Span { before, after }),
            comment: Some(CommentRef {
                region: c.region.clone(),
                id: c.id.clone(),
                body_at,
            }),
            parts: Vec::new(),
        }
    }

    /// Several frames, in order, as one. A single frame is returned as it is.
    pub fn batch(mut parts: Vec<Arc<Frame>>) -> Arc<Frame> {
        if parts.len() == 1 {
            return parts.pop().unwrap_or_else(|| Arc::new(Frame::ping()));
        }
        let len = parts.iter().map(|p| p.bytes.len()).sum();
        let mut b = BytesMut::with_capacity(len);
        for p in &parts {
            b.put_slice(&p.bytes);
        }
        let mut spans = parts.iter().filter_map(|p| p.span.as_ref());
        let span = spans.next().map(|first| Span {
            before: first.before.clone(),
            after: spans.last().unwrap_or(first).after.clone(),
        });
        Arc::new(Frame {
            bytes: b.freeze(),
            span,
            comment: None,
            parts,
        })
    }

    /// Events in this frame (for the delivery counter).
    pub fn events(&self) -> usize {
        self.parts.len().max(1)
    }

    pub fn delete(d: &Deletion) -> Frame {
        let json = serde_json::json!({"id": d.id, "post_id": d.post_id});
        Frame::plain(Bytes::from(format!("event: delete\ndata: {json}\n\n")))
    }

    pub fn ping() -> Frame {
        Frame::plain(Bytes::from_static(b": ping\n\n"))
    }

    /// Tells the viewer to reconnect (it will resume elsewhere with Last-Event-ID).
    pub fn reconnect() -> Frame {
        Frame::plain(Bytes::from_static(b"event: reconnect\ndata: {}\n\n"))
    }

    /// What a viewer at `pos` writes for this frame, moving `pos` past it; `None` when the
    /// viewer already has all of it (it resumed past it).
    pub fn render(&self, pos: &mut Arc<Position>) -> Option<Bytes> {
        let Some(span) = &self.span else {
            return Some(self.bytes.clone());
        };
        if Arc::ptr_eq(pos, &span.before) {
            *pos = span.after.clone();
            return Some(self.bytes.clone());
        }
        if !self.parts.is_empty() {
            let mut out = BytesMut::new();
            for p in &self.parts {
                if let Some(b) = p.render(pos) {
                    out.put_slice(&b);
                }
            }
            return (!out.is_empty()).then(|| out.freeze());
        }
        let c = self.comment.as_ref()?;
        if pos.covers(&c.region, &c.id) {
            return None;
        }
        Arc::make_mut(pos).advance(&c.region, &c.id);
        if **pos == *span.after {
            // Back in step with the hub: later frames take the shared path.
            *pos = span.after.clone();
            return Some(self.bytes.clone());
        }
        let token = pos.to_string();
        let rest = &self.bytes[c.body_at..];
        let mut b = BytesMut::with_capacity(rest.len() + token.len() + 6);
        b.put_slice(b"id: ");
        b.put_slice(token.as_bytes());
        b.put_u8(b'\n');
        b.put_slice(rest);
        Some(b.freeze())
    }
}

fn comment_bytes(c: &Comment, pos: &Position) -> (Bytes, usize) {
    let json = serde_json::to_vec(c).unwrap_or_default();
    let token = pos.to_string();
    let mut b = BytesMut::with_capacity(json.len() + token.len() + 32);
    b.put_slice(b"id: ");
    b.put_slice(token.as_bytes());
    b.put_u8(b'\n');
    let body_at = b.len();
    b.put_slice(b"event: comment\ndata: ");
    b.put_slice(&json);
    b.put_slice(b"\n\n");
    (b.freeze(), body_at)
}

/// A replayed comment with the viewer's own position.
pub fn replayed(c: &Comment, pos: &Position) -> Bytes {
    comment_bytes(c, pos).0
}
