//! The CQL server for the tests (Cassandra, started by `scripts/cassandra start`).

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bin;

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
