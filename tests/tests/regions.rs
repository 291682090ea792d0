//! Write locally, read globally: regions on real nats-servers joined by gateways, each with
//! its own store. Cross-region visibility (with latency recorded), a region down and back, a
//! gateway cut and healed, and a viewer resuming after all of it with nothing missing or
//! doubled.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use livecomments_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

/// Posts probes in `from` until `viewer` receives one: gateway interest has propagated.
async fn await_interest(from: &Server, post: &str, viewer: &mut Sse) -> Vec<Value> {
    let mut probes = Vec::new();
    for i in 0..100 {
        let (st, c) = from.post(post, "probe", &format!("probe {i}")).await;
        assert_eq!(st, 201);
        probes.push(c);
        if let Some(got) = viewer.next_comment(Duration::from_millis(200)).await {
            // Probes that arrived, in order (earlier ones may have been lost before interest).
            let mut seen = vec![got];
            while let Some(more) = viewer.next_comment(Duration::from_millis(100)).await {
                seen.push(more);
            }
            return seen;
        }
    }
    panic!("no cross-region delivery after 100 probes");
}

#[tokio::test]
async fn three_regions_read_globally_and_stream_across() {
    let sc = Supercluster::start(&["eu", "us", "ap"]).await;
    let eu = region_server(&sc, "eu").await;
    let us = region_server(&sc, "us").await;
    let ap = region_server(&sc, "ap").await;

    let mut viewer = Sse::connect(&eu.base, "global", None).await;
    let _ = await_interest(&us, "global", &mut viewer).await;
    let _ = await_interest(&ap, "global", &mut viewer).await;

    // SSE latency from a POST in us to receipt in eu.
    let mut sse_lat = Vec::new();
    for i in 0..60 {
        let t0 = Instant::now();
        let (_, c) = us.post("global", "alice", &format!("us {i}")).await;
        let got = viewer
            .next_comment(T)
            .await
            .expect("remote comment on the stream");
        assert_eq!(got["id"], c["id"]);
        assert_eq!(got["region"], "us");
        sse_lat.push(t0.elapsed());
    }
    sse_lat.sort();
    // GET latency: from a POST in ap until eu's merged read shows it.
    let mut get_lat = Vec::new();
    for i in 0..20 {
        let t0 = Instant::now();
        let (_, c) = ap.post("global", "bob", &format!("ap {i}")).await;
        let id = c["id"].as_str().unwrap().to_string();
        eventually(T, || async {
            let (_, page) = eu.get_json("/comments?post_id=global&page_size=5").await;
            page["comments"]
                .as_array()?
                .iter()
                .any(|x| x["id"] == id.as_str())
                .then_some(())
        })
        .await
        .expect("remote comment in GET");
        get_lat.push(t0.elapsed());
    }
    get_lat.sort();
    println!(
        "cross-region latency: SSE p50 {:?} p99 {:?}; GET p50 {:?} p99 {:?}",
        percentile(&sse_lat, 50.0),
        percentile(&sse_lat, 99.0),
        percentile(&get_lat, 50.0),
        percentile(&get_lat, 99.0)
    );
    assert!(
        percentile(&sse_lat, 99.0) < Duration::from_secs(2),
        "contract: other regions within 2 s p99"
    );

    // Every region returns the same merged, stable order.
    let a = ids(&eu.all_comments("global").await);
    let b = ids(&us.all_comments("global").await);
    let c = ids(&ap.all_comments("global").await);
    assert_eq!(a, b);
    assert_eq!(a, c);
    let mut sorted = a.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(a, sorted, "newest first by timestamp then id");
    assert_eq!(a.iter().collect::<HashSet<_>>().len(), a.len());
}

#[tokio::test]
async fn a_region_down_degrades_reads_and_comes_back() {
    let sc = Supercluster::start(&["eu", "us", "ap"]).await;
    let eu = region_server(&sc, "eu").await;
    let mut us = region_server(&sc, "us").await;
    let ap = region_server(&sc, "ap").await;
    let (_, from_us) = us.post("p", "u", "from us").await;
    let (_, from_ap) = ap.post("p", "a", "from ap").await;
    let (_, from_eu) = eu.post("p", "e", "from eu").await;
    // Readers' queue subscriptions reach other regions asynchronously.
    let all = eventually(T, || async {
        let (_, page) = eu.get_json("/comments?post_id=p").await;
        (page["comments"].as_array()?.len() == 3 && page["partial"].is_null()).then_some(())
    })
    .await;
    assert!(all.is_some(), "every region's comment in eu's merged read");

    us.kill9();
    // The others keep serving their own and each other's comments; the page says what is missing.
    let (st, page) = eu.get_json("/comments?post_id=p").await;
    assert_eq!(st, 200);
    assert_eq!(page["partial"], true);
    assert_eq!(page["missing_regions"], serde_json::json!(["us"]));
    let got = ids(page["comments"].as_array().unwrap());
    assert!(
        got.contains(&from_ap["id"].as_str().unwrap().to_string())
            && got.contains(&from_eu["id"].as_str().unwrap().to_string())
    );
    let r = client()
        .get(ap.url("/comments?post_id=p"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-livecomments-missing-regions"], "us");
    assert_eq!(ap.post("p", "a", "still writing").await.0, 201);

    us.restart().await;
    let back = eventually(T, || async {
        let (_, page) = eu.get_json("/comments?post_id=p").await;
        (page["partial"].is_null()
            && ids(page["comments"].as_array()?).contains(&from_us["id"].as_str()?.to_string()))
        .then_some(())
    })
    .await;
    assert!(back.is_some(), "us comments visible again everywhere");
    assert_eq!(ap.all_comments("p").await.len(), 4);
}

#[tokio::test]
async fn gateway_cut_and_heal_loses_nothing_and_resume_is_exact() {
    let sc = Supercluster::start(&["eu", "us"]).await;
    let eu = region_server(&sc, "eu").await;
    let us = region_server(&sc, "us").await;
    let mut viewer = Sse::connect(&eu.base, "cut", None).await;
    let mut seen: Vec<String> = ids(&await_interest(&us, "cut", &mut viewer).await);

    sc.cut("eu", "us");
    // Each side keeps writing; eu cannot see us now.
    let mut posted_us = Vec::new();
    for i in 0..5 {
        let (st, c) = us.post("cut", "u", &format!("during cut {i}")).await;
        assert_eq!(st, 201);
        posted_us.push(c["id"].as_str().unwrap().to_string());
    }
    let (_, local) = eu.post("cut", "e", "local during cut").await;
    let got = viewer.next_comment(T).await.unwrap();
    assert_eq!(
        got["id"], local["id"],
        "local comments keep flowing during the cut, remote ones do not: {got}"
    );
    seen.push(got["id"].as_str().unwrap().to_string());

    sc.heal("eu", "us");
    // Once the gateway is back, the next us comment exposes the gap and the hub repairs it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while posted_us.iter().any(|id| !seen.contains(id)) && Instant::now() < deadline {
        let (_, c) = us.post("cut", "u", "after heal").await;
        posted_us.push(c["id"].as_str().unwrap().to_string());
        while let Some(c) = viewer.next_comment(Duration::from_millis(300)).await {
            seen.push(c["id"].as_str().unwrap().to_string());
        }
    }
    for id in &posted_us[..5] {
        assert!(
            seen.contains(id),
            "comment {id} from the cut reached the viewer"
        );
    }
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "nothing doubled"
    );

    // A viewer that resumes after all of this gets exactly what it missed from both regions.
    let resume = viewer.last_id.clone().unwrap();
    drop(viewer);
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(
            us.post("cut", "u", &format!("missed us {i}")).await.1["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        missed.push(
            eu.post("cut", "e", &format!("missed eu {i}")).await.1["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut v2 = Sse::connect(&eu.base, "cut", Some(&resume)).await;
    let replayed = ids(&v2.comments(missed.len(), T).await);
    assert_eq!(
        replayed.iter().collect::<HashSet<_>>(),
        missed.iter().collect::<HashSet<_>>()
    );
    assert!(
        v2.next_comment(Duration::from_millis(500)).await.is_none(),
        "nothing doubled after the replay"
    );
    // Everything the viewer saw plus what it replayed is every comment of the post.
    let mut everything: HashSet<String> = seen.into_iter().collect();
    everything.extend(replayed);
    let all: HashSet<String> = ids(&eu.all_comments("cut").await).into_iter().collect();
    let probes_before_interest: HashSet<String> = all.difference(&everything).cloned().collect();
    // Only probes posted before the gateway carried interest may be absent from the live view.
    for id in &probes_before_interest {
        let c = eu
            .all_comments("cut")
            .await
            .into_iter()
            .find(|c| c["id"] == id.as_str())
            .unwrap();
        assert!(
            c["text"].as_str().unwrap().starts_with("probe"),
            "missed a real comment: {c}"
        );
    }
}

#[tokio::test]
async fn remote_comment_arriving_late_is_still_resumed() {
    // The us comment is older than the eu one but reaches the eu viewer later (partition);
    // per-region positions still resume it.
    let sc = Supercluster::start(&["eu", "us"]).await;
    let eu = region_server(&sc, "eu").await;
    let us = region_server(&sc, "us").await;
    let mut viewer = Sse::connect(&eu.base, "late", None).await;
    await_interest(&us, "late", &mut viewer).await;
    sc.cut("eu", "us");
    let (_, older_remote) = us.post("late", "u", "older, remote").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, newer_local) = eu.post("late", "e", "newer, local").await;
    assert_eq!(
        viewer.next_comment(T).await.unwrap()["id"],
        newer_local["id"]
    );
    let resume = viewer.last_id.clone().unwrap();
    drop(viewer);
    sc.heal("eu", "us");
    let mut v2 = Sse::connect(&eu.base, "late", Some(&resume)).await;
    let got = v2.comments(1, T).await;
    assert_eq!(
        ids(&got),
        vec![older_remote["id"].as_str().unwrap().to_string()]
    );
}

/// 1,000 active posts with a viewer each in eu, comments posted in us: all arrive, within
/// the contract's 2 s p99, with no per-post polling (the bus carries them across).
#[tokio::test]
async fn a_thousand_active_posts_across_regions() {
    let sc = Supercluster::start(&["eu", "us"]).await;
    let eu = region_server(&sc, "eu").await;
    let us = region_server(&sc, "us").await;
    let posts: Vec<String> = (0..1000).map(|i| format!("post-{i}")).collect();
    let mut viewers = Vec::new();
    for p in &posts {
        viewers.push(Sse::connect(&eu.base, p, None).await);
    }
    let mut first = Sse::connect(&eu.base, "warmup", None).await;
    await_interest(&us, "warmup", &mut first).await;
    let metrics_before = us.metrics().await;
    let served = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("livecomments_since_queries_served_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // Every subscription's interest has crossed the gateway once a message published in us
    // on each post's subject reaches eu's subscription for it: garbage, which eu's fanout
    // drops and counts (one per post; the viewers see nothing). Then post to 200 posts.
    let dropped = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("livecomments_bus_decode_errors_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let dropped_before = dropped(&eu.metrics().await);
    let mut us_bus = RawNats::connect(&sc.url("us")).await;
    for p in &posts {
        us_bus
            .publish(&format!("comments.live.us.{p}"), b"interest probe")
            .await;
    }
    us_bus.flush().await;
    let crossed = eventually(T, || async {
        let n = dropped(&eu.metrics().await) - dropped_before;
        (n >= posts.len() as u64).then_some(())
    })
    .await;
    assert!(
        crossed.is_some(),
        "not every post's interest crossed the gateway: {} of {}",
        dropped(&eu.metrics().await) - dropped_before,
        posts.len()
    );
    let mut lat = Vec::new();
    for i in (0..1000).step_by(5) {
        let t0 = Instant::now();
        let (_, c) = us.post(&posts[i], "u", "hello from us").await;
        let got = viewers[i].next_comment(T).await.expect("delivered");
        assert_eq!(got["id"], c["id"]);
        lat.push(t0.elapsed());
    }
    lat.sort();
    let metrics_after = us.metrics().await;
    println!(
        "1000 active posts: cross-region SSE p50 {:?} p99 {:?}; since-queries served by us during the run: {}",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        served(&metrics_after) - served(&metrics_before)
    );
    assert!(percentile(&lat, 99.0) < Duration::from_secs(2));
}

/// A DELETE that lands in another region than the comment's is forwarded to the owner; every
/// region's streams and reads lose the comment.
#[tokio::test]
async fn deletes_reach_every_region() {
    let sc = Supercluster::start(&["eu", "us"]).await;
    let eu = region_server(&sc, "eu").await;
    let us = region_server(&sc, "us").await;
    let mut viewer_eu = Sse::connect(&eu.base, "del", None).await;
    let mut viewer_us = Sse::connect(&us.base, "del", None).await;
    await_interest(&us, "del", &mut viewer_eu).await;
    await_interest(&eu, "del", &mut viewer_us).await;
    let (_, c) = us.post("del", "alice", "delete me from eu").await;
    let id = c["id"].as_str().unwrap().to_string();
    let del = |who: &str| {
        client()
            .delete(eu.url(&format!("/comment/{id}?post_id=del")))
            .bearer_auth(token(who))
            .send()
    };
    // Someone else may not, even from another region.
    let forbidden = eventually(T, || async {
        (del("mallory").await.ok()?.status().as_u16() == 403).then_some(())
    })
    .await;
    assert!(forbidden.is_some());
    assert_eq!(del("alice").await.unwrap().status().as_u16(), 204);
    for v in [&mut viewer_eu, &mut viewer_us] {
        let mut got = None;
        while let Some(ev) = v.next(T).await {
            if ev.event == "delete" {
                got = Some(ev.json());
                break;
            }
        }
        assert_eq!(got.expect("delete event")["id"], id.as_str());
    }
    for s in [&eu, &us] {
        assert!(!ids(&s.all_comments("del").await).contains(&id));
    }
    assert_eq!(del("alice").await.unwrap().status().as_u16(), 404);
}
