//! CONTRACT §8 (bans and timeouts) and §9 (post settings: slow mode, closed, pinned comment)
//! against the real binary: standalone, several ingest nodes on one CQL keyspace, and two
//! regions on one NATS.

use std::time::{Duration, Instant};

use livecomments_tests::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);
/// The contract's bound for a ban or a setting to apply on every node of every region.
const SPREAD: Duration = Duration::from_secs(2);

async fn post_as(base: &str, post: &str, user: &str, text: &str) -> (u16, Value) {
    post_comment(base, post, &token(user), text).await
}

/// Polls until `user`'s POST on `post` through `base` is refused with `code` within `within`.
async fn refused_within(base: &str, post: &str, user: &str, code: &str, within: Duration) -> bool {
    eventually(within, || async {
        let (status, body) = post_as(base, post, user, "probe").await;
        (body["error"]["code"] == code && status >= 400).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test]
async fn bans_need_a_moderator_and_valid_input_and_bad_input_stores_nothing() {
    let s = Server::standalone().start().await;
    let m = mod_token("mod");
    let body = json!({"user_id": "troll", "post_id": "p1"});
    let (st, b) = ban(&s.base, None, &body).await;
    assert_error(st, &b, 401, "invalid_token");
    let (st, b) = ban(&s.base, Some(&token("alice")), &body).await;
    assert_error(st, &b, 403, "forbidden");
    for bad in [
        json!({"user_id": "troll", "duration_secs": 0}),
        json!({"user_id": "troll", "duration_secs": 1_209_601}),
        json!({"user_id": "troll", "delete_comments": true}),
        json!({"user_id": "", "post_id": "p1"}),
        json!({"user_id": "troll", "post_id": "a.b"}),
        json!({"user_id": "troll", "reason": "x".repeat(501)}),
    ] {
        let (st, b) = ban(&s.base, Some(&m), &bad).await;
        assert_eq!(st, 400, "{bad}: {b}");
        assert!(b["error"]["code"].is_string(), "{b}");
    }
    for bad in [
        json!({"user_id": "troll", "colour": "red"}),
        json!({"user_id": "troll", "duration_secs": -5}),
        json!({"user_id": "troll", "duration_secs": "60"}),
        json!({"post_id": "p1"}),
        json!(["troll"]),
    ] {
        let (st, b) = ban(&s.base, Some(&m), &bad).await;
        assert_error(st, &b, 400, "invalid_json");
    }
    // Not JSON at all.
    let r = client()
        .post(s.url("/moderation/bans"))
        .bearer_auth(&m)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (st, listed) = list_bans(&s.base, &m, None).await;
    assert_eq!(st, 200);
    assert_eq!(
        listed["bans"],
        json!([]),
        "nothing stored by refused requests"
    );
    let (st, b) = list_bans(&s.base, &token("alice"), None).await;
    assert_error(st, &b, 403, "forbidden");
    assert_eq!(post_as(&s.base, "p1", "troll", "still here").await.0, 201);
}

#[tokio::test]
async fn a_ban_refuses_the_users_posts_until_lifted_and_survives_a_restart() {
    let mut s = Server::standalone().start().await;
    let m = mod_token("mod");
    let (st, b) = ban(
        &s.base,
        Some(&m),
        &json!({"user_id": "troll", "post_id": "p1", "reason": "spam"}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["user_id"], "troll");
    assert_eq!(b["post_id"], "p1");
    assert_eq!(b["expires_at"], Value::Null);
    assert_eq!(b["reason"], "spam");
    assert_eq!(b["created_by"], "mod");
    assert!(
        b["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{b}"
    );

    let before = s.all_comments("p1").await.len();
    let (st, b) = post_as(&s.base, "p1", "troll", "hello").await;
    assert_error(st, &b, 403, "banned");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permanently"),
        "{b}"
    );
    assert_eq!(s.all_comments("p1").await.len(), before, "nothing stored");
    assert_eq!(
        post_as(&s.base, "p2", "troll", "elsewhere").await.0,
        201,
        "other posts are open"
    );
    assert_eq!(post_as(&s.base, "p1", "alice", "others post").await.0, 201);

    // A global ban reaches every post; the list of p2 shows it, p1's shows both.
    let (st, _) = ban(&s.base, Some(&m), &json!({"user_id": "troll"})).await;
    assert_eq!(st, 201);
    assert_eq!(post_as(&s.base, "p2", "troll", "x").await.0, 403);
    let (_, l) = list_bans(&s.base, &m, Some("p1")).await;
    assert_eq!(l["bans"].as_array().unwrap().len(), 2, "{l}");
    let (_, l) = list_bans(&s.base, &m, Some("p3")).await;
    assert_eq!(l["bans"].as_array().unwrap().len(), 1, "{l}");

    // Durable: a restart (kill -9) keeps both.
    s.restart().await;
    let (st, b) = post_as(&s.base, "p1", "troll", "after restart").await;
    assert_error(st, &b, 403, "banned");

    assert_eq!(unban(&s.base, &m, "troll", None).await, 204);
    assert_eq!(
        unban(&s.base, &m, "troll", None).await,
        404,
        "already lifted"
    );
    assert_eq!(unban(&s.base, &m, "nobody", Some("p1")).await, 404);
    assert_eq!(
        unban(&s.base, &token("alice"), "troll", Some("p1")).await,
        403
    );
    assert_eq!(post_as(&s.base, "p2", "troll", "back on p2").await.0, 201);
    assert_eq!(
        post_as(&s.base, "p1", "troll", "still not on p1").await.0,
        403
    );
    assert_eq!(unban(&s.base, &m, "troll", Some("p1")).await, 204);
    s.restart().await;
    assert_eq!(
        post_as(&s.base, "p1", "troll", "back").await.0,
        201,
        "the removal is durable too"
    );
}

#[tokio::test]
async fn a_timeout_names_its_expiry_and_ends_by_itself() {
    let s = Server::standalone().start().await;
    let m = mod_token("mod");
    let (st, b) = ban(
        &s.base,
        Some(&m),
        &json!({"user_id": "hot", "post_id": "p", "duration_secs": 2}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let expires = b["expires_at"].as_str().expect("expires_at").to_string();
    let (st, b) = post_as(&s.base, "p", "hot", "x").await;
    assert_error(st, &b, 403, "banned");
    assert!(
        b["error"]["message"].as_str().unwrap().contains(&expires),
        "{b} names {expires}"
    );
    let t = Instant::now();
    let back = eventually(Duration::from_secs(5), || async {
        (post_as(&s.base, "p", "hot", "back").await.0 == 201).then_some(())
    })
    .await;
    assert!(back.is_some(), "the timeout ended");
    assert!(t.elapsed() < Duration::from_secs(4));
    let (_, l) = list_bans(&s.base, &m, Some("p")).await;
    assert_eq!(l["bans"], json!([]), "an expired ban is not active");
}

#[tokio::test]
async fn a_ban_with_delete_comments_deletes_each_comment_on_every_stream() {
    let s = Server::standalone().start().await;
    let mut posted = Vec::new();
    for i in 0..3 {
        let (st, c) = post_as(&s.base, "purge", "troll", &format!("spam {i}")).await;
        assert_eq!(st, 201);
        posted.push(c["id"].as_str().unwrap().to_string());
    }
    let (_, keep) = post_as(&s.base, "purge", "alice", "fine").await;
    let (_, other_post) = post_as(&s.base, "other", "troll", "not here").await;
    let mut sse = Sse::connect(&s.base, "purge", None).await;
    assert!(sse.started(T).await);
    let (st, b) = ban(
        &s.base,
        Some(&mod_token("mod")),
        &json!({"user_id": "troll", "post_id": "purge", "delete_comments": true}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let mut deleted = Vec::new();
    while deleted.len() < 3 {
        let ev = sse.next_named("delete", T).await.expect("event: delete");
        deleted.push(ev.json()["id"].as_str().unwrap().to_string());
    }
    deleted.sort();
    assert_eq!(deleted, posted);
    let left = ids(&s.all_comments("purge").await);
    assert_eq!(left, vec![keep["id"].as_str().unwrap().to_string()]);
    assert_eq!(
        s.all_comments("other").await.len(),
        1,
        "{other_post}: other posts keep theirs"
    );
}

#[tokio::test]
async fn settings_are_public_validated_and_durable() {
    let mut s = Server::standalone().start().await;
    let m = mod_token("mod");
    let (st, b) = get_settings(&s.base, "set").await;
    assert_eq!(st, 200);
    assert_eq!(
        b,
        json!({"post_id": "set", "slow_mode_secs": 0, "closed": false, "pinned_comment_id": null})
    );
    let (st, b) = get_settings(&s.base, "a.b").await;
    assert_error(st, &b, 400, "invalid_post_id");
    let (st, b) = put_settings(&s.base, &token("alice"), "set", &json!({"closed": true})).await;
    assert_error(st, &b, 403, "forbidden");
    for bad in [
        json!({"slow_mode_secs": 3601}),
        json!({"slow_mode_secs": -1}),
        json!({"slow_mode_secs": "5"}),
        json!({"closed": "yes"}),
        json!({"pinned_comment_id": 7}),
        json!({"post_id": "other"}),
        json!({"color": "red"}),
    ] {
        let (st, b) = put_settings(&s.base, &m, "set", &bad).await;
        assert_eq!(st, 400, "{bad}: {b}");
    }
    let (st, b) = put_settings(
        &s.base,
        &m,
        "set",
        &json!({"pinned_comment_id": "01JDQ7Z8XK3M4N5P6Q7R8S9T0V"}),
    )
    .await;
    assert_error(st, &b, 404, "not_found");
    let (_, other) = post_as(&s.base, "elsewhere", "alice", "wrong post").await;
    let (st, b) = put_settings(
        &s.base,
        &m,
        "set",
        &json!({"pinned_comment_id": other["id"]}),
    )
    .await;
    assert_error(st, &b, 404, "not_found");
    assert_eq!(
        get_settings(&s.base, "set").await.1["closed"],
        false,
        "nothing changed"
    );

    let (st, b) = put_settings(&s.base, &m, "set", &json!({"slow_mode_secs": 30})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b,
        json!({"post_id": "set", "slow_mode_secs": 30, "closed": false, "pinned_comment_id": null})
    );
    let (_, b) = put_settings(
        &s.base,
        &m,
        "set",
        &json!({"closed": true, "post_id": "set"}),
    )
    .await;
    assert_eq!(b["slow_mode_secs"], 30, "a subset keeps the other fields");
    s.restart().await;
    assert_eq!(
        get_settings(&s.base, "set").await.1,
        json!({"post_id": "set", "slow_mode_secs": 30, "closed": true, "pinned_comment_id": null})
    );
}

#[tokio::test]
async fn closed_posts_refuse_comments_but_keep_reading_and_streaming() {
    let s = Server::standalone().start().await;
    let m = mod_token("mod");
    let (_, c) = post_as(&s.base, "cl", "alice", "before").await;
    let mut sse = Sse::connect(&s.base, "cl", None).await;
    assert!(sse.started(T).await);
    assert_eq!(
        put_settings(&s.base, &m, "cl", &json!({"closed": true}))
            .await
            .0,
        200
    );
    let (st, b) = post_as(&s.base, "cl", "alice", "after").await;
    assert_error(st, &b, 403, "post_closed");
    let r = client()
        .post(s.url("/comment?post_id=cl"))
        .bearer_auth(&m)
        .json(&json!({"text": "mod too"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        ids(&s.all_comments("cl").await),
        vec![c["id"].as_str().unwrap().to_string()]
    );
    assert_eq!(
        post_as(&s.base, "open", "alice", "other posts").await.0,
        201
    );
    assert_eq!(
        put_settings(&s.base, &m, "cl", &json!({"closed": false}))
            .await
            .0,
        200
    );
    let (st, c2) = post_as(&s.base, "cl", "alice", "reopened").await;
    assert_eq!(st, 201);
    let live = sse.next_comment(T).await.expect("the stream kept working");
    assert_eq!(live["id"], c2["id"]);
}

#[tokio::test]
async fn slow_mode_spaces_a_users_comments_and_spares_moderators() {
    let s = Server::standalone().start().await;
    let m = mod_token("mod");
    assert_eq!(
        put_settings(&s.base, &m, "slow", &json!({"slow_mode_secs": 2}))
            .await
            .0,
        200
    );
    assert_eq!(post_as(&s.base, "slow", "alice", "one").await.0, 201);
    let r = client()
        .post(s.url("/comment?post_id=slow"))
        .bearer_auth(token("alice"))
        .json(&json!({"text": "two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "slow_mode");
    assert_eq!(post_as(&s.base, "slow", "bob", "another user").await.0, 201);
    assert_eq!(
        post_as(&s.base, "fast", "alice", "another post").await.0,
        201
    );
    for i in 0..3 {
        let r = client()
            .post(s.url("/comment?post_id=slow"))
            .bearer_auth(&m)
            .json(&json!({"text": format!("mod {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "moderators are exempt");
    }
    let t = Instant::now();
    let ok = eventually(Duration::from_secs(4), || async {
        (post_as(&s.base, "slow", "alice", "later").await.0 == 201).then_some(())
    })
    .await;
    assert!(ok.is_some() && t.elapsed() < Duration::from_secs(3));
    assert_eq!(
        put_settings(&s.base, &m, "slow", &json!({"slow_mode_secs": 0}))
            .await
            .0,
        200
    );
    assert_eq!(post_as(&s.base, "slow", "alice", "off").await.0, 201);
}

#[tokio::test]
async fn a_pinned_comment_opens_every_stream_and_pin_unpin_and_delete_reach_live_streams() {
    let s = Server::standalone().start().await;
    let m = mod_token("mod");
    let (_, c) = post_as(&s.base, "pin", "alice", "pin me").await;
    let mut live = Sse::connect(&s.base, "pin", None).await;
    assert!(live.started(T).await);
    let (st, b) = put_settings(&s.base, &m, "pin", &json!({"pinned_comment_id": c["id"]})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["pinned_comment_id"], c["id"]);
    let ev = live.next_named("pin", T).await.expect("live event: pin");
    assert_eq!(ev.json(), c, "the whole comment");

    // A new stream: `retry:` first, then the pin.
    let mut fresh = Sse::connect(&s.base, "pin", None).await;
    let first = fresh.next(T).await.expect("retry");
    assert_eq!(first.event, "retry");
    let second = fresh.next(T).await.expect("pin");
    assert_eq!(second.event, "pin");
    assert_eq!(second.json(), c);

    let (_, b) = put_settings(&s.base, &m, "pin", &json!({"pinned_comment_id": null})).await;
    assert_eq!(b["pinned_comment_id"], Value::Null);
    for sse in [&mut live, &mut fresh] {
        let ev = sse.next_named("unpin", T).await.expect("event: unpin");
        assert_eq!(ev.json(), json!({"post_id": "pin"}));
    }

    // Deleting the pinned comment unpins it.
    assert_eq!(
        put_settings(&s.base, &m, "pin", &json!({"pinned_comment_id": c["id"]}))
            .await
            .0,
        200
    );
    assert!(live.next_named("pin", T).await.is_some());
    let r = client()
        .delete(s.url(&format!(
            "/comment/{}?post_id=pin",
            c["id"].as_str().unwrap()
        )))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let ev = live
        .next_named("unpin", T)
        .await
        .expect("unpinned by the deletion");
    assert_eq!(ev.json(), json!({"post_id": "pin"}));
    assert_eq!(
        get_settings(&s.base, "pin").await.1["pinned_comment_id"],
        Value::Null
    );
    let mut after = Sse::connect(&s.base, "pin", None).await;
    assert!(after.started(T).await);
    assert!(
        after
            .next_named("pin", Duration::from_millis(500))
            .await
            .is_none()
    );
}

async fn cql_region(n: usize, prefix: &str) -> Option<CqlRegion> {
    CqlRegion::start(prefix, n).await
}

#[tokio::test]
async fn on_cql_a_ban_beats_a_burst_on_every_ingest_node_within_two_seconds() {
    let Some(r) = cql_region(3, "modban").await else {
        eprintln!("no CQL node: skipped");
        return;
    };
    let bases: Vec<String> = r.ingest.iter().map(|s| s.base.clone()).collect();
    // The burst: the user posts through every node as fast as answers come.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut burst = Vec::new();
    for base in bases.clone() {
        let stop = stop.clone();
        burst.push(tokio::spawn(async move {
            let mut accepted_at = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let (st, _) = post_comment(&base, "race", &token("burst"), "spam").await;
                if st == 201 {
                    accepted_at.push(sent);
                }
            }
            accepted_at
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, b) = ban(
        &bases[1],
        Some(&mod_token("mod")),
        &json!({"user_id": "burst", "post_id": "race"}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let banned_at = Instant::now();
    tokio::time::sleep(SPREAD + Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut late = 0;
    let mut before = 0;
    for h in burst {
        for sent in h.await.unwrap() {
            if sent >= banned_at + SPREAD {
                late += 1;
            } else {
                before += 1;
            }
        }
    }
    assert!(before > 0, "the burst was accepted before the ban");
    assert_eq!(late, 0, "a POST sent 2 s after the ban was accepted");
    for base in &bases {
        let (st, b) = post_comment(base, "race", &token("burst"), "again").await;
        assert_error(st, &b, 403, "banned");
        assert_eq!(
            post_comment(base, "race", &token("other"), "fine").await.0,
            201
        );
    }
}

#[tokio::test]
async fn on_cql_settings_apply_on_every_node_and_slow_mode_holds_across_nodes() {
    let Some(r) = cql_region(2, "modset").await else {
        eprintln!("no CQL node: skipped");
        return;
    };
    let (a, b) = (&r.ingest[0].base, &r.ingest[1].base);
    let m = mod_token("mod");
    assert_eq!(
        put_settings(a, &m, "sm", &json!({"slow_mode_secs": 5}))
            .await
            .0,
        200
    );
    let t = Instant::now();
    let seen = eventually(SPREAD, || async {
        (get_settings(b, "sm").await.1["slow_mode_secs"] == 5).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "the other node has the setting within 2 s ({:?})",
        t.elapsed()
    );
    assert_eq!(post_as(a, "sm", "alice", "one").await.0, 201);
    let (st, body) = post_as(b, "sm", "alice", "two, through the other node").await;
    assert_error(st, &body, 429, "slow_mode");

    // A pin made through one node reaches the region's fanout streams.
    let (_, c) = post_as(b, "pinq", "bob", "pin me").await;
    let mut sse = Sse::connect(&r.fanout.base, "pinq", None).await;
    assert!(sse.started(T).await);
    assert_eq!(
        put_settings(a, &m, "pinq", &json!({"pinned_comment_id": c["id"]}))
            .await
            .0,
        200
    );
    let ev = sse
        .next_named("pin", SPREAD + Duration::from_secs(1))
        .await
        .expect("pin on the fanout");
    assert_eq!(ev.json()["id"], c["id"]);
    let mut fresh = Sse::connect(&r.fanout.base, "pinq", None).await;
    assert_eq!(fresh.next(T).await.unwrap().event, "retry");
    assert_eq!(
        fresh.next(T).await.unwrap().event,
        "pin",
        "the fanout knows the pin at connect"
    );
    assert_eq!(
        put_settings(b, &m, "pinq", &json!({"closed": true}))
            .await
            .0,
        200
    );
    assert!(refused_within(a, "pinq", "bob", "post_closed", SPREAD).await);
}

/// Two standalone regions on one NATS.
async fn two_regions(nats: &Nats) -> (Server, Server) {
    let eu = Server::standalone()
        .nats(&nats.url)
        .args(["--region", "eu", "--regions", "eu,us"])
        .start()
        .await;
    let us = Server::standalone()
        .nats(&nats.url)
        .args(["--region", "us", "--regions", "eu,us"])
        .start()
        .await;
    (eu, us)
}

#[tokio::test]
async fn a_ban_reaches_the_other_region_within_two_seconds_and_after_restarts() {
    let nats = Nats::start().await;
    let (mut eu, mut us) = two_regions(&nats).await;
    let m = mod_token("mod");
    assert_eq!(
        ban(
            &eu.base,
            Some(&m),
            &json!({"user_id": "far", "post_id": "g"})
        )
        .await
        .0,
        201
    );
    assert!(
        refused_within(&us.base, "g", "far", "banned", SPREAD).await,
        "us enforces within 2 s"
    );
    assert_eq!(
        put_settings(&us.base, &m, "g", &json!({"slow_mode_secs": 60}))
            .await
            .0,
        200
    );
    let seen = eventually(SPREAD, || async {
        (get_settings(&eu.base, "g").await.1["slow_mode_secs"] == 60).then_some(())
    })
    .await;
    assert!(seen.is_some(), "eu has us's setting within 2 s");

    // us restarted: it knows the ban from its own store even with eu down.
    eu.kill9();
    us.restart().await;
    let (st, b) = post_as(&us.base, "g", "far", "x").await;
    assert_error(st, &b, 403, "banned");
    eu.restart().await;
    assert_eq!(get_settings(&eu.base, "g").await.1["slow_mode_secs"], 60);

    // A region down while the other bans learns it once it is back, within 2 s of that.
    us.kill9();
    assert_eq!(
        ban(&eu.base, Some(&m), &json!({"user_id": "late"})).await.0,
        201
    );
    assert_eq!(unban(&eu.base, &m, "far", Some("g")).await, 204);
    us.restart().await;
    assert!(refused_within(&us.base, "any", "late", "banned", SPREAD).await);
    let lifted = eventually(SPREAD, || async {
        (post_as(&us.base, "g", "far", "free").await.0 == 201).then_some(())
    })
    .await;
    assert!(lifted.is_some(), "the removal reached us too");
}

#[tokio::test]
async fn a_region_cut_off_from_the_bus_learns_the_bans_made_meanwhile_once_back() {
    let mut nats = Nats::start().await;
    let (eu, us) = two_regions(&nats).await;
    let m = mod_token("mod");
    nats.kill();
    // eu's store takes the ban while the bus is down (its publish is lost).
    assert_eq!(
        ban(
            &eu.base,
            Some(&m),
            &json!({"user_id": "cut", "post_id": "c"})
        )
        .await
        .0,
        201
    );
    assert_eq!(
        post_as(&us.base, "c", "cut", "us does not know yet")
            .await
            .0,
        201
    );
    nats.restart().await;
    let back = Instant::now();
    // The clients reconnect (≤ 1 s backoff), then the next sync round brings the ban.
    assert!(
        refused_within(
            &us.base,
            "c",
            "cut",
            "banned",
            SPREAD + Duration::from_secs(2)
        )
        .await,
        "us learned the ban after the bus came back"
    );
    eprintln!("learned {:?} after the bus came back", back.elapsed());
}

#[tokio::test]
async fn a_ban_purges_and_a_pin_finds_comments_of_the_other_region() {
    let nats = Nats::start().await;
    let (eu, us) = two_regions(&nats).await;
    let m = mod_token("mod");
    let (st, theirs) = post_as(&us.base, "x", "troll", "posted in us").await;
    assert_eq!(st, 201);
    let (_, keep) = post_as(&us.base, "x", "alice", "pin me, from us").await;
    let mut eu_stream = Sse::connect(&eu.base, "x", None).await;
    assert!(eu_stream.started(T).await);

    // Pinned through eu: the comment lives in us's store.
    let (st, b) = put_settings(&eu.base, &m, "x", &json!({"pinned_comment_id": keep["id"]})).await;
    assert_eq!(st, 200, "{b}");
    let ev = eu_stream.next_named("pin", T).await.expect("pin");
    assert_eq!(ev.json(), keep);
    let mut us_stream = Sse::connect(&us.base, "x", None).await;
    assert!(us_stream.started(T).await);
    let pinned = eventually(SPREAD, || async {
        (get_settings(&us.base, "x").await.1["pinned_comment_id"] == keep["id"]).then_some(())
    })
    .await;
    assert!(pinned.is_some(), "us has eu's pin within 2 s");

    // Banned through eu with delete_comments: us's copy is deleted via the forwarding path.
    let (st, b) = ban(
        &eu.base,
        Some(&m),
        &json!({"user_id": "troll", "post_id": "x", "delete_comments": true}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let ev = us_stream
        .next_named("delete", T)
        .await
        .expect("event: delete in us");
    assert_eq!(ev.json()["id"], theirs["id"]);
    let left = ids(&us.all_comments("x").await);
    assert_eq!(left, vec![keep["id"].as_str().unwrap().to_string()]);
}
