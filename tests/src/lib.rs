//! Shared helpers for the end-to-end tests: start the real `livecomments` binary and a real
//! `nats-server` on free loopback ports, mint tokens, and talk HTTP and SSE as a client would.
//! Every test file uses these; none starts processes or parses SSE on its own.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// The binary under test: `$LIVECOMMENTS_BIN`, else `target/debug/livecomments` next to this
/// test executable.
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("LIVECOMMENTS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test exe path");
    // target/debug/deps/<test> -> target/debug/livecomments
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join("livecomments");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p livecomments` first (scripts/test does)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `user` signed with [`SECRET`].
pub fn token(user: &str) -> String {
    token_with(serde_json::json!({"sub": user, "exp": now_secs() + 3600}))
}

pub fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A running `livecomments` process; killed on drop.
pub struct Server {
    pub base: String,
    pub port: u16,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

pub struct ServerBuilder {
    role: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    port: Option<u16>,
    data_dir: Option<PathBuf>,
    wait_ready: bool,
    rate_limit: u32,
}

impl ServerBuilder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, it: I) -> Self {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }
    pub fn no_secret(mut self) -> Self {
        self.envs.retain(|(k, _)| k != "LIVECOMMENTS_JWT_SECRET");
        self
    }
    pub fn nats(self, url: &str) -> Self {
        self.arg("--nats-url").arg(url)
    }
    pub fn data_dir(mut self, d: &Path) -> Self {
        self.data_dir = Some(d.to_path_buf());
        self
    }
    pub fn port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }
    /// Comments per user per window (tests default to a limit they never reach).
    pub fn rate_limit(mut self, n: u32) -> Self {
        self.rate_limit = n;
        self
    }
    /// Wait for /healthz only, not /readyz (e.g. when a dependency is down on purpose).
    pub fn no_ready_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    pub async fn start(self) -> Server {
        let (data_dir, tmp) = match self.data_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir().unwrap();
                (t.path().to_path_buf(), Some(t))
            }
        };
        let port = self.port.unwrap_or_else(free_port);
        let mut args = vec![self.role, "--listen".into(), format!("127.0.0.1:{port}")];
        args.extend(["--data-dir".into(), data_dir.display().to_string()]);
        if matches!(args[0].as_str(), "standalone" | "ingest") {
            args.extend(["--rate-limit".into(), self.rate_limit.to_string()]);
        }
        args.extend(self.args);
        let mut s = Server {
            base: format!("http://127.0.0.1:{port}"),
            port,
            args,
            envs: self.envs,
            child: None,
            data_dir,
            _tmp: tmp,
        };
        s.spawn();
        s.wait_up(self.wait_ready).await;
        s
    }
}

impl Server {
    /// A standalone server with the test secret configured (so [`token`] works).
    pub fn standalone() -> ServerBuilder {
        Self::role("standalone")
    }

    pub fn role(role: &str) -> ServerBuilder {
        ServerBuilder {
            role: role.into(),
            args: vec![],
            envs: vec![("LIVECOMMENTS_JWT_SECRET".into(), SECRET.into())],
            port: None,
            data_dir: None,
            wait_ready: true,
            rate_limit: 1_000_000,
        }
    }

    fn spawn(&mut self) {
        let log = std::env::temp_dir().join(format!("livecomments-test-{}.log", self.port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        // Tests must not inherit a developer's configuration.
        for (k, _) in std::env::vars() {
            if k.starts_with("LIVECOMMENTS_")
                && k != "LIVECOMMENTS_BIN"
                && !self.envs.iter().any(|(e, _)| *e == k)
            {
                cmd.env_remove(k);
            }
        }
        self.child = Some(cmd.spawn().expect("spawn livecomments"));
    }

    async fn wait_up(&mut self, ready: bool) {
        let url = format!("{}/{}", self.base, if ready { "readyz" } else { "healthz" });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client().get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "livecomments {:?} exited early: {status}; see {}",
                        self.args,
                        self.log_path().display()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "server {} not up in 30 s",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_path(&self) -> PathBuf {
        std::env::temp_dir().join(format!("livecomments-test-{}.log", self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `kill -9`: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let t = Instant::now();
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return t.elapsed();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        t.elapsed()
    }

    /// Starts the same command again (same port and data dir).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_up(true).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, post_id: &str, user: &str, text: &str) -> (u16, Value) {
        post_comment(&self.base, post_id, &token(user), text).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        get_json(&self.url(path)).await
    }

    /// Every comment of the post, newest first, following next_cursor.
    pub async fn all_comments(&self, post_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/comments?post_id={post_id}&page_size=100");
            if let Some(c) = &cursor {
                path.push_str(&format!("&before={c}"));
            }
            let (status, body) = self.get_json(&path).await;
            assert_eq!(status, 200, "{body}");
            out.extend(body["comments"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(8)
        .build()
        .unwrap()
}

pub async fn post_comment(base: &str, post_id: &str, token: &str, text: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/comment?post_id={post_id}"))
        .bearer_auth(token)
        .json(&serde_json::json!({"text": text}))
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Asserts a contract error: status, `error.code`, a message, nothing else surprising.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(body["error"]["code"], want_code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
}

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

/// A `nats-server` on free loopback ports; killed on drop.
pub struct Nats {
    pub url: String,
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
}

impl Nats {
    pub async fn start() -> Nats {
        let port = free_port();
        let args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        let mut n = Nats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            child: None,
            args,
        };
        n.spawn().await;
        n
    }

    /// Starts with a config file (gateways, clusters).
    pub async fn with_config(config: &Path, port: u16) -> Nats {
        let args = vec!["-c".into(), config.display().to_string()];
        let mut n = Nats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            child: None,
            args,
        };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        let exe = which_nats();
        self.child = Some(
            Command::new(exe)
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nats-server"),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The nats-server binary: `$NATS_SERVER`, else the first on PATH (or /usr/sbin).
pub fn which_nats() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
    {
        let p = Path::new(dir).join("nats-server");
        if p.exists() {
            return p;
        }
    }
    panic!("nats-server not found on PATH: run scripts/setup (or .ci/run) first");
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ids of a list of comment JSON values.
pub fn ids(comments: &[Value]) -> Vec<String> {
    comments
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The CQL server for tests: `$LIVECOMMENTS_TEST_CQL` or Cassandra on 127.0.0.2:9042 (started
/// by `scripts/test`). None when unreachable and not in CI; under `CI=true` unreachable fails.
pub fn cql_node() -> Option<String> {
    let addr = std::env::var("LIVECOMMENTS_TEST_CQL").unwrap_or_else(|_| "127.0.0.2:9042".into());
    let reachable = addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if reachable {
        return Some(addr);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but no CQL server at {addr}: scripts/cassandra start");
    }
    eprintln!(
        "SKIPPED: no CQL server at {addr} (run scripts/cassandra start); CI runs this for real"
    );
    None
}

/// Applies the schema to a fresh keyspace with the real `livecomments migrate`.
pub fn migrate_keyspace(node: &str, keyspace: &str) {
    let out = Command::new(bin())
        .args(["migrate", "--cql-nodes", node, "--cql-keyspace", keyspace])
        .env_remove("LIVECOMMENTS_JWT_SECRET")
        .output()
        .expect("run migrate");
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A keyspace name no other test uses.
pub fn fresh_keyspace(prefix: &str) -> String {
    let n: u64 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id());
    format!("{prefix}_{:x}", n & 0xffff_ffff_ffff)
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of a process (sockets included).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sends raw bytes on a fresh connection and returns what the server answered before it
/// closed the connection or `timeout` passed (for requests no HTTP client would send).
pub async fn raw_http(port: u16, request: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    // The server may answer and close before it read everything: ignore write errors.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A message received by [`RawNats`].
#[derive(Debug, Clone)]
pub struct NatsMsg {
    pub subject: String,
    pub reply: Option<String>,
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
                        payload.drain(..hdr.min(total));
                        let _ = msg_tx.send(NatsMsg {
                            subject: parts[1].to_string(),
                            reply,
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
        n.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"livecomments-tests-raw\"}\r\n").await;
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

/// A TCP forwarder the tests can cut and heal: stands between NATS gateways to simulate a
/// network partition between regions while each region's clients stay connected.
pub struct Link {
    pub port: u16,
    enabled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Listens on a free port and forwards to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Link {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let enabled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let (en, cs) = (enabled.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !en.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                cs.lock().unwrap().push(task.abort_handle());
            }
        });
        Link {
            port,
            enabled,
            conns,
            accept,
        }
    }

    /// Drops every connection through the link and refuses new ones.
    pub fn cut(&self) {
        self.enabled
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn heal(&self) {
        self.enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// One nats-server per region, joined by gateways (a supercluster, as in `nats/`). Every
/// gateway connection between two regions runs through a [`Link`], so tests can partition
/// regions while clients stay connected to their own region.
pub struct Supercluster {
    pub regions: Vec<String>,
    pub servers: Vec<Nats>,
    /// `links[(from, to)]`: the link `from` dials to reach `to`.
    pub links: std::collections::HashMap<(String, String), Link>,
    _dir: tempfile::TempDir,
}

impl Supercluster {
    pub async fn start(regions: &[&str]) -> Supercluster {
        let dir = tempfile::tempdir().unwrap();
        let client_ports: Vec<u16> = regions.iter().map(|_| free_port()).collect();
        let gw_ports: Vec<u16> = regions.iter().map(|_| free_port()).collect();
        let mut links = std::collections::HashMap::new();
        for (i, from) in regions.iter().enumerate() {
            for (j, to) in regions.iter().enumerate() {
                if i != j {
                    links.insert(
                        (from.to_string(), to.to_string()),
                        Link::start(gw_ports[j]).await,
                    );
                }
            }
        }
        let mut servers = Vec::new();
        for (i, region) in regions.iter().enumerate() {
            let gateways: Vec<String> = regions
                .iter()
                .enumerate()
                .map(|(j, other)| {
                    let port = if i == j {
                        gw_ports[j]
                    } else {
                        links[&(region.to_string(), other.to_string())].port
                    };
                    format!("    {{ name: \"{other}\", urls: [\"nats://127.0.0.1:{port}\"] }}")
                })
                .collect();
            // Gateways gossip their own address and peers may dial it directly: advertise a link
            // instead so a cut between two regions really cuts (exact for two regions; with
            // more, a third region may share that link).
            let advertise = if regions.len() > 1 {
                let next = regions[(i + 1) % regions.len()];
                links[&(next.to_string(), region.to_string())].port
            } else {
                gw_ports[i]
            };
            let conf = format!(
                "server_name: \"{region}-1\"\nlisten: \"127.0.0.1:{client}\"\n\
                 cluster {{ name: \"{region}\", listen: \"127.0.0.1:{cluster}\" }}\n\
                 gateway {{\n  name: \"{region}\"\n  listen: \"127.0.0.1:{gw}\"\n  advertise: \"127.0.0.1:{advertise}\"\n  reject_unknown_cluster: true\n  gateways: [\n{gws}\n  ]\n}}\n",
                client = client_ports[i],
                cluster = free_port(),
                gw = gw_ports[i],
                gws = gateways.join("\n"),
            );
            let path = dir.path().join(format!("{region}.conf"));
            std::fs::write(&path, conf).unwrap();
            servers.push(Nats::with_config(&path, client_ports[i]).await);
        }
        Supercluster {
            regions: regions.iter().map(|r| r.to_string()).collect(),
            servers,
            links,
            _dir: dir,
        }
    }

    pub fn url(&self, region: &str) -> String {
        let i = self
            .regions
            .iter()
            .position(|r| r == region)
            .expect("region");
        self.servers[i].url.clone()
    }

    pub fn nats_mut(&mut self, region: &str) -> &mut Nats {
        let i = self
            .regions
            .iter()
            .position(|r| r == region)
            .expect("region");
        &mut self.servers[i]
    }

    /// Partitions two regions (both directions) until [`Self::heal`].
    pub fn cut(&self, a: &str, b: &str) {
        self.links[&(a.to_string(), b.to_string())].cut();
        self.links[&(b.to_string(), a.to_string())].cut();
    }

    pub fn heal(&self, a: &str, b: &str) {
        self.links[&(a.to_string(), b.to_string())].heal();
        self.links[&(b.to_string(), a.to_string())].heal();
    }
}

/// A standalone region of a deployment: its own store, `--region`, all `--regions`.
pub async fn region_server(sc: &Supercluster, region: &str) -> Server {
    Server::standalone()
        .nats(&sc.url(region))
        .args([
            "--region",
            region,
            "--regions",
            &sc.regions.join(","),
            "--max-streams-per-ip",
            "10000",
        ])
        .start()
        .await
}

/// Nearest-rank percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
