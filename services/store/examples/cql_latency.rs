//! Measures `CqlStore` latency against a running CQL server (docs/CQL.md reports the numbers).
//!
//! ```text
//! scripts/cassandra start
//! cargo run --release -p livecomments-store --example cql_latency -- [nodes] [requests per run]
//! ```
//! Defaults: `$LIVECOMMENTS_TEST_CQL` or `127.0.0.2:9042`, 4000 requests. Each operation runs
//! with 1 client and with 64 concurrent clients, in a throwaway keyspace dropped at the end.
//! Operations: a single-comment insert, an insert with an Idempotency-Key (LWT), the newest page
//! of 20 of a post with history, a page of 20 with a cursor, and a get by id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use livecomments_shared::Comment;
use livecomments_shared::time::now_millis;
use livecomments_store::coalesce::Coalesced;
use livecomments_store::cql::{CqlOptions, CqlStore, migrate};
use livecomments_store::{NewComment, Store};

mod common;
use common::{percentile, typical_comment};

fn comment(post: &str, ms: i64) -> Comment {
    typical_comment(
        post,
        ms,
        rand::random::<u128>(),
        rand::random::<u32>() % 1000,
    )
}

#[derive(Clone, Copy)]
enum Op {
    Insert,
    InsertKeyed,
    Newest,
    NewestCursor,
    Get,
    /// `newest 20` of one post through `Coalesced`: concurrent identical reads share a query.
    NewestCoalesced,
}

/// One insert, with or without an idempotency key; an error if the store refused it.
async fn insert(
    store: &CqlStore,
    post: &str,
    idempotency_key: Option<String>,
) -> anyhow::Result<()> {
    let r = store
        .insert_batch(vec![NewComment {
            comment: comment(post, now_millis()),
            idempotency_key,
            visible_by_ms: None,
        }])
        .await;
    r.into_iter().next().context("no result for the insert")??;
    Ok(())
}

async fn one(
    store: &CqlStore,
    coalesced: &Coalesced<CqlStore>,
    op: Op,
    hist: &[Comment],
) -> anyhow::Result<()> {
    match op {
        Op::Insert => insert(store, "lat-write", None).await?,
        Op::InsertKeyed => {
            let key = format!("{:x}", rand::random::<u64>());
            insert(store, "lat-write-keyed", Some(key)).await?
        }
        Op::Newest => {
            let page = store.newest(&"lat-read".into(), None, 20).await?;
            anyhow::ensure!(page.len() == 20, "newest page has {} comments", page.len());
        }
        Op::NewestCursor => {
            let at = &hist[20 + rand::random::<u32>() as usize % (hist.len() - 20)];
            let page = store.newest(&"lat-read".into(), Some(&at.id), 20).await?;
            anyhow::ensure!(page.len() == 20, "cursor page has {} comments", page.len());
        }
        Op::NewestCoalesced => {
            let page = coalesced.newest(&"lat-read".into(), None, 20).await?;
            anyhow::ensure!(
                page.len() == 20,
                "coalesced page has {} comments",
                page.len()
            );
        }
        Op::Get => {
            let c = &hist[rand::random::<u32>() as usize % hist.len()];
            anyhow::ensure!(
                store.get(&"lat-read".into(), &c.id).await?.is_some(),
                "stored comment {} not found",
                c.id
            );
        }
    }
    Ok(())
}

async fn run(
    store: Arc<CqlStore>,
    hist: Arc<Vec<Comment>>,
    op: Op,
    clients: usize,
    total: usize,
) -> anyhow::Result<(Vec<Duration>, f64, (u64, u64))> {
    let per = total / clients;
    let coalesced = Arc::new(Coalesced::with_capacity(store.clone(), 4096));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (store, hist, coalesced) = (store.clone(), hist.clone(), coalesced.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                one(&store, &coalesced, op, &hist).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("client task panicked")??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let rate = all.len() as f64 / secs;
    Ok((all, rate, coalesced.stats()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let nodes = args
        .next()
        .or_else(|| std::env::var("LIVECOMMENTS_TEST_CQL").ok())
        .unwrap_or_else(|| "127.0.0.2:9042".into());
    let total: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(4000);
    let ks = format!("lc_latency_{:08x}", rand::random::<u32>());
    let opts = CqlOptions::new(nodes.split(',').map(str::to_string).collect(), ks.clone());
    migrate(&opts).await?;
    let store = Arc::new(CqlStore::connect(&opts).await?);

    // History for the reads: 2,000 comments over the last ~10 minutes (one every ~300 ms).
    let now = now_millis();
    let mut hist: Vec<Comment> = (0..2000)
        .map(|i| comment("lat-read", now - 600_000 + i * 300))
        .collect();
    hist.sort_by(|a, b| a.id.cmp(&b.id));
    for chunk in hist.chunks(200) {
        for r in store
            .insert_batch(
                chunk
                    .iter()
                    .map(|c| NewComment {
                        comment: c.clone(),
                        idempotency_key: None,
                        visible_by_ms: None,
                    })
                    .collect(),
            )
            .await
        {
            r?;
        }
    }
    let hist = Arc::new(hist);

    println!("CqlStore latency, {total} requests per row, keyspace {ks} on {nodes}");
    println!(
        "{:<34} {:>7} {:>9} {:>9} {:>9} {:>10}",
        "operation", "clients", "p50 ms", "p99 ms", "max ms", "ops/s"
    );
    let ops = [
        (Op::Insert, "insert 1 comment"),
        (Op::InsertKeyed, "insert 1 comment + key (LWT)"),
        (Op::Newest, "newest 20 (no cursor)"),
        (Op::NewestCursor, "newest 20 before a cursor"),
        (Op::Get, "get by id"),
        (Op::NewestCoalesced, "newest 20 (no cursor), coalesced"),
    ];
    for (op, name) in ops {
        // Warm-up: prepared statements, connections, JIT on the server.
        run(store.clone(), hist.clone(), op, 8, 400).await?;
        for clients in [1, 64] {
            let (lat, rate, (queries, joined)) =
                run(store.clone(), hist.clone(), op, clients, total).await?;
            println!(
                "{:<34} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>10.0}",
                name,
                clients,
                percentile(&lat, 0.50),
                percentile(&lat, 0.99),
                percentile(&lat, 1.0),
                rate
            );
            if matches!(op, Op::NewestCoalesced) {
                println!(
                    "{:<34} {clients:>7} {queries} CQL page reads for {} requests",
                    "  coalesced",
                    queries + joined
                );
            }
        }
    }
    store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await?;
    Ok(())
}
