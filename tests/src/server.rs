//! The `livecomments` binary under test, one process per [`Server`].
//!
//! A server binds `--listen 127.0.0.1:0` and the harness reads the port it got from the line
//! it logs once bound (`serving … listen=127.0.0.1:<port>`): the kernel picks a free port
//! and nobody can take it between the pick and the bind. A restart binds that same port
//! again (viewers and peers know it); if another process took it in the moment it was free,
//! the restart retries for a while and then fails saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proc::{StartError, await_log, fresh_log, serving_addr};
use crate::{SECRET, bin, client, delete_comment, get_json, post_comment, post_reaction, token};

/// `args[LISTEN]` is the value of `--listen`.
const LISTEN: usize = 2;
/// How long a start (or restart) may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `livecomments` process; killed on drop.
pub struct Server {
    pub base: String,
    pub port: u16,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    /// The log (stderr) of the current process start.
    log: PathBuf,
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
    /// Listen on `p` rather than on a port the kernel picks (the caller must hold `p` free).
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
        self.try_start().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Self::start`], but a server that exits at start or never comes up is an error
    /// (with its log) instead of a panic.
    pub async fn try_start(self) -> Result<Server, StartError> {
        let (data_dir, tmp) = match self.data_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir().unwrap();
                (t.path().to_path_buf(), Some(t))
            }
        };
        let port = self.port.unwrap_or(0);
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
            log: PathBuf::new(),
            data_dir,
            _tmp: tmp,
        };
        s.spawn();
        s.wait_up(self.wait_ready).await?;
        Ok(s)
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
        let (path, log) = fresh_log(&format!("livecomments-{}", self.args[0]));
        self.log = path;
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

    /// Learns the bound port from the log, then waits for `/readyz` (or `/healthz`).
    async fn wait_up(&mut self, ready: bool) -> Result<(), StartError> {
        let what = format!("livecomments {:?}", self.args);
        let deadline = Instant::now() + START_TIMEOUT;
        let child = self.child.as_mut().expect("spawned");
        let addr = await_log(&what, child, &self.log, deadline, serving_addr).await?;
        self.port = addr.port();
        self.base = format!("http://{addr}");
        // A restart binds the same port.
        self.args[LISTEN] = addr.to_string();
        let url = format!("{}/{}", self.base, if ready { "readyz" } else { "healthz" });
        loop {
            if let Ok(r) = client().get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(StartError::new(&what, Some(status), &self.log));
            }
            if Instant::now() > deadline {
                return Err(StartError::new(&what, None, &self.log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The log (stderr) of the current process; every start and restart has a new one.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// The first line of the current log that `wanted` accepts, polling it until `timeout`
    /// (`None` then).
    pub async fn await_log_line(
        &self,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<String> {
        crate::eventually(timeout, || {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let line = text.lines().find(|l| wanted(l)).map(str::to_string);
            async move { line }
        })
        .await
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
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.spawn();
            match self.wait_up(true).await {
                Ok(()) => return,
                // Another process took the port while it was free: it may let go again.
                Err(e)
                    if e.exited.is_some()
                        && e.tail.contains("binding --listen")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("restart on port {}: {e}", self.port),
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, post_id: &str, user: &str, text: &str) -> (u16, Value) {
        post_comment(&self.base, post_id, &token(user), text).await
    }

    /// One reaction of `kind` by `user`; the status.
    pub async fn react(&self, post_id: &str, user: &str, kind: &str) -> u16 {
        post_reaction(
            &self.base,
            post_id,
            &token(user),
            serde_json::json!({ "kind": kind }),
        )
        .await
        .0
    }

    /// `GET /posts/<id>/viewers`' count.
    pub async fn viewers(&self, post_id: &str) -> u64 {
        let (status, body) = self.get_json(&format!("/posts/{post_id}/viewers")).await;
        assert_eq!(status, 200, "{body}");
        body["viewers"].as_u64().expect("viewers")
    }

    /// `GET /posts/<id>/reactions`' totals.
    pub async fn reactions(&self, post_id: &str) -> Value {
        let (status, body) = self.get_json(&format!("/posts/{post_id}/reactions")).await;
        assert_eq!(status, 200, "{body}");
        body["reactions"].clone()
    }

    /// Deletes comment `id` of the post with `user`'s token (no moderator claim); the status.
    pub async fn delete(&self, post_id: &str, id: &str, user: &str) -> u16 {
        delete_comment(&self.base, post_id, id, &token(user))
            .await
            .0
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

    /// The value of an unlabelled counter or gauge in `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
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
