//! The binaries the tests run and what they leave behind: where `livecomments` and
//! `nats-server` are, and what `/proc` says about a running process.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

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
