//! The embedded store survives a crash with every batch `insert_batch` answered `Ok`: those
//! batches are synced only in the write-ahead log (`wal`) and applied to redb later without a
//! sync, so after an abort redb is at its last checkpoint and the log must bring the rest back.
//!
//! The crash is real: the test runs itself again as a child process that writes and then
//! calls `std::process::abort()` (no destructor, no flush), and the parent reopens the files.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use livecomments_shared::{Comment, CommentId, Tombstone, time::now_millis};
use livecomments_store::embedded::EmbeddedStore;
use livecomments_store::{Inserted, NewComment, Store};
use ulid::Ulid;

const CHILD_DIR: &str = "EMBEDDED_CRASH_CHILD_DIR";
const CHILD_PHASE: &str = "EMBEDDED_CRASH_CHILD_PHASE";
/// 1,200 batches of 5 comments of ~300 bytes, with their idempotency records: ~2.4 MiB of
/// log, so the child passes several checkpoints (every 512 KiB or 1 s), wraps the 2 MiB ring
/// and ends with batches only in the log.
const BATCHES: usize = 1200;
const PER_BATCH: usize = 5;

fn comment(post: &str, ms: i64, n: u128) -> Comment {
    Comment {
        id: CommentId::from(Ulid::from_parts(ms as u64, n).to_string()),
        post_id: post.into(),
        user_id: format!("u{}", n % 7),
        text: format!("{n:06} {}", "x".repeat(290)),
        timestamp: livecomments_shared::time::format_millis(ms),
        region: "eu".into(),
        metadata: BTreeMap::new(),
    }
}

/// What the child writes in `phase`, then it aborts. Phase 2 also deletes phase 1's first
/// comment (a durable commit) before more logged batches.
async fn child(dir: &Path, phase: u128) {
    let store = EmbeddedStore::open(dir, 16).unwrap();
    let base = now_millis();
    for b in 0..BATCHES {
        if phase == 2 && b == BATCHES / 2 {
            let first = store
                .after(&"crash".into(), None, 1)
                .await
                .unwrap()
                .remove(0);
            let t = Tombstone {
                id: Ulid::from_parts(base as u64, 1).to_string().into(),
                post_id: first.post_id.clone(),
                comment_id: first.id.clone(),
                region: first.region.clone(),
            };
            for r in store.record_deletions(vec![t]).await {
                r.unwrap();
            }
        }
        let batch: Vec<NewComment> = (0..PER_BATCH)
            .map(|i| {
                let n = phase * 1_000_000 + (b * PER_BATCH + i) as u128;
                NewComment {
                    comment: comment("crash", base + b as i64, n),
                    idempotency_key: Some(format!("k{n}")),
                    visible_by_ms: None,
                }
            })
            .collect();
        for r in store.insert_batch(batch).await {
            assert!(matches!(r.unwrap(), Inserted::Created(_)));
        }
    }
    println!("child wrote phase {phase}");
    std::process::abort();
}

fn run_child(dir: &Path, phase: u128) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_batches_survive_an_abort",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_PHASE, phase.to_string())
        .status()
        .unwrap();
    assert!(!status.success(), "the child aborts after writing");
}

#[tokio::test]
async fn acknowledged_batches_survive_an_abort() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let phase: u128 = std::env::var(CHILD_PHASE).unwrap().parse().unwrap();
        return child(Path::new(&dir), phase).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let all = BATCHES * PER_BATCH;

    run_child(dir.path(), 1);
    let first = {
        let store = EmbeddedStore::open(dir.path(), 16).unwrap();
        let mut stored = store.after(&"crash".into(), None, 10 * all).await.unwrap();
        assert_eq!(
            stored.len(),
            all,
            "every acknowledged comment of phase 1 is back"
        );
        // The idempotency records came back with their comments.
        let last = 1_000_000 + all as u128 - 1;
        let keyed = store
            .keyed(
                &format!("u{}", last % 7),
                &"crash".into(),
                &format!("k{last}"),
            )
            .await
            .unwrap();
        assert_eq!(
            keyed.as_ref(),
            stored.last(),
            "the last batch's idempotency key is known"
        );
        stored.remove(0).id
    };

    // Again on the recovered files: the replay was checkpointed, the log freed, and what the
    // second child logs after its deletion comes back too, without the deleted comment.
    run_child(dir.path(), 2);
    let store = EmbeddedStore::open(dir.path(), 16).unwrap();
    let stored = store.after(&"crash".into(), None, 10 * all).await.unwrap();
    assert_eq!(
        stored.len(),
        2 * all - 1,
        "both phases, less the deleted comment"
    );
    let mut seen = std::collections::HashSet::new();
    assert!(
        stored.iter().all(|c| seen.insert(c.id.clone())),
        "no duplicates"
    );
    assert!(!seen.contains(&first), "the deletion held");
    let deletions = store
        .deletions_after(&"crash".into(), None, 10)
        .await
        .unwrap();
    assert_eq!(deletions.len(), 1);
}
