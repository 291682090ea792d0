//! The Server-Sent Events wire format, all of it: the response head, the stream's opening and
//! control events, and the frames of live events, serialised once per event and shared by
//! every viewer of the post. Like Mercure's one file for its format: a change to what a
//! browser receives is a change to this file only.

use bytes::{BufMut, Bytes, BytesMut};
use livecomments_shared::{Comment, Counts, Entry, Position, wire::Deletion};
use std::sync::Arc;

/// What a viewer writes for one hub dispatch: a single event, or several that arrived
/// together (one socket write for all of them).
pub struct Frame {
    pub bytes: Bytes,
    /// The hub's position before and after this frame; `None` when it moves no position
    /// (pings, a deletion from a publisher older than tombstones, a batch of only those). A viewer exactly at `before` writes
    /// `bytes` as they are and ends at `after`: the common case costs no per-viewer work.
    pub span: Option<Span>,
    /// The event (comment or deletion) this frame carries, when it moves a position.
    pub comment: Option<CommentRef>,
    /// For a batch: the frames whose bytes `bytes` concatenates (empty otherwise).
    pub parts: Vec<Arc<Frame>>,
    /// For a sample ([`Frame::sampled`]): which of `parts` it leaves out (empty otherwise).
    /// A left-out part still moves the viewer's position.
    pub skipped: Vec<bool>,
    /// A sample that ends with an `id:`-only line (its last comments were left out): a
    /// viewer out of step ends with its own.
    pub marked: bool,
}

pub struct Span {
    pub before: Arc<Position>,
    pub after: Arc<Position>,
}

/// The event of a frame: a comment, or a deletion (its tombstone's id, CONTRACT §10).
pub struct CommentRef {
    pub region: String,
    pub id: String,
    /// The millisecond in the id: when the writer stamped the event.
    pub id_millis: i64,
    /// Where `event: …` starts in `bytes` (after the `id:` line).
    pub body_at: usize,
    /// False for a deletion (the publish → SSE histogram counts comments).
    pub is_comment: bool,
    /// A deletion's comment (of the same region).
    pub deletes: Option<String>,
    /// A comment's author (what sampling spreads over); empty for a deletion.
    pub user_id: String,
}

impl Frame {
    fn plain(bytes: Bytes) -> Frame {
        Frame {
            bytes,
            span: None,
            comment: None,
            parts: Vec::new(),
            skipped: Vec::new(),
            marked: false,
        }
    }

    pub fn comment(c: &Comment, before: Arc<Position>, after: Arc<Position>) -> Frame {
        Frame::entry(&Entry::Comment(c.clone()), before, after)
    }

    /// A comment or a deletion, with the hub's position after it as its `id:`.
    pub fn entry(e: &Entry, before: Arc<Position>, after: Arc<Position>) -> Frame {
        let (bytes, body_at) = with_id_line(&after, &event_body(e));
        Frame {
            bytes,
            span: Some(Span { before, after }),
            comment: Some(CommentRef {
                region: e.region().to_string(),
                id: e.id().to_string(),
                id_millis: e.millis(),
                body_at,
                is_comment: matches!(e, Entry::Comment(_)),
                deletes: match e {
                    Entry::Comment(_) => None,
                    Entry::Deleted(t) => Some(t.comment_id.to_string()),
                },
                user_id: match e {
                    Entry::Comment(c) => c.user_id.clone(),
                    Entry::Deleted(_) => String::new(),
                },
            }),
            parts: Vec::new(),
            skipped: Vec::new(),
            marked: false,
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
            after: spans.next_back().unwrap_or(first).after.clone(),
        });
        Arc::new(Frame {
            bytes: b.freeze(),
            span,
            comment: None,
            parts,
            skipped: Vec::new(),
            marked: false,
        })
    }

    /// The events of this frame, one frame each (a single frame is its own only part).
    pub fn each(self: &Arc<Self>) -> &[Arc<Frame>] {
        if self.parts.is_empty() {
            std::slice::from_ref(self)
        } else {
            &self.parts
        }
    }

    /// [`Frame::each`] with, for each, whether a sample leaves it out (it still moves the
    /// viewer's position, but writes nothing).
    pub fn each_with_skips(self: &Arc<Self>) -> impl Iterator<Item = (&Arc<Frame>, bool)> {
        self.each()
            .iter()
            .enumerate()
            .map(|(i, p)| (p, self.skipped.get(i).copied().unwrap_or(false)))
    }

    /// This frame without the parts `keep` refuses (CONTRACT §11's sample: only comments
    /// are ever refused). A viewer in step writes the kept parts' bytes and ends where the
    /// whole frame ends; with `mark_position`, an `id:`-only line after the last kept part
    /// carries that end to the client when the frame's last comments were left out (so its
    /// resume token covers what it was not shown). `None` when nothing is left out.
    pub fn sampled(
        self: &Arc<Self>,
        mut keep: impl FnMut(&CommentRef) -> bool,
        mark_position: bool,
    ) -> Option<Arc<Frame>> {
        let parts = self.each();
        let skipped: Vec<bool> = parts
            .iter()
            .map(|p| p.comment.as_ref().is_some_and(|c| c.is_comment && !keep(c)))
            .collect();
        if !skipped.contains(&true) {
            return None;
        }
        let mut b = BytesMut::new();
        for (p, skip) in parts.iter().zip(&skipped) {
            if !skip {
                b.put_slice(&p.bytes);
            }
        }
        let ends_skipped = ends_skipped(parts, &skipped);
        let marked = mark_position && ends_skipped;
        if let (true, Some(span)) = (marked, &self.span) {
            b.put_slice(&position_only(&span.after));
        }
        Some(Arc::new(Frame {
            bytes: b.freeze(),
            span: self.span.as_ref().map(|s| Span {
                before: s.before.clone(),
                after: s.after.clone(),
            }),
            comment: None,
            parts: parts.to_vec(),
            skipped,
            marked,
        }))
    }

    /// A sample whose last comments were left out and that carries no `id:`-only line for
    /// them: its viewers' resume tokens lag until one follows ([`Frame::position`]).
    pub fn unmarked(&self) -> bool {
        !self.marked && ends_skipped(&self.parts, &self.skipped)
    }

    /// An `id:`-only line with the hub's position `pos`, for viewers in step with it (a
    /// viewer out of step gets nothing: its next comment carries its own).
    pub fn position(pos: Arc<Position>) -> Frame {
        Frame {
            bytes: position_only(&pos),
            span: Some(Span {
                before: pos.clone(),
                after: pos,
            }),
            comment: None,
            parts: Vec::new(),
            skipped: Vec::new(),
            marked: false,
        }
    }

    /// The resume token in a single event's `id:` line (the hub's position after it); `None`
    /// for frames that are not one event.
    pub fn token(&self) -> Option<&str> {
        let c = self.comment.as_ref()?;
        let line = self.bytes.get(..c.body_at)?;
        std::str::from_utf8(line.strip_prefix(b"id: ")?.strip_suffix(b"\n")?).ok()
    }

    /// Events in this frame (for the delivery counter): a sample counts what it kept.
    pub fn events(&self) -> usize {
        if self.skipped.is_empty() {
            self.parts.len().max(1)
        } else {
            self.skipped.iter().filter(|s| !**s).count()
        }
    }

    /// `event: viewers` (CONTRACT §11): the post's open streams over every fanout.
    pub fn viewers(n: u64) -> Frame {
        Frame::plain(Bytes::from(format!(
            "event: viewers\ndata: {{\"viewers\":{n}}}\n\n"
        )))
    }

    /// `event: reactions` with every kind's count since the previous one.
    pub fn reactions(counts: &Counts) -> Frame {
        Frame::plain(Bytes::from(format!(
            "event: reactions\ndata: {}\n\n",
            counts.to_json()
        )))
    }

    /// `event: sampling`: a `rate=R` stream was shown `shown` of the `total` comments of the
    /// last second (what the demo page's "showing N of M comments per second" says).
    pub fn sampling(rate: u16, shown: u32, total: u32) -> Frame {
        Frame::plain(Bytes::from(format!(
            "event: sampling\ndata: {{\"rate\":{rate},\"shown\":{shown},\"total\":{total}}}\n\n"
        )))
    }

    /// A deletion from a publisher that gives it no id (older than tombstones): passed on
    /// as it comes, with no `id:`.
    pub fn delete(d: &Deletion) -> Frame {
        Frame::plain(Bytes::from(delete_body(&d.id, &d.post_id)))
    }

    /// `event: pin` with the pinned comment (CONTRACT §9), live when a comment is pinned.
    pub fn pin(c: &Comment) -> Frame {
        Frame::plain(pin(c))
    }

    /// `event: unpin` with `{"post_id"}` when the post's pinned comment is unpinned.
    pub fn unpin(post_id: &str) -> Frame {
        let json = serde_json::json!({ "post_id": post_id });
        Frame::plain(Bytes::from(format!("event: unpin\ndata: {json}\n\n")))
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
            return (!self.bytes.is_empty()).then(|| self.bytes.clone());
        }
        if !self.parts.is_empty() {
            let mut out = BytesMut::new();
            let mut unmarked = false;
            for (p, skip) in self
                .parts
                .iter()
                .zip(self.skipped.iter().copied().chain(std::iter::repeat(false)))
            {
                if let Some(b) = p.render(pos) {
                    if skip {
                        // Left out by the sample: the position moves, nothing is written.
                        unmarked = true;
                    } else {
                        out.put_slice(&b);
                        unmarked = false;
                    }
                }
            }
            if unmarked && self.marked {
                out.put_slice(&position_only(pos));
            }
            return (!out.is_empty()).then(|| out.freeze());
        }
        let c = self.comment.as_ref()?;
        if pos.covers(&c.region, &c.id) {
            return None;
        }
        // A resumed viewer out of step never saw a comment its position does not cover: the
        // deletion of one made and deleted while it was away is not sent (CONTRACT §10), as
        // in its replay; its position still moves past it.
        let unseen = c
            .deletes
            .as_deref()
            .is_some_and(|target| !pos.covers(&c.region, target));
        let own = Arc::make_mut(pos);
        own.advance(&c.region, &c.id);
        // The hub's floors cover what it delivered before this frame, which this viewer
        // has too (its replay or earlier frames): taking them brings it back in step.
        own.raise_floors_to(&span.after);
        if **pos == *span.after {
            // Back in step with the hub: later frames take the shared path.
            *pos = span.after.clone();
            return (!unseen).then(|| self.bytes.clone());
        }
        if unseen {
            return None;
        }
        Some(with_id_line(pos, &self.bytes[c.body_at..]).0)
    }
}

/// True when the last part that moves a position is one `skipped` leaves out.
fn ends_skipped(parts: &[Arc<Frame>], skipped: &[bool]) -> bool {
    parts
        .iter()
        .zip(skipped)
        .rev()
        .find(|(p, _)| p.span.is_some())
        .is_some_and(|(_, skip)| *skip)
}

/// `event: comment` or `event: delete` with its `data:`, without the `id:` line.
fn event_body(e: &Entry) -> Vec<u8> {
    match e {
        Entry::Comment(c) => {
            let json = serde_json::to_vec(c).unwrap_or_default();
            let mut body = Vec::with_capacity(json.len() + 24);
            body.extend_from_slice(b"event: comment\ndata: ");
            body.extend_from_slice(&json);
            body.extend_from_slice(b"\n\n");
            body
        }
        Entry::Deleted(t) => delete_body(&t.comment_id, &t.post_id).into_bytes(),
    }
}

/// A deletion's event: the deleted comment's id and post (CONTRACT §2).
fn delete_body(comment_id: &str, post_id: &str) -> String {
    let json = serde_json::json!({"id": comment_id, "post_id": post_id});
    format!("event: delete\ndata: {json}\n\n")
}

/// `id: <pos>` followed by `body`; also returns where `body` starts.
fn with_id_line(pos: &Position, body: &[u8]) -> (Bytes, usize) {
    let token = pos.to_string();
    let mut b = BytesMut::with_capacity(body.len() + token.len() + 5);
    b.put_slice(b"id: ");
    b.put_slice(token.as_bytes());
    b.put_u8(b'\n');
    let body_at = b.len();
    b.put_slice(body);
    (b.freeze(), body_at)
}

/// The response head of a stream answered on the lean path (`http::sse_conn`), which writes
/// HTTP/1.1 itself; the routed path sets [`RESPONSE_HEADERS`] on its response.
pub const LEAN_RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\n";

/// [`LEAN_RESPONSE_HEAD`] with the request's `x-request-id` (visible ASCII, `trace::RequestId`).
pub fn lean_response_head(request_id: &str) -> Vec<u8> {
    let fixed = LEAN_RESPONSE_HEAD.len() - 2;
    let mut head = Vec::with_capacity(LEAN_RESPONSE_HEAD.len() + 20 + request_id.len());
    head.extend_from_slice(&LEAN_RESPONSE_HEAD[..fixed]);
    head.extend_from_slice(b"x-request-id: ");
    head.extend_from_slice(request_id.as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// The headers of a stream response (CONTRACT §2); `X-Accel-Buffering` keeps nginx from
/// buffering the stream.
pub const RESPONSE_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// The browser's reconnect delay, first on every stream.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// The post's pinned comment: what a stream sends right after `retry:` (CONTRACT §9).
pub fn pin(c: &Comment) -> Bytes {
    let json = serde_json::to_string(c).unwrap_or_default();
    Bytes::from(format!("event: pin\ndata: {json}\n\n"))
}

/// Closes a stream the viewer should resume elsewhere, saying why.
pub fn reconnect_because(reason: &str) -> Bytes {
    let json = serde_json::json!({ "reason": reason });
    Bytes::from(format!("event: reconnect\ndata: {json}\n\n"))
}

/// More was missed than one replay carries: the client should reload.
pub fn truncated() -> Bytes {
    Bytes::from_static(b"event: truncated\ndata: {\"reason\":\"replay_limit\"}\n\n")
}

/// An `id:` with no data: sets the browser's Last-Event-ID without firing an event, so a
/// stream that drops before its first comment still resumes from here.
pub fn position_only(pos: &Position) -> Bytes {
    // (Also what a sample ends with when its last comments were left out.)
    Bytes::from(format!("id: {pos}\n\n"))
}

/// A replayed comment or deletion with the viewer's own position as its `id:`.
pub fn replayed(e: &Entry, pos: &Position) -> Bytes {
    with_id_line(pos, &event_body(e)).0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The `n`th comment of a test post (ids in order of `n`).
    pub(crate) fn comment(region: &str, n: u64) -> Comment {
        Comment {
            id: format!("01JDQ7Z8XK3M4N5P6Q7R8S9{n:03}").into(),
            post_id: "p".into(),
            user_id: "u".into(),
            text: format!("c{n}"),
            timestamp: "2026-11-26T00:00:00.000Z".into(),
            region: region.into(),
            metadata: Default::default(),
        }
    }

    /// A hub dispatching `comments` in order from `start`: the frames and the final position.
    pub(crate) fn dispatch(start: &Arc<Position>, comments: &[Comment]) -> Vec<Arc<Frame>> {
        let mut pos = start.clone();
        comments
            .iter()
            .map(|c| {
                let mut next = Position::clone(&pos);
                next.advance(&c.region, &c.id);
                let next = Arc::new(next);
                let f = Arc::new(Frame::comment(c, pos.clone(), next.clone()));
                pos = next;
                f
            })
            .collect()
    }

    fn texts(bytes: &[u8]) -> Vec<String> {
        let s = std::str::from_utf8(bytes).unwrap();
        s.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str::<Comment>(d).unwrap().text)
            .collect()
    }

    #[test]
    fn a_viewer_in_step_shares_the_bytes_and_follows_the_hub() {
        let start = Arc::new(Position::new());
        let frames = dispatch(&start, &[comment("eu", 1), comment("eu", 2)]);
        let mut pos = start.clone();
        for f in &frames {
            let out = f.render(&mut pos).unwrap();
            assert_eq!(out.as_ptr(), f.bytes.as_ptr(), "shared, not copied");
        }
        assert!(Arc::ptr_eq(&pos, &frames[1].span.as_ref().unwrap().after));
    }

    #[test]
    fn a_batch_gives_a_late_joiner_only_what_it_lacks() {
        let start = Arc::new(Position::new());
        let cs = [comment("eu", 1), comment("eu", 2), comment("eu", 3)];
        let frames = dispatch(&start, &cs);
        let batch = Frame::batch(frames.clone());
        assert_eq!(texts(&batch.bytes), ["c1", "c2", "c3"]);
        // Joined after the first comment was dispatched: its position is the hub's then.
        let mut joiner = frames[0].span.as_ref().unwrap().after.clone();
        let out = batch.render(&mut joiner).unwrap();
        assert_eq!(texts(&out), ["c2", "c3"]);
        assert!(Arc::ptr_eq(
            &joiner,
            &frames[2].span.as_ref().unwrap().after
        ));
        // Joined after all of them: nothing.
        let mut late = frames[2].span.as_ref().unwrap().after.clone();
        assert!(batch.render(&mut late).is_none());
    }

    #[test]
    fn a_deletion_moves_the_position_and_names_the_deleted_comment() {
        let start = Arc::new(Position::new());
        let c = comment("eu", 1);
        let t = livecomments_shared::Tombstone {
            id: "01JDQ7Z8XK3M4N5P6Q7R8S9002".into(),
            post_id: "p".into(),
            comment_id: c.id.clone(),
            region: "eu".into(),
        };
        let mut after = Position::clone(&start);
        after.advance("eu", &t.id);
        let f = Frame::entry(&Entry::Deleted(t.clone()), start.clone(), Arc::new(after));
        let text = std::str::from_utf8(&f.bytes).unwrap();
        assert!(
            text.starts_with("id: eu_01JDQ7Z8XK3M4N5P6Q7R8S9002\nevent: delete\ndata: "),
            "{text}"
        );
        let data: serde_json::Value =
            serde_json::from_str(text.lines().nth(2).unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
        assert_eq!(data, serde_json::json!({"id": c.id, "post_id": "p"}));
        // A viewer that already has the deletion (resumed past it) skips it.
        let mut past = Arc::new({
            let mut p = Position::new();
            p.advance("eu", &t.id);
            p
        });
        assert!(f.render(&mut past).is_none());
    }

    #[test]
    fn a_resumed_viewer_gets_its_own_id_line_until_back_in_step() {
        let start = Arc::new(Position::new());
        let frames = dispatch(&start, &[comment("eu", 1), comment("eu", 2)]);
        // Resumed with a region the hub has not seen yet.
        let mut own = Position::new();
        own.advance("us", "01JDQ7Z8XK3M4N5P6Q7R8S9001");
        let mut pos = Arc::new(own);
        let out = frames[0].render(&mut pos).unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.starts_with("id: eu_01JDQ7Z8XK3M4N5P6Q7R8S9001~us_"),
            "{text}"
        );
        assert_eq!(texts(&out), ["c1"]);
        assert!(pos.covers("us", "01JDQ7Z8XK3M4N5P6Q7R8S9001"));
        // A viewer whose replay already covered a frame skips it.
        assert!(frames[0].render(&mut pos).is_none());
    }

    #[test]
    fn a_sample_moves_the_position_past_what_it_leaves_out() {
        let start = Arc::new(Position::new());
        let cs = [comment("eu", 1), comment("eu", 2), comment("eu", 3)];
        let frames = dispatch(&start, &cs);
        let batch = Frame::batch(frames.clone());
        let end = frames[2].span.as_ref().unwrap().after.clone();
        // Keep only c1: c2 and c3 are left out, and the frame ends with their position.
        let sample = batch.sampled(|c| c.id.ends_with("001"), true).unwrap();
        assert!(sample.marked && !sample.unmarked());
        let mut in_step = start.clone();
        let out = sample.render(&mut in_step).unwrap();
        assert_eq!(texts(&out), ["c1"]);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.ends_with(&format!("id: {end}\n\n")), "{text}");
        assert!(Arc::ptr_eq(&in_step, &end));
        // A viewer out of step gets the same comments and its own position at the end.
        let mut own = Position::new();
        own.advance("us", "01JDQ7Z8XK3M4N5P6Q7R8S9001");
        let mut pos = Arc::new(own);
        let out = sample.render(&mut pos).unwrap();
        assert_eq!(texts(&out), ["c1"]);
        assert!(pos.covers("eu", &cs[2].id) && pos.covers("us", "01JDQ7Z8XK3M4N5P6Q7R8S9001"));
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.ends_with(&format!("id: {pos}\n\n")), "{text}");
        let skips: Vec<bool> = sample.each_with_skips().map(|(_, s)| s).collect();
        assert_eq!(skips, [false, true, true]);
        // Nothing left out: no sample.
        assert!(batch.sampled(|_| true, true).is_none());
    }
}
