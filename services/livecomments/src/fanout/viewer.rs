//! One SSE viewer: the body stream of `GET /comments/stream`.
//!
//! The seam between replay and live is exact because the viewer joins its hub *before* it
//! reads history: every event published after the join is in its queue, everything before
//! is in the replay, and the viewer's own position drops what both contain.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use livecomments_shared::Position;
use tokio::sync::mpsc;

use super::frame::{self, Frame};
use super::hub::Hub;
use super::{Fanout, Slot};
use crate::metrics::METRICS;

/// Frames coalesced into one write when a viewer has several waiting.
const MAX_FRAMES_PER_WRITE: usize = 64;

pub struct Viewer {
    hub: Arc<Hub>,
    id: u64,
    rx: mpsc::Receiver<Arc<Frame>>,
    pos: Position,
    /// Set until the first chunk is produced: where to replay from.
    resume: Option<Position>,
    started: bool,
    /// Regions whose history could not be replayed yet: their live events are held back (the
    /// position keeps pointing before the gap) until a replay of that region succeeds.
    unreplayed: Vec<String>,
    fanout: Arc<Fanout>,
    post_id: String,
    _slot: Slot,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.hub.leave(self.id);
    }
}

impl Viewer {
    /// Joins the post's hub (subscribing if first). Replay happens when the body is polled.
    pub async fn open(
        fanout: Arc<Fanout>,
        post_id: String,
        resume: Option<Position>,
        slot: Slot,
    ) -> Viewer {
        loop {
            let hub = fanout.hub(&post_id);
            let (tx, rx) = mpsc::channel(fanout.cfg.viewer_buffer);
            if let Some((id, hub_pos)) = hub.join(tx).await {
                let pos = resume.clone().unwrap_or(hub_pos);
                return Viewer {
                    hub,
                    id,
                    rx,
                    pos,
                    resume,
                    started: false,
                    unreplayed: Vec::new(),
                    fanout: fanout.clone(),
                    post_id,
                    _slot: slot,
                };
            }
        }
    }

    /// The viewer's bytes for a frame, or None when it already has that event.
    fn render(&mut self, f: &Frame) -> Option<Bytes> {
        match &f.comment {
            Some(c) => {
                if !self.pos.advance(&c.region, &c.id) {
                    return None;
                }
                if self.pos == *c.position {
                    Some(f.bytes.clone())
                } else {
                    Some(f.with_position(&self.pos))
                }
            }
            None => Some(f.bytes.clone()),
        }
    }

    async fn first_chunk(&mut self) -> Bytes {
        // Jittered reconnect delay spreads a mass reconnect (deploy, fanout loss) over time.
        let retry_ms = 1000 + rand::random::<u64>() % 2000;
        let mut out = BytesMut::from(format!("retry: {retry_ms}\n\n").as_bytes());
        if let Some(from) = self.resume.take() {
            let replay = self
                .fanout
                .history
                .replay(&self.post_id, &from, self.fanout.cfg.replay_max)
                .await;
            if replay.failed.len() == self.fanout.history.regions().count() {
                tracing::warn!(post_id = %self.post_id, "no history reachable; closing stream");
                out.extend_from_slice(
                    b"event: reconnect\ndata: {\"reason\":\"history_unavailable\"}\n\n",
                );
                self.rx.close();
                while self.rx.try_recv().is_ok() {}
                return out.freeze();
            }
            self.emit_replayed(&replay.comments, &mut out);
            if replay.truncated {
                // More was missed than one replay carries: the client should reload.
                out.extend_from_slice(b"event: truncated\ndata: {\"reason\":\"replay_limit\"}\n\n");
            }
            self.unreplayed = replay.failed;
        }
        // An `id:` with no data sets the browser's Last-Event-ID without firing an event, so
        // a stream that drops before its first comment still resumes from here.
        if !self.pos.is_empty() {
            out.extend_from_slice(format!("id: {}\n\n", self.pos).as_bytes());
        }
        out.freeze()
    }

    fn emit_replayed(&mut self, comments: &[livecomments_shared::Comment], out: &mut BytesMut) {
        for c in comments {
            if self.pos.advance(&c.region, &c.id) {
                out.extend_from_slice(&frame::replayed(c, &self.pos));
                METRICS.sse_replayed.inc();
            }
        }
    }

    /// A live event arrived from a region this viewer could not replay: try again now.
    async fn catch_up_region(&mut self, region: &str) -> Option<Bytes> {
        let after = self.pos.get(region).map(str::to_string);
        let max = self.fanout.cfg.replay_max;
        match self
            .fanout
            .history
            .region_after(region, &self.post_id, after.as_deref(), max)
            .await
        {
            Ok(rows) => {
                self.unreplayed.retain(|r| r != region);
                let mut out = BytesMut::new();
                self.emit_replayed(&rows, &mut out);
                Some(out.freeze())
            }
            Err(_) => None,
        }
    }

    /// The next bytes to write, or None when the stream is over.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            return Some(self.first_chunk().await);
        }
        loop {
            let first = if self.unreplayed.is_empty() {
                self.rx.recv().await?
            } else {
                // Some region could not be replayed yet: retry it every second even when
                // nothing arrives from it.
                match tokio::time::timeout(std::time::Duration::from_secs(1), self.rx.recv()).await
                {
                    Ok(f) => f?,
                    Err(_) => {
                        let mut out = BytesMut::new();
                        for region in self.unreplayed.clone() {
                            if let Some(b) = self.catch_up_region(&region).await {
                                out.extend_from_slice(&b);
                            }
                        }
                        if out.is_empty() {
                            continue;
                        }
                        return Some(out.freeze());
                    }
                }
            };
            if let Some(region) = first
                .comment
                .as_ref()
                .map(|c| c.region.clone())
                .filter(|r| self.unreplayed.contains(r))
            {
                match self.catch_up_region(&region).await {
                    Some(bytes) if !bytes.is_empty() => return Some(bytes),
                    _ => continue,
                }
            }
            let Some(mut bytes) = self.render(&first) else {
                continue;
            };
            let mut batch: Option<BytesMut> = None;
            for _ in 1..MAX_FRAMES_PER_WRITE {
                let Ok(next) = self.rx.try_recv() else { break };
                if next
                    .comment
                    .as_ref()
                    .is_some_and(|c| self.unreplayed.contains(&c.region))
                {
                    continue;
                }
                if let Some(b) = self.render(&next) {
                    let buf = batch.get_or_insert_with(|| BytesMut::from(&bytes[..]));
                    buf.extend_from_slice(&b);
                }
            }
            if let Some(buf) = batch {
                bytes = buf.freeze();
            }
            return Some(bytes);
        }
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        futures::stream::unfold(self, |mut v| async move {
            v.next_chunk().await.map(|b| (Ok(b), v))
        })
    }
}
