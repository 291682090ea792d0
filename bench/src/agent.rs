//! The viewer agent: one single-threaded process holding up to ~18k SSE viewers (a process may
//! hold at most ~20,000 fds). The coordinator starts one or more agents, talks to each over
//! stdin/stdout in JSON lines, and aggregates what they report.
//!
//! Commands (one per line on stdin): `report`, `reset` (clears the latency histograms),
//! `drop <window_ms>` (every viewer closes its stream and reconnects with Last-Event-ID at a
//! random moment within the window), `probe <t0_ns>` (a `wow` reaction was posted at t0: the
//! first `event: reactions` with `wow` > 0 after it records its lag behind the end of t0's
//! second), `quit`.
//!
//! Besides comments (the `lcb1` marker), viewers read `event: reactions` (counts per kind,
//! summed; the `wow` probes' lag), `event: viewers` (the last count) and `event: sampling`
//! (how often), and count comments per viewer per second of arrival (what `rate=R` promises).

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::http::{self, Dechunk, Url};
use crate::stats::{hist_from_pairs, hist_pairs, new_hist, now_ns};

/// Everything an agent needs, passed as JSON in `LCB_AGENT_CONFIG`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// (global post index, full subscribe URL, viewers) groups.
    pub entries: Vec<(usize, String, u32)>,
    /// Global index of this agent's first viewer (spreads source addresses across agents).
    pub viewer_offset: usize,
    /// How many loopback source addresses to spread over (0: let the kernel choose).
    pub src_count: usize,
    /// Simultaneous connection attempts.
    pub connect_concurrency: usize,
    /// Optional Last-Event-ID to send on the very first connection (resume benchmarks).
    pub initial_last_event_id: Option<String>,
    pub read_buf: usize,
    /// How each viewer reads its stream.
    #[serde(default)]
    pub client: ViewerClient,
}

/// The viewers' HTTP client (issue 16 asks for both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ViewerClient {
    /// A hand-written HTTP/1.1 reader: the request in one write, the body parsed in place from
    /// one read buffer per viewer. The lightest client, so the server's cost shows.
    #[default]
    Lean,
    /// hyper's HTTP/1.1 client (`client::conn::http1`), a body frame at a time: what a Rust
    /// service consuming SSE would run, heavier per connection and per read.
    Hyper,
}

/// What an agent reports; counters are cumulative, `lat` since the last `reset`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentReport {
    pub viewers: u64,
    pub connected: u64,
    pub ever_connected: u64,
    pub connect_errors: u64,
    pub http_errors: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub events: u64,
    pub dups: u64,
    pub wrong_post: u64,
    pub foreign: u64,
    /// (global post index, distinct comments received summed over this agent's viewers).
    pub distinct: Vec<(usize, u64)>,
    pub last_rx_ns: u64,
    pub lat_us: Vec<(u64, u64)>,
    pub connect_us: Vec<(u64, u64)>,
    pub reconnect_us: Vec<(u64, u64)>,
    /// Viewers that reconnected successfully after the latest `drop`.
    pub resumed: u64,
    /// Wall-clock time (ns) the latest stream was established.
    #[serde(default)]
    pub last_connect_ns: u64,
    /// `event: reactions` received, and the counts they carried summed per kind (in
    /// [`REACTION_KINDS`] order) over every viewer.
    #[serde(default)]
    pub reactions_events: u64,
    #[serde(default)]
    pub reactions_sum: [u64; 6],
    /// Probes seen (a viewer's first `wow` > 0 after a probe), seen again, seen before the end
    /// of the probe's second; the lag of the first sighting behind that end, µs.
    #[serde(default)]
    pub wow_seen: u64,
    #[serde(default)]
    pub wow_repeat: u64,
    #[serde(default)]
    pub wow_early: u64,
    #[serde(default)]
    pub wow_lag_us: Vec<(u64, u64)>,
    /// Comments a viewer received within one second of arrival time, one sample per
    /// (viewer, second with comments), since the last `reset`.
    #[serde(default)]
    pub per_sec: Vec<(u64, u64)>,
    /// `event: viewers` received and the latest count one carried.
    #[serde(default)]
    pub viewers_events: u64,
    #[serde(default)]
    pub viewers_last: u64,
    /// `event: sampling` received.
    #[serde(default)]
    pub sampling_events: u64,
    /// Events with an `id:` and no data (a sample's position past comments left out).
    #[serde(default)]
    pub id_only_events: u64,
}

/// The six reaction kinds of CONTRACT §11, in the order of `reactions_sum`.
pub const REACTION_KINDS: [&str; 6] = ["like", "love", "haha", "wow", "sad", "angry"];

impl AgentReport {
    pub fn merge(&mut self, o: &AgentReport) {
        self.viewers += o.viewers;
        self.connected += o.connected;
        self.ever_connected += o.ever_connected;
        self.connect_errors += o.connect_errors;
        self.http_errors += o.http_errors;
        self.disconnects += o.disconnects;
        self.reconnects += o.reconnects;
        self.events += o.events;
        self.dups += o.dups;
        self.wrong_post += o.wrong_post;
        self.foreign += o.foreign;
        self.distinct.extend_from_slice(&o.distinct);
        self.last_rx_ns = self.last_rx_ns.max(o.last_rx_ns);
        self.resumed += o.resumed;
        self.last_connect_ns = self.last_connect_ns.max(o.last_connect_ns);
        self.reactions_events += o.reactions_events;
        for (a, b) in self.reactions_sum.iter_mut().zip(&o.reactions_sum) {
            *a += b;
        }
        self.wow_seen += o.wow_seen;
        self.wow_repeat += o.wow_repeat;
        self.wow_early += o.wow_early;
        self.viewers_events += o.viewers_events;
        self.viewers_last = self.viewers_last.max(o.viewers_last);
        self.sampling_events += o.sampling_events;
        self.id_only_events += o.id_only_events;
        for (dst, src) in [
            (&mut self.lat_us, &o.lat_us),
            (&mut self.connect_us, &o.connect_us),
            (&mut self.reconnect_us, &o.reconnect_us),
            (&mut self.wow_lag_us, &o.wow_lag_us),
            (&mut self.per_sec, &o.per_sec),
        ] {
            let mut h = hist_from_pairs(dst);
            h.add(hist_from_pairs(src)).ok();
            *dst = hist_pairs(&h);
        }
    }

    pub fn distinct_total(&self) -> u64 {
        self.distinct.iter().map(|d| d.1).sum()
    }
}

struct Shared {
    posts: Vec<usize>,
    connected: u64,
    ever_connected: u64,
    connect_errors: u64,
    http_errors: u64,
    disconnects: u64,
    reconnects: u64,
    events: u64,
    dups: u64,
    wrong_post: u64,
    foreign: u64,
    distinct: Vec<u64>,
    last_rx_ns: u64,
    lat: Histogram<u64>,
    connect: Histogram<u64>,
    reconnect: Histogram<u64>,
    resumed: u64,
    drop_gen: u64,
    last_connect_ns: u64,
    reactions_events: u64,
    reactions_sum: [u64; 6],
    /// Send times of the `wow` probes, oldest first.
    probes: Vec<u64>,
    wow_seen: u64,
    wow_repeat: u64,
    wow_early: u64,
    wow_lag: Histogram<u64>,
    per_sec: Histogram<u64>,
    viewers_events: u64,
    viewers_last: u64,
    sampling_events: u64,
    id_only_events: u64,
}

impl Shared {
    fn new(posts: Vec<usize>) -> Shared {
        Shared {
            distinct: vec![0; posts.len()],
            posts,
            connected: 0,
            ever_connected: 0,
            connect_errors: 0,
            http_errors: 0,
            disconnects: 0,
            reconnects: 0,
            events: 0,
            dups: 0,
            wrong_post: 0,
            foreign: 0,
            last_rx_ns: 0,
            lat: new_hist(),
            connect: new_hist(),
            reconnect: new_hist(),
            resumed: 0,
            drop_gen: 0,
            last_connect_ns: 0,
            reactions_events: 0,
            reactions_sum: [0; 6],
            probes: Vec::new(),
            wow_seen: 0,
            wow_repeat: 0,
            wow_early: 0,
            wow_lag: new_hist(),
            per_sec: new_hist(),
            viewers_events: 0,
            viewers_last: 0,
            sampling_events: 0,
            id_only_events: 0,
        }
    }

    fn report(&self, total: u64) -> AgentReport {
        AgentReport {
            viewers: total,
            connected: self.connected,
            ever_connected: self.ever_connected,
            connect_errors: self.connect_errors,
            http_errors: self.http_errors,
            disconnects: self.disconnects,
            reconnects: self.reconnects,
            events: self.events,
            dups: self.dups,
            wrong_post: self.wrong_post,
            foreign: self.foreign,
            distinct: self
                .distinct
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (self.posts[i], *c))
                .collect(),
            last_rx_ns: self.last_rx_ns,
            lat_us: hist_pairs(&self.lat),
            connect_us: hist_pairs(&self.connect),
            reconnect_us: hist_pairs(&self.reconnect),
            resumed: self.resumed,
            last_connect_ns: self.last_connect_ns,
            reactions_events: self.reactions_events,
            reactions_sum: self.reactions_sum,
            wow_seen: self.wow_seen,
            wow_repeat: self.wow_repeat,
            wow_early: self.wow_early,
            wow_lag_us: hist_pairs(&self.wow_lag),
            per_sec: hist_pairs(&self.per_sec),
            viewers_events: self.viewers_events,
            viewers_last: self.viewers_last,
            sampling_events: self.sampling_events,
            id_only_events: self.id_only_events,
        }
    }
}

pub fn run_agent() -> Result<()> {
    let cfg: AgentConfig = serde_json::from_str(&std::env::var("LCB_AGENT_CONFIG")?)?;
    crate::stats::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, agent_main(cfg))
}

async fn agent_main(cfg: AgentConfig) -> Result<()> {
    let shared = Rc::new(RefCell::new(Shared::new(
        cfg.entries.iter().map(|e| e.0).collect(),
    )));
    let (drop_tx, drop_rx) = watch::channel((0u64, 0u64));
    let sem = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let total: u64 = cfg.entries.iter().map(|e| e.2 as u64).sum();
    let mut n = 0usize;
    for (i, (post, url, viewers)) in cfg.entries.iter().enumerate() {
        let url = Url::parse(url)?;
        for _ in 0..*viewers {
            let src = if cfg.src_count == 0 {
                None
            } else {
                Some(http::src_ip((cfg.viewer_offset + n) % cfg.src_count))
            };
            let v = Viewer {
                debug_gaps: std::env::var_os("LCB_DEBUG_GAPS").is_some(),
                last_seq: u64::MAX,
                stream_events: 0,
                pending: Pending::default(),
                post: *post,
                local: i,
                url: url.clone(),
                src,
                seen: Vec::new(),
                last_id: cfg.initial_last_event_id.clone().unwrap_or_default(),
                seed: 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(n as u64 + 1),
                sec: 0,
                in_sec: 0,
                probes_seen: 0,
                client: cfg.client,
            };
            tokio::task::spawn_local(v.run(
                shared.clone(),
                sem.clone(),
                drop_rx.clone(),
                cfg.read_buf,
            ));
            n += 1;
        }
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("report") => {
                let r = shared.borrow().report(total);
                let mut j = serde_json::to_vec(&r)?;
                j.push(b'\n');
                out.write_all(&j).await?;
                out.flush().await?;
            }
            Some("reset") => {
                {
                    let mut s = shared.borrow_mut();
                    s.lat.reset();
                    s.per_sec.reset();
                    s.wow_lag.reset();
                }
                out.write_all(b"{}\n").await?;
                out.flush().await?;
            }
            Some("probe") => {
                if let Some(t0) = it.next().and_then(|w| w.parse::<u64>().ok()) {
                    shared.borrow_mut().probes.push(t0);
                }
                out.write_all(b"{}\n").await?;
                out.flush().await?;
            }
            Some("drop") => {
                let window: u64 = it.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let generation = {
                    let mut s = shared.borrow_mut();
                    s.drop_gen += 1;
                    s.resumed = 0;
                    s.reconnect.reset();
                    s.drop_gen
                };
                drop_tx.send((generation, window)).ok();
                out.write_all(b"{}\n").await?;
                out.flush().await?;
            }
            Some("quit") | None => break,
            Some(other) => eprintln!("agent: unknown command {other:?}"),
        }
    }
    Ok(())
}

/// What an `event:` line named; anything else (or none: nchan) is read for the comment marker.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum EventKind {
    #[default]
    Message,
    Reactions,
    Viewers,
    Sampling,
}

impl EventKind {
    fn parse(name: &[u8]) -> EventKind {
        match http::trim(name) {
            b"reactions" => EventKind::Reactions,
            b"viewers" => EventKind::Viewers,
            b"sampling" => EventKind::Sampling,
            _ => EventKind::Message,
        }
    }
}

/// The event being read: it takes effect at its blank line.
#[derive(Default)]
struct Pending {
    id: String,
    has_id: bool,
    data: bool,
    rx: u64,
    kind: EventKind,
    marker: Option<[u64; 3]>,
    /// `event: reactions`: the counts per kind; `event: viewers`: the count in `counts[0]`.
    counts: [u64; 6],
}

/// The unsigned integer after `"key":` in a flat JSON object (no allocation; `None` if absent).
fn json_u64(data: &[u8], key: &str) -> Option<u64> {
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&data[from..], key.as_bytes()) {
        let at = from + i;
        from = at + key.len();
        // The key must be quoted: `"key"`.
        if at == 0 || data[at - 1] != b'"' || data.get(from) != Some(&b'"') {
            continue;
        }
        let rest = http::trim(&data[from + 1..]);
        let rest = http::trim(rest.strip_prefix(b":")?);
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        return std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
    }
    None
}

/// `lcb1 <post> <seq> <send-ns>` somewhere in a data line.
fn parse_marker(data: &[u8]) -> Option<[u64; 3]> {
    let m = memchr::memmem::find(data, crate::MARKER)?;
    let mut nums = [0u64; 3];
    let mut k = 0;
    let mut cur: Option<u64> = None;
    for &b in &data[m + crate::MARKER.len()..] {
        if b.is_ascii_digit() {
            cur = Some(
                cur.unwrap_or(0)
                    .wrapping_mul(10)
                    .wrapping_add((b - b'0') as u64),
            );
            continue;
        }
        if let Some(c) = cur.take() {
            nums[k] = c;
            k += 1;
            if k == 3 {
                break;
            }
        }
        if b != b' ' {
            break;
        }
    }
    if let (2, Some(c)) = (k, cur) {
        nums[2] = c;
        k = 3;
    }
    (k == 3).then_some(nums)
}

struct Viewer {
    debug_gaps: bool,
    last_seq: u64,
    stream_events: u64,
    pending: Pending,
    post: usize,
    local: usize,
    url: Url,
    src: Option<IpAddr>,
    /// Bitset of sequence numbers received.
    seen: Vec<u64>,
    /// Last SSE `id:` received (the resume token).
    last_id: String,
    seed: u64,
    /// The arrival second being counted and the comments that arrived in it.
    sec: u64,
    in_sec: u32,
    /// Probes accounted for: the index of the latest one seen, plus one.
    probes_seen: usize,
    client: ViewerClient,
}

/// One connection attempt of a viewer.
struct Attempt {
    started: Instant,
    /// The viewer's first connection (a later one is a reconnect).
    first: bool,
    /// The `drop` generation this attempt follows (0: none).
    dropped_gen: u64,
    /// A connect slot, released once the stream's head arrived.
    permit: Option<OwnedSemaphorePermit>,
}

enum End {
    /// The server closed or the read failed: reconnect right away (with Last-Event-ID).
    Lost,
    /// A `drop` command: reconnect within the window.
    Dropped(u64),
}

impl Viewer {
    fn rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.seed | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.seed = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A `wow` > 0 arrived at `rx`: it answers the latest probe sent before `rx`; its lag is
    /// measured from the end of the probe's second (when the ingest publishes that second).
    fn saw_wow(&mut self, rx: u64, sh: &mut Shared) {
        let n = sh.probes.partition_point(|&p| p <= rx);
        if n == 0 {
            sh.wow_early += 1;
            return;
        }
        if n <= self.probes_seen {
            sh.wow_repeat += 1;
            return;
        }
        self.probes_seen = n;
        let end = sh.probes[n - 1].div_ceil(1_000_000_000) * 1_000_000_000;
        if rx < end {
            sh.wow_early += 1;
        } else {
            sh.wow_seen += 1;
            sh.wow_lag.saturating_record(((rx - end) / 1000).max(1));
        }
    }

    async fn run(
        mut self,
        shared: Rc<RefCell<Shared>>,
        sem: Arc<Semaphore>,
        mut drop_rx: watch::Receiver<(u64, u64)>,
        read_buf: usize,
    ) {
        let mut buf = vec![0u8; read_buf];
        let mut first = true;
        let mut dropped_gen = 0u64;
        let mut failures = 0u32;
        loop {
            let permit = sem.clone().acquire_owned().await.ok();
            let started = Instant::now();
            let attempt = Attempt {
                started,
                first,
                dropped_gen,
                permit,
            };
            let res = match self.client {
                ViewerClient::Lean => {
                    self.connect_and_read(&shared, &mut buf, &mut drop_rx, attempt)
                        .await
                }
                ViewerClient::Hyper => {
                    self.connect_and_read_hyper(&shared, &mut buf, &mut drop_rx, attempt)
                        .await
                }
            };
            match res {
                Ok((End::Dropped(generation), _)) => {
                    dropped_gen = generation;
                    let window = drop_rx.borrow().1;
                    shared.borrow_mut().disconnects += 1;
                    let delay = if window == 0 {
                        0
                    } else {
                        self.rand() % (window * 1000)
                    };
                    tokio::time::sleep(Duration::from_micros(delay)).await;
                    first = false;
                    failures = 0;
                }
                Ok((End::Lost, was_connected)) => {
                    if was_connected {
                        shared.borrow_mut().disconnects += 1;
                        first = false;
                        failures = 0;
                    } else {
                        failures += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(if failures == 0 {
                        0
                    } else {
                        (50u64 << failures.min(5)).min(1000) + self.rand() % 100
                    }))
                    .await;
                }
                Err(_) => {
                    shared.borrow_mut().connect_errors += 1;
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(
                        (50u64 << failures.min(5)).min(1000) + self.rand() % 100,
                    ))
                    .await;
                }
            }
        }
    }

    /// One connection: request, head, then events until it ends. Returns how it ended and
    /// whether the stream was ever established.
    async fn connect_and_read(
        &mut self,
        shared: &Rc<RefCell<Shared>>,
        buf: &mut Vec<u8>,
        drop_rx: &mut watch::Receiver<(u64, u64)>,
        attempt: Attempt,
    ) -> Result<(End, bool)> {
        let mut s = http::connect_from(self.src, self.url.addr).await?;
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
            self.url.path, self.url.host_header
        );
        if !self.last_id.is_empty() {
            req.push_str("Last-Event-ID: ");
            req.push_str(&self.last_id);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        drop(req);
        // Head.
        let mut have = 0;
        let head = loop {
            if have == buf.len() {
                bail!("head too long");
            }
            let n = s.read(&mut buf[have..]).await?;
            if n == 0 {
                return Ok((End::Lost, false));
            }
            have += n;
            if let Some(h) = http::parse_head(&buf[..have])? {
                break h;
            }
        };
        drop(attempt.permit);
        if head.status != 200 {
            shared.borrow_mut().http_errors += 1;
            return Ok((End::Lost, false));
        }
        self.stream_opened(shared, attempt.started, attempt.first, attempt.dropped_gen);
        let mut dechunk = Dechunk::default();
        // Payload bytes after the head.
        let raw_end = have;
        buf.copy_within(head.len..raw_end, 0);
        let mut raw_start = 0;
        let mut raw_len = raw_end - head.len;
        let mut pend = 0; // decoded, unparsed bytes at buf[..pend]
        let end = loop {
            if raw_len > 0 {
                let w = if head.chunked {
                    dechunk.run(buf, raw_start, raw_start + raw_len, pend)?
                } else {
                    buf.copy_within(raw_start..raw_start + raw_len, pend);
                    pend + raw_len
                };
                let rx = now_ns();
                let consumed = self.parse_lines(&buf[..w], rx, shared);
                buf.copy_within(consumed..w, 0);
                pend = w - consumed;
                if matches!(dechunk, Dechunk::Done) {
                    break End::Lost;
                }
            }
            if pend == buf.len() {
                let l = buf.len();
                buf.resize(l * 2, 0);
            }
            raw_start = pend;
            tokio::select! {
                r = s.read(&mut buf[pend..]) => {
                    let n = r.unwrap_or(0);
                    if n == 0 {
                        break End::Lost;
                    }
                    raw_len = n;
                }
                _ = drop_rx.changed() => {
                    let (generation, _) = *drop_rx.borrow_and_update();
                    break End::Dropped(generation);
                }
            }
        };
        shared.borrow_mut().connected -= 1;
        Ok((end, true))
    }

    /// The stream's head arrived with 200: count the (re)connect, and start a new stream
    /// (whatever half event the previous one ended with is void).
    fn stream_opened(
        &mut self,
        shared: &Rc<RefCell<Shared>>,
        started: Instant,
        first: bool,
        dropped_gen: u64,
    ) {
        {
            let us = started.elapsed().as_micros() as u64;
            let mut sh = shared.borrow_mut();
            sh.connected += 1;
            sh.last_connect_ns = now_ns();
            if first {
                sh.ever_connected += 1;
                sh.connect.saturating_record(us.max(1));
            } else {
                sh.reconnects += 1;
                if dropped_gen == sh.drop_gen && dropped_gen > 0 {
                    sh.resumed += 1;
                    sh.reconnect.saturating_record(us.max(1));
                }
            }
        }
        self.stream_events = 0;
        self.pending.has_id = false;
        self.pending.data = false;
        self.pending.marker = None;
        self.pending.kind = EventKind::Message;
    }

    /// [`Viewer::connect_and_read`] through hyper's client: the connection driven by its own
    /// local task, the body read a frame at a time and parsed from `buf`.
    async fn connect_and_read_hyper(
        &mut self,
        shared: &Rc<RefCell<Shared>>,
        buf: &mut Vec<u8>,
        drop_rx: &mut watch::Receiver<(u64, u64)>,
        attempt: Attempt,
    ) -> Result<(End, bool)> {
        use http_body_util::BodyExt;
        let s = http::connect_from(self.src, self.url.addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await?;
        let conn = tokio::task::spawn_local(conn);
        // Aborted however this returns, so the socket closes with the stream.
        let _conn = AbortOnDrop(conn);
        let mut req = hyper::Request::get(self.url.path.as_str())
            .header("host", self.url.host_header.as_str())
            .header("accept", "text/event-stream")
            .header("cache-control", "no-cache");
        if !self.last_id.is_empty() {
            req = req.header("last-event-id", self.last_id.as_str());
        }
        let resp = sender
            .send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new())?)
            .await?;
        drop(attempt.permit);
        if resp.status() != 200 {
            shared.borrow_mut().http_errors += 1;
            return Ok((End::Lost, false));
        }
        self.stream_opened(shared, attempt.started, attempt.first, attempt.dropped_gen);
        let mut body = resp.into_body();
        let mut pend = 0; // unparsed bytes at buf[..pend]
        let end = loop {
            tokio::select! {
                frame = body.frame() => {
                    let Some(Ok(frame)) = frame else {
                        break End::Lost;
                    };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if pend + data.len() > buf.len() {
                        buf.resize((pend + data.len()).next_power_of_two(), 0);
                    }
                    buf[pend..pend + data.len()].copy_from_slice(&data);
                    let w = pend + data.len();
                    let consumed = self.parse_lines(&buf[..w], now_ns(), shared);
                    buf.copy_within(consumed..w, 0);
                    pend = w - consumed;
                }
                _ = drop_rx.changed() => {
                    let (generation, _) = *drop_rx.borrow_and_update();
                    break End::Dropped(generation);
                }
            }
        };
        shared.borrow_mut().connected -= 1;
        Ok((end, true))
    }

    /// Handles every complete line in `data`; returns how many bytes were consumed. As an
    /// EventSource does, an event takes effect only when its blank line arrives: the `id:`
    /// becomes the resume token and the comment counts then, so a stream cut in the middle of
    /// an event neither advances Last-Event-ID past it nor counts it.
    fn parse_lines(&mut self, data: &[u8], rx: u64, shared: &Rc<RefCell<Shared>>) -> usize {
        let mut pos = 0;
        while let Some(nl) = memchr::memchr(b'\n', &data[pos..]) {
            let line = &data[pos..pos + nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            pos += nl + 1;
            if line.is_empty() {
                self.dispatch(shared);
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                self.pending.data = true;
                self.pending.rx = rx;
                match self.pending.kind {
                    EventKind::Message => self.pending.marker = parse_marker(rest),
                    EventKind::Reactions => {
                        for (c, k) in self.pending.counts.iter_mut().zip(REACTION_KINDS) {
                            *c = json_u64(rest, k).unwrap_or(0);
                        }
                    }
                    EventKind::Viewers => {
                        self.pending.counts[0] = json_u64(rest, "viewers").unwrap_or(0);
                    }
                    EventKind::Sampling => {}
                }
            } else if let Some(rest) = line.strip_prefix(b"event:") {
                self.pending.kind = EventKind::parse(rest);
            } else if let Some(rest) = line.strip_prefix(b"id:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                self.pending.id.clear();
                self.pending
                    .id
                    .push_str(std::str::from_utf8(rest).unwrap_or(""));
                self.pending.has_id = true;
            }
        }
        pos
    }

    fn dispatch(&mut self, shared: &Rc<RefCell<Shared>>) {
        let had_id = self.pending.has_id;
        if had_id {
            std::mem::swap(&mut self.last_id, &mut self.pending.id);
            self.pending.has_id = false;
        }
        let kind = std::mem::take(&mut self.pending.kind);
        if !self.pending.data {
            if had_id {
                shared.borrow_mut().id_only_events += 1;
            }
            return;
        }
        self.pending.data = false;
        let rx = self.pending.rx;
        let marker = self.pending.marker.take();
        let mut sh = shared.borrow_mut();
        match kind {
            EventKind::Message => {}
            EventKind::Reactions => {
                sh.events += 1;
                sh.reactions_events += 1;
                let counts = self.pending.counts;
                for (a, c) in sh.reactions_sum.iter_mut().zip(counts) {
                    *a += c;
                }
                if counts[3] > 0 {
                    self.saw_wow(rx, &mut sh);
                }
                return;
            }
            EventKind::Viewers => {
                sh.events += 1;
                sh.viewers_events += 1;
                sh.viewers_last = self.pending.counts[0];
                return;
            }
            EventKind::Sampling => {
                sh.events += 1;
                sh.sampling_events += 1;
                return;
            }
        }
        sh.events += 1;
        sh.last_rx_ns = rx;
        let Some([post, seq, sent]) = marker else {
            sh.foreign += 1;
            return;
        };
        if post as usize != self.post {
            sh.wrong_post += 1;
            return;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1 + word / 2, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            sh.dups += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        if self.debug_gaps && seq < self.last_seq && self.last_seq != u64::MAX {
            eprintln!(
                "late: post {} seq {} after {} (events on this stream {})",
                self.post, seq, self.last_seq, self.stream_events
            );
        } else if self.debug_gaps
            && seq != self.last_seq.wrapping_add(1)
            && self.last_seq != u64::MAX
        {
            eprintln!(
                "gap: post {} seq {} after {} (events on this stream {}, resume token {:?}, first-after-connect {})",
                self.post,
                seq,
                self.last_seq,
                self.stream_events,
                self.last_id,
                self.stream_events == 0
            );
        }
        self.last_seq = seq;
        self.stream_events += 1;
        sh.distinct[self.local] += 1;
        let sec = rx / 1_000_000_000;
        if sec != self.sec {
            if self.in_sec > 0 {
                sh.per_sec.saturating_record(self.in_sec as u64);
            }
            self.sec = sec;
            self.in_sec = 0;
        }
        self.in_sec += 1;
        sh.lat
            .saturating_record((rx.saturating_sub(sent) / 1000).max(1));
    }
}

/// Aborts a local task when dropped (the hyper client's connection).
struct AbortOnDrop(tokio::task::JoinHandle<hyper::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(post: usize) -> Viewer {
        Viewer {
            debug_gaps: false,
            last_seq: u64::MAX,
            stream_events: 0,
            pending: Pending::default(),
            post,
            local: 0,
            url: Url::parse("http://127.0.0.1:1/").unwrap(),
            src: None,
            seen: Vec::new(),
            last_id: String::new(),
            seed: 1,
            sec: 0,
            in_sec: 0,
            probes_seen: 0,
            client: ViewerClient::Lean,
        }
    }

    #[test]
    fn reads_reactions_viewers_sampling_and_wow_probes() {
        let sh = Rc::new(RefCell::new(Shared::new(vec![0])));
        let mut v = viewer(0);
        // A probe at 100.4 s: the end of its second is 101 s.
        sh.borrow_mut().probes.push(100_400_000_000);
        let r = |like: u64, wow: u64| {
            format!(
                "event: reactions\ndata: {{\"like\": {like}, \"love\": 0, \"haha\": 0, \"wow\": {wow}, \"sad\": 0, \"angry\": 2}}\n\n"
            )
        };
        v.parse_lines(r(5, 0).as_bytes(), 100_900_000_000, &sh);
        v.parse_lines(r(7, 1).as_bytes(), 101_350_000_000, &sh);
        // The next event of the same probe's second (another wow > 0) is a repeat.
        v.parse_lines(r(1, 1).as_bytes(), 101_500_000_000, &sh);
        v.parse_lines(
            b"event: viewers\ndata: {\"viewers\": 49999}\n\nevent: sampling\ndata: {\"rate\": 10, \"shown\": 10, \"total\": 1000}\n\nid: x.1\n\n",
            101_600_000_000,
            &sh,
        );
        {
            let s = sh.borrow();
            assert_eq!(s.reactions_events, 3);
            assert_eq!(s.reactions_sum, [13, 0, 0, 2, 0, 6]);
            assert_eq!((s.wow_seen, s.wow_repeat, s.wow_early), (1, 1, 0));
            assert_eq!(s.wow_lag.max() / 1000, 350, "lag in ms");
            assert_eq!((s.viewers_events, s.viewers_last), (1, 49_999));
            assert_eq!(s.sampling_events, 1);
            assert_eq!(s.id_only_events, 1);
            assert_eq!(s.foreign, 0, "none of these is a comment");
            assert_eq!(v.last_id, "x.1", "an id-only event moves the resume token");
        }
        // A comment after an event: the event name does not stick.
        v.parse_lines(
            b"id: x.2\ndata: {\"text\":\"lcb1 0 0 5\"}\n\n",
            102_000_000_000,
            &sh,
        );
        assert_eq!(sh.borrow().distinct[0], 1);
        assert_eq!(json_u64(b"{\"awow\": 3, \"wow\":4}", "wow"), Some(4));
        assert_eq!(json_u64(b"{\"like\": 3}", "wow"), None);
    }

    #[test]
    fn counts_comments_per_viewer_second() {
        let sh = Rc::new(RefCell::new(Shared::new(vec![0])));
        let mut v = viewer(0);
        for (seq, rx) in [
            (0u64, 5_100u64),
            (1, 5_200),
            (2, 5_900),
            (3, 6_100),
            (4, 7_000),
        ] {
            let ev = format!("data: {{\"text\":\"lcb1 0 {seq} 1\"}}\n\n");
            v.parse_lines(ev.as_bytes(), rx * 1_000_000, &sh);
        }
        let s = sh.borrow();
        // Seconds 5 (3 comments) and 6 (1) are complete; second 7 is still being counted.
        assert_eq!(s.per_sec.len(), 2);
        assert_eq!(s.per_sec.max(), 3);
        assert_eq!(s.per_sec.min(), 1);
    }

    #[test]
    fn counts_distinct_duplicates_foreign_and_ids() {
        let sh = Rc::new(RefCell::new(Shared::new(vec![7])));
        let mut v = viewer(7);
        let now = now_ns();
        let t = now - 5_000_000;
        let stream = format!(
            ": ping\n\nevent: comment\nid: local.01AAA\ndata: {{\"id\":\"x\",\"text\":\"lcb1 7 0 {t}\"}}\n\n\
             id: local.01AAB\ndata: {{\"text\":\"lcb1 7 1 {t}\"}}\n\n\
             data: {{\"text\":\"lcb1 7 0 {t}\"}}\n\n\
             data: {{\"text\":\"lcb1 8 2 {t}\"}}\n\n\
             event: delete\ndata: {{\"id\":\"x\"}}\n\ndata: {{\"text\":\"lcb1 7 200"
        );
        let consumed = v.parse_lines(stream.as_bytes(), now, &sh);
        assert!(
            stream[consumed..].starts_with("data: {\"text\":\"lcb1 7 200"),
            "partial line kept"
        );
        let s = sh.borrow();
        assert_eq!(s.distinct[0], 2);
        assert_eq!(s.dups, 1);
        assert_eq!(s.wrong_post, 1);
        assert_eq!(s.foreign, 1);
        assert_eq!(v.last_id, "local.01AAB");
        assert_eq!(s.lat.len(), 2);
        assert!(
            s.lat.max() >= 4_900 && s.lat.max() <= 5_100,
            "latency in µs: {}",
            s.lat.max()
        );
    }

    #[test]
    fn half_event_does_not_move_the_resume_token() {
        let sh = Rc::new(RefCell::new(Shared::new(vec![1])));
        let mut v = viewer(1);
        v.parse_lines(
            b"id: a\ndata: {\"text\":\"lcb1 1 0 5\"}\n\nid: b\ndata: {\"text\":\"lcb1 1 1 5\"}\n",
            10,
            &sh,
        );
        assert_eq!(v.last_id, "a");
        assert_eq!(sh.borrow().distinct[0], 1);
        v.parse_lines(b"\n", 10, &sh);
        assert_eq!(v.last_id, "b");
        assert_eq!(sh.borrow().distinct[0], 2);
        assert_eq!(parse_marker(b"lcb1 3 4 5"), Some([3, 4, 5]));
        assert_eq!(parse_marker(b"\"lcb1 3 4\""), None);
    }
}
