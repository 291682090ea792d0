//! A malicious publisher on the bus, forged ids from the future, garbage since-queries and forwarded deletions.

use super::*;

fn comment_msg(id: &str, post: &str, region: &str, text: &str) -> Vec<u8> {
    let v = json!({"type": "comment", "id": id, "post_id": post, "user_id": "mallory", "text": text,
                   "timestamp": "2026-11-25T19:44:32.123Z", "region": region});
    rmp_serde_named(&v)
}

fn rmp_serde_named(v: &Value) -> Vec<u8> {
    wire::encode(v).unwrap()
}

/// A foreign or malicious publisher on `comments.live.*.<post>`: garbage, wrong types,
/// mismatched posts and regions, bad ids, huge and deeply nested payloads. The fanout drops
/// them (counted), neither crashes nor wedges: its viewers, old and new, still receive the
/// real comments afterwards, exactly once.
#[tokio::test]
async fn malicious_publisher_cannot_crash_or_wedge_a_fanout() {
    let nats = Nats::start().await;
    let core = Server::standalone().nats(&nats.url).start().await;
    let fan = Server::role("fanout").nats(&nats.url).start().await;
    let mut v = Sse::connect(&fan.base, "m", None).await;
    let (_, probe) = core.post("m", "a", "probe").await;
    assert_eq!(v.next_comment(T).await.unwrap()["id"], probe["id"]);
    let mut evil = RawNats::connect(&nats.url).await;
    let good_id = "01JDQ7Z8XK3M4N5P6Q7R8S9T0V";
    let deep: Vec<u8> = std::iter::repeat_n(0x91u8, 200_000).collect();
    let subject = "comments.live.local.m";
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("garbage", b"\xff\xfe\x00garbage".to_vec()),
        ("json instead of msgpack", br#"{"type":"comment"}"#.to_vec()),
        (
            "unknown type",
            rmp_serde_named(&json!({"type": "edit", "id": good_id})),
        ),
        (
            "missing fields",
            rmp_serde_named(&json!({"type": "comment", "id": good_id})),
        ),
        ("array", rmp_serde_named(&json!(["comment", good_id]))),
        ("other post", comment_msg(good_id, "not-m", "local", "x")),
        ("bad id", comment_msg("not-an-id", "m", "local", "x")),
        (
            "lowercase id",
            comment_msg(&good_id.to_lowercase(), "m", "local", "x"),
        ),
        (
            "region with a dot",
            comment_msg(good_id, "m", "evil.region", "x"),
        ),
        (
            "huge text",
            comment_msg(good_id, "m", "local", &"x".repeat(600_000)),
        ),
        ("deep nesting", deep),
        ("4 G map header", b"\xdf\xff\xff\xff\xff".to_vec()),
        (
            "bad delete",
            rmp_serde_named(
                &json!({"type": "delete", "id": "x", "post_id": "m", "region": "local"}),
            ),
        ),
    ];
    for (_, p) in &payloads {
        evil.publish(subject, p).await;
        // The same on another region's subject and on the wildcard-looking ones.
        evil.publish("comments.live.us.m", p).await;
    }
    evil.flush().await;
    let (_, after) = core.post("m", "a", "after the garbage").await;
    let got = v
        .next_comment(T)
        .await
        .expect("the viewer still receives real comments");
    assert_eq!(
        got["id"], after["id"],
        "nothing from the garbage reached the viewer first"
    );
    // A new viewer of the same post (same hub) also gets live comments.
    let mut v2 = Sse::connect(&fan.base, "m", None).await;
    assert!(v2.started(T).await, "the new viewer's stream starts");
    let (_, after2) = core.post("m", "a", "second").await;
    assert_eq!(v.next_comment(T).await.unwrap()["id"], after2["id"]);
    assert_eq!(v2.next_comment(T).await.unwrap()["id"], after2["id"]);
    assert!(
        v.next_comment(Duration::from_millis(300)).await.is_none(),
        "no duplicates"
    );
    let metrics = client()
        .get(fan.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("livecomments_bus_decode_errors_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(dropped >= 10, "garbage counted as decode errors: {dropped}");
    assert_eq!(fan.get_json("/healthz").await.0, 200);
}

const DECODE_ERRORS: &str = "livecomments_bus_decode_errors_total";

/// Waits until the fanout counted a decode error more than `before`: the last event a
/// forgery test published, so the hub has handled every forged event before it.
async fn forged_events_handled(fan: &Server, before: u64) {
    let counted = eventually(T, || async {
        (fan.metric(DECODE_ERRORS).await > before).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "the fanout never took the forged events off the bus"
    );
}

/// A well-formed comment event with an id far in the future is the one message that could
/// still wedge a post: positions compare ids, so every real comment after it would look
/// "already delivered". The fanout must not let one forged message silence a post.
/// The fanout drops ids more than a minute in the future and delivers out-of-sequence
/// events only when history confirms them.
#[tokio::test]
async fn forged_future_id_on_the_bus_does_not_silence_a_post() {
    let nats = Nats::start().await;
    let core = Server::standalone().nats(&nats.url).start().await;
    let fan = Server::role("fanout").nats(&nats.url).start().await;
    let mut v = Sse::connect(&fan.base, "w", None).await;
    let (_, probe) = core.post("w", "a", "probe").await;
    assert_eq!(v.next_comment(T).await.unwrap()["id"], probe["id"]);
    let mut evil = RawNats::connect(&nats.url).await;
    let dropped_before = fan.metric(DECODE_ERRORS).await;
    evil.publish(
        "comments.live.local.w",
        &comment_msg(
            "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "w",
            "local",
            "from the future",
        ),
    )
    .await;
    // Then garbage, which the fanout counts as a decode error once it took it off the bus:
    // the hub reads its subscription in order, so by then it has handled the forged event.
    evil.publish("comments.live.local.w", b"end of the forgery")
        .await;
    evil.flush().await;
    forged_events_handled(&fan, dropped_before).await;
    let (_, real) = core.post("w", "a", "real").await;
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match v.next_comment(left).await {
            Some(c) if c["id"] == real["id"] => {
                got.push(c);
                break;
            }
            Some(c) => got.push(c),
            None => break,
        }
    }
    assert!(
        got.iter().any(|c| c["id"] == real["id"]),
        "real comment after a forged future id never arrived; got {got:?}"
    );
}

/// The subtler forgery: an id only 30 s ahead (inside any clock-skew allowance), published in
/// sequence (its `prev` is the real last id, which anyone on the bus can observe), and a
/// comment claiming a region the subject does not name. Real comments must keep flowing.
/// The fanout delivers an id more than 2 s ahead only once history confirms it, so a forged
/// one is dropped; inside those 2 s only bus permissions (or signed events) help.
#[tokio::test]
async fn forged_near_future_id_in_sequence_does_not_silence_a_post() {
    let nats = Nats::start().await;
    let core = Server::standalone().nats(&nats.url).start().await;
    let fan = Server::role("fanout").nats(&nats.url).start().await;
    let mut v = Sse::connect(&fan.base, "nf", None).await;
    let (_, probe) = core.post("nf", "a", "probe").await;
    assert_eq!(v.next_comment(T).await.unwrap()["id"], probe["id"]);
    let mut evil = RawNats::connect(&nats.url).await;
    let dropped_before = fan.metric(DECODE_ERRORS).await;
    let now_ms = now_secs() as i64 * 1000;
    let near_future = livecomments_shared::id::max_at(now_ms + 30_000);
    let mut forged = json!({"type": "comment", "id": near_future, "post_id": "nf", "user_id": "mallory",
                            "text": "from 30 s ahead", "timestamp": "2026-11-25T19:44:32.123Z", "region": "local",
                            "prev": probe["id"]});
    evil.publish("comments.live.local.nf", &rmp_serde_named(&forged))
        .await;
    // The same id claiming to come from this region on another region's subject.
    forged["text"] = json!("wrong subject");
    evil.publish("comments.live.us.nf", &rmp_serde_named(&forged))
        .await;
    evil.flush().await;
    // The wrong-subject copy is counted as a decode error when the hub takes it off the bus,
    // after the forged one before it (the hub reads its subscription in order).
    forged_events_handled(&fan, dropped_before).await;
    let mut real = Vec::new();
    for i in 0..3 {
        real.push(
            core.post("nf", "a", &format!("real {i}")).await.1["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while !real.iter().all(|r| got.contains(r)) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match v.next_comment(left).await {
            Some(c) => got.push(c["id"].as_str().unwrap().to_string()),
            None => break,
        }
    }
    assert!(
        real.iter().all(|r| got.contains(r)),
        "real comments after a forged near-future id: got {got:?}, want {real:?}"
    );
}

/// Garbage on `comments.since.<region>` gets an error reply, never a crash; the reader then
/// answers real queries.
#[tokio::test]
async fn garbage_since_queries_get_error_replies() {
    let nats = Nats::start().await;
    let s = Server::standalone().nats(&nats.url).start().await;
    let (_, c) = s.post("q", "a", "stored").await;
    let mut n = RawNats::connect(&nats.url).await;
    let subject = "comments.since.local";
    let huge = vec![0xc1u8; 900 * 1024];
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("garbage", b"\xff\x00\x01".to_vec()),
        ("reserved byte, 900 KB", huge),
        ("json", br#"{"post_id":"q","limit":5}"#.to_vec()),
        (
            "missing limit",
            wire::encode(&json!({"post_id": "q"})).unwrap(),
        ),
        (
            "post_id with a dot",
            wire::encode(&json!({"post_id": "q.x", "limit": 5})).unwrap(),
        ),
        (
            "post_id wildcard",
            wire::encode(&json!({"post_id": ">", "limit": 5})).unwrap(),
        ),
        (
            "bad cursor",
            wire::encode(&json!({"post_id": "q", "after": "nope", "limit": 5})).unwrap(),
        ),
        (
            "bad before",
            wire::encode(
                &json!({"post_id": "q", "before": "../../etc", "limit": 5, "newest_first": true}),
            )
            .unwrap(),
        ),
        (
            "negative limit",
            wire::encode(&json!({"post_id": "q", "limit": -1})).unwrap(),
        ),
    ];
    for (what, payload) in bad {
        let reply = n
            .request(subject, &payload, T)
            .await
            .unwrap_or_else(|| panic!("{what}: no reply"));
        let r: SinceReply =
            wire::decode(&reply).unwrap_or_else(|e| panic!("{what}: reply does not decode: {e}"));
        assert!(r.error.is_some(), "{what}: {r:?}");
        assert!(r.comments.is_empty());
        let e = r.error.unwrap();
        assert!(
            !e.contains('/') && !e.contains("redb") && !e.contains("scylla"),
            "{what}: leaks {e:?}"
        );
    }
    // A huge limit is clamped, not honoured; a real query still works.
    let ok = wire::encode(&json!({"post_id": "q", "limit": u32::MAX})).unwrap();
    let r: SinceReply = wire::decode(&n.request(subject, &ok, T).await.unwrap()).unwrap();
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(r.comments.len(), 1);
    assert_eq!(r.comments[0].id, c["id"].as_str().unwrap());
    assert_eq!(s.get_json("/readyz").await.0, 200);
}

/// Garbage on `comments.delete.<region>` (deletions forwarded between regions) gets a
/// `not_found` or `forbidden` reply and deletes nothing. (The subject trusts the `user_id` and
/// `moderator` it is given: only ingest processes may publish on it, see docs/RELIABILITY.md.)
#[tokio::test]
async fn garbage_delete_requests_delete_nothing() {
    let nats = Nats::start().await;
    let s = Server::standalone().nats(&nats.url).start().await;
    let (_, c) = s.post("dq", "alice", "keep me").await;
    let id = c["id"].as_str().unwrap();
    let mut n = RawNats::connect(&nats.url).await;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("garbage", b"\xff\x00".to_vec()),
        (
            "post_id with a dot",
            wire::encode(&json!({"post_id": "dq.x", "id": id, "user_id": "alice"})).unwrap(),
        ),
        (
            "wildcard post_id",
            wire::encode(&json!({"post_id": ">", "id": id, "user_id": "alice"})).unwrap(),
        ),
        (
            "bad id",
            wire::encode(&json!({"post_id": "dq", "id": "../x", "user_id": "alice"})).unwrap(),
        ),
        (
            "empty user",
            wire::encode(&json!({"post_id": "dq", "id": id, "user_id": ""})).unwrap(),
        ),
        (
            "control chars in user",
            wire::encode(&json!({"post_id": "dq", "id": id, "user_id": "al\u{0}ice"})).unwrap(),
        ),
        (
            "someone else",
            wire::encode(&json!({"post_id": "dq", "id": id, "user_id": "mallory"})).unwrap(),
        ),
        (
            "other post",
            wire::encode(&json!({"post_id": "other", "id": id, "user_id": "alice"})).unwrap(),
        ),
    ];
    for (what, payload) in bad {
        let reply = n
            .request("comments.delete.local", &payload, T)
            .await
            .unwrap_or_else(|| panic!("{what}: no reply"));
        let r: wire::DeleteReply = wire::decode(&reply).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            matches!(
                r.outcome,
                wire::DeleteOutcome::NotFound | wire::DeleteOutcome::Forbidden
            ),
            "{what}: {r:?}"
        );
    }
    assert_eq!(
        ids(&s.all_comments("dq").await),
        vec![id.to_string()],
        "nothing deleted"
    );
    assert_eq!(s.get_json("/readyz").await.0, 200);
}

/// Viewer counts and reaction counts are foreign input too (CONTRACT §11): a beat that does
/// not decode, claims another region than its subject's, names a bad post or a bad node is
/// dropped and counted; the counts and the streams go on.
#[tokio::test]
async fn forged_viewer_and_reaction_beats_are_dropped() {
    let nats = Nats::start().await;
    let s = Server::standalone().nats(&nats.url).start().await;
    let mut v = Sse::connect(&s.base, "beats", None).await;
    assert!(v.started(T).await);
    let before = s.metric(DECODE_ERRORS).await;
    let mut evil = RawNats::connect(&nats.url).await;
    let viewer_beats = [
        b"garbage".to_vec(),
        rmp_serde_named(&json!({"region": "us", "node": "n", "posts": [["beats", 1000]]})),
        rmp_serde_named(&json!({"region": "local", "node": "", "posts": [["beats", 1000]]})),
        rmp_serde_named(&json!({"region": "local", "node": "n", "posts": [["bad.post", 1000]]})),
        rmp_serde_named(&json!({"region": "local", "node": "n", "posts": [["beats", -1]]})),
    ];
    for b in &viewer_beats {
        evil.publish("comments.viewers.local", b).await;
    }
    let reaction_beats = [
        rmp_serde_named(
            &json!({"region": "local", "node": "n", "second": 1, "posts": [["beats", [1, 2]]]}),
        ),
        rmp_serde_named(
            &json!({"region": "us", "node": "n", "second": 1, "posts": [["beats", [1, 0, 0, 0, 0, 0]]]}),
        ),
    ];
    for b in &reaction_beats {
        evil.publish("comments.reactions.local", b).await;
    }
    evil.flush().await;
    let dropped = eventually(T, || async {
        let n = s.metric(DECODE_ERRORS).await - before;
        // Each forged beat is counted once, by the listener of its subject.
        (n >= (viewer_beats.len() + reaction_beats.len()) as u64).then_some(n)
    })
    .await;
    assert!(dropped.is_some(), "every forged beat counted");
    // The count is the one real stream; the stream got no reactions event.
    assert!(
        eventually(T, || async {
            (s.viewers("beats").await == 1).then_some(())
        })
        .await
        .is_some()
    );
    let mut seen = Vec::new();
    assert!(
        v.until_event("reactions", Duration::from_millis(1500), &mut seen)
            .await
            .is_none()
    );
    assert_eq!(s.get_json("/healthz").await.0, 200);
}
