//! The processes the tests run: where `livecomments` and `nats-server` are, a fresh log file
//! per process start, the addresses a process says it bound (so no test picks a port that
//! another test binary could take first), and what `/proc` says about a running process.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// A fresh, empty log file for one process start:
/// `$TMPDIR/livecomments-tests/<name>-<pid of the test binary>-<n>.log`, truncated, so nothing
/// an earlier process (of this run or of an earlier one) logged can satisfy or fail an
/// assertion about this one.
pub fn fresh_log(name: &str) -> (PathBuf, File) {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join("livecomments-tests");
    std::fs::create_dir_all(&dir).expect("create the test log directory");
    let n = STARTS.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{name}-{}-{n}.log", std::process::id()));
    let file = File::create(&path).expect("create a test log file");
    (path, file)
}

/// A process that did not come up: how it ended, if it did, and the end of its log.
#[derive(Debug)]
pub struct StartError {
    pub what: String,
    pub exited: Option<ExitStatus>,
    pub log: PathBuf,
    pub tail: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.exited {
            Some(status) => write!(f, "{} exited at start: {status}", self.what)?,
            None => write!(f, "{} did not come up in time", self.what)?,
        }
        write!(f, "; log {}:\n{}", self.log.display(), self.tail)
    }
}

impl StartError {
    pub(crate) fn new(what: &str, exited: Option<ExitStatus>, log: &Path) -> StartError {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        StartError {
            what: what.to_string(),
            exited,
            log: log.to_path_buf(),
            tail: lines[lines.len().saturating_sub(20)..].join("\n"),
        }
    }
}

/// Waits until `find` finds what it looks for in the log of `child` (its stderr), the child
/// exits, or `deadline` passes.
pub(crate) async fn await_log<T>(
    what: &str,
    child: &mut Child,
    log: &Path,
    deadline: Instant,
    find: impl Fn(&str) -> Option<T>,
) -> Result<T, StartError> {
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(v) = find(&text) {
            return Ok(v);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // It may have logged the line just before it exited.
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return match find(&text) {
                Some(v) => Ok(v),
                None => Err(StartError::new(what, Some(status), log)),
            };
        }
        if Instant::now() > deadline {
            return Err(StartError::new(what, None, log));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes terminal colour sequences (`ESC [ … letter`), in case a logger colours anyway.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address `livecomments` serves on, from the line it logs once bound
/// (`INFO livecomments::app: serving role=Standalone listen=127.0.0.1:40123 region=local`, or
/// `"listen":"127.0.0.1:40123"` with `--log-format json`).
pub fn serving_addr(log: &str) -> Option<SocketAddr> {
    log.lines().map(strip_ansi).find_map(|line| {
        if !line.contains("serving") {
            return None;
        }
        let value = if let Some((_, rest)) = line.split_once("listen=") {
            rest.split_whitespace().next()
        } else if let Some((_, rest)) = line.split_once("\"listen\":\"") {
            rest.split('"').next()
        } else {
            None
        };
        value?.parse().ok()
    })
}

/// The port a `nats-server` listens on for `kind` connections (`client`, `gateways`, `route`),
/// from its `Listening for <kind> connections on 127.0.0.1:4222` line.
pub fn nats_listening(log: &str, kind: &str) -> Option<u16> {
    let marker = format!("Listening for {kind} connections on ");
    log.lines().find_map(|line| {
        let (_, addr) = line.split_once(&marker)?;
        addr.trim().parse::<SocketAddr>().ok().map(|a| a.port())
    })
}

/// A loopback port on which every connection is refused, and that no other process can take
/// while this lives: a socket bound to it that never listens.
pub struct ClosedPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind a loopback port");
        let port = socket.local_addr().expect("bound address").port();
        ClosedPort {
            port,
            _socket: socket,
        }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_addr_from_text_json_and_coloured_logs() {
        let text = "2026-12-01T20:23:43.896226Z  INFO livecomments::app: serving role=Standalone listen=127.0.0.1:40123 region=local\n";
        assert_eq!(serving_addr(text), "127.0.0.1:40123".parse().ok());
        let json = r#"{"timestamp":"x","level":"INFO","fields":{"message":"serving","role":"Fanout","listen":"127.0.0.1:1234","region":"eu"}}"#;
        assert_eq!(serving_addr(json), "127.0.0.1:1234".parse().ok());
        let coloured = "\u{1b}[2mt\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m serving \u{1b}[3mlisten\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5 x";
        assert_eq!(serving_addr(coloured), "127.0.0.1:5".parse().ok());
        assert_eq!(
            serving_addr("livecomments: binding --listen 127.0.0.1:80: denied"),
            None
        );
        assert_eq!(serving_addr("INFO nats connected\n"), None);
    }

    #[test]
    fn nats_listening_ports() {
        let log = "[1] 2026/12/01 20:23:45.918300 [INF] Listening for gateways connections on 127.0.0.1:45703\n\
                   [1] 2026/12/01 20:23:45.918525 [INF] Listening for client connections on 127.0.0.1:44019\n";
        assert_eq!(nats_listening(log, "client"), Some(44019));
        assert_eq!(nats_listening(log, "gateways"), Some(45703));
        assert_eq!(nats_listening(log, "route"), None);
    }

    #[tokio::test]
    async fn a_closed_port_refuses_connections() {
        let closed = ClosedPort::new();
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", closed.port))
                .await
                .is_err()
        );
    }
}
