//! A NATS client written by hand on the text protocol, to act as a foreign publisher.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// A message received by [`RawNats`].
#[derive(Debug, Clone)]
pub struct NatsMsg {
    pub subject: String,
    pub reply: Option<String>,
    /// The header block of an `HMSG` (`NATS/1.0\r\nName: value\r\n…`), empty for a `MSG`.
    pub headers: String,
    pub payload: Vec<u8>,
}

/// A minimal NATS client speaking the text protocol over TCP: lets tests act as a foreign or
/// malicious publisher, and watch exactly which subjects the services publish on.
pub struct RawNats {
    w: std::sync::Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    msgs: mpsc::UnboundedReceiver<NatsMsg>,
    pongs: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
    next_sid: u64,
}

impl RawNats {
    pub async fn connect(url: &str) -> RawNats {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let addr = url.trim_start_matches("nats://");
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to nats");
        let (r, w) = stream.into_split();
        let w = std::sync::Arc::new(tokio::sync::Mutex::new(w));
        let (msg_tx, msgs) = mpsc::unbounded_channel();
        let (pong_tx, pongs) = mpsc::unbounded_channel();
        let writer = w.clone();
        let task = tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(r);
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let parts: Vec<&str> = line.split_whitespace().collect();
                match parts.first().copied() {
                    Some("PING") => {
                        let _ = writer.lock().await.write_all(b"PONG\r\n").await;
                    }
                    Some("PONG") => {
                        let _ = pong_tx.send(());
                    }
                    Some(op @ ("MSG" | "HMSG")) => {
                        // MSG <subject> <sid> [reply] <bytes>; HMSG ... [reply] <hdr bytes> <total bytes>
                        let n_fixed = if op == "MSG" { 4 } else { 5 };
                        let total: usize = parts.last().and_then(|n| n.parse().ok()).unwrap_or(0);
                        let hdr: usize = if op == "HMSG" {
                            parts[parts.len() - 2].parse().unwrap_or(0)
                        } else {
                            0
                        };
                        let reply = (parts.len() > n_fixed).then(|| parts[3].to_string());
                        let mut payload = vec![0u8; total + 2];
                        if r.read_exact(&mut payload).await.is_err() {
                            return;
                        }
                        payload.truncate(total);
                        let headers: Vec<u8> = payload.drain(..hdr.min(total)).collect();
                        let _ = msg_tx.send(NatsMsg {
                            subject: parts[1].to_string(),
                            reply,
                            headers: String::from_utf8_lossy(&headers).into_owned(),
                            payload,
                        });
                    }
                    _ => {} // INFO, +OK, -ERR
                }
            }
        });
        let mut n = RawNats {
            w,
            msgs,
            pongs,
            task,
            next_sid: 1,
        };
        n.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"name\":\"livecomments-tests-raw\"}\r\n").await;
        n.flush().await;
        n
    }

    async fn send(&self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.w
            .lock()
            .await
            .write_all(bytes)
            .await
            .expect("write to nats");
    }

    /// Round trip to the server: everything sent before is processed (subscriptions active).
    pub async fn flush(&mut self) {
        self.send(b"PING\r\n").await;
        tokio::time::timeout(Duration::from_secs(5), self.pongs.recv())
            .await
            .expect("PONG from nats");
    }

    pub async fn subscribe(&mut self, subject: &str) {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.send(format!("SUB {subject} {sid}\r\n").as_bytes())
            .await;
        self.flush().await;
    }

    pub async fn publish(&mut self, subject: &str, payload: &[u8]) {
        self.publish_with_reply(subject, None, payload).await;
    }

    pub async fn publish_with_reply(&mut self, subject: &str, reply: Option<&str>, payload: &[u8]) {
        let mut msg = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()).into_bytes(),
            None => format!("PUB {subject} {}\r\n", payload.len()).into_bytes(),
        };
        msg.extend_from_slice(payload);
        msg.extend_from_slice(b"\r\n");
        self.send(&msg).await;
    }

    /// Request/reply: the first answer on a fresh inbox, or None after `timeout`.
    pub async fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Option<Vec<u8>> {
        let inbox = format!("_INBOX.raw{}.{}", std::process::id(), self.next_sid);
        self.subscribe(&inbox).await;
        self.publish_with_reply(subject, Some(&inbox), payload)
            .await;
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some(m) if m.subject == inbox => return Some(m.payload),
                Some(_) => continue,
                None => return None,
            }
        }
        None
    }

    /// The next message on any subscription, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<NatsMsg> {
        tokio::time::timeout(timeout, self.msgs.recv())
            .await
            .ok()
            .flatten()
    }

    /// Every message that arrives within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<NatsMsg> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }
}

impl Drop for RawNats {
    fn drop(&mut self) {
        self.task.abort();
    }
}
