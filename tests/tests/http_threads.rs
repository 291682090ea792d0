//! Connections served on `--http-threads` threads (`server.rs`) against the real binary:
//! viewers spread over the threads each get every comment once and in order, a resume
//! replays exactly what was missed, reactions reach every stream, and SIGTERM still tells
//! every viewer to reconnect before the process exits (the threads outlive the drain).

use std::time::Duration;

use livecomments_tests::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn connection_threads_deliver_resume_react_and_shut_down() {
    let mut s = Server::standalone()
        .args(["--http-threads", "2"])
        .start()
        .await;
    // Sockets go to the threads in turn: 16 viewers put 8 on each.
    let mut viewers = Vec::new();
    for _ in 0..16 {
        let v = Sse::connect(&s.base, "threads", None).await;
        assert_eq!(v.status, 200);
        viewers.push(v);
    }
    let mut posted = Vec::new();
    for i in 0..10 {
        posted.push(s.post("threads", "alice", &format!("c{i}")).await.1);
    }
    for (n, v) in viewers.iter_mut().enumerate() {
        let got = v.comments(10, T).await;
        assert_eq!(
            ids(&got),
            ids(&posted),
            "viewer {n}: every comment once, in order"
        );
    }

    // A viewer that leaves and comes back with its last id gets exactly what it missed.
    let gone = viewers.pop().expect("a viewer");
    let resume_from = gone.last_id.clone().expect("an id");
    drop(gone);
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(s.post("threads", "bob", &format!("m{i}")).await.1);
    }
    let mut back = Sse::connect(&s.base, "threads", Some(&resume_from)).await;
    assert_eq!(ids(&back.comments(3, T).await), ids(&missed));
    for v in &mut viewers {
        assert_eq!(ids(&v.comments(3, T).await), ids(&missed));
    }
    viewers.push(back);

    // One reaction: every stream's next `event: reactions` counts it.
    assert_eq!(s.react("threads", "carol", "love").await, 202);
    for (n, v) in viewers.iter_mut().enumerate() {
        let mut love = 0;
        while love == 0 {
            let Some(e) = v.until_event("reactions", T, &mut Vec::new()).await else {
                panic!("viewer {n}: no reactions event");
            };
            love = e.json()["love"].as_u64().unwrap_or(0);
        }
        assert_eq!(love, 1, "viewer {n}");
    }

    let took = s.terminate();
    assert!(took < Duration::from_secs(12), "exit took {took:?}");
    for (n, v) in viewers.iter_mut().enumerate() {
        let told = v.until_event("reconnect", T, &mut Vec::new()).await;
        assert!(told.is_some(), "viewer {n} was told to reconnect");
    }
}

#[tokio::test]
async fn too_many_connection_threads_is_a_configuration_error() {
    let err = Server::standalone()
        .args(["--http-threads", "100000"])
        .try_start()
        .await
        .err()
        .expect("refused at start");
    assert!(format!("{err}").contains("--http-threads"), "{err}");
}

/// The first viewer of a post starts its hub on the main runtime while the viewer's own
/// request runs on a connection thread, so the hub's start can finish before the viewer
/// listens for it: a "ready" sent then was lost and every viewer of that post waited for
/// good (docs/BENCHMARKS.md, "Reactions again"). 200 posts, 200 such races.
#[tokio::test]
async fn every_new_hub_becomes_ready_for_its_first_viewer() {
    let s = Server::standalone()
        .args(["--http-threads", "2"])
        .start()
        .await;
    let mut viewers = Vec::new();
    for i in 0..200 {
        let v = tokio::time::timeout(T, Sse::connect(&s.base, &format!("hub{i}"), None))
            .await
            .unwrap_or_else(|_| panic!("post hub{i}: no answer"));
        assert_eq!(v.status, 200);
        viewers.push(v);
    }
    for (i, v) in viewers.iter_mut().enumerate() {
        let first = v.next(T).await;
        assert_eq!(
            first.map(|e| e.event).as_deref(),
            Some("retry"),
            "post hub{i}"
        );
    }
}
