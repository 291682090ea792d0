//! Roles as separate processes on a real nats-server: a standalone (store + ingest + reader)
//! and two fanouts serving the same post; killing one fanout loses nothing for viewers who
//! resume on the other.

use std::time::Duration;

use livecomments_tests::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn two_fanouts_share_a_post_and_survive_losing_one() {
    let nats = Nats::start().await;
    let core = Server::standalone().nats(&nats.url).start().await;
    let mut f1 = Server::role("fanout").nats(&nats.url).start().await;
    let f2 = Server::role("fanout").nats(&nats.url).start().await;
    // The fanout serves only the stream; reads and writes are other roles' routes.
    assert_eq!(f1.get_json("/comments?post_id=x").await.0, 404);

    let mut a = Sse::connect(&f1.base, "shared", None).await;
    let mut b = Sse::connect(&f2.base, "shared", None).await;
    // Interest propagates asynchronously; poll until a probe comment arrives on both.
    let mut posted = Vec::new();
    let (_, first) = core.post("shared", "alice", "probe").await;
    posted.push(first.clone());
    assert_eq!(a.next_comment(T).await.unwrap()["id"], first["id"]);
    assert_eq!(b.next_comment(T).await.unwrap()["id"], first["id"]);
    for i in 0..10 {
        posted.push(core.post("shared", "alice", &format!("c{i}")).await.1);
    }
    assert_eq!(ids(&a.comments(10, T).await), ids(&posted[1..]));
    assert_eq!(ids(&b.comments(10, T).await), ids(&posted[1..]));

    // Fanout 1 dies; its viewer resumes on fanout 2 and misses nothing, even what was posted
    // while it was disconnected.
    let resume = a.last_id.clone().unwrap();
    f1.kill9();
    for i in 0..5 {
        posted.push(core.post("shared", "alice", &format!("gap{i}")).await.1);
    }
    let mut a2 = Sse::connect(&f2.base, "shared", Some(&resume)).await;
    assert_eq!(a2.status, 200);
    assert_eq!(ids(&a2.comments(5, T).await), ids(&posted[11..]));
    let (_, live) = core.post("shared", "bob", "live again").await;
    assert_eq!(a2.next_comment(T).await.unwrap()["id"], live["id"]);
    assert!(
        a2.next_comment(Duration::from_millis(300)).await.is_none(),
        "no duplicates"
    );
    assert_eq!(ids(&b.comments(6, T).await).len(), 6);
}

#[tokio::test]
async fn fanout_catches_up_after_nats_restart() {
    let mut nats = Nats::start().await;
    let core = Server::standalone().nats(&nats.url).start().await;
    let fan = Server::role("fanout").nats(&nats.url).start().await;
    let mut v = Sse::connect(&fan.base, "n", None).await;
    let (_, probe) = core.post("n", "a", "probe").await;
    assert_eq!(v.next_comment(T).await.unwrap()["id"], probe["id"]);

    nats.kill();
    // Writes keep succeeding while the bus is down.
    let mut during = Vec::new();
    for i in 0..5 {
        let (st, c) = core.post("n", "a", &format!("during {i}")).await;
        assert_eq!(st, 201, "POST succeeds without NATS: {c}");
        during.push(c);
    }
    nats.restart().await;
    // The fanout repairs what the bus dropped once it reconnects, without a restart.
    let got = v.comments(5, Duration::from_secs(20)).await;
    assert_eq!(ids(&got), ids(&during));
    let ready = eventually(Duration::from_secs(10), || async {
        (core.get_json("/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert!(ready.is_some());
    let (_, after) = core.post("n", "a", "after").await;
    let got = v.next_comment(T).await.unwrap();
    assert_eq!(got["id"], after["id"]);
}
