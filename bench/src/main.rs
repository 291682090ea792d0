//! `livecomments-bench`: a load generator for livecomments and, through URL templates, nchan.
//!
//! Viewers are lean SSE clients (raw TCP, minimal HTTP/1.1, in-place chunked decoding, no
//! allocation per event) living in agent processes of at most `--per-agent` viewers each (a
//! process holds at most ~20,000 fds), spread over loopback source addresses 127.0.x.y. The
//! coordinator posts comments through the real API with real JWTs and measures what arrives.
//! Every comment text is `lcb1 <post> <seq> <send-time-ns>`: the viewers detect missing and
//! duplicate deliveries per (post, seq) and the publish→receive latency from the send time.

mod agent;
mod coord;
mod cqlloop;
mod http;
mod huge;
mod limit;
mod publish;
mod scenarios;
mod server;
mod stats;
mod wrk;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub const MARKER_STR: &str = "lcb1";
pub const MARKER: &[u8] = b"lcb1 ";

#[derive(Parser, Debug)]
#[command(
    name = "livecomments-bench",
    version,
    about = "Load generator for livecomments and nchan: SSE viewers, publishers, latency, missing/duplicate checks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N viewers over C posts; optionally publish M comments at R/s. Covers the idle, hot-post
    /// and many-posts scenarios.
    Fanout(scenarios::FanoutArgs),
    /// Highest publish rate one post's viewers take with p99 ≤ a bound and nothing missing.
    MaxRate(scenarios::MaxRateArgs),
    /// Viewers drop and reconnect with Last-Event-ID within a window while comments flow.
    Storm(scenarios::StormArgs),
    /// POST throughput (durable 201s per second), many users, many connections.
    Ingest(scenarios::IngestArgs),
    /// GET newest page of a post (optionally filled first) under closed-loop load.
    Read(scenarios::ReadArgs),
    /// POST /reaction throughput while viewers read `event: reactions` (and, with
    /// --nchan-url, the same load against nchan's publish); the lag of `wow` probes.
    Reactions(huge::ReactionsArgs),
    /// Viewers with `rate=R` against the same viewers without, on a post receiving many
    /// comments/s: server CPU, deliveries/s, comments per viewer-second.
    Sampling(huge::SamplingArgs),
    /// `GET /posts/<id>/viewers` over several fanouts: time to the right count, to the drop
    /// after one fanout is killed, NATS messages/s it costs.
    ViewerCount(huge::ViewerCountArgs),
    /// Comment rows written straight through the CQL driver, as fast as a node takes them
    /// (the limit ingest on CQL is measured against).
    CqlLoop(cqlloop::CqlLoopArgs),
    /// A few seconds, small N: exits nonzero when anything is missing or duplicated.
    Smoke(scenarios::SmokeArgs),
    /// The minimal SSE broadcaster `--kind limit` measures against (started by the
    /// coordinator itself; run it by hand to point other clients at it).
    LimitServer(limit::LimitArgs),
    /// Internal: a viewer agent process (configured by LCB_AGENT_CONFIG).
    #[command(hide = true)]
    Agent,
}

/// Options every scenario shares: what to load and how to reach it.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// What is under test.
    #[arg(long, value_enum, default_value = "lc")]
    pub kind: publish::Kind,
    /// Base URL(s) viewers subscribe to, comma separated or repeated; viewers are spread
    /// over them (e.g. three fanout processes).
    #[arg(
        long = "url",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,
    /// Base URL comments are posted to (default: the first --url); several, comma separated
    /// (the ingest nodes of one region), spread the posts over them.
    #[arg(long)]
    pub pub_url: Option<String>,
    /// Subscribe URL template with {base} and {post}. Default: lc
    /// `{base}/comments/stream?post_id={post}`, nchan `{base}/sub/{post}`.
    #[arg(long)]
    pub sub_template: Option<String>,
    /// Publish URL template with {base} and {post}. Default: lc `{base}/comment?post_id={post}`,
    /// nchan `{base}/pub/{post}`.
    #[arg(long)]
    pub pub_template: Option<String>,
    /// HS256 secret for the JWTs (livecomments).
    #[arg(long, env = "LIVECOMMENTS_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Server process ids to read RSS and CPU of (comma separated; e.g. every nginx worker).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Start this livecomments binary in standalone mode on a free port with a temp data dir
    /// and a generated secret (rate limit raised), instead of using --url.
    #[arg(long)]
    pub server_bin: Option<std::path::PathBuf>,
    /// Extra arguments for the started server.
    #[arg(long, allow_hyphen_values = true)]
    pub server_arg: Vec<String>,
    /// Data dir for the started server (default: a fresh temp dir, removed afterwards).
    #[arg(long)]
    pub server_data_dir: Option<std::path::PathBuf>,
    /// Loopback source addresses to spread connections over (127.0.x.y); 0: kernel's choice.
    #[arg(long, default_value_t = 200)]
    pub src_ips: usize,
    /// Viewers per agent process (each process holds at most ~20,000 fds).
    #[arg(long, default_value_t = 15_000)]
    pub per_agent: usize,
    /// Connection attempts in flight per agent.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Publisher keep-alive connections (the pacing is open loop up to this many in flight).
    #[arg(long, default_value_t = 16)]
    pub pub_conns: usize,
    /// Distinct users (JWT subjects) the publisher rotates through.
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// Prefix of the post ids this run uses (default: a fresh one per run).
    #[arg(long)]
    pub post_prefix: Option<String>,
    /// A label for the JSON line.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Append the JSON line to this file too.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
    /// Read buffer per viewer, bytes.
    #[arg(long, default_value_t = 4096)]
    pub read_buf: usize,
    /// The viewers' HTTP client: `lean` (hand-written, lightest) or `hyper`.
    #[arg(long, value_enum, default_value_t = agent::ViewerClient::Lean)]
    pub client: agent::ViewerClient,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Agent = cli.cmd {
        return match agent::run_agent() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    stats::raise_nofile();
    let cmd = match cli.cmd {
        Cmd::LimitServer(a) => {
            return match limit::run(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("limit-server: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        cmd => cmd,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let res = rt.block_on(async move {
        match cmd {
            Cmd::Fanout(a) => scenarios::fanout(a).await,
            Cmd::MaxRate(a) => scenarios::max_rate(a).await,
            Cmd::Storm(a) => scenarios::storm(a).await,
            Cmd::Ingest(a) => scenarios::ingest(a).await,
            Cmd::Read(a) => scenarios::read(a).await,
            Cmd::Smoke(a) => scenarios::smoke(a).await,
            Cmd::Reactions(a) => huge::reactions(a).await,
            Cmd::Sampling(a) => huge::sampling(a).await,
            Cmd::ViewerCount(a) => huge::viewer_count(a).await,
            Cmd::CqlLoop(a) => cqlloop::run(a).await,
            Cmd::Agent | Cmd::LimitServer(_) => unreachable!(),
        }
    });
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("livecomments-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
