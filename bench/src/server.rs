//! Starts a livecomments standalone server for a run: free port, temp data dir, generated
//! secret, rate limit and per-IP stream limit raised so that they do not skew the figures.

// libc kill(SIGTERM) for a graceful stop: std only has Child::kill (SIGKILL).
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::http::{Client, Url};

pub struct Server {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub base: String,
    pub secret: String,
    pub data_dir: PathBuf,
    remove_dir: bool,
    pub log: PathBuf,
}

pub fn random_secret() -> String {
    let mut b = [0u8; 24];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls `/healthz` until it answers 200 (30 s at most), failing early if the process exits.
async fn wait_healthy(child: &mut tokio::process::Child, base: &str, log: &Path) -> Result<()> {
    let url = Url::parse(base)?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!("server exited with {st} before it was ready; log:\n{tail}");
        }
        let mut c = Client::new(url.clone(), None);
        if let Ok(200) = c
            .request("GET", "/healthz", &[], b"", Duration::from_secs(2))
            .await
        {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("server not healthy after 30 s (log {})", log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Server {
    pub async fn start(
        bin: &Path,
        data_dir: Option<PathBuf>,
        extra: &[String],
        secret: Option<String>,
    ) -> Result<Server> {
        let port = free_port()?;
        let (data_dir, remove_dir) = match data_dir {
            Some(d) => (d, false),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "lcb-{}-{}",
                    std::process::id(),
                    crate::stats::now_ns() % 1_000_000_000
                ));
                (d, true)
            }
        };
        std::fs::create_dir_all(&data_dir)?;
        let secret = secret.unwrap_or_else(random_secret);
        let log = data_dir.with_extension("log");
        let logf = std::fs::File::create(&log)?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("standalone")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--rate-limit", "1000000000", "--rate-window-secs", "1"])
            .args([
                "--max-streams",
                "1000000",
                "--max-streams-per-ip",
                "1000000",
            ])
            .args(extra)
            .env("LIVECOMMENTS_JWT_SECRET", &secret)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let pid = child.id().unwrap_or(0);
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&mut child, &base, &log).await?;
        Ok(Server {
            child,
            pid,
            base,
            secret,
            data_dir,
            remove_dir,
            log,
        })
    }

    /// The `--kind limit` broadcaster: this binary's `limit-server` on a free port.
    pub async fn start_limit() -> Result<Server> {
        let port = free_port()?;
        let exe = std::env::current_exe().context("the bench's own path")?;
        let log = std::env::temp_dir().join(format!(
            "lcb-limit-{}-{}.log",
            std::process::id(),
            crate::stats::now_ns() % 1_000_000_000
        ));
        let logf = std::fs::File::create(&log)?;
        let mut child = tokio::process::Command::new(exe)
            .args(["limit-server", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .kill_on_drop(true)
            .spawn()
            .context("start limit-server")?;
        let pid = child.id().unwrap_or(0);
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&mut child, &base, &log).await?;
        Ok(Server {
            child,
            pid,
            base,
            secret: String::new(),
            // Nothing but the log to remove afterwards (`remove_dir_all` of a file fails).
            data_dir: log.clone(),
            remove_dir: true,
            log,
        })
    }

    pub async fn stop(mut self) {
        // SIGTERM first so it can flush, then kill.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
