//! CONTRACT §10: deletions are part of the resumable stream. `event: delete` carries an `id:`;
//! a resume replays, in order with the missed comments, every deletion of a comment the
//! viewer was shown, and never a comment both created and deleted while it was away; the same
//! after kill -9 and restarts, with two regions, and with separate roles on CQL; `since=`
//! reads report deleted ids.

use std::time::Duration;

use livecomments_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

/// A viewer sees c0..c2 and leaves; while it is away c1 is deleted, c3 is posted, c4 is posted
/// and deleted. Returns (the viewer's last id, the comments).
async fn away_while_deleting(s: &Server, post: &str) -> (String, Vec<Value>) {
    let mut v = Sse::connect(&s.base, post, None).await;
    assert!(v.started(T).await);
    let mut cs = Vec::new();
    for i in 0..3 {
        cs.push(s.post(post, "alice", &format!("c{i}")).await.1);
    }
    assert_eq!(ids(&v.comments(3, T).await), ids(&cs));
    let last = v.last_id.clone().unwrap();
    drop(v);
    assert_eq!(s.delete(post, &id_of(&cs[1]), "alice").await, 204);
    cs.push(s.post(post, "alice", "c3").await.1);
    cs.push(s.post(post, "alice", "c4").await.1);
    assert_eq!(s.delete(post, &id_of(&cs[4]), "alice").await, 204);
    (last, cs)
}

#[tokio::test]
async fn a_resume_replays_deletions_in_order_and_skips_what_it_never_saw() {
    let s = Server::standalone().start().await;
    let (last, cs) = away_while_deleting(&s, "del-resume").await;
    let mut v = Sse::connect(&s.base, "del-resume", Some(&last)).await;
    let got = v.stream_events(2, T).await;
    assert_eq!(
        kinds(&got),
        vec![ev("delete", &id_of(&cs[1])), ev("comment", &id_of(&cs[3]))],
        "the deletion of a comment it was shown, then the comment it missed; c4 (created and \
         deleted while away) not at all"
    );
    assert!(got.iter().all(|e| e.id.is_some()), "each carries an id:");
    assert_eq!(got[0].json()["post_id"], "del-resume");
    assert!(
        v.stream_events(1, Duration::from_millis(700))
            .await
            .is_empty(),
        "nothing more"
    );

    // A live deletion carries an id: too, and resuming from just before it replays it alone.
    let before_delete = v.last_id.clone().unwrap();
    assert_eq!(s.delete("del-resume", &id_of(&cs[3]), "alice").await, 204);
    let live = v.stream_events(1, T).await;
    assert_eq!(kinds(&live), vec![ev("delete", &id_of(&cs[3]))]);
    let live_id = live[0].id.clone().expect("id: on a live deletion");
    assert_ne!(live_id, before_delete);
    let mut again = Sse::connect(&s.base, "del-resume", Some(&before_delete)).await;
    assert_eq!(
        kinds(&again.stream_events(1, T).await),
        vec![ev("delete", &id_of(&cs[3]))]
    );
    assert_eq!(again.last_id.as_deref(), Some(live_id.as_str()));
    // From the deletion's own id: nothing to replay.
    let mut past = Sse::connect(&s.base, "del-resume", Some(&live_id)).await;
    assert!(
        past.stream_events(1, Duration::from_millis(700))
            .await
            .is_empty()
    );

    // Reads never return deleted comments; since= reports the deletions of its range.
    let all = ids(&s.all_comments("del-resume").await);
    assert_eq!(all, vec![id_of(&cs[2]), id_of(&cs[0])]);
    let (st, page) = s.get_json("/comments?post_id=del-resume&since=0").await;
    assert_eq!(st, 200);
    assert_eq!(
        ids(page["comments"].as_array().unwrap()),
        vec![id_of(&cs[0]), id_of(&cs[2])]
    );
    let deleted: Vec<&str> = page["deleted"]
        .as_array()
        .expect("deleted ids")
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(deleted, vec![id_of(&cs[1]), id_of(&cs[4]), id_of(&cs[3])]);
}

#[tokio::test]
async fn deletions_replay_after_kill_9_and_restart() {
    let mut s = Server::standalone().start().await;
    let (last, cs) = away_while_deleting(&s, "del-crash").await;
    s.restart().await;
    let mut v = Sse::connect(&s.base, "del-crash", Some(&last)).await;
    assert_eq!(
        kinds(&v.stream_events(2, T).await),
        vec![ev("delete", &id_of(&cs[1])), ev("comment", &id_of(&cs[3]))]
    );
    // The restarted writer chains new deletions as before: a live viewer gets them at once.
    assert_eq!(s.delete("del-crash", &id_of(&cs[0]), "alice").await, 204);
    assert_eq!(
        kinds(&v.stream_events(1, T).await),
        vec![ev("delete", &id_of(&cs[0]))]
    );
    // Bad input changes nothing.
    assert_eq!(s.delete("del-crash", &id_of(&cs[0]), "alice").await, 404);
    assert_eq!(s.delete("del-crash", &id_of(&cs[2]), "mallory").await, 403);
    assert_eq!(s.delete("del-crash", "not-an-id", "alice").await, 404);
    assert_eq!(
        ids(&s.all_comments("del-crash").await),
        vec![id_of(&cs[3]), id_of(&cs[2])]
    );
}

#[tokio::test]
async fn a_viewer_away_from_another_region_gets_the_deletion_on_resume() {
    let sc = Supercluster::start(&["eu", "us"]).await;
    let eu = region_server(&sc, "eu").await;
    let us = region_server(&sc, "us").await;
    // Written in us, watched in eu.
    let mut v = Sse::connect(&eu.base, "del-regions", None).await;
    assert!(v.started(T).await);
    let c = us.post("del-regions", "alice", "from us").await.1;
    let got = eventually(T, || async {
        let (_, page) = eu.get_json("/comments?post_id=del-regions").await;
        (!page["comments"].as_array()?.is_empty()).then_some(())
    })
    .await;
    assert!(got.is_some(), "us's comment readable in eu");
    // The viewer may or may not have had it live (interest across the gateway takes a
    // moment); a resume from its position brings whatever it lacks.
    let mut shown = v.comments(1, Duration::from_secs(3)).await;
    let last = v.last_id.clone();
    drop(v);
    if shown.is_empty() {
        let mut r = Sse::connect(&eu.base, "del-regions", last.as_deref()).await;
        shown = r.comments(1, T).await;
        let last = r.last_id.clone().unwrap();
        drop(r);
        assert_eq!(ids(&shown), vec![id_of(&c)]);
        resume_sees_delete(&eu, &us, &c, &last).await;
    } else {
        assert_eq!(ids(&shown), vec![id_of(&c)]);
        resume_sees_delete(&eu, &us, &c, &last.unwrap()).await;
    }
}

/// Deletes `c` through eu (forwarded to us, which stores it) while the viewer is away, then
/// resumes in eu from `last`: the deletion is replayed from us's history.
async fn resume_sees_delete(eu: &Server, _us: &Server, c: &Value, last: &str) {
    assert_eq!(eu.delete("del-regions", &id_of(c), "alice").await, 204);
    let mut v = Sse::connect(&eu.base, "del-regions", Some(last)).await;
    assert_eq!(
        kinds(&v.stream_events(1, T).await),
        vec![ev("delete", &id_of(c))]
    );
}

#[tokio::test]
async fn separate_roles_on_cql_replay_deletions() {
    let Some(r) = CqlRegion::start("deletions", 1).await else {
        return;
    };
    let (ingest, fanout) = (&r.ingest[0], &r.fanout);
    let mut v = Sse::connect(&fanout.base, "del-cql", None).await;
    assert!(v.started(T).await);
    let mut cs = Vec::new();
    for i in 0..3 {
        cs.push(ingest.post("del-cql", "alice", &format!("c{i}")).await.1);
    }
    assert_eq!(ids(&v.comments(3, T).await), ids(&cs));
    let last = v.last_id.clone().unwrap();
    // Live: the deletion reaches the open stream with an id:.
    assert_eq!(ingest.delete("del-cql", &id_of(&cs[0]), "alice").await, 204);
    let live = v.stream_events(1, T).await;
    assert_eq!(kinds(&live), vec![ev("delete", &id_of(&cs[0]))]);
    assert!(live[0].id.is_some());
    drop(v);
    // Away: one more deletion; the resume from before both replays both, in order.
    assert_eq!(ingest.delete("del-cql", &id_of(&cs[2]), "alice").await, 204);
    let mut r = Sse::connect(&fanout.base, "del-cql", Some(&last)).await;
    assert_eq!(
        kinds(&r.stream_events(2, T).await),
        vec![ev("delete", &id_of(&cs[0])), ev("delete", &id_of(&cs[2]))]
    );
}
