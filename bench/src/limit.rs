//! `--kind limit`: the box's limit, a minimal SSE broadcaster to measure livecomments against
//! (issue 16). No auth, no store, no resume, no JSON: `POST /pub/<post>` appends the body as
//! one event to the post's log and answers 202; `GET /sub/<post>` is a close-delimited event
//! stream. Each subscriber's pass writes everything that accumulated since its previous pass
//! with one send, so a backlog makes each write carry more events instead of adding latency
//! per event — what a broadcaster at the limit of the machine does, and nothing more.
//!
//! Same URLs as nchan (`/pub/`, `/sub/`), so the publisher and viewers treat both alike.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Events kept per post: a subscriber further behind than this is cut off (as livecomments
/// cuts a viewer past its buffer). 4096 events are ~20 s of a 200/s post.
const LOG_EVENTS: usize = 4096;
/// Largest request head or body read (the bench's bodies are ~60 bytes).
const MAX_REQUEST: usize = 64 * 1024;

#[derive(clap::Args, Debug)]
pub struct LimitArgs {
    /// Address to listen on (port 0: the kernel picks; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Runtime worker threads (default: one per core, as livecomments).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// One post: its recent events and a counter subscribers wait on.
struct Channel {
    log: Mutex<Log>,
    head: watch::Sender<u64>,
}

#[derive(Default)]
struct Log {
    /// Sequence number of `events[0]`.
    first: u64,
    events: VecDeque<Arc<[u8]>>,
}

type Channels = Arc<Mutex<HashMap<String, Arc<Channel>>>>;

pub fn run(a: LimitArgs) -> Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.threads {
        rt.worker_threads(n.max(1));
    }
    rt.enable_all().build()?.block_on(serve(a.listen))
}

async fn serve(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    // The coordinator reads this line to learn the port.
    println!("listening on {}", listener.local_addr()?);
    let channels: Channels = Arc::default();
    loop {
        let (sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        tokio::spawn(connection(sock, channels.clone()));
    }
}

fn channel(channels: &Channels, post: &str) -> Arc<Channel> {
    let mut map = channels.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(post.to_string())
        .or_insert_with(|| {
            Arc::new(Channel {
                log: Mutex::default(),
                head: watch::channel(0).0,
            })
        })
        .clone()
}

/// Serves requests on one keep-alive connection until it closes or becomes a stream.
async fn connection(mut sock: TcpStream, channels: Channels) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Some(end) = read_head(&mut sock, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let len = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_REQUEST);
        buf.drain(..end);
        while buf.len() < len {
            match sock.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        match (
            method,
            path.strip_prefix("/pub/"),
            path.strip_prefix("/sub/"),
        ) {
            ("POST", Some(post), _) => {
                publish(&channel(&channels, post), &body);
                if sock
                    .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
            }
            ("GET", _, Some(post)) => {
                let ch = channel(&channels, post.split('?').next().unwrap_or(post));
                return subscribe(sock, ch).await;
            }
            ("GET", _, _) if path == "/healthz" => {
                if sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
            }
            _ => {
                let _ = sock
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
                return;
            }
        }
    }
}

/// Reads until a full request head is in `buf`; returns its length (with the blank line).
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        match sock.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Appends one event (`id:` its sequence, the body as `data:` lines) and wakes subscribers.
fn publish(ch: &Channel, body: &[u8]) {
    let mut log = ch.log.lock().unwrap_or_else(|e| e.into_inner());
    let seq = log.first + log.events.len() as u64;
    let mut ev = format!("id: {seq}\n").into_bytes();
    for line in body.split(|&b| b == b'\n') {
        ev.extend_from_slice(b"data: ");
        ev.extend_from_slice(line);
        ev.push(b'\n');
    }
    ev.push(b'\n');
    log.events.push_back(ev.into());
    if log.events.len() > LOG_EVENTS {
        log.events.pop_front();
        log.first += 1;
    }
    // Under the lock: subscribers see sequence numbers in order.
    ch.head.send_replace(seq + 1);
}

/// A subscriber: each pass sends everything since the previous one in one write.
async fn subscribe(mut sock: TcpStream, ch: Arc<Channel>) {
    let mut rx = ch.head.subscribe();
    let mut next = *rx.borrow_and_update();
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\nretry: 1000\n\n";
    if sock.write_all(head).await.is_err() {
        return;
    }
    let mut out = Vec::new();
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let upto = *rx.borrow_and_update();
        {
            let log = ch.log.lock().unwrap_or_else(|e| e.into_inner());
            if next < log.first {
                // Fell behind the log: cut off, as a bounded buffer does.
                return;
            }
            let from = (next - log.first) as usize;
            let to = ((upto - log.first) as usize).min(log.events.len());
            out.clear();
            for ev in log.events.range(from..to) {
                out.extend_from_slice(ev);
            }
            next = log.first + to as u64;
        }
        if sock.write_all(&out).await.is_err() {
            return;
        }
    }
}
