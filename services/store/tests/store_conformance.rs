//! One conformance suite for the `Store` trait, run against every engine:
//! - `embedded::*`: `EmbeddedStore` in a temp dir;
//! - `coalesced::*`: the same behind `Coalesced` (single-flight reads);
//! - `cql::*`: `CqlStore` on the Cassandra/ScyllaDB at `LIVECOMMENTS_TEST_CQL` (default
//!   `127.0.0.2:9042`, started by `scripts/cassandra start`), a fresh random keyspace per test.
//!
//! When the CQL server is unreachable the CQL tests print a skip notice and pass, except with
//! `CI=true`, where they fail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use livecomments_shared::moderation::{Ban, PostSettings, Record, RecordBody};
use livecomments_shared::{Comment, CommentId, PostId, Tombstone, time::format_millis};
use livecomments_store::coalesce::Coalesced;
use livecomments_store::cql::{self as cqlstore, CqlOptions, CqlStore};
use livecomments_store::embedded::EmbeddedStore;
use livecomments_store::{Inserted, NewComment, Store, StoreError, Withdrawal};
use ulid::Ulid;

/// 2026-11-18T...: a fixed base time, so bucket boundaries are deterministic.
const BASE_MS: i64 = 1_795_500_000_000;

fn id_at(ms: i64, n: u128) -> CommentId {
    Ulid::from_parts(ms as u64, n).to_string().into()
}

fn comment_at(post: &str, user: &str, ms: i64, n: u128, text: &str) -> Comment {
    Comment {
        id: id_at(ms, n),
        post_id: post.into(),
        user_id: user.into(),
        text: text.into(),
        timestamp: format_millis(ms),
        region: "eu".into(),
        metadata: BTreeMap::new(),
    }
}

fn new(c: &Comment, key: Option<&str>) -> NewComment {
    NewComment {
        comment: c.clone(),
        idempotency_key: key.map(str::to_string),
        visible_by_ms: None,
    }
}

/// The tombstone of `c` recorded at `ms` by writer-sequence `n`.
fn tombstone(c: &Comment, ms: i64, n: u128) -> Tombstone {
    Tombstone {
        id: id_at(ms, 1_000 + n),
        post_id: c.post_id.clone(),
        comment_id: c.id.clone(),
        region: c.region.clone(),
    }
}

async fn delete_ok(store: &dyn Store, batch: Vec<Tombstone>) {
    for r in store.record_deletions(batch).await {
        r.unwrap();
    }
}

fn ids(v: &[Comment]) -> Vec<CommentId> {
    v.iter().map(|c| c.id.clone()).collect()
}

async fn insert_ok(store: &dyn Store, batch: Vec<NewComment>) -> Vec<Inserted> {
    store
        .insert_batch(batch)
        .await
        .into_iter()
        .map(|r| r.expect("insert"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

async fn insert_then_read_in_order_with_limits(s: Arc<dyn Store>) {
    let store: &dyn Store = &*s;
    let mut cs: Vec<Comment> = (0..10)
        .map(|i| comment_at("p1", "alice", BASE_MS + i * 10, 1, "hi"))
        .collect();
    cs[3].metadata = [
        ("lang".to_string(), "en".to_string()),
        ("k".to_string(), "ü v".to_string()),
    ]
    .into();
    cs[4].text = "multi\nline\ttext with émojis 🎉".into();
    let out = insert_ok(store, cs.iter().map(|c| new(c, None)).collect()).await;
    assert_eq!(
        out,
        cs.iter()
            .cloned()
            .map(Inserted::Created)
            .collect::<Vec<_>>()
    );
    let all_desc: Vec<CommentId> = ids(&cs).into_iter().rev().collect();

    let page = store.newest(&"p1".into(), None, 3).await.unwrap();
    assert_eq!(ids(&page), all_desc[..3]);
    assert_eq!(
        store.newest(&"p1".into(), None, 100).await.unwrap(),
        cs.iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&store
            .newest(&"p1".into(), Some(&cs[5].id), 3)
            .await
            .unwrap()),
        vec![cs[4].id.clone(), cs[3].id.clone(), cs[2].id.clone()]
    );
    assert!(
        store
            .newest(&"p1".into(), Some(&cs[0].id), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&store.after(&"p1".into(), None, 4).await.unwrap()),
        ids(&cs[..4])
    );
    assert_eq!(
        ids(&store
            .after(&"p1".into(), Some(&cs[6].id), 10)
            .await
            .unwrap()),
        ids(&cs[7..])
    );
    assert!(
        store
            .after(&"p1".into(), Some(&cs[9].id), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .newest(&"p1".into(), None, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.after(&"p1".into(), None, 0).await.unwrap().is_empty());
    // Cursors need not be stored ids: an id between two comments, in the same millisecond.
    let between = id_at(BASE_MS + 50, 0);
    assert_eq!(
        ids(&store.newest(&"p1".into(), Some(&between), 2).await.unwrap()),
        vec![cs[4].id.clone(), cs[3].id.clone()]
    );
    assert_eq!(
        ids(&store.after(&"p1".into(), Some(&between), 2).await.unwrap()),
        vec![cs[5].id.clone(), cs[6].id.clone()]
    );
    // Round trip of every field.
    assert_eq!(
        store.get(&"p1".into(), &cs[3].id).await.unwrap().as_ref(),
        Some(&cs[3])
    );
    assert_eq!(
        store.get(&"p1".into(), &cs[4].id).await.unwrap().as_ref(),
        Some(&cs[4])
    );
}

async fn idempotency_keys_within_and_across_batches(s: Arc<dyn Store>) {
    let store: &dyn Store = &*s;
    let a = comment_at("p2", "alice", BASE_MS, 1, "first");
    let b = comment_at("p2", "alice", BASE_MS + 1, 2, "retry of first");
    let c = comment_at("p2", "alice", BASE_MS + 2, 3, "no key");
    let out = insert_ok(
        store,
        vec![new(&a, Some("k1")), new(&b, Some("k1")), new(&c, None)],
    )
    .await;
    assert_eq!(
        out,
        vec![
            Inserted::Created(a.clone()),
            Inserted::Existing(a.clone()),
            Inserted::Created(c.clone())
        ]
    );

    let d = comment_at("p2", "alice", BASE_MS + 3_000, 4, "retry in a later batch");
    let e = comment_at("p2", "alice", BASE_MS + 3_001, 5, "another key");
    let out = insert_ok(
        store,
        vec![
            new(&d, Some("k1")),
            new(&e, Some("k2")),
            new(&d, Some("k1")),
        ],
    )
    .await;
    assert_eq!(
        out,
        vec![
            Inserted::Existing(a.clone()),
            Inserted::Created(e.clone()),
            Inserted::Existing(a.clone())
        ]
    );

    // Nothing new stored for the repeats.
    assert_eq!(
        ids(&store.newest(&"p2".into(), None, 100).await.unwrap()),
        vec![e.id.clone(), c.id.clone(), a.id.clone()]
    );
    assert!(store.get(&"p2".into(), &b.id).await.unwrap().is_none());
    assert!(store.get(&"p2".into(), &d.id).await.unwrap().is_none());

    // What a rate-limited retry is answered with: the key's comment, for its user and post.
    assert_eq!(
        store.keyed("alice", &"p2".into(), "k1").await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        store.keyed("alice", &"p2".into(), "k2").await.unwrap(),
        Some(e.clone())
    );
    assert_eq!(
        store.keyed("alice", &"p2".into(), "unknown").await.unwrap(),
        None
    );
    assert_eq!(store.keyed("bob", &"p2".into(), "k1").await.unwrap(), None);
    assert_eq!(
        store.keyed("alice", &"p3".into(), "k1").await.unwrap(),
        None
    );
}

async fn same_key_for_another_user_or_post_is_another_comment(s: Arc<dyn Store>) {
    let store: &dyn Store = &*s;
    let a = comment_at("p3", "alice", BASE_MS, 1, "a");
    let b = comment_at("p3", "bob", BASE_MS, 2, "b");
    let c = comment_at("p3b", "alice", BASE_MS, 3, "c");
    let out = insert_ok(
        store,
        vec![
            new(&a, Some("same")),
            new(&b, Some("same")),
            new(&c, Some("same")),
        ],
    )
    .await;
    assert_eq!(
        out,
        vec![
            Inserted::Created(a.clone()),
            Inserted::Created(b.clone()),
            Inserted::Created(c.clone())
        ]
    );
    assert_eq!(
        ids(&store.newest(&"p3".into(), None, 10).await.unwrap()),
        vec![b.id.clone(), a.id.clone()]
    );
    assert_eq!(
        ids(&store.newest(&"p3b".into(), None, 10).await.unwrap()),
        vec![c.id.clone()]
    );
}

async fn concurrent_requests_with_one_key_store_one_comment(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for n in 0..4u128 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let c = comment_at("p4", "alice", BASE_MS + n as i64, n + 1, "racing");
            s.insert_batch(vec![new(&c, Some("race"))])
                .await
                .pop()
                .unwrap()
                .unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let first = results[0].comment().id.clone();
    assert!(
        results.iter().all(|r| r.comment().id == first),
        "{results:?}"
    );
    assert!(results.iter().any(|r| matches!(r, Inserted::Created(_))));
    assert_eq!(
        ids(&store.newest(&"p4".into(), None, 10).await.unwrap()),
        vec![first]
    );
}

async fn retry_after_delete_returns_the_deleted_comment(s: Arc<dyn Store>) {
    let store: &dyn Store = &*s;
    let a = comment_at("p7", "alice", BASE_MS, 1, "soon deleted");
    insert_ok(store, vec![new(&a, Some("k"))]).await;
    delete_ok(store, vec![tombstone(&a, BASE_MS + 5, 1)]).await;
    let retry = comment_at("p7", "alice", BASE_MS + 10, 2, "retry");
    let out = insert_ok(store, vec![new(&retry, Some("k"))]).await;
    assert_eq!(out, vec![Inserted::Existing(a.clone())]);
    assert!(
        store
            .newest(&"p7".into(), None, 10)
            .await
            .unwrap()
            .is_empty(),
        "a retry never resurrects or re-stores"
    );
}

async fn get_and_delete(s: Arc<dyn Store>) {
    let store: &dyn Store = &*s;
    let a = comment_at("p5", "alice", BASE_MS, 1, "a");
    let b = comment_at("p5", "alice", BASE_MS + 5, 2, "b");
    insert_ok(store, vec![new(&a, None), new(&b, None)]).await;
    assert_eq!(
        store.get(&"p5".into(), &a.id).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.get(&"other-post".into(), &a.id).await.unwrap(), None);
    assert_eq!(
        store.get(&"p5".into(), &id_at(BASE_MS, 99)).await.unwrap(),
        None
    );
    assert_eq!(
        store.get(&"p5".into(), &"not-an-id".into()).await.unwrap(),
        None
    );

    let t = tombstone(&a, BASE_MS + 10, 1);
    delete_ok(store, vec![t.clone()]).await;
    assert_eq!(store.get(&"p5".into(), &a.id).await.unwrap(), None);
    assert_eq!(
        ids(&store.newest(&"p5".into(), None, 10).await.unwrap()),
        vec![b.id.clone()]
    );
    assert_eq!(
        ids(&store.after(&"p5".into(), None, 10).await.unwrap()),
        vec![b.id.clone()]
    );
    // The tombstone is kept, in id order, for resumes (CONTRACT §10).
    assert_eq!(
        store.deletions_after(&"p5".into(), None, 10).await.unwrap(),
        vec![t.clone()]
    );
    assert!(
        store
            .deletions_after(&"p5".into(), Some(&t.id), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .deletions_after(&"other-post".into(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn deletions_read_in_order_after_a_cursor(s: Arc<dyn Store>) {
    let store: &dyn Store = &*s;
    let cs: Vec<Comment> = (0..5)
        .map(|i| comment_at("p8", "bob", BASE_MS + i, i as u128 + 1, "x"))
        .collect();
    insert_ok(store, cs.iter().map(|c| new(c, None)).collect()).await;
    // Deleted in two commits, out of the comments' order; tombstones are ordered by their
    // own ids (when the deletion happened), not by the comments'.
    let t1 = tombstone(&cs[3], BASE_MS + 100, 10);
    let t2 = tombstone(&cs[0], BASE_MS + 101, 11);
    let t3 = tombstone(&cs[4], BASE_MS + 5_000, 12);
    delete_ok(store, vec![t1.clone(), t2.clone()]).await;
    delete_ok(store, vec![t3.clone()]).await;
    let all = store.deletions_after(&"p8".into(), None, 10).await.unwrap();
    assert_eq!(all, vec![t1.clone(), t2.clone(), t3.clone()]);
    assert_eq!(
        store.deletions_after(&"p8".into(), None, 2).await.unwrap(),
        vec![t1.clone(), t2.clone()]
    );
    assert_eq!(
        store
            .deletions_after(&"p8".into(), Some(&t1.id), 10)
            .await
            .unwrap(),
        vec![t2, t3]
    );
    assert_eq!(
        ids(&store.after(&"p8".into(), None, 10).await.unwrap()),
        vec![cs[1].id.clone(), cs[2].id.clone()]
    );
}

async fn missing_post_reads_empty(s: Arc<dyn Store>) {
    let store: &dyn Store = &*s;
    assert!(
        store
            .newest(&"nobody-wrote-here".into(), None, 20)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .newest(&"nobody-wrote-here".into(), Some(&id_at(BASE_MS, 1)), 20)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .after(&"nobody-wrote-here".into(), None, 20)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .after(&"nobody-wrote-here".into(), Some(&id_at(BASE_MS, 1)), 20)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .get(&"nobody-wrote-here".into(), &id_at(BASE_MS, 1))
            .await
            .unwrap()
            .is_none()
    );
    store.ping().await.unwrap();
}

/// 300 comments over ~45 one-second buckets, three 6-hour spans and two days, some buckets
/// dense and most sparse, written in several batches out of order: every page boundary and
/// bucket boundary must hold.
async fn paging_across_many_buckets(s: Arc<dyn Store>) {
    let store: &dyn Store = &*s;
    let mut cs = Vec::new();
    let mut n = 0u128;
    for k in 0..300i64 {
        let ms = match k {
            0..=99 => BASE_MS + k * 10,                     // one dense second
            100..=199 => BASE_MS + 5_000 + (k - 100) * 997, // ~100 s, about one per bucket
            200..=249 => BASE_MS + 7 * 3_600_000 + (k - 200) * 3_001, // next span
            _ => BASE_MS + 2 * 86_400_000 + (k - 250) * 250, // two days later
        };
        n += 1;
        cs.push(comment_at(
            "hot",
            &format!("u{}", k % 7),
            ms,
            n,
            &format!("comment {k}"),
        ));
    }
    // Written newest batches first, in chunks.
    for chunk in cs.chunks(64).rev() {
        insert_ok(store, chunk.iter().map(|c| new(c, None)).collect()).await;
    }
    let asc = ids(&cs);
    let desc: Vec<CommentId> = asc.iter().rev().cloned().collect();

    assert_eq!(
        ids(&store.newest(&"hot".into(), None, 1000).await.unwrap()),
        desc
    );
    assert_eq!(
        ids(&store.after(&"hot".into(), None, 1000).await.unwrap()),
        asc
    );

    for page_size in [1usize, 7, 100] {
        let mut got = Vec::new();
        let mut cursor: Option<CommentId> = None;
        loop {
            let page = store
                .newest(&"hot".into(), cursor.as_ref(), page_size)
                .await
                .unwrap();
            assert!(page.len() <= page_size);
            if page.is_empty() {
                break;
            }
            cursor = Some(page.last().unwrap().id.clone());
            got.extend(ids(&page));
        }
        assert_eq!(got, desc, "newest, page size {page_size}");

        let mut got = Vec::new();
        let mut cursor: Option<CommentId> = None;
        loop {
            let page = store
                .after(&"hot".into(), cursor.as_ref(), page_size)
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            cursor = Some(page.last().unwrap().id.clone());
            got.extend(ids(&page));
        }
        assert_eq!(got, asc, "after, page size {page_size}");
    }
    // Cursors far outside the data.
    assert_eq!(
        ids(&store
            .newest(&"hot".into(), Some(&id_at(BASE_MS + 30 * 86_400_000, 0)), 3)
            .await
            .unwrap()),
        desc[..3]
    );
    assert!(
        store
            .newest(&"hot".into(), Some(&id_at(BASE_MS - 86_400_000, 0)), 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&store
            .after(&"hot".into(), Some(&id_at(BASE_MS - 86_400_000, 0)), 3)
            .await
            .unwrap()),
        asc[..3]
    );
    assert!(
        store
            .after(&"hot".into(), Some(&id_at(BASE_MS + 30 * 86_400_000, 0)), 3)
            .await
            .unwrap()
            .is_empty()
    );
    // A cursor inside a gap between spans.
    let gap = id_at(BASE_MS + 86_400_000, 0);
    assert_eq!(
        ids(&store.newest(&"hot".into(), Some(&gap), 2).await.unwrap()),
        vec![asc[249].clone(), asc[248].clone()]
    );
    assert_eq!(
        ids(&store.after(&"hot".into(), Some(&gap), 2).await.unwrap()),
        vec![asc[250].clone(), asc[251].clone()]
    );
}

async fn after_none_reads_from_the_start(s: Arc<dyn Store>) {
    let store: &dyn Store = &*s;
    let old = comment_at("p6", "alice", BASE_MS - 3_600_000, 1, "old");
    insert_ok(store, vec![new(&old, None)]).await;
    let newer: Vec<Comment> = (0..5)
        .map(|i| comment_at("p6", "bob", BASE_MS + i * 1_500, 2, "new"))
        .collect();
    insert_ok(store, newer.iter().map(|c| new(c, None)).collect()).await;
    assert_eq!(
        store.after(&"p6".into(), None, 1).await.unwrap(),
        vec![old.clone()]
    );
    assert_eq!(
        ids(&store.after(&"p6".into(), None, 3).await.unwrap()),
        vec![old.id.clone(), newer[0].id.clone(), newer[1].id.clone()]
    );
    assert_eq!(
        ids(&store.newest(&"p6".into(), None, 1).await.unwrap()),
        vec![newer[4].id.clone()]
    );
}

// ---------------------------------------------------------------------------------------------
// Engines
// ---------------------------------------------------------------------------------------------

struct Fixture {
    store: Arc<dyn Store>,
    cql: Option<(Arc<CqlStore>, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    async fn cleanup(self) {
        if let Some((store, ks)) = self.cql {
            let _ = store
                .session()
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
                .await;
        }
    }
}

fn embedded() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    Fixture {
        store: Arc::new(store),
        cql: None,
        _dir: Some(dir),
    }
}

fn coalesced() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Coalesced::new(EmbeddedStore::open(dir.path(), 64).unwrap());
    Fixture {
        store: Arc::new(store),
        cql: None,
        _dir: Some(dir),
    }
}

fn cql_addr() -> String {
    std::env::var("LIVECOMMENTS_TEST_CQL").unwrap_or_else(|_| "127.0.0.2:9042".into())
}

/// `None` (after a notice) when the server is unreachable outside CI.
async fn cql_options() -> Option<CqlOptions> {
    let addr = cql_addr();
    let reachable = matches!(
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(&addr)
        )
        .await,
        Ok(Ok(_))
    );
    if !reachable {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "CQL server not reachable at {addr} and CI=true: run `scripts/cassandra start` first"
            );
        }
        eprintln!(
            "SKIPPED: CQL server not reachable at {addr} (run `scripts/cassandra start`; CI=true makes this fail)"
        );
        return None;
    }
    let ks = format!("lc_test_{:016x}", rand::random::<u64>());
    Some(CqlOptions::new(vec![addr], ks))
}

async fn cql() -> Option<Fixture> {
    let opts = cql_options().await?;
    cqlstore::migrate(&opts).await.expect("migrate");
    let store = Arc::new(CqlStore::connect(&opts).await.expect("connect"));
    Some(Fixture {
        store: store.clone(),
        cql: Some((store, opts.keyspace.clone())),
        _dir: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Moderation records (CONTRACT §8, §9)
// ---------------------------------------------------------------------------------------------

fn ban_record(user: &str, post: Option<&str>, at: i64, origin: &str) -> Record {
    Record {
        updated_at_ms: at,
        origin: origin.into(),
        body: RecordBody::Ban(Ban {
            user_id: user.into(),
            post_id: post.map(Into::into),
            expires_at_ms: None,
            reason: Some(format!("at {at}")),
            created_by: "mod".into(),
            created_at_ms: at,
        }),
    }
}

fn by_key(mut v: Vec<Record>) -> BTreeMap<String, Record> {
    v.drain(..).map(|r| (r.key(), r)).collect()
}

async fn moderation_records_merge_by_last_writer_wins(s: Arc<dyn Store>) {
    let now = livecomments_shared::time::now_millis();
    assert!(s.moderation(100).await.unwrap().is_empty());
    let old = ban_record("u/1", Some("p"), now - 5_000, "eu");
    let new = Record {
        updated_at_ms: now,
        origin: "eu".into(),
        body: RecordBody::Unban {
            user_id: "u/1".into(),
            post_id: Some("p".into()),
        },
    };
    let global = ban_record("u/1", None, now - 1_000, "us");
    let settings = Record {
        updated_at_ms: now,
        origin: "us".into(),
        body: RecordBody::Settings(PostSettings {
            post_id: "p".into(),
            slow_mode_secs: 30,
            closed: true,
            pinned: Some(comment_at("p", "a", BASE_MS, 1, "pinned")),
        }),
    };
    s.put_moderation(&[new.clone(), settings.clone()])
        .await
        .unwrap();
    // The older ban arrives after its removal (another region's late copy): the removal stays.
    s.put_moderation(&[old.clone(), global.clone()])
        .await
        .unwrap();
    s.put_moderation(&[old]).await.unwrap();
    let all = by_key(s.moderation(100).await.unwrap());
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[&new.key()], new);
    assert_eq!(all[&global.key()], global);
    assert_eq!(
        all[&settings.key()],
        settings,
        "the pinned comment is kept whole"
    );
    // Equal times: the region breaks the tie the same way everywhere.
    let tie_eu = ban_record("t", None, now, "eu");
    let tie_us = ban_record("t", None, now, "us");
    s.put_moderation(std::slice::from_ref(&tie_us))
        .await
        .unwrap();
    s.put_moderation(&[tie_eu]).await.unwrap();
    let all = by_key(s.moderation(100).await.unwrap());
    assert_eq!(all[&tie_us.key()].origin.as_str(), "us");
    assert_eq!(s.moderation(2).await.unwrap().len(), 2, "limit");
}

async fn moderation_since_reads_what_changed(s: Arc<dyn Store>) {
    let now = livecomments_shared::time::now_millis();
    let a = ban_record("a", None, now - 20_000, "eu");
    let b = ban_record("b", Some("p"), now - 2_000, "eu");
    let c = ban_record("c", None, now, "us");
    s.put_moderation(&[a.clone(), b.clone(), c.clone()])
        .await
        .unwrap();
    let keys = |v: Vec<Record>| v.iter().map(Record::key).collect::<Vec<_>>();
    let recent = s.moderation_since(now - 10_000, 100).await.unwrap();
    assert_eq!(
        keys(recent),
        vec![b.key(), c.key()],
        "oldest first, after the bound only"
    );
    assert!(s.moderation_since(now, 100).await.unwrap().is_empty());
    assert_eq!(
        s.moderation_since(now - 30_000, 2).await.unwrap().len(),
        2,
        "limit"
    );
}

// Reaction totals (CONTRACT §11)

async fn reaction_counts_add_up_per_post_and_kind(s: Arc<dyn Store>) {
    use livecomments_shared::{Counts, ReactionKind};
    let (p, q) = (PostId::trusted("rx-p"), PostId::trusted("rx-q"));
    assert!(
        s.reactions(&p).await.unwrap().is_zero(),
        "nothing counted yet"
    );
    let mut one = Counts::default();
    one.add(ReactionKind::Like, 3);
    one.add(ReactionKind::Angry, 1);
    let mut two = Counts::default();
    two.add(ReactionKind::Like, 2);
    two.add(ReactionKind::Wow, 5);
    s.add_reactions(&[(p.clone(), one), (q.clone(), two)])
        .await
        .unwrap();
    s.add_reactions(&[(p.clone(), two)]).await.unwrap();
    let got = s.reactions(&p).await.unwrap();
    assert_eq!(got.get(ReactionKind::Like), 5);
    assert_eq!(got.get(ReactionKind::Wow), 5);
    assert_eq!(got.get(ReactionKind::Angry), 1);
    assert_eq!(got.get(ReactionKind::Love), 0);
    assert_eq!(s.reactions(&q).await.unwrap(), two, "posts apart");
    s.add_reactions(&[]).await.unwrap();
}

macro_rules! suite {
    ($($name:ident => $func:ident;)*) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let f = super::embedded();
                super::$func(f.store.clone()).await;
            })*
        }
        mod coalesced {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let f = super::coalesced();
                super::$func(f.store.clone()).await;
            })*
        }
        mod cql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(f) = super::cql().await else { return };
                super::$func(f.store.clone()).await;
                f.cleanup().await;
            })*
        }
    };
}

suite! {
    insert_then_read => insert_then_read_in_order_with_limits;
    idempotency => idempotency_keys_within_and_across_batches;
    idempotency_scope => same_key_for_another_user_or_post_is_another_comment;
    idempotency_race => concurrent_requests_with_one_key_store_one_comment;
    get_delete => get_and_delete;
    deletions_in_order => deletions_read_in_order_after_a_cursor;
    retry_after_delete => retry_after_delete_returns_the_deleted_comment;
    missing_post => missing_post_reads_empty;
    paging_across_buckets => paging_across_many_buckets;
    after_from_start => after_none_reads_from_the_start;
    moderation_last_writer_wins => moderation_records_merge_by_last_writer_wins;
    moderation_since => moderation_since_reads_what_changed;
    reaction_totals => reaction_counts_add_up_per_post_and_kind;
}

// ---------------------------------------------------------------------------------------------
// CQL only: schema versions, migrate, retention
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_migrate_is_repeatable_and_concurrent_and_connect_checks_the_version() {
    let Some(opts) = cql_options().await else {
        return;
    };
    // No keyspace yet: connect refuses with a clear message.
    let err = CqlStore::connect(&opts)
        .await
        .err()
        .expect("connect must refuse a missing schema");
    assert!(
        format!("{err:#}").contains("livecomments migrate"),
        "{err:#}"
    );

    let (a, b) = tokio::join!(cqlstore::migrate(&opts), cqlstore::migrate(&opts));
    a.unwrap();
    b.unwrap();
    cqlstore::migrate(&opts).await.unwrap();
    let store = CqlStore::connect(&opts).await.unwrap();
    let res = store
        .session()
        .query_unpaged(
            format!("SELECT version FROM {}.schema_version", opts.keyspace),
            &[],
        )
        .await
        .unwrap();
    let mut versions: Vec<i32> = res
        .into_rows_result()
        .unwrap()
        .rows::<(i32,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        cqlstore::MIGRATIONS.iter().map(|m| m.0).collect::<Vec<_>>(),
        "every migration recorded, no lock row left behind"
    );

    // An older schema: connect refuses.
    store
        .session()
        .query_unpaged(
            format!(
                "DELETE FROM {}.schema_version WHERE version = {}",
                opts.keyspace,
                cqlstore::SCHEMA_VERSION
            ),
            &[],
        )
        .await
        .unwrap();
    let err = CqlStore::connect(&opts)
        .await
        .err()
        .expect("connect must refuse an old schema");
    assert!(
        format!("{err:#}").contains("run `livecomments migrate`"),
        "{err:#}"
    );
    cqlstore::migrate(&opts).await.unwrap();
    CqlStore::connect(&opts).await.unwrap();
    let _ = store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", opts.keyspace), &[])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_retention_sets_a_ttl_and_idempotency_keys_expire() {
    let Some(mut opts) = cql_options().await else {
        return;
    };
    opts.retention_days = Some(2);
    cqlstore::migrate(&opts).await.unwrap();
    let store = CqlStore::connect(&opts).await.unwrap();
    let now = livecomments_shared::time::now_millis();
    let c = comment_at("ttl", "alice", now, 1, "expires");
    insert_ok(&store, vec![new(&c, Some("key"))]).await;
    assert_eq!(
        store.get(&"ttl".into(), &c.id).await.unwrap(),
        Some(c.clone())
    );
    let ks = &opts.keyspace;
    let ttl_of = |cql: String| {
        let s = store.session();
        async move {
            let res = s.query_unpaged(cql, &[]).await.unwrap();
            res.into_rows_result()
                .unwrap()
                .first_row::<(Option<i32>,)>()
                .unwrap()
                .0
                .unwrap_or(0)
        }
    };
    let t = ttl_of(format!(
        "SELECT TTL(text) FROM {ks}.comments WHERE post_id = 'ttl' AND bucket = {} AND id = '{}'",
        // A post's first comment goes to its hour partition (tier.rs).
        cqlstore::Part::at(now, 3_600).bucket(),
        c.id
    ))
    .await;
    assert!(t > 2 * 86_400 - 60 && t <= 2 * 86_400, "comment TTL {t}");
    // Its index row outlives it by a day.
    let hour = cqlstore::Part::at(now, 3_600);
    let t = ttl_of(format!(
        "SELECT TTL(width) FROM {ks}.comment_parts WHERE post_id = 'ttl' AND span = {} AND start = {}",
        hour.span(),
        hour.start_s
    ))
    .await;
    assert!(t > 3 * 86_400 - 60 && t <= 3 * 86_400, "index TTL {t}");
    let t = ttl_of(format!(
        "SELECT TTL(id) FROM {ks}.idempotency WHERE user_id = 'alice' AND post_id = 'ttl' AND idem_key = 'key'"
    ))
    .await;
    assert!(t > 86_400 - 60 && t <= 86_400, "idempotency TTL {t}");
    let _ = store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await;
}

/// A key claimed by an attempt that died before its comment was confirmed (`stored = false`):
/// the retry waits briefly, then completes the write with the record's comment and answers
/// `Created` (it was never acknowledged or published); the next retry answers `Existing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_a_key_claimed_by_a_dead_attempt_is_completed_by_the_retry() {
    let Some(opts) = cql_options().await else {
        return;
    };
    cqlstore::migrate(&opts).await.unwrap();
    let store = CqlStore::connect(&opts).await.unwrap();
    let ks = &opts.keyspace;
    let first = comment_at("p8", "alice", BASE_MS, 1, "first attempt");
    store
        .session()
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.idempotency (user_id, post_id, idem_key, id, text, created_at, region, metadata, stored) \
                 VALUES ('alice', 'p8', 'k', '{}', 'first attempt', {}, 'eu', {{}}, false) USING TTL 86400",
                first.id, BASE_MS
            ),
            &[],
        )
        .await
        .unwrap();
    let retry = comment_at("p8", "alice", BASE_MS + 500, 2, "second attempt");
    let t = std::time::Instant::now();
    let out = insert_ok(&store, vec![new(&retry, Some("k"))]).await;
    assert_eq!(out, vec![Inserted::Created(first.clone())]);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "waited for a possibly running first attempt"
    );
    assert_eq!(
        store.newest(&"p8".into(), None, 10).await.unwrap(),
        vec![first.clone()]
    );
    let out = insert_ok(&store, vec![new(&retry, Some("k"))]).await;
    assert_eq!(out, vec![Inserted::Existing(first.clone())]);
    assert_eq!(
        store.newest(&"p8".into(), None, 10).await.unwrap(),
        vec![first]
    );
    let _ = store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await;
}

/// What a POST through ingest carries: stamped `ago_ms` before now.
fn stamped_ago(ago_ms: i64, post: &str, user: &str, n: u128, text: &str) -> Comment {
    comment_at(
        post,
        user,
        livecomments_shared::time::now_millis() - ago_ms,
        n,
        text,
    )
}

fn posted(post: &str, user: &str, n: u128, text: &str) -> Comment {
    stamped_ago(0, post, user, n, text)
}

fn with_policy(c: &Comment, key: &str) -> NewComment {
    NewComment {
        comment: c.clone(),
        idempotency_key: Some(key.to_string()),
        visible_by_ms: Some(livecomments_shared::time::now_millis() + 3_000),
    }
}

/// A claim that names `c` unconfirmed, as a first attempt leaves it when its node freezes or
/// dies between the claim and the mark; with the comment's row too when `row`.
async fn unconfirmed_attempt(store: &CqlStore, ks: &str, c: &Comment, key: &str, row: bool) {
    let ms = livecomments_shared::id::millis_of(&c.id).expect("a ULID");
    store
        .session()
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.idempotency (user_id, post_id, idem_key, id, text, created_at, region, metadata, stored) \
                 VALUES ('{}', '{}', '{key}', '{}', '{}', {ms}, 'eu', {{}}, false) USING TTL 86400",
                c.user_id, c.post_id, c.id, c.text
            ),
            &[],
        )
        .await
        .unwrap();
    if row {
        insert_ok(store, vec![new(c, None)]).await;
    }
}

async fn fresh_cql_store() -> Option<(CqlStore, String)> {
    let opts = cql_options().await?;
    cqlstore::migrate(&opts).await.unwrap();
    let store = CqlStore::connect(&opts).await.unwrap();
    Some((store, opts.keyspace.clone()))
}

async fn drop_keyspace(store: &CqlStore, ks: &str) {
    let _ = store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await;
}

/// Through ingest, a retry that finds its key's first attempt unconfirmed and younger than
/// the time its row may still appear answers "in progress" with how long to wait, and
/// changes nothing: deciding now could withdraw a comment already streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_a_retry_waits_out_an_unconfirmed_first_attempt() {
    let Some((store, ks)) = fresh_cql_store().await else {
        return;
    };
    let first = stamped_ago(1_000, "p9", "alice", 1, "first attempt");
    unconfirmed_attempt(&store, &ks, &first, "k", true).await;
    let retry = posted("p9", "alice", 2, "second attempt");
    let out = store.insert_batch(vec![with_policy(&retry, "k")]).await;
    match &out[..] {
        [Err(StoreError::KeyInProgress(wait))] => assert!(
            *wait > Duration::from_secs(4) && *wait <= Duration::from_secs(6),
            "waits until 7 s after the first stamp, 1 s ago: {wait:?}"
        ),
        other => panic!("expected KeyInProgress, got {other:?}"),
    }
    assert_eq!(
        ids(&store.newest(&"p9".into(), None, 10).await.unwrap()),
        vec![first.id.clone()]
    );
    drop_keyspace(&store, &ks).await;
}

/// Once the first attempt can no longer change: its row exists, so it was written in time
/// and is in its writer's stream: the retry adopts it (answers with it, stores nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_a_retry_adopts_the_written_row_of_a_settled_first_attempt() {
    let Some((store, ks)) = fresh_cql_store().await else {
        return;
    };
    let first = stamped_ago(8_000, "p10", "alice", 1, "first attempt");
    unconfirmed_attempt(&store, &ks, &first, "k", true).await;
    let retry = posted("p10", "alice", 2, "second attempt");
    let out = insert_ok(&store, vec![with_policy(&retry, "k")]).await;
    assert_eq!(out, vec![Inserted::Existing(first.clone())]);
    let again = posted("p10", "alice", 3, "third attempt");
    let out = insert_ok(&store, vec![with_policy(&again, "k")]).await;
    assert_eq!(
        out,
        vec![Inserted::Existing(first.clone())],
        "the key is settled"
    );
    assert_eq!(
        store.newest(&"p10".into(), None, 10).await.unwrap(),
        vec![first]
    );
    drop_keyspace(&store, &ks).await;
}

/// Once the first attempt can no longer change and its row is absent: the retry moves the
/// key to its own fresh id (the first attempt's place in its writer's stream is passed) and
/// the old id can never appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_a_retry_restamps_a_settled_first_attempt_that_wrote_nothing() {
    let Some((store, ks)) = fresh_cql_store().await else {
        return;
    };
    let first = stamped_ago(8_000, "p11", "alice", 1, "first attempt");
    unconfirmed_attempt(&store, &ks, &first, "k", false).await;
    let retry = posted("p11", "alice", 2, "second attempt");
    let out = insert_ok(&store, vec![with_policy(&retry, "k")]).await;
    let [Inserted::Created(c)] = &out[..] else {
        panic!("expected Created, got {out:?}");
    };
    assert_eq!(
        (c.id.as_str(), c.text.as_str()),
        (retry.id.as_str(), "first attempt")
    );
    // The first attempt's write arriving late (a frozen node thawing) stays invisible.
    insert_ok(&store, vec![new(&first, None)]).await;
    assert_eq!(
        store.newest(&"p11".into(), None, 10).await.unwrap(),
        vec![c.clone()]
    );
    let again = posted("p11", "alice", 3, "third attempt");
    let out = insert_ok(&store, vec![with_policy(&again, "k")]).await;
    assert_eq!(out, vec![Inserted::Existing(c.clone())]);
    drop_keyspace(&store, &ks).await;
}

/// Withdrawing a failed comment with a key: released and deleted while the key still names it
/// unconfirmed (a retry then claims afresh); kept when a retry adopted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_withdrawal_releases_the_key_unless_a_retry_adopted_the_comment() {
    let Some((store, ks)) = fresh_cql_store().await else {
        return;
    };
    let failed = posted("p12", "alice", 1, "failed");
    unconfirmed_attempt(&store, &ks, &failed, "k1", true).await;
    let failed_w = Withdrawal::of(&with_policy(&failed, "k1"));
    assert_eq!(
        store
            .withdraw(std::slice::from_ref(&failed_w))
            .await
            .unwrap(),
        vec![failed_w],
        "removed, so the caller retracts it"
    );
    assert!(
        store
            .newest(&"p12".into(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let retry = posted("p12", "alice", 2, "retry");
    let out = insert_ok(&store, vec![with_policy(&retry, "k1")]).await;
    assert_eq!(
        out,
        vec![Inserted::Created(retry.clone())],
        "the key was free"
    );

    let adopted = stamped_ago(8_000, "p12", "alice", 3, "adopted");
    unconfirmed_attempt(&store, &ks, &adopted, "k2", true).await;
    let by_retry = posted("p12", "alice", 4, "adopting retry");
    let out = insert_ok(&store, vec![with_policy(&by_retry, "k2")]).await;
    assert_eq!(out, vec![Inserted::Existing(adopted.clone())]);
    assert_eq!(
        store
            .withdraw(&[Withdrawal::of(&with_policy(&adopted, "k2"))])
            .await
            .unwrap(),
        vec![],
        "adopted: kept, nothing to retract"
    );
    assert_eq!(
        ids(&store.newest(&"p12".into(), None, 10).await.unwrap()),
        vec![retry.id.clone(), adopted.id.clone()]
    );
    drop_keyspace(&store, &ks).await;
}
