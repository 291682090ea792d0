//! CONTRACT §7: several `ingest` nodes of one region on one CQL keyspace, any request to any
//! node. A viewer connected throughout gets every comment once, a resume gets exactly what it
//! missed, per-user limits and Idempotency-Key hold across nodes, and losing a node (kill -9,
//! or frozen with SIGSTOP) loses no acknowledged comment.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use livecomments_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// One region: `n` ingest nodes, a reader and a fanout on one keyspace and one nats-server,
/// and what these tests do with it.
struct Region(CqlRegion);

impl std::ops::Deref for Region {
    type Target = CqlRegion;
    fn deref(&self) -> &CqlRegion {
        &self.0
    }
}

impl std::ops::DerefMut for Region {
    fn deref_mut(&mut self) -> &mut CqlRegion {
        &mut self.0
    }
}

impl Region {
    async fn start(n: usize, prefix: &str, rate_limit: u32) -> Option<Region> {
        CqlRegion::start_with(prefix, n, |b| b.rate_limit(rate_limit))
            .await
            .map(Region)
    }

    fn bases(&self) -> Vec<String> {
        self.ingest_bases()
    }

    /// `users` users (`<prefix><n>`) posting `n` comments each at once, each spreading its
    /// comments over every ingest node; await the handles and merge with [`join_writers`].
    fn spawn_writers(
        &self,
        prefix: &str,
        users: usize,
        post: &'static str,
        n: usize,
        timeout: Duration,
    ) -> Vec<tokio::task::JoinHandle<Posted>> {
        (0..users)
            .map(|w| {
                let (bases, user) = (self.bases(), format!("{prefix}{w}"));
                tokio::spawn(async move { post_spread(&bases, w, &user, post, n, timeout).await })
            })
            .collect()
    }

    /// Every stored comment of the post, checked unique.
    async fn stored(&self, post: &str) -> Vec<String> {
        let stored = ids(&self.reader.all_comments(post).await);
        let set: HashSet<_> = stored.iter().collect();
        assert_eq!(set.len(), stored.len(), "a comment is stored twice");
        stored
    }
}

/// Ids received by a viewer, checked for duplicates and for each writer's order (the
/// writer is characters 10..18 of an id: each node's comments arrive in its id order).
fn check_stream(name: &str, got: &[String]) -> HashSet<String> {
    let set: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(set.len(), got.len(), "{name} received a comment twice");
    let mut last: HashMap<&str, &str> = HashMap::new();
    for id in got {
        let writer = &id[10..18];
        if let Some(prev) = last.insert(writer, id) {
            assert!(
                prev < id.as_str(),
                "{name}: writer {writer} out of order: {prev} then {id}"
            );
        }
    }
    set
}

async fn drain(v: &mut Sse, want: usize) -> Vec<String> {
    ids(&v.comments(want, T).await)
}

#[tokio::test]
async fn three_nodes_one_exact_stream_and_exact_resume() {
    let Some(r) = Region::start(3, "nodes3", 1_000_000).await else {
        return;
    };
    let post = "three-nodes";
    let mut throughout = Sse::connect(&r.fanout.base, post, None).await;
    assert!(throughout.started(T).await);
    let mut resumer = Sse::connect(&r.fanout.base, post, None).await;
    assert!(resumer.started(T).await);

    // Eight users post at once, each spreading its comments over the three nodes.
    let writers = r.spawn_writers("u", 8, post, 150, Duration::from_secs(10));
    // The resumer takes part of the stream, drops, and comes back after the load.
    let first_part = drain(&mut resumer, 300).await;
    assert_eq!(first_part.len(), 300);
    let resume_from = resumer.last_id.clone().expect("an id to resume from");
    drop(resumer);

    let posted = join_writers(writers).await;
    assert!(
        posted.gave_up.is_empty(),
        "every node up: {:?}",
        posted.gave_up
    );
    let acked = posted.ids();
    assert_eq!(acked.len(), 1200);
    let stored = r.stored(post).await;
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored_set, acked.iter().cloned().collect::<HashSet<_>>());
    // All three nodes took writes.
    let writers: HashSet<&str> = stored.iter().map(|id| &id[10..18]).collect();
    assert_eq!(writers.len(), 3, "one writer per node");

    let got = drain(&mut throughout, stored.len()).await;
    assert_eq!(
        check_stream("the viewer connected throughout", &got),
        stored_set
    );
    // Nothing more arrives (no late duplicate from a repair).
    assert!(
        throughout
            .next_comment(Duration::from_millis(500))
            .await
            .is_none()
    );

    let mut back = Sse::connect(&r.fanout.base, post, Some(&resume_from)).await;
    let rest = drain(&mut back, stored.len() - first_part.len()).await;
    let mut all = first_part.clone();
    all.extend(rest);
    assert_eq!(check_stream("the resumed viewer", &all), stored_set);
    assert!(
        back.next_comment(Duration::from_millis(500))
            .await
            .is_none()
    );

    // Reads come newest first in (timestamp, id) order, whichever node wrote.
    let mut sorted = stored.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(stored, sorted);
}

#[tokio::test]
async fn the_rate_limit_and_idempotency_keys_hold_across_nodes() {
    let Some(r) = Region::start(2, "nodes_rl", 10).await else {
        return;
    };
    let tok = token("carol");
    let c = client();
    let mut accepted = 0;
    let mut refused = Vec::new();
    for i in 0..15 {
        let base = &r.ingest[i % 2].base;
        let resp = c
            .post(format!("{base}/comment?post_id=limits"))
            .bearer_auth(&tok)
            .json(&serde_json::json!({"text": format!("#{i}")}))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            201 => accepted += 1,
            429 => refused.push(resp.headers().get("retry-after").cloned()),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 10, "10 per 10 s over both nodes together");
    assert_eq!(refused.len(), 5);
    assert!(refused.iter().all(|h| h.as_ref().is_some_and(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| (1..=10).contains(&s))
    })));

    // A retry through the other node returns the same comment and stores nothing new.
    let post = |base: String| {
        let c = c.clone();
        async move {
            let resp = c
                .post(format!("{base}/comment?post_id=idem"))
                .bearer_auth(token("dave"))
                .header("Idempotency-Key", "k-1")
                .json(&serde_json::json!({"text": "once"}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (s1, first) = post(r.ingest[0].base.clone()).await;
    let (s2, again) = post(r.ingest[1].base.clone()).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(r.stored("idem").await.len(), 1);
}

#[tokio::test]
async fn losing_a_node_under_load_loses_nothing_acknowledged() {
    let Some(mut r) = Region::start(3, "nodes_kill", 1_000_000).await else {
        return;
    };
    let post = "node-loss";
    let mut throughout = Sse::connect(&r.fanout.base, post, None).await;
    assert!(throughout.started(T).await);
    let writers = r.spawn_writers("k", 6, post, 250, Duration::from_secs(2));
    // Under load: node 0 is killed, node 1 frozen past the writer-loss timeout and thawed.
    let early = drain(&mut throughout, 200).await;
    assert_eq!(early.len(), 200);
    r.ingest[0].kill9();
    let mid = drain(&mut throughout, 200).await;
    assert_eq!(mid.len(), 200, "the others kept accepting");
    let frozen = r.ingest[1].pid();
    signal(frozen, "STOP");
    let during = drain(&mut throughout, 100).await;
    assert_eq!(during.len(), 100, "the last node kept accepting");
    // Frozen until the fanout has given both lost writers up (and looked in the store).
    let noticed = eventually(T, || async {
        (r.fanout.metric("livecomments_writers_lost_total").await >= 2).then_some(())
    })
    .await;
    signal(frozen, "CONT");
    assert!(noticed.is_some(), "the fanout noticed the lost writers");

    let posted = join_writers(writers).await;
    assert!(posted.retried > 0, "the load hit the lost nodes");
    assert!(
        posted.gave_up.is_empty(),
        "a node stayed up: {:?}",
        posted.gave_up
    );
    let acked: HashSet<String> = posted.ids().into_iter().collect();
    assert_eq!(acked.len(), 1500);
    let stored = r.stored(post).await;
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    let lost: Vec<_> = acked.difference(&stored_set).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    // A comment stored by a node that died before answering is still a comment: viewers get
    // every stored one, acknowledged or not.
    let mut got: Vec<String> = early.into_iter().chain(mid).chain(during).collect();
    let want_more = stored.len().saturating_sub(got.len());
    got.extend(drain(&mut throughout, want_more).await);
    let seen = check_stream("the viewer connected throughout", &got);
    let missing: Vec<_> = stored_set.difference(&seen).collect();
    assert!(missing.is_empty(), "stored but never streamed: {missing:?}");
    assert!(
        throughout
            .next_comment(Duration::from_millis(500))
            .await
            .is_none()
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

/// Every writer's record, merged.
async fn join_writers(writers: Vec<tokio::task::JoinHandle<Posted>>) -> Posted {
    let mut posted = Posted::default();
    for w in writers {
        posted.merge(w.await.unwrap());
    }
    posted
}
