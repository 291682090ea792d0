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
