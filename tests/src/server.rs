//! The `livecomments` binary under test, one process per [`Server`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{SECRET, bin, client, free_port, get_json, post_comment, token};

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
