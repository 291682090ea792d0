//! Schema migrations: the ordered files of `cql/` (embedded at build time) applied to the
//! keyspace, each recorded in `<keyspace>.schema_version`.
//!
//! Safe to run twice or concurrently:
//! - every DDL statement is `CREATE ... IF NOT EXISTS`;
//! - migrators serialise on a lease row (`version = 0`) claimed with an LWT
//!   (`INSERT ... IF NOT EXISTS USING TTL 120`), so two processes never issue DDL at the same
//!   time (concurrent schema changes of one table from two coordinators can disagree);
//! - an applied version is recorded with `INSERT ... IF NOT EXISTS` after the driver has seen
//!   schema agreement.
//!
//! On ScyllaDB the keyspace is created with `tablets = {'enabled': false}` (LWTs need vnodes
//! there); the files of `cql/` themselves stay portable.

use std::time::{Duration, Instant};

use crate::{Doing, SetupError};
use scylla::client::session::Session;
use scylla::value::CqlTimestamp;

use super::{CqlOptions, lwt_outcome, session};

/// (version, name, CQL with `{keyspace}` placeholders), in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_comments",
        include_str!("../../../../cql/0001_comments.cql"),
    ),
    (
        2,
        "0002_idempotency",
        include_str!("../../../../cql/0002_idempotency.cql"),
    ),
    (
        3,
        "0003_user_rate",
        include_str!("../../../../cql/0003_user_rate.cql"),
    ),
    (
        4,
        "0004_deletions",
        include_str!("../../../../cql/0004_deletions.cql"),
    ),
    (
        5,
        "0005_moderation",
        include_str!("../../../../cql/0005_moderation.cql"),
    ),
    (
        6,
        "0006_reactions",
        include_str!("../../../../cql/0006_reactions.cql"),
    ),
    (
        7,
        "0007_comment_parts",
        include_str!("../../../../cql/0007_comment_parts.cql"),
    ),
];

/// The schema version this binary needs.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Lease of the migrate lock: long enough for the DDL of all files on a slow cluster.
const LOCK_TTL_SECS: i32 = 120;

/// The statements of one migration file with the keyspace substituted: `--` comments removed,
/// split on `;`.
pub fn statements(cql: &str, keyspace: &str) -> Vec<String> {
    let without_comments: String = cql
        .lines()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("{keyspace}", keyspace))
        .collect()
}

/// Creates the keyspace (with `opts.replication`) if missing and applies every missing file of
/// `cql/`. Idempotent; concurrent runs wait for each other.
pub async fn migrate(opts: &CqlOptions) -> Result<(), SetupError> {
    let session = session(opts).await?;
    let ks = &opts.keyspace;
    let replication = opts.replication_cql()?;
    let create = format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}");
    // ScyllaDB creates tablets keyspaces by default in recent versions, and its LWTs (the
    // idempotency keys, the migrate lock) are not supported on tablets there: ask for vnodes.
    // The option is ScyllaDB-only (Cassandra rejects it) and unknown to ScyllaDB before tablets,
    // hence the detection and the fallback.
    let mut created = false;
    if is_scylla(&session).await {
        match session
            .query_unpaged(format!("{create} AND tablets = {{'enabled': false}}"), &[])
            .await
        {
            Ok(_) => created = true,
            Err(e) => {
                tracing::info!(error = %e, "ScyllaDB refused tablets = false; creating the keyspace without it")
            }
        }
    }
    if !created {
        session
            .query_unpaged(create, &[])
            .await
            .doing(|| format!("creating keyspace {ks}"))?;
    }
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.schema_version \
                 (version int PRIMARY KEY, name text, applied_at timestamp, owner text)"
            ),
            &[],
        )
        .await
        .doing(|| format!("creating {ks}.schema_version"))?;
    session
        .await_schema_agreement()
        .await
        .doing(|| "waiting for schema agreement".into())?;

    let owner = format!("{:032x}", rand::random::<u128>());
    acquire_lock(&session, ks, &owner).await?;
    let result = apply_missing(&session, ks).await;
    // Best effort: the lease expires by itself after LOCK_TTL_SECS.
    let release = session
        .query_unpaged(
            format!("DELETE FROM {ks}.schema_version WHERE version = 0 IF owner = ?"),
            (&owner,),
        )
        .await;
    if let Err(e) = release {
        tracing::warn!(error = %e, "could not release the migrate lock; it expires in {LOCK_TTL_SECS} s");
    }
    result
}

/// True on ScyllaDB (it has `system.scylla_local`; Cassandra does not).
async fn is_scylla(session: &Session) -> bool {
    session
        .query_unpaged("SELECT key FROM system.scylla_local LIMIT 1", &[])
        .await
        .is_ok()
}

async fn acquire_lock(session: &Session, ks: &str, owner: &str) -> Result<(), SetupError> {
    let claim = session
        .prepare(format!(
            "INSERT INTO {ks}.schema_version (version, name, owner) VALUES (0, 'migrate-lock', ?) \
             IF NOT EXISTS USING TTL {LOCK_TTL_SECS}"
        ))
        .await
        .doing(|| "preparing the migrate lock".into())?;
    let deadline = Instant::now() + Duration::from_secs(LOCK_TTL_SECS as u64 + 30);
    loop {
        let res = session
            .execute_unpaged(&claim, (owner,))
            .await
            .doing(|| "claiming the migrate lock".into())?;
        let (applied, _) = lwt_outcome(res).doing(|| "claiming the migrate lock".into())?;
        if applied {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(SetupError::Schema(format!(
                "another `livecomments migrate` holds the lock on {ks}.schema_version; try again later"
            )));
        }
        tracing::info!("another migrate is running on {ks}; waiting");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Versions recorded in `<ks>.schema_version` (the lock row, version 0, excluded).
pub(super) async fn applied_versions(session: &Session, ks: &str) -> Result<Vec<i32>, SetupError> {
    let res = session
        .query_unpaged(format!("SELECT version FROM {ks}.schema_version"), &[])
        .await
        .doing(|| format!("reading {ks}.schema_version"))?;
    let reading = || format!("reading {ks}.schema_version");
    let rows = res.into_rows_result().doing(reading)?;
    let mut out = Vec::new();
    for row in rows.rows::<(i32,)>().doing(reading)? {
        let (v,) = row.doing(reading)?;
        if v > 0 {
            out.push(v);
        }
    }
    out.sort_unstable();
    Ok(out)
}

async fn apply_missing(session: &Session, ks: &str) -> Result<(), SetupError> {
    let applied = applied_versions(session, ks).await?;
    for (version, name, cql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(keyspace = ks, version, name, "applying CQL migration");
        for stmt in statements(cql, ks) {
            session
                .query_unpaged(stmt.as_str(), &[])
                .await
                .doing(|| format!("migration {name}: {stmt}"))?;
        }
        session
            .await_schema_agreement()
            .await
            .doing(|| "waiting for schema agreement".into())?;
        session
            .query_unpaged(
                format!("INSERT INTO {ks}.schema_version (version, name, applied_at) VALUES (?, ?, ?) IF NOT EXISTS"),
                (version, name, CqlTimestamp(livecomments_shared::time::now_millis())),
            )
            .await
            .doing(|| format!("recording migration {name}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_split_into_statements_with_the_keyspace() {
        let all: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|(_, _, c)| statements(c, "ks1"))
            .collect();
        assert_eq!(all.len(), 10);
        for s in &all {
            assert!(s.starts_with("CREATE TABLE IF NOT EXISTS ks1."), "{s}");
            assert!(!s.contains("{keyspace}") && !s.contains("--"), "{s}");
        }
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]) && versions[0] == 1);
    }
}
