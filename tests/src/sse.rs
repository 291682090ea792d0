//! An SSE client that parses the stream as a browser's EventSource would.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

/// One parsed SSE event.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// An SSE client: events arrive on a channel; comments (`: ping`) are counted.
pub struct Sse {
    rx: mpsc::UnboundedReceiver<Event>,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    task: tokio::task::JoinHandle<()>,
    pub last_id: Option<String>,
}

impl Sse {
    pub async fn connect(base: &str, post_id: &str, last_event_id: Option<&str>) -> Sse {
        Self::connect_url(
            &format!("{base}/comments/stream?post_id={post_id}"),
            last_event_id,
        )
        .await
    }

    pub async fn connect_url(url: &str, last_event_id: Option<&str>) -> Sse {
        let c = reqwest::Client::builder().build().unwrap();
        let mut req = c.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("stream connect");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            let mut cur = Event::default();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(nl) = buf.find('\n') {
                    let line: String = buf.drain(..=nl).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if cur.event.is_empty() && cur.data.is_empty() && cur.id.is_some() {
                            // Like a browser: an id with no data moves Last-Event-ID silently.
                            cur.event = "id-only".into();
                            let _ = tx.send(std::mem::take(&mut cur));
                        } else if !cur.event.is_empty() || !cur.data.is_empty() {
                            if cur.event.is_empty() {
                                cur.event = "message".into();
                            }
                            if tx.send(std::mem::take(&mut cur)).is_err() {
                                return;
                            }
                        }
                        cur = Event::default();
                    } else if let Some(c) = line.strip_prefix(':') {
                        let _ = tx.send(Event {
                            event: "comment-line".into(),
                            id: None,
                            data: c.trim().into(),
                        });
                    } else if let Some(v) = line.strip_prefix("event:") {
                        cur.event = v.trim().into();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !cur.data.is_empty() {
                            cur.data.push('\n');
                        }
                        cur.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    } else if let Some(v) = line.strip_prefix("id:") {
                        cur.id = Some(v.trim().into());
                    } else if let Some(v) = line.strip_prefix("retry:") {
                        let _ = tx.send(Event {
                            event: "retry".into(),
                            id: None,
                            data: v.trim().into(),
                        });
                    }
                }
            }
            let _ = tx.send(Event {
                event: "closed".into(),
                id: None,
                data: String::new(),
            });
        });
        Sse {
            rx,
            status,
            headers,
            task,
            last_id: last_event_id.map(str::to_string),
        }
    }

    /// The next event of any kind, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        let ev = tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()?;
        if let Some(id) = &ev.id {
            self.last_id = Some(id.clone());
        }
        Some(ev)
    }

    /// The next `event: comment`, skipping heartbeats and other events.
    pub async fn next_comment(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let ev = self.next(left).await?;
            match ev.event.as_str() {
                "comment" => return Some(ev.json()),
                "closed" => return None,
                _ => {}
            }
        }
    }

    /// Collects comments until `n` arrived or `timeout` passed.
    pub async fn comments(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.next_comment(left).await {
                Some(c) => out.push(c),
                None => break,
            }
        }
        out
    }

    /// True once the server closed the stream (within `timeout`).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.next(left).await {
                Some(ev) if ev.event == "closed" => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.task.abort();
    }
}
