//! CONTRACT §11, huge streams, against the real binary: viewer counts over every fanout (also
//! after one is killed), rate sampling (a cap spread over the second, deletions kept, resume
//! tokens that cover what was left out), and reactions (202, one event a second per stream
//! with the counts since the previous one, totals that survive kill -9, merged over regions);
//! bad input gets the contract's 4xx.

use std::time::{Duration, Instant};

use livecomments_tests::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);
/// The contract's bound for a viewer count to be right after a change.
const COUNT_RIGHT_WITHIN: Duration = Duration::from_secs(5);

fn stream_url(base: &str, post: &str, query: &str) -> String {
    format!("{base}/comments/stream?post_id={post}{query}")
}

/// Waits for `event: viewers` with exactly `n` (the count at open, or a change).
async fn viewers_event(v: &mut Sse, n: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match v.next(left).await {
            Some(e) if e.event == "viewers" && e.json()["viewers"] == n => return true,
            Some(e) if e.event == "closed" => return false,
            Some(_) => {}
            None => return false,
        }
    }
    false
}

/// Waits until `GET /posts/<post>/viewers` says `n`; how long that took.
async fn count_becomes(s: &Server, post: &str, n: u64, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    eventually(within, || async {
        (s.viewers(post).await == n).then_some(t0.elapsed())
    })
    .await
}

#[tokio::test]
async fn viewer_counts_follow_streams_and_bad_parameters_are_refused() {
    let s = Server::standalone().start().await;
    assert_eq!(s.viewers("vc").await, 0);
    let mut a = Sse::connect_url(&stream_url(&s.base, "vc", "&viewers=1"), None).await;
    assert!(
        viewers_event(&mut a, 1, T).await,
        "its own stream counts at once"
    );
    assert!(
        count_becomes(&s, "vc", 1, COUNT_RIGHT_WITHIN)
            .await
            .is_some()
    );
    let mut b = Sse::connect(&s.base, "vc", None).await;
    assert!(b.started(T).await);
    assert!(
        count_becomes(&s, "vc", 2, COUNT_RIGHT_WITHIN)
            .await
            .is_some()
    );
    assert!(
        viewers_event(&mut a, 2, COUNT_RIGHT_WITHIN).await,
        "a viewers=1 stream hears the change"
    );
    // Without viewers=1: no such event.
    let mut seen = Vec::new();
    assert!(
        b.until_event("viewers", Duration::from_millis(2500), &mut seen)
            .await
            .is_none()
    );
    drop(b);
    assert!(
        count_becomes(&s, "vc", 1, COUNT_RIGHT_WITHIN)
            .await
            .is_some()
    );
    assert!(viewers_event(&mut a, 1, COUNT_RIGHT_WITHIN).await);
    // Another post's count is its own.
    assert_eq!(s.viewers("vc-other").await, 0);

    for query in [
        "&viewers=2",
        "&viewers=yes",
        "&rate=0",
        "&rate=1001",
        "&rate=abc",
        "&rate=5.5",
        "&rate=",
    ] {
        let r = client()
            .get(stream_url(&s.base, "vc", query))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_error(status, &body, 400, "invalid_parameter");
    }
    let (status, body) = s.get_json("/posts/bad.id/viewers").await;
    assert_error(status, &body, 400, "invalid_post_id");
}

#[tokio::test]
async fn two_fanouts_count_together_and_a_killed_one_stops_counting() {
    let nats = Nats::start().await;
    let s = Server::standalone().nats(&nats.url).start().await;
    let mut f2 = Server::role("fanout").nats(&nats.url).start().await;
    let mut streams = Vec::new();
    for (base, n) in [(&s.base, 2), (&f2.base, 3)] {
        for _ in 0..n {
            let mut v = Sse::connect(base, "vc2", None).await;
            assert!(v.started(T).await);
            streams.push(v);
        }
    }
    let mut watcher = Sse::connect_url(&stream_url(&f2.base, "vc2", "&viewers=1"), None).await;
    assert!(watcher.started(T).await);
    assert!(
        count_becomes(&s, "vc2", 6, COUNT_RIGHT_WITHIN)
            .await
            .is_some(),
        "the reader sums both fanouts' reports"
    );
    assert!(viewers_event(&mut watcher, 6, COUNT_RIGHT_WITHIN).await);
    f2.kill9();
    let took = count_becomes(&s, "vc2", 2, Duration::from_secs(8))
        .await
        .expect("a killed fanout's viewers stop counting");
    assert!(took <= COUNT_RIGHT_WITHIN, "took {took:?}");
}

/// Reads `event: reactions` until the summed counts reach `want` (or `within` passes):
/// the sums and the instants of the events.
async fn reactions_until(v: &mut Sse, want: &Value, within: Duration) -> (Value, Vec<Instant>) {
    let mut sum = json!({"like": 0, "love": 0, "haha": 0, "wow": 0, "sad": 0, "angry": 0});
    let mut at = Vec::new();
    let deadline = Instant::now() + within;
    while sum != *want {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match v.next(left).await {
            Some(e) if e.event == "reactions" => {
                at.push(Instant::now());
                let d = e.json();
                for (k, n) in d.as_object().expect("an object of counts") {
                    let total = sum[k].as_u64().expect("a known kind") + n.as_u64().unwrap();
                    sum[k] = total.into();
                }
                assert_eq!(d.as_object().unwrap().len(), 6, "every kind: {d}");
            }
            Some(e) if e.event == "closed" => break,
            Some(_) => {}
            None => break,
        }
    }
    (sum, at)
}

#[tokio::test]
async fn reactions_reach_every_stream_once_a_second_and_totals_survive_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::standalone().data_dir(dir.path()).start().await;
    let mut a = Sse::connect(&s.base, "rx", None).await;
    let mut b = Sse::connect(&s.base, "rx", None).await;
    assert!(a.started(T).await && b.started(T).await);
    // Spread over a few seconds, from two users.
    for round in 0..3 {
        for _ in 0..4 {
            assert_eq!(s.react("rx", "alice", "like").await, 202);
        }
        assert_eq!(s.react("rx", "bob", "wow").await, 202);
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    let want = json!({"like": 12, "love": 0, "haha": 0, "wow": 3, "sad": 0, "angry": 0});
    // Both streams read at once: the instants are when each event arrived.
    let (ra, rb) = tokio::join!(
        reactions_until(&mut a, &want, T),
        reactions_until(&mut b, &want, T)
    );
    for (sum, at) in [ra, rb] {
        assert_eq!(sum, want, "every reaction, counted once");
        // 15 reactions over ~1.5 s: one event per second they fall in (at most 3), never
        // one per reaction. (Arrival spacing is not checked: on a loaded box a client may
        // read two seconds' events in one read.)
        assert!(
            (1..=3).contains(&at.len()),
            "{} events for 15 reactions",
            at.len()
        );
    }
    let totals = eventually(T, || async {
        let t = s.reactions("rx").await;
        (t == want).then_some(t)
    })
    .await;
    assert_eq!(totals, Some(want.clone()), "durable totals");
    assert_eq!(
        s.reactions("rx-none").await,
        json!({"like": 0, "love": 0, "haha": 0, "wow": 0, "sad": 0, "angry": 0})
    );
    s.kill9();
    s.restart().await;
    assert_eq!(s.reactions("rx").await, want, "survive kill -9");
}

#[tokio::test]
async fn reactions_refuse_bad_input_and_limit_each_user_to_20_a_second() {
    let s = Server::standalone().start().await;
    let base = &s.base;
    // No token, a bad one.
    let r = client()
        .post(format!("{base}/reaction?post_id=rl"))
        .json(&json!({"kind": "like"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 401, "invalid_token");
    let (status, body) = post_reaction(base, "rl", "not-a-jwt", json!({"kind": "like"})).await;
    assert_error(status, &body, 401, "invalid_token");
    let alice = token("alice");
    for (body, code) in [
        (json!({"kind": "heart"}), "invalid_parameter"),
        (json!({"kind": "Like"}), "invalid_parameter"),
        (json!({"kind": 1}), "invalid_json"),
        (json!({}), "invalid_json"),
        (json!({"kind": "like", "extra": 1}), "invalid_json"),
    ] {
        let (status, got) = post_reaction(base, "rl", &alice, body.clone()).await;
        assert_error(status, &got, 400, code);
    }
    let (status, body) = post_reaction(base, "bad.id", &alice, json!({"kind": "like"})).await;
    assert_error(status, &body, 400, "invalid_post_id");
    // A token scoped to other posts (CONTRACT §12).
    let scoped =
        token_with(json!({"sub": "carol", "exp": now_secs() + 3600, "posts": ["other-*"]}));
    let (status, body) = post_reaction(base, "rl", &scoped, json!({"kind": "like"})).await;
    assert_error(status, &body, 403, "forbidden");
    // The answer to a good one.
    let (status, body) = post_reaction(base, "rl", &alice, json!({"kind": "love"})).await;
    assert_eq!(status, 202);
    assert_eq!(body, json!({"post_id": "rl", "kind": "love"}));

    // 20 a second per user: the 21st within the second is refused with Retry-After.
    let bob = token("bob");
    let mut accepted = 0;
    let mut refused = None;
    let t0 = Instant::now();
    for _ in 0..40 {
        let r = client()
            .post(format!("{base}/reaction?post_id=rl"))
            .bearer_auth(&bob)
            .json(&json!({"kind": "like"}))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 202 {
            accepted += 1;
        } else {
            let retry = r.headers().get("retry-after").cloned();
            let status = r.status().as_u16();
            refused = Some((status, r.json::<Value>().await.unwrap(), retry));
            break;
        }
    }
    let (status, body, retry) = refused.expect("the limit refuses");
    assert_error(status, &body, 429, "rate_limited");
    assert!(retry.is_some(), "Retry-After");
    // A token bucket of 20 refilled at 20/s: at most 20 plus what refilled meanwhile.
    let refill = (t0.elapsed().as_secs_f64() * 20.0).ceil() as usize;
    assert!(
        (20..=20 + refill).contains(&accepted),
        "{accepted} accepted in {:?}",
        t0.elapsed()
    );
    // Another user is not limited by bob.
    assert_eq!(s.react("rl", "dave", "like").await, 202);
}

#[tokio::test]
async fn reactions_and_viewer_counts_are_merged_over_regions() {
    let sc = Supercluster::start(&["eu", "us"]).await;
    let eu = region_server(&sc, "eu").await;
    let us = region_server(&sc, "us").await;
    let mut v = Sse::connect(&eu.base, "rxr", None).await;
    assert!(v.started(T).await);
    let mut in_us = Sse::connect(&us.base, "rxr", None).await;
    assert!(in_us.started(T).await);
    for s in [&eu, &us] {
        assert!(
            count_becomes(s, "rxr", 2, T).await.is_some(),
            "every region's fanouts count in every region"
        );
    }
    // Gateways learn interest asynchronously: until eu hears one of us's seconds, keep
    // sending one reaction a second from us (each counted; the sum is checked below).
    let mut sent_us = 0;
    let mut sum = json!({"like": 0, "love": 0, "haha": 0, "wow": 0, "sad": 0, "angry": 0});
    let deadline = Instant::now() + Duration::from_secs(20);
    while sum["haha"] == 0 && Instant::now() < deadline {
        assert_eq!(us.react("rxr", "bob", "haha").await, 202);
        sent_us += 1;
        let mut others = Vec::new();
        if let Some(e) = v
            .until_event("reactions", Duration::from_millis(1500), &mut others)
            .await
        {
            for (k, n) in e.json().as_object().unwrap() {
                sum[k] = (sum[k].as_u64().unwrap() + n.as_u64().unwrap()).into();
            }
        }
    }
    assert!(
        sum["haha"].as_u64().unwrap() > 0,
        "us's reactions reach eu's streams"
    );
    for _ in 0..3 {
        assert_eq!(eu.react("rxr", "alice", "sad").await, 202);
    }
    let mut want = sum.clone();
    want["haha"] = sent_us.into();
    want["sad"] = 3.into();
    let (rest, _) = reactions_until(
        &mut v,
        &json!({"like": 0, "love": 0, "haha": sent_us - sum["haha"].as_u64().unwrap(),
                "wow": 0, "sad": 3, "angry": 0}),
        T,
    )
    .await;
    assert_eq!(rest["sad"], 3, "eu's own, in the same events");
    for s in [&eu, &us] {
        let totals = eventually(T, || async {
            let t = s.reactions("rxr").await;
            (t == want).then_some(t)
        })
        .await;
        assert_eq!(totals, Some(want.clone()), "totals over both regions");
    }
}

#[tokio::test]
async fn rate_sampling_caps_a_fast_post_keeps_deletions_and_resume_skips_what_it_left_out() {
    let s = Server::standalone().start().await;
    let mut full = Sse::connect(&s.base, "rs", None).await;
    let mut sampled = Sse::connect_url(&stream_url(&s.base, "rs", "&rate=5"), None).await;
    assert!(full.started(T).await && sampled.started(T).await);
    // 200 comments from 40 users, as fast as 8 concurrent posters go.
    let t0 = Instant::now();
    let posted: Vec<Value> = futures::future::join_all((0..8).map(|w| {
        let s = &s;
        async move {
            let mut out = Vec::new();
            for i in 0..25 {
                let user = format!("user{}", (w * 25 + i) % 40);
                let (status, c) = s.post("rs", &user, &format!("c{w}-{i}")).await;
                assert_eq!(status, 201);
                out.push(c);
            }
            out
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    let posting = t0.elapsed();
    let all = full.comments(200, T).await;
    assert_eq!(all.len(), 200, "without rate: every comment");
    let last_full = full.last_id.clone().unwrap();

    // The sampled stream: comments until its resume token catches up with the hub's, and the
    // sampling note.
    let mut got = Vec::new();
    let mut note = None;
    let deadline = Instant::now() + T;
    while sampled.last_id.as_deref() != Some(last_full.as_str()) || note.is_none() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match sampled.next(left).await {
            Some(e) if e.event == "comment" => got.push((Instant::now(), e.json())),
            Some(e) if e.event == "sampling" => note = Some(e.json()),
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(
        sampled.last_id.as_deref(),
        Some(last_full.as_str()),
        "the sampled stream's resume token covers what it was not shown"
    );
    let note = note.expect("event: sampling while comments are left out");
    assert_eq!(note["rate"], 5);
    assert!(note["total"].as_u64().unwrap() > note["shown"].as_u64().unwrap());
    // At most 5 a second (plus the bucket's one at the start), over the time comments came.
    let secs = posting.as_secs_f64().ceil() as usize + 1;
    assert!(
        !got.is_empty() && got.len() <= 5 * secs + 1 && got.len() < 200,
        "{} comments in {posting:?}",
        got.len()
    );
    let users: std::collections::HashSet<&str> = got
        .iter()
        .map(|(_, c)| c["user_id"].as_str().unwrap())
        .collect();
    assert!(users.len() * 2 >= got.len(), "spread over users: {users:?}");
    let posted_ids = ids(&posted);
    for (_, c) in &got {
        assert!(posted_ids.contains(&c["id"].as_str().unwrap().to_string()));
    }

    // A deletion of a comment it was shown reaches it.
    let shown = got[0].1["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.delete("rs", &shown, got[0].1["user_id"].as_str().unwrap())
            .await,
        204
    );
    let del = sampled.stream_events(1, T).await;
    assert_eq!(del.len(), 1);
    assert_eq!(del[0].event, "delete");
    assert_eq!(del[0].json()["id"], shown.as_str());

    // Resume never replays what sampling left out.
    let token = sampled.last_id.clone().unwrap();
    drop(sampled);
    let mut resumed = Sse::connect_url(&stream_url(&s.base, "rs", "&rate=5"), Some(&token)).await;
    assert!(
        resumed
            .stream_events(1, Duration::from_millis(1500))
            .await
            .is_empty(),
        "nothing to replay"
    );
}

#[tokio::test]
async fn reactions_on_cql_with_two_ingest_nodes_share_the_limit_and_the_totals() {
    let Some(r) = CqlRegion::start("reactions", 2).await else {
        return;
    };
    let (ingest, reader, fanout) = (&r.ingest, &r.reader, &r.fanout);
    let mut v = Sse::connect(&fanout.base, "rxc", None).await;
    assert!(v.started(T).await);
    // One user, alternating nodes, each request waiting for its answer: 20 a second over the
    // region, not per node (CONTRACT §7).
    let mut accepted = 0;
    let t0 = Instant::now();
    let mut refused = false;
    for i in 0..40 {
        match ingest[i % 2].react("rxc", "erin", "love").await {
            202 => accepted += 1,
            429 => {
                refused = true;
                break;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(refused, "the region's limit refuses the 21st");
    let refill = (t0.elapsed().as_secs_f64() * 20.0).ceil() as usize;
    assert!(
        (20..=20 + refill).contains(&accepted),
        "{accepted} in {:?}",
        t0.elapsed()
    );
    let want = json!({"like": 0, "love": accepted, "haha": 0, "wow": 0, "sad": 0, "angry": 0});
    let (sum, _) = reactions_until(&mut v, &want, T).await;
    assert_eq!(sum, want, "both nodes' counts reach the fanout's stream");
    let totals = eventually(T, || async {
        let t = reader.reactions("rxc").await;
        (t == want).then_some(t)
    })
    .await;
    assert_eq!(totals, Some(want), "durable in the CQL counters");
}
