//! Single-flight reads: identical concurrent `newest`/`after` calls (same post, same cursor,
//! same limit) share one query. When a hot post's viewers all reconnect at once (a deploy, a
//! network blip) they all ask for the same page; the store answers it once.
//!
//! A caller only ever shares a query that *starts after it arrived*: a resuming viewer joins
//! its hub and then reads history, and a result read before the join could miss a comment
//! published in between (seen in the reconnect-storm benchmark before this rule). So each key
//! has at most one query running and one waiting: callers arriving while a query runs join the
//! waiting one, which starts when the running one ends. Under a storm of identical reads that
//! is still two queries at a time, not thousands. Queries run as spawned tasks (so they finish
//! and leave the map even if every caller goes away). Nothing is cached. The map is bounded:
//! past `max_inflight` distinct keys, further reads run on their own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use livecomments_shared::{Comment, CommentId, PostId, Tombstone};
use parking_lot::Mutex;

use super::{Inserted, NewComment, Store, StoreError, StoreResult, Withdrawal};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    Newest,
    After,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    kind: Kind,
    post_id: PostId,
    cursor: Option<CommentId>,
    limit: usize,
}

type SharedRead = Shared<BoxFuture<'static, Result<Arc<Vec<Comment>>, StoreError>>>;

/// The newest query of a key: joinable until it starts.
struct Entry {
    read: SharedRead,
    started: Arc<std::sync::atomic::AtomicBool>,
    generation: u64,
}

type Inflight = Arc<Mutex<HashMap<ReadKey, Entry>>>;

/// Default bound on distinct reads in flight.
pub const DEFAULT_MAX_INFLIGHT: usize = 4096;

/// Wraps any [`Store`]; writes pass through, identical concurrent reads are coalesced.
pub struct Coalesced<S: Store> {
    inner: Arc<S>,
    inflight: Inflight,
    max_inflight: usize,
    queries: AtomicU64,
    joined: AtomicU64,
    generation: AtomicU64,
}

impl<S: Store> Coalesced<S> {
    pub fn new(inner: S) -> Self {
        Self::with_capacity(Arc::new(inner), DEFAULT_MAX_INFLIGHT)
    }

    pub fn with_capacity(inner: Arc<S>, max_inflight: usize) -> Self {
        Coalesced {
            inner,
            inflight: Arc::new(Mutex::new(HashMap::new())),
            max_inflight: max_inflight.max(1),
            queries: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// (reads that ran a query, reads that joined one already running).
    pub fn stats(&self) -> (u64, u64) {
        (
            self.queries.load(Ordering::Relaxed),
            self.joined.load(Ordering::Relaxed),
        )
    }

    /// Distinct reads in flight right now.
    pub fn inflight(&self) -> usize {
        self.inflight.lock().len()
    }

    async fn read(&self, key: ReadKey) -> StoreResult<Vec<Comment>> {
        let shared = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some(e) if !e.started.load(Ordering::SeqCst) => {
                    self.joined.fetch_add(1, Ordering::Relaxed);
                    Some(e.read.clone())
                }
                None if map.len() >= self.max_inflight => None,
                running => {
                    // Nothing joinable: queue a query behind the running one (if any).
                    self.queries.fetch_add(1, Ordering::Relaxed);
                    let before = running.map(|e| e.read.clone());
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let (inner, inflight, k, flag) = (
                        self.inner.clone(),
                        self.inflight.clone(),
                        key.clone(),
                        started.clone(),
                    );
                    // Spawned while the map is locked: the task's removal cannot run before
                    // the insertion below.
                    let task = tokio::spawn(async move {
                        if let Some(b) = before {
                            let _ = b.await;
                        }
                        flag.store(true, Ordering::SeqCst);
                        let r = run(&*inner, &k).await;
                        let mut map = inflight.lock();
                        if map.get(&k).is_some_and(|e| e.generation == generation) {
                            map.remove(&k);
                        }
                        r.map(Arc::new)
                    });
                    let fut: BoxFuture<'static, _> = task
                        .map(|joined| match joined {
                            Ok(r) => r,
                            Err(e) => Err(StoreError::unavailable(e)),
                        })
                        .boxed();
                    let read = fut.shared();
                    map.insert(
                        key.clone(),
                        Entry {
                            read: read.clone(),
                            started,
                            generation,
                        },
                    );
                    Some(read)
                }
            }
        };
        match shared {
            Some(s) => s.await.map(|v| v.as_ref().clone()),
            None => {
                self.queries.fetch_add(1, Ordering::Relaxed);
                run(&*self.inner, &key).await
            }
        }
    }
}

async fn run<S: Store>(store: &S, k: &ReadKey) -> StoreResult<Vec<Comment>> {
    match k.kind {
        Kind::Newest => store.newest(&k.post_id, k.cursor.as_ref(), k.limit).await,
        Kind::After => store.after(&k.post_id, k.cursor.as_ref(), k.limit).await,
    }
}

#[async_trait]
impl<S: Store> Store for Coalesced<S> {
    async fn insert_batch(&self, batch: Vec<NewComment>) -> Vec<StoreResult<Inserted>> {
        self.inner.insert_batch(batch).await
    }

    fn batches_in_flight(&self) -> usize {
        self.inner.batches_in_flight()
    }

    async fn newest(
        &self,
        post_id: &PostId,
        before: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        self.read(ReadKey {
            kind: Kind::Newest,
            post_id: post_id.clone(),
            cursor: before.cloned(),
            limit,
        })
        .await
    }

    async fn after(
        &self,
        post_id: &PostId,
        after: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        self.read(ReadKey {
            kind: Kind::After,
            post_id: post_id.clone(),
            cursor: after.cloned(),
            limit,
        })
        .await
    }

    async fn get(&self, post_id: &PostId, id: &CommentId) -> StoreResult<Option<Comment>> {
        self.inner.get(post_id, id).await
    }

    async fn keyed(
        &self,
        user_id: &str,
        post_id: &PostId,
        key: &str,
    ) -> StoreResult<Option<Comment>> {
        self.inner.keyed(user_id, post_id, key).await
    }

    /// Not shared: a post's deletions are few (moderation), and their read is one range of
    /// one partition.
    async fn deletions_after(
        &self,
        post_id: &PostId,
        after: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Tombstone>> {
        self.inner.deletions_after(post_id, after, limit).await
    }

    async fn record_deletions(&self, batch: Vec<Tombstone>) -> Vec<StoreResult<()>> {
        self.inner.record_deletions(batch).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    async fn withdraw(&self, failed: &[Withdrawal]) -> StoreResult<Vec<Withdrawal>> {
        self.inner.withdraw(failed).await
    }

    async fn put_moderation(
        &self,
        records: &[livecomments_shared::moderation::Record],
    ) -> StoreResult<()> {
        self.inner.put_moderation(records).await
    }

    async fn moderation(
        &self,
        limit: usize,
    ) -> StoreResult<Vec<livecomments_shared::moderation::Record>> {
        self.inner.moderation(limit).await
    }

    async fn moderation_since(
        &self,
        after_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<livecomments_shared::moderation::Record>> {
        self.inner.moderation_since(after_ms, limit).await
    }

    async fn add_reactions(
        &self,
        counts: &[(PostId, livecomments_shared::Counts)],
    ) -> StoreResult<()> {
        self.inner.add_reactions(counts).await
    }

    async fn reactions(&self, post_id: &PostId) -> StoreResult<livecomments_shared::Counts> {
        self.inner.reactions(post_id).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// Counts reads; each takes 50 ms; fails for post "down".
    #[derive(Default)]
    struct Slow {
        calls: AtomicUsize,
    }

    fn comment(post: &str, n: usize) -> Comment {
        Comment {
            id: format!("{n:026}").into(),
            post_id: post.into(),
            user_id: "u".into(),
            text: "t".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            region: "r".into(),
            metadata: Default::default(),
        }
    }

    #[async_trait]
    impl Store for Slow {
        async fn insert_batch(&self, _: Vec<NewComment>) -> Vec<StoreResult<Inserted>> {
            vec![]
        }
        async fn newest(
            &self,
            post: &PostId,
            _: Option<&CommentId>,
            limit: usize,
        ) -> StoreResult<Vec<Comment>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if post == "down" {
                return Err(StoreError::failed("down"));
            }
            Ok((0..limit).map(|n| comment(post, n)).collect())
        }
        async fn after(
            &self,
            post: &PostId,
            a: Option<&CommentId>,
            limit: usize,
        ) -> StoreResult<Vec<Comment>> {
            self.newest(post, a, limit).await
        }
        async fn get(&self, _: &PostId, _: &CommentId) -> StoreResult<Option<Comment>> {
            Ok(None)
        }
        async fn keyed(&self, _: &str, _: &PostId, _: &str) -> StoreResult<Option<Comment>> {
            Ok(None)
        }
        async fn deletions_after(
            &self,
            _: &PostId,
            _: Option<&CommentId>,
            _: usize,
        ) -> StoreResult<Vec<Tombstone>> {
            Ok(vec![])
        }
        async fn record_deletions(&self, _: Vec<Tombstone>) -> Vec<StoreResult<()>> {
            vec![]
        }
        async fn ping(&self) -> StoreResult<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn identical_concurrent_reads_cost_one_query() {
        let store = Arc::new(Coalesced::new(Slow::default()));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.newest(&"p".into(), Some(&"c".into()), 3).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().len(), 3);
        }
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 1);
        assert_eq!(store.stats(), (1, 99));
        assert_eq!(
            store.inflight(),
            0,
            "entries leave the map when the query completes"
        );
    }

    #[tokio::test]
    async fn different_reads_are_not_merged_and_later_reads_query_again() {
        let store = Arc::new(Coalesced::new(Slow::default()));
        let (p, q, x) = (PostId::from("p"), PostId::from("q"), CommentId::from("x"));
        let (a, b, c, d, e) = tokio::join!(
            store.newest(&p, None, 3),
            store.newest(&p, None, 4),
            store.newest(&p, Some(&x), 3),
            store.after(&p, None, 3),
            store.newest(&q, None, 3),
        );
        for r in [&a, &b, &c, &d, &e] {
            assert!(r.is_ok());
        }
        assert_eq!(b.unwrap().len(), 4);
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 5);
        store.newest(&"p".into(), None, 3).await.unwrap();
        assert_eq!(
            store.inner().calls.load(Ordering::SeqCst),
            6,
            "a completed read is not cached"
        );
    }

    #[tokio::test]
    async fn errors_reach_every_waiter() {
        let store = Arc::new(Coalesced::new(Slow::default()));
        let down = PostId::from("down");
        let (a, b) = tokio::join!(store.newest(&down, None, 1), store.newest(&down, None, 1));
        assert!(matches!(a, Err(StoreError::Unavailable(_))));
        assert!(matches!(b, Err(StoreError::Unavailable(_))));
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 1);
        assert_eq!(store.inflight(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_leader_does_not_strand_followers() {
        let store = Arc::new(Coalesced::new(Slow::default()));
        let s = store.clone();
        let leader = tokio::spawn(async move { s.newest(&"p".into(), None, 2).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        leader.abort();
        assert_eq!(store.newest(&"p".into(), None, 2).await.unwrap().len(), 2);
        // The follower arrived after the leader's query started: it got a query of its own,
        // queued behind the first.
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 2);
        assert_eq!(store.inflight(), 0);
    }

    /// Readers arriving while a query runs never get that query's (older) answer; they all
    /// share the one query queued behind it.
    #[tokio::test]
    async fn latecomers_share_one_query_that_starts_after_them() {
        let store = Arc::new(Coalesced::new(Slow::default()));
        let s = store.clone();
        let first = tokio::spawn(async move { s.newest(&"p".into(), None, 2).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t_arrive = tokio::time::Instant::now();
        let mut late = Vec::new();
        for _ in 0..50 {
            let s = store.clone();
            late.push(tokio::spawn(
                async move { s.newest(&"p".into(), None, 2).await },
            ));
        }
        first.await.unwrap().unwrap();
        for t in late {
            t.await.unwrap().unwrap();
        }
        // Their query could start only when the first ended (~40 ms after they arrived) and
        // took 50 ms itself.
        assert!(
            t_arrive.elapsed() >= Duration::from_millis(80),
            "{:?}",
            t_arrive.elapsed()
        );
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 2);
        assert_eq!(store.inflight(), 0);
    }

    #[tokio::test]
    async fn past_the_bound_reads_run_alone() {
        let store = Arc::new(Coalesced::with_capacity(Arc::new(Slow::default()), 1));
        let (p, q) = (PostId::from("p"), PostId::from("q"));
        let (a, b, c) = tokio::join!(
            store.newest(&p, None, 1),
            store.newest(&q, None, 1),
            store.newest(&p, None, 1)
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert_eq!(
            store.inner().calls.load(Ordering::SeqCst),
            2,
            "q ran alone, the second p joined"
        );
    }
}
