//! The one configuration struct, parsed once in `main` (clap, every flag with a
//! `LIVECOMMENTS_*` environment twin) and validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "livecomments",
    version,
    about = "Live comments: ingest, fanout and global reader in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every role in one process: ingest, reader, fanout and the demo page (the default).
    Standalone(Settings),
    /// POST /comment and DELETE: write to the regional store, publish to NATS.
    Ingest(Settings),
    /// GET /comments/stream: subscribe per active post, push over SSE.
    Fanout(Settings),
    /// GET /comments, and answers other regions' since-queries over NATS.
    Reader(Settings),
    /// Apply the CQL schema in `cql/` that the keyspace is missing (safe to repeat).
    Migrate(Settings),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Standalone,
    Ingest,
    Fanout,
    Reader,
    Migrate,
}

impl Command {
    pub fn split(self) -> (Role, Settings) {
        match self {
            Command::Standalone(s) => (Role::Standalone, s),
            Command::Ingest(s) => (Role::Ingest, s),
            Command::Fanout(s) => (Role::Fanout, s),
            Command::Reader(s) => (Role::Reader, s),
            Command::Migrate(s) => (Role::Migrate, s),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to serve HTTP on.
    #[arg(long, env = "LIVECOMMENTS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// This process's region: `[a-z0-9-]{1,16}`.
    #[arg(long, env = "LIVECOMMENTS_REGION", default_value = "local")]
    pub region: String,

    /// Every region of the deployment, comma separated (the global reader asks the others).
    /// Defaults to this region alone.
    #[arg(long, env = "LIVECOMMENTS_REGIONS", value_delimiter = ',')]
    pub regions: Vec<String>,

    /// Directory of the embedded store (used when --cql-nodes is unset).
    #[arg(long, env = "LIVECOMMENTS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Page cache of the embedded store in MiB (its memory use does not grow past it).
    #[arg(long, env = "LIVECOMMENTS_STORE_CACHE_MB", default_value_t = 128)]
    pub store_cache_mb: usize,

    /// NATS server URL(s), comma separated. Unset in standalone: an in-process bus.
    #[arg(long, env = "LIVECOMMENTS_NATS_URL")]
    pub nats_url: Option<String>,

    #[command(flatten)]
    pub cql: CqlArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Threads that serve HTTP connections, each on a single-threaded runtime of its own
    /// (default: one per core, the fastest here; 0: on the main runtime). See `server.rs`
    /// and docs/BENCHMARKS.md ("Reactions again").
    #[arg(long, env = "LIVECOMMENTS_HTTP_THREADS")]
    pub http_threads: Option<usize>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LIVECOMMENTS_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

#[derive(Debug, Clone, Args)]
pub struct CqlArgs {
    /// CQL contact points `host:port,...`. Unset: the embedded store.
    #[arg(long, env = "LIVECOMMENTS_CQL_NODES", value_delimiter = ',')]
    pub cql_nodes: Vec<String>,

    /// Keyspace holding this region's comments.
    #[arg(
        long,
        env = "LIVECOMMENTS_CQL_KEYSPACE",
        default_value = "livecomments"
    )]
    pub cql_keyspace: String,

    /// Consistency of CQL reads and writes: `local_quorum` (default), `quorum`, `local_one`,
    /// `one`, `each_quorum` or `all`. LWTs (idempotency keys) always use LOCAL_SERIAL.
    #[arg(
        long,
        env = "LIVECOMMENTS_CQL_CONSISTENCY",
        default_value = "local_quorum"
    )]
    pub cql_consistency: String,

    /// Keep comments this many days (a CQL TTL on every comment row). Unset: forever.
    #[arg(long, env = "LIVECOMMENTS_CQL_RETENTION_DAYS")]
    pub cql_retention_days: Option<u32>,

    /// Replication of the keyspace, used by `migrate` when it creates it:
    /// `SimpleStrategy:1` (dev default) or `NetworkTopologyStrategy:eu-west=3,us-east=3` (prod).
    #[arg(
        long,
        env = "LIVECOMMENTS_CQL_REPLICATION",
        default_value = "SimpleStrategy:1"
    )]
    pub cql_replication: String,

    /// Widths of the comment partitions this process writes: `tiered` (1 s, 60 s or 3,600 s
    /// by the post's rate; default) or `seconds` (1 s only, what binaries before schema 0007
    /// read: keep it while any of those still serves the keyspace, docs/OPERATIONS.md).
    #[arg(long, env = "LIVECOMMENTS_CQL_PARTITIONS", default_value = "tiered")]
    pub cql_partitions: livecomments_store::cql::Partitions,
}

impl CqlArgs {
    /// The store's options from the flags, validated.
    pub fn options(&self) -> anyhow::Result<livecomments_store::cql::CqlOptions> {
        livecomments_store::cql::CqlOptions {
            nodes: self
                .cql_nodes
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            keyspace: self.cql_keyspace.clone(),
            consistency: self.cql_consistency.clone(),
            retention_days: self.cql_retention_days,
            replication: self.cql_replication.clone(),
            partitions: self.cql_partitions,
        }
        .validated()
        .map_err(anyhow::Error::from)
    }
}

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HS256 shared secret.
    #[arg(long, env = "LIVECOMMENTS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key for RS256, ES256 or EdDSA (the algorithm follows the key type).
    #[arg(long, env = "LIVECOMMENTS_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "LIVECOMMENTS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "LIVECOMMENTS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Require a token for GET /comments and the stream too.
    #[arg(
        long,
        env = "LIVECOMMENTS_READ_REQUIRES_TOKEN",
        default_value_t = false
    )]
    pub read_requires_token: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Comments a user may post per window.
    #[arg(long, env = "LIVECOMMENTS_RATE_LIMIT", default_value_t = 10)]
    pub rate_limit: u32,

    /// The rate-limit window in seconds.
    #[arg(long, env = "LIVECOMMENTS_RATE_WINDOW_SECS", default_value_t = 10)]
    pub rate_window_secs: u64,

    /// Reactions a user may send per second (CONTRACT §11: 20); benchmarks lift it.
    #[arg(long, env = "LIVECOMMENTS_REACTION_LIMIT", default_value_t = 20)]
    pub reaction_limit: u32,

    /// Seconds between `: ping` heartbeats on idle streams.
    #[arg(long, env = "LIVECOMMENTS_HEARTBEAT_SECS", default_value_t = 15)]
    pub heartbeat_secs: u64,

    /// Events an SSE viewer may be behind beyond what its socket holds; a viewer further
    /// behind is disconnected (it resumes, from the hub's memory when it comes back within
    /// 10 s). 4096, as the benchmark's minimal broadcaster keeps: at 600 comments/s on 10k
    /// viewers, 256 cut 98–100 % of the viewers and 4096 cut 0–55 % (issue 16);
    /// waiting events are handles on the frames all viewers share, so the bound costs little.
    #[arg(long, env = "LIVECOMMENTS_VIEWER_BUFFER", default_value_t = 4096)]
    pub viewer_buffer: usize,

    /// Open SSE streams this process accepts in all.
    #[arg(long, env = "LIVECOMMENTS_MAX_STREAMS", default_value_t = 100_000)]
    pub max_streams: usize,

    /// Open SSE streams per client IP.
    #[arg(long, env = "LIVECOMMENTS_MAX_STREAMS_PER_IP", default_value_t = 1_000)]
    pub max_streams_per_ip: usize,

    /// Reverse proxies (addresses or blocks, comma-separated: `10.0.0.0/8,fd00::/8`) whose
    /// `X-Forwarded-For` names the client for the per-IP limit; from anyone else it is ignored.
    #[arg(long, env = "LIVECOMMENTS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<livecomments_shared::Cidr>,
}

/// More connection threads than this is a typo, not a machine: each holds a runtime.
const MAX_HTTP_THREADS: usize = 1024;

impl Settings {
    /// Checks what clap cannot; the message names the flag to fix.
    pub fn validate(&mut self, role: Role) -> Result<(), String> {
        use livecomments_shared::validate::is_region;
        if !is_region(&self.region) {
            return Err(format!(
                "--region {:?}: must match [a-z0-9-]{{1,16}}",
                self.region
            ));
        }
        if self.regions.is_empty() {
            self.regions.push(self.region.clone());
        }
        if self.http_threads.is_some_and(|n| n > MAX_HTTP_THREADS) {
            return Err(format!("--http-threads: at most {MAX_HTTP_THREADS}"));
        }
        for r in &self.regions {
            if !is_region(r) {
                return Err(format!("--regions: {r:?} must match [a-z0-9-]{{1,16}}"));
            }
        }
        if !self.regions.contains(&self.region) {
            return Err(format!(
                "--regions must include this process's --region {:?}",
                self.region
            ));
        }
        if self.auth.jwt_secret.is_some() && self.auth.jwt_public_key_file.is_some() {
            return Err("set only one of --jwt-secret and --jwt-public-key-file".into());
        }
        if self
            .auth
            .jwt_secret
            .as_deref()
            .is_some_and(|s| s.len() < 16)
        {
            return Err("--jwt-secret must be at least 16 bytes".into());
        }
        let needs_nats = matches!(role, Role::Ingest | Role::Fanout | Role::Reader);
        if needs_nats && self.nats_url.is_none() {
            return Err("this role talks to the other roles over NATS: set --nats-url".into());
        }
        let needs_key = matches!(role, Role::Ingest)
            || (self.auth.read_requires_token && matches!(role, Role::Fanout | Role::Reader));
        if needs_key && self.auth.jwt_secret.is_none() && self.auth.jwt_public_key_file.is_none() {
            return Err(
                "set --jwt-secret or --jwt-public-key-file (only standalone may generate one)"
                    .into(),
            );
        }
        if role == Role::Migrate && self.cql.cql_nodes.is_empty() {
            return Err("migrate needs --cql-nodes".into());
        }
        if self.limits.rate_limit == 0
            || self.limits.rate_window_secs == 0
            || self.limits.reaction_limit == 0
        {
            return Err(
                "--rate-limit, --rate-window-secs and --reaction-limit must be positive".into(),
            );
        }
        if self.limits.heartbeat_secs == 0 || self.limits.viewer_buffer == 0 {
            return Err("--heartbeat-secs and --viewer-buffer must be positive".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err("--log-format must be text or json".into());
        }
        Ok(())
    }
}
