//! `cql-loop`: what a Cassandra/ScyllaDB node takes of comment rows when nothing else is in
//! the way (issue 16): `--conns` loops each writing one comment row after another through
//! `CqlStore::write_comment` (the one prepared INSERT ingest makes per comment, the same driver
//! session and statement settings), no HTTP, no pipeline, no rate limit, no bucket index.
//! Ingest's rate on the same node, over this one, is the share of the node its write path
//! gets (the goal: ≥ 0.8×). Migrates a fresh keyspace first unless one is named.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use livecomments_shared::{Comment, time};
use livecomments_store::cql::{CqlOptions, CqlStore, migrate};
use serde_json::json;

use crate::coord::{Out, r3};
use crate::stats::{self, lat_json};

#[derive(clap::Args, Debug)]
pub struct CqlLoopArgs {
    /// Contact points, comma separated.
    #[arg(long, default_value = "127.0.0.2:9042", value_delimiter = ',')]
    pub cql_nodes: Vec<String>,
    /// Keyspace to write into (default: a fresh one, migrated first).
    #[arg(long)]
    pub cql_keyspace: Option<String>,
    /// Concurrent writers (as ingest's 64 HTTP connections).
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    #[arg(long, default_value_t = 8.0)]
    pub secs: f64,
    /// Posts the rows spread over (as `ingest --posts`).
    #[arg(long, default_value_t = 100)]
    pub posts: usize,
    /// Pids whose CPU to report (the Cassandra node's).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Append the JSON line to this file as well.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

/// A comment of the bench's usual size (the wrk body's text) with a fresh id.
fn row(post: usize, user: u64) -> Comment {
    let ms = time::now_millis();
    Comment {
        id: ulid::Ulid::from_parts(ms as u64, rand::random::<u128>())
            .to_string()
            .into(),
        post_id: format!("loop{post}").into(),
        user_id: format!("user{user}"),
        text: "hello from wrk, a comment of typical length".into(),
        timestamp: time::format_millis(ms),
        region: "local".into(),
        metadata: Default::default(),
    }
}

pub async fn run(a: CqlLoopArgs) -> Result<bool> {
    let ks = a.cql_keyspace.clone().unwrap_or_else(|| {
        format!(
            "bench_loop_{}_{}",
            std::process::id(),
            time::now_millis() / 1000
        )
    });
    let opts = CqlOptions::new(a.cql_nodes.clone(), ks.clone())
        .validated()
        .context("cql options")?;
    if a.cql_keyspace.is_none() {
        migrate(&opts).await.context("migrating the keyspace")?;
    }
    let store = Arc::new(CqlStore::connect(&opts).await.context("connecting")?);
    let written = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(std::sync::Mutex::new(stats::new_hist()));
    let end = Instant::now() + Duration::from_secs_f64(a.secs);
    let c0 = stats::sum_cpu(&a.server_pid);
    let g0 = stats::cpu_secs(std::process::id()).unwrap_or(0.0);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..a.conns)
        .map(|w| {
            let (store, written, errors, hist) =
                (store.clone(), written.clone(), errors.clone(), hist.clone());
            let posts = a.posts.max(1);
            // Each writer takes every `conns`-th number: users and posts spread as ingest's.
            let step = a.conns as u64;
            tokio::spawn(async move {
                let mut local = stats::new_hist();
                let mut n = w as u64;
                while Instant::now() < end {
                    let c = row((n as usize) % posts, n % 1000);
                    n += step;
                    let t = Instant::now();
                    match store.write_comment(&c).await {
                        Ok(()) => {
                            written.fetch_add(1, Ordering::Relaxed);
                            let _ = local.record(t.elapsed().as_micros() as u64);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Ok(mut h) = hist.lock() {
                    let _ = h.add(&local);
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let rows = written.load(Ordering::Relaxed);
    let errs = errors.load(Ordering::Relaxed);
    let mut o = Out::bare("cql-loop");
    o.set("keyspace", json!(ks));
    o.set("conns", json!(a.conns));
    o.set("posts", json!(a.posts));
    o.set("rows", json!(rows));
    o.set("errors", json!(errs));
    o.set("secs", r3(wall));
    o.set("rows_per_s", r3(rows as f64 / wall));
    let h = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| stats::new_hist());
    let l = lat_json(&h);
    for q in ["p50_ms", "p99_ms", "p999_ms", "max_ms"] {
        o.set(&format!("write_{q}"), l[q].clone());
    }
    if !a.server_pid.is_empty() {
        o.set(
            "server_cpu_pct",
            r3(100.0 * (stats::sum_cpu(&a.server_pid) - c0) / wall),
        );
    }
    o.set(
        "generator_cpu_pct",
        r3(100.0 * (stats::cpu_secs(std::process::id()).unwrap_or(0.0) - g0) / wall),
    );
    let ok = errs == 0 && rows > 0;
    o.set("ok", json!(ok));
    o.print_to(a.json_out.as_deref())?;
    Ok(ok)
}
