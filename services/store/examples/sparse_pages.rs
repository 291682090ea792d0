//! Issue 16: what the newest page of 100 costs on posts of different rates, on a real CQL
//! server (docs/BENCHMARKS.md "Sparse posts on CQL"; `scripts/bench-sparse-pages` runs it
//! against main and this checkout).
//!
//! ```text
//! cargo run --release -p livecomments-store --example sparse_pages -- [nodes] [pages per post]
//! ```
//! Defaults: `$LIVECOMMENTS_TEST_CQL` or `127.0.0.2:9042`, 2000 pages. Fills, in a throwaway
//! keyspace, three posts through the `Store` API with ids stamped in the past (as ingest
//! stamps them, in order): `dense` 1,000 comments within one second, `per-second` 600 one a
//! second, `per-minute` 600 one a minute (10 hours, across a 6-hour span). Then reads each
//! post's newest page of 100 `pages` times, one at a time, and prints p50/p99 and the reads
//! per page as the server counted them (`system_views.coordinator_read_latency`: the
//! `comments` table's count is one per partition read), so the numbers need nothing from
//! the store's own code and mean the same on every version of it.

use std::time::Instant;

use anyhow::Context;
use livecomments_shared::Comment;
use livecomments_shared::time::now_millis;
use livecomments_store::cql::{CqlOptions, CqlStore, migrate};
use livecomments_store::{NewComment, Store};

mod common;
use common::{percentile, typical_comment};

fn comment(post: &str, ms: i64, n: u128) -> Comment {
    typical_comment(post, ms, n, (n % 1000) as u32)
}

/// Reads the server counted for `table` of the keyspace (0 for a table it never read or
/// that does not exist in this schema version).
async fn reads_of(store: &CqlStore, table: &str) -> anyhow::Result<i64> {
    let res = store
        .session()
        .query_unpaged(
            "SELECT count FROM system_views.coordinator_read_latency WHERE keyspace_name = ? AND table_name = ?",
            (store.keyspace(), table),
        )
        .await
        .context("reading system_views.coordinator_read_latency")?;
    let rows = res.into_rows_result()?;
    Ok(rows
        .maybe_first_row::<(Option<i64>,)>()?
        .and_then(|r| r.0)
        .unwrap_or(0))
}

const INDEX_TABLES: [&str; 3] = ["comment_spans", "comment_buckets", "comment_parts"];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let nodes = args.next().unwrap_or_else(|| {
        std::env::var("LIVECOMMENTS_TEST_CQL").unwrap_or_else(|_| "127.0.0.2:9042".into())
    });
    let pages: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let ks = format!("lc_bench_sparse_{:08x}", rand::random::<u32>());
    let opts = CqlOptions::new(nodes.split(',').map(str::to_string).collect(), ks.clone());
    migrate(&opts).await?;
    let store = CqlStore::connect(&opts).await?;

    // Every post ends a minute ago.
    let end = now_millis() - 60_000;
    let posts: [(&str, i64, i64); 3] = [
        ("dense", 1, 1_000),
        ("per-second", 1_000, 600),
        ("per-minute", 60_000, 600),
    ];
    for (post, step, n) in posts {
        let cs: Vec<Comment> = (0..n)
            .map(|k| comment(post, end - (n - 1 - k) * step, k as u128 + 1))
            .collect();
        for chunk in cs.chunks(64) {
            let batch = chunk
                .iter()
                .map(|c| NewComment {
                    comment: c.clone(),
                    idempotency_key: None,
                    visible_by_ms: None,
                })
                .collect();
            for r in store.insert_batch(batch).await {
                r.context("insert")?;
            }
        }
    }

    println!(
        "post         pages  p50_ms  p99_ms  partitions/page  index_reads/page  (keyspace {ks}, {pages} pages each)"
    );
    for (post, _, _) in posts {
        let post_id = post.to_string().into();
        for _ in 0..100 {
            store.newest(&post_id, None, 100).await?;
        }
        let parts_before = reads_of(&store, "comments").await?;
        let mut index_before = 0;
        for t in INDEX_TABLES {
            index_before += reads_of(&store, t).await?;
        }
        let mut lat = Vec::with_capacity(pages);
        for _ in 0..pages {
            let t0 = Instant::now();
            let page = store.newest(&post_id, None, 100).await?;
            lat.push(t0.elapsed());
            anyhow::ensure!(page.len() == 100, "{post}: a page of {}", page.len());
        }
        let parts = reads_of(&store, "comments").await? - parts_before;
        let mut index = -index_before;
        for t in INDEX_TABLES {
            index += reads_of(&store, t).await?;
        }
        lat.sort_unstable();
        println!(
            "{post:<12} {pages:>5}  {:>6.2}  {:>6.2}  {:>15.1}  {:>16.1}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            parts as f64 / pages as f64,
            index as f64 / pages as f64,
        );
    }
    let _ = store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await;
    Ok(())
}
