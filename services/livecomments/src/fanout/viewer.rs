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
            match self
                .fanout
                .history
                .replay(&self.post_id, &from, self.fanout.cfg.replay_max)
                .await
            {
                Ok((comments, cut)) => {
                    for c in &comments {
                        if self.pos.advance(&c.region, &c.id) {
                            out.extend_from_slice(&frame::replayed(c, &self.pos));
                            METRICS.sse_replayed.inc();
                        }
                    }
                    if cut {
                        // More was missed than one replay carries: the client should reload.
                        out.extend_from_slice(
                            b"event: truncated\ndata: {\"reason\":\"replay_limit\"}\n\n",
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(post_id = %self.post_id, error = %e, "replay failed; closing stream");
                    out.extend_from_slice(
                        b"event: reconnect\ndata: {\"reason\":\"history_unavailable\"}\n\n",
                    );
                    self.rx.close();
                    // Drain nothing further: the stream ends after this chunk.
                    while self.rx.try_recv().is_ok() {}
                }
            }
        }
        out.freeze()
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            return Some(self.first_chunk().await);
        }
        loop {
            let first = self.rx.recv().await?;
            let Some(mut bytes) = self.render(&first) else {
                continue;
            };
            let mut batch: Option<BytesMut> = None;
            for _ in 1..MAX_FRAMES_PER_WRITE {
                let Ok(next) = self.rx.try_recv() else { break };
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
