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

/// The SSE wire format, parsed incrementally as an EventSource does: bytes in, events out.
/// Bytes wait in the buffer until their line is complete and only whole lines are decoded,
/// so a character split across two reads arrives whole. Besides the dispatched events it
/// reports comment lines (`comment-line`), `retry:` (`retry`) and an `id:` with no data
/// (`id-only`, which moves Last-Event-ID silently in a browser).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: Event,
}

impl SseParser {
    /// The events completed by `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let line = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
            self.line(line.trim_end_matches('\r'), &mut out);
            start = end + 1;
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<Event>) {
        let cur = &mut self.cur;
        if line.is_empty() {
            if cur.event.is_empty() && cur.data.is_empty() && cur.id.is_some() {
                // Like a browser: an id with no data moves Last-Event-ID silently.
                cur.event = "id-only".into();
                out.push(std::mem::take(cur));
            } else if !cur.event.is_empty() || !cur.data.is_empty() {
                if cur.event.is_empty() {
                    cur.event = "message".into();
                }
                out.push(std::mem::take(cur));
            }
            *cur = Event::default();
        } else if let Some(c) = line.strip_prefix(':') {
            out.push(Event {
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
            out.push(Event {
                event: "retry".into(),
                id: None,
                data: v.trim().into(),
            });
        }
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
        Self::try_connect_url(url, last_event_id, None)
            .await
            .unwrap_or_else(|e| panic!("stream connect: {e}"))
    }

    /// Like [`Self::connect_url`], but a server that is down (or does not answer with the
    /// response head within `timeout`) is an error, as for a browser that then tries again.
    pub async fn try_connect_url(
        url: &str,
        last_event_id: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Sse, String> {
        Self::try_connect_with(url, last_event_id, None, timeout).await
    }

    /// Like [`Self::connect_url`], with `Authorization: Bearer <token>`.
    pub async fn connect_bearer(url: &str, token: &str, last_event_id: Option<&str>) -> Sse {
        Self::try_connect_with(url, last_event_id, Some(token), None)
            .await
            .unwrap_or_else(|e| panic!("stream connect: {e}"))
    }

    pub async fn try_connect_with(
        url: &str,
        last_event_id: Option<&str>,
        bearer: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Sse, String> {
        let c = reqwest::Client::builder()
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = c.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let send = req.send();
        let resp = match timeout {
            Some(t) => tokio::time::timeout(t, send)
                .await
                .map_err(|_| format!("no response within {t:?}"))?,
            None => send.await,
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut parser = SseParser::default();
            while let Some(Ok(chunk)) = body.next().await {
                for ev in parser.feed(&chunk) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Event {
                event: "closed".into(),
                id: None,
                data: String::new(),
            });
        });
        Ok(Sse {
            rx,
            status,
            headers,
            task,
            last_id: last_event_id.map(str::to_string),
        })
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

    /// True once the stream's first bytes (its `retry:`) arrived within `timeout`: the viewer
    /// has joined its post and gets whatever is published from now on.
    pub async fn started(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.next(left).await {
                Some(ev) if ev.event == "retry" => return true,
                Some(ev) if ev.event == "closed" => return false,
                Some(_) => continue,
                None => return false,
            }
        }
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

    /// Collects `event: comment` and `event: delete` (the stream's events, CONTRACT §10)
    /// until `n` arrived or `timeout` passed, skipping pings and control events.
    pub async fn stream_events(&mut self, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.next(left).await {
                Some(ev) if ev.event == "comment" || ev.event == "delete" => out.push(ev),
                Some(ev) if ev.event == "closed" => break,
                Some(_) => {}
                None => break,
            }
        }
        out
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

    /// Waits for the next event named `kind`, collecting the comments before it; `None` when
    /// the stream closed or `timeout` passed first.
    pub async fn until_event(
        &mut self,
        kind: &str,
        timeout: Duration,
        comments: &mut Vec<Value>,
    ) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let ev = self.next(left).await?;
            match ev.event.as_str() {
                k if k == kind => return Some(ev),
                "comment" => comments.push(ev.json()),
                "closed" => return None,
                _ => {}
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(events: &[Event]) -> Vec<(&str, Option<&str>, &str)> {
        events
            .iter()
            .map(|e| (e.event.as_str(), e.id.as_deref(), e.data.as_str()))
            .collect()
    }

    #[test]
    fn a_character_split_across_two_reads_arrives_whole() {
        let mut p = SseParser::default();
        // "é" is C3 A9: the first read ends between the two bytes.
        let first = p.feed(b"event: comment\nid: local.01\ndata: {\"text\":\"caf\xc3");
        assert!(first.is_empty(), "{first:?}");
        let second = p.feed(b"\xa9 \xf0\x9f\x8e");
        assert!(second.is_empty(), "{second:?}");
        let third = p.feed(b"\x89\"}\n\n");
        assert_eq!(
            kinds(&third),
            vec![("comment", Some("local.01"), "{\"text\":\"café 🎉\"}")]
        );
        assert_eq!(third[0].json()["text"], "café 🎉");
    }

    #[test]
    fn byte_by_byte_reads_give_what_one_read_gives() {
        let stream = "retry: 1500\n\nid: local.00\n\n: ping\n\nevent: comment\r\nid: local.01\r\ndata: {\"text\":\"Grüße, 世界 🎉\"}\r\n\r\ndata: a\ndata: b\n\n"
            .as_bytes();
        let whole = SseParser::default().feed(stream);
        let mut p = SseParser::default();
        let split: Vec<Event> = stream.iter().flat_map(|b| p.feed(&[*b])).collect();
        let want = vec![
            ("retry", None, "1500"),
            ("id-only", Some("local.00"), ""),
            ("comment-line", None, "ping"),
            ("comment", Some("local.01"), "{\"text\":\"Grüße, 世界 🎉\"}"),
            ("message", None, "a\nb"),
        ];
        assert_eq!(kinds(&whole), want);
        assert_eq!(kinds(&split), want);
    }
}
