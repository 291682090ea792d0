//! The CQL server for the tests (Cassandra, started by `scripts/cassandra start`).

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bin;

/// Set to `1` to let the CQL tests pass without running when no CQL server is reachable (a
/// developer without Cassandra); refused under `CI=true`.
pub const SKIP_CQL_ENV: &str = "LIVECOMMENTS_TEST_SKIP_CQL";

/// The CQL server for tests: `$LIVECOMMENTS_TEST_CQL` or Cassandra on 127.0.0.2:9042
/// (`scripts/cassandra start`; `scripts/test` starts it). Unreachable fails the test, saying
/// how to start one, unless [`SKIP_CQL_ENV`]`=1` opts out: then None (the test returns after a
/// `SKIPPED` line). CI never opts out: under `CI=true` the opt-out itself fails.
pub fn cql_node() -> Option<String> {
    let addr = std::env::var("LIVECOMMENTS_TEST_CQL").unwrap_or_else(|_| "127.0.0.2:9042".into());
    let skip = std::env::var(SKIP_CQL_ENV).is_ok_and(|v| v == "1");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !(skip && ci),
        "{SKIP_CQL_ENV}=1 under CI=true: CI runs the CQL tests for real"
    );
    let reachable = addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if reachable {
        return Some(addr);
    }
    if skip {
        eprintln!("SKIPPED: no CQL server at {addr} and {SKIP_CQL_ENV}=1");
        return None;
    }
    panic!(
        "no CQL server at {addr}: start Cassandra with `scripts/cassandra start` (or point \
         LIVECOMMENTS_TEST_CQL at one); to skip the CQL tests instead, set {SKIP_CQL_ENV}=1"
    );
}

/// Applies the schema to a fresh keyspace with the real `livecomments migrate`.
pub fn migrate_keyspace(node: &str, keyspace: &str) {
    migrate_keyspace_with(node, keyspace, &[]);
}

/// [`migrate_keyspace`] with more flags (`--cql-replication SimpleStrategy:3`).
pub fn migrate_keyspace_with(nodes: &str, keyspace: &str, extra: &[&str]) {
    let out = Command::new(bin())
        .args(["migrate", "--cql-nodes", nodes, "--cql-keyspace", keyspace])
        .args(extra)
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

/// The 3-node Cassandra cluster of `scripts/cassandra cluster start` (a region's store as in
/// production), named by `$LIVECOMMENTS_CHAOS_CQL` (`host:port,...`; `scripts/chaos` sets it),
/// with the script that kills, freezes and restarts its nodes.
pub struct CqlCluster {
    /// `host:port` of each node.
    pub nodes: Vec<String>,
    ctl: std::path::PathBuf,
}

pub const CHAOS_CQL_ENV: &str = "LIVECOMMENTS_CHAOS_CQL";

impl CqlCluster {
    /// None when `$LIVECOMMENTS_CHAOS_CQL` is unset. The script is
    /// `$LIVECOMMENTS_CHAOS_CQL_CTL`, else the repository's `scripts/cassandra`.
    pub fn from_env() -> Option<CqlCluster> {
        let nodes: Vec<String> = std::env::var(CHAOS_CQL_ENV)
            .ok()?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let ctl = std::env::var("LIVECOMMENTS_CHAOS_CQL_CTL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cassandra")
            });
        Some(CqlCluster { nodes, ctl })
    }

    /// Every contact point, comma separated (what `--cql-nodes` takes).
    pub fn contact(&self) -> String {
        self.nodes.join(",")
    }

    /// The address (no port) of node `i`.
    pub fn addr(&self, i: usize) -> &str {
        self.nodes[i].split(':').next().unwrap_or_default()
    }

    /// `scripts/cassandra cluster <cmd> <address of node i>`: its stdout, or its stderr as
    /// the error. Blocks (a start takes tens of seconds): call it off the async threads.
    pub fn ctl(&self, cmd: &str, i: usize) -> Result<String, String> {
        let addrs: Vec<&str> = (0..self.nodes.len()).map(|k| self.addr(k)).collect();
        let out = Command::new(&self.ctl)
            .args(["cluster", cmd, self.addr(i)])
            .env("CASSANDRA_CLUSTER", addrs.join(" "))
            .output()
            .map_err(|e| format!("run {}: {e}", self.ctl.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "scripts/cassandra cluster {cmd} {}: {}{}",
                self.addr(i),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// True when every node's log says it sees every other node UP (one ring again after a
    /// node came back).
    pub fn formed(&self) -> bool {
        (0..self.nodes.len()).all(|i| self.ctl("formed", i).is_ok())
    }
}
