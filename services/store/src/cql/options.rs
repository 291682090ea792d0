//! How to reach the cluster: contact points, keyspace, consistency, replication, retention,
//! and the driver session built from them. `config::CqlArgs::options` makes them from the CLI;
//! the store knows nothing of clap.

use std::str::FromStr;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::frame::types::{Consistency, SerialConsistency};

use crate::{Doing, SetupError};

fn bad(why: String) -> SetupError {
    SetupError::Config(why)
}

/// Connection and schema settings of the CQL store.
#[derive(Debug, Clone)]
pub struct CqlOptions {
    /// Contact points `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace (validated: `[A-Za-z][A-Za-z0-9_]{0,47}`, stored lowercase).
    pub keyspace: String,
    /// `local_quorum` (default), `quorum`, `local_one`, `one`, `each_quorum`, `all`, ...
    pub consistency: String,
    /// Comments expire after this many days (CQL TTL); `None`: kept forever.
    pub retention_days: Option<u32>,
    /// Keyspace replication used by `migrate`: `SimpleStrategy:1` or
    /// `NetworkTopologyStrategy:dc1=3,dc2=3`.
    pub replication: String,
    /// Which widths the writer gives the partitions of `comments`.
    pub partitions: Partitions,
}

/// Which widths a writer gives the partitions of `comments` (docs/CQL.md "Tiered
/// partitions"). Every binary since schema 0007 reads both layouts; this only chooses what it
/// writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitions {
    /// 1 s, 60 s or 3,600 s by the post's rate as the writer sees it (the default).
    #[default]
    Tiered,
    /// 1 s only, the layout before 0007: for a rolling upgrade, while processes that do not
    /// read `comment_parts` still serve the keyspace (docs/OPERATIONS.md).
    Seconds,
}

impl FromStr for Partitions {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tiered" => Ok(Partitions::Tiered),
            "seconds" => Ok(Partitions::Seconds),
            other => Err(format!("{other:?}: expected `tiered` or `seconds`")),
        }
    }
}

impl CqlOptions {
    /// Defaults for everything but the contact points and keyspace.
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> Self {
        CqlOptions {
            nodes,
            keyspace: keyspace.into(),
            consistency: "local_quorum".into(),
            retention_days: None,
            replication: "SimpleStrategy:1".into(),
            partitions: Partitions::default(),
        }
    }

    /// Checks every field; lowercases the keyspace (unquoted CQL identifiers are
    /// case-insensitive).
    pub fn validated(mut self) -> Result<Self, SetupError> {
        if self.nodes.is_empty() {
            return Err(bad("--cql-nodes: at least one host:port is needed".into()));
        }
        let ks = &self.keyspace;
        let ok = ks.len() <= 48
            && ks.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(bad(format!(
                "--cql-keyspace {ks:?}: must match [A-Za-z][A-Za-z0-9_]{{0,47}}"
            )));
        }
        self.keyspace = ks.to_ascii_lowercase();
        parse_consistency(&self.consistency)?;
        if self.retention_days == Some(0) || self.retention_days.is_some_and(|d| d > 3650) {
            return Err(bad("--cql-retention-days must be between 1 and 3650".into()));
        }
        self.replication_cql()?;
        Ok(self)
    }

    /// The replication map of `CREATE KEYSPACE`.
    pub fn replication_cql(&self) -> Result<String, SetupError> {
        replication_cql(&self.replication)
    }

    pub(super) fn ttl_secs(&self) -> i32 {
        self.retention_days.map(|d| d as i32 * 86_400).unwrap_or(0)
    }
}

pub fn parse_consistency(s: &str) -> Result<Consistency, SetupError> {
    Ok(
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "any" => Consistency::Any,
            "one" => Consistency::One,
            "two" => Consistency::Two,
            "three" => Consistency::Three,
            "quorum" => Consistency::Quorum,
            "all" => Consistency::All,
            "local_quorum" => Consistency::LocalQuorum,
            "each_quorum" => Consistency::EachQuorum,
            "local_one" => Consistency::LocalOne,
            other => {
                return Err(bad(format!(
                    "--cql-consistency {other:?}: expected local_quorum, quorum, local_one, one, two, three, each_quorum, all or any"
                )));
            }
        },
    )
}

/// `SimpleStrategy:1` → `{'class': 'SimpleStrategy', 'replication_factor': 1}`;
/// `NetworkTopologyStrategy:eu=3,us=3` → `{'class': 'NetworkTopologyStrategy', 'eu': 3, 'us': 3}`.
pub fn replication_cql(s: &str) -> Result<String, SetupError> {
    let usage =
        "--cql-replication: expected SimpleStrategy:<rf> or NetworkTopologyStrategy:<dc>=<rf>,...";
    let (class, rest) = s.trim().split_once(':').ok_or_else(|| bad(usage.into()))?;
    let rf = |v: &str| -> Result<u32, SetupError> {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=9).contains(n))
            .ok_or_else(|| bad("--cql-replication: replication factor must be 1..=9".into()))
    };
    match class.trim().to_ascii_lowercase().as_str() {
        "simplestrategy" | "simple" => Ok(format!(
            "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
            rf(rest)?
        )),
        "networktopologystrategy" | "nts" => {
            let mut parts = Vec::new();
            for item in rest.split(',') {
                let (dc, n) = item.split_once('=').ok_or_else(|| bad(usage.into()))?;
                let dc = dc.trim();
                let valid = !dc.is_empty()
                    && dc.len() <= 64
                    && dc
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !valid {
                    return Err(bad(format!(
                        "--cql-replication: bad datacenter name {dc:?}"
                    )));
                }
                parts.push(format!("'{dc}': {}", rf(n)?));
            }
            Ok(format!(
                "{{'class': 'NetworkTopologyStrategy', {}}}",
                parts.join(", ")
            ))
        }
        _ => Err(bad(usage.to_string())),
    }
}

/// A driver session with the configured consistency, LOCAL_SERIAL for LWTs and the default
/// (token-aware, datacenter-aware) load balancing.
pub(crate) async fn session(opts: &CqlOptions) -> Result<Session, SetupError> {
    let profile = ExecutionProfile::builder()
        .consistency(parse_consistency(&opts.consistency)?)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(Duration::from_secs(10)))
        .build();
    SessionBuilder::new()
        .known_nodes(&opts.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .connection_timeout(Duration::from_secs(5))
        .build()
        .await
        .doing(|| format!("connecting to CQL nodes {}", opts.nodes.join(",")))
}
