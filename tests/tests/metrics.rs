//! `GET /metrics`: every metric the binary exports moves when its event happens, and every
//! query of the Grafana dashboard (`deploy/grafana/livecomments.json`) names an exported
//! metric.
//!
//! A standalone moves: comments created / idempotent replays / deleted, requests rejected,
//! rate limited, store batches, SSE streams / posts / events delivered / replayed / refused,
//! and the histograms of POST, store commit, publish → SSE and replay length. A standalone
//! with NATS and a second region nobody serves moves the since-query histogram and the
//! remote-region failures. Only faults move the others, and other test files cause them:
//! `store_errors`, `write_queue_full`, `withdraw_failures` (a failing store: faults.rs,
//! durability.rs), `bus_publish_errors`, `bus_dropped`, `hub_repairs` (a bus that is down or
//! loses messages: faults.rs, chaos.rs), `bus_decode_errors` (security/bus.rs),
//! `writers_lost` (ingest_nodes.rs), `sse_slow_disconnects` (stream.rs),
//! `since_queries_served` (regions.rs). Here they are only asserted exported.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use livecomments_tests::*;
use serde_json::Value;

/// Generous for one event on a loaded 2-core CI machine; a pass takes milliseconds.
const WAIT: Duration = Duration::from_secs(10);

/// One scrape: series (`name` or `name{labels}`, as written) → value, and the exported
/// metric names (a histogram `h` as `h_bucket`, `h_sum` and `h_count` too).
struct Scrape {
    series: HashMap<String, f64>,
    names: BTreeSet<String>,
}

impl Scrape {
    async fn of(s: &Server) -> Scrape {
        let resp = client().get(s.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        Scrape::parse(&resp.text().await.unwrap())
    }

    fn parse(text: &str) -> Scrape {
        let mut series = HashMap::new();
        let mut names = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                names.insert(name.to_string());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let (key, value) = line.rsplit_once(' ').unwrap();
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line:?}"));
                series.insert(key.to_string(), value);
            }
        }
        Scrape { series, names }
    }

    /// The value of one series (`livecomments_` is prepended); 0 when absent.
    fn get(&self, series: &str) -> f64 {
        self.series
            .get(&format!("livecomments_{series}"))
            .copied()
            .unwrap_or(0.0)
    }
}

/// Waits until `series` is `before + by` (a counter) or fails saying what it is.
async fn moved_by(s: &Server, before: &Scrape, series: &str, by: f64) {
    let want = before.get(series) + by;
    let got = eventually(WAIT, || async {
        let now = Scrape::of(s).await.get(series);
        (now == want).then_some(())
    })
    .await;
    assert!(
        got.is_some(),
        "{series}: want {want}, is {}",
        Scrape::of(s).await.get(series)
    );
}

/// Waits until `series` is above its value in `before`.
async fn moved(s: &Server, before: &Scrape, series: &str) -> f64 {
    let was = before.get(series);
    let got = eventually(WAIT, || async {
        let now = Scrape::of(s).await.get(series);
        (now > was).then_some(now)
    })
    .await;
    got.unwrap_or_else(|| panic!("{series} stayed at {was}"))
}

async fn post_keyed(s: &Server, user: &str, text: &str, key: &str) -> u16 {
    client()
        .post(s.url("/comment?post_id=p"))
        .bearer_auth(token(user))
        .header("idempotency-key", key)
        .json(&serde_json::json!({ "text": text }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn each_metric_moves_when_its_event_happens() {
    // 2 comments per user per minute: the third of one user is refused; everyone else here
    // posts at most 2. One stream per IP: a second concurrent one is refused.
    let s = Server::standalone()
        .rate_limit(2)
        .args(["--rate-window-secs", "60", "--max-streams-per-ip", "1"])
        .start()
        .await;
    let start = Scrape::of(&s).await;
    for name in [
        "comments_created_total",
        "sse_streams",
        "post_seconds_count",
        "publish_to_sse_seconds_count",
        "sse_replay_length_count",
    ] {
        assert_eq!(start.get(name), 0.0, "{name} before anything happened");
    }

    // A viewer: one open stream, one post with a hub.
    let mut viewer = Sse::connect(&s.base, "p", None).await;
    assert!(viewer.started(WAIT).await);
    moved_by(&s, &start, "sse_streams", 1.0).await;
    moved_by(&s, &start, "sse_posts", 1.0).await;

    // A second stream from the same IP is over `--max-streams-per-ip 1`.
    let before = Scrape::of(&s).await;
    let refused = Sse::connect(&s.base, "p", None).await;
    assert_ne!(refused.status, 200);
    moved_by(&s, &before, "sse_refused_total", 1.0).await;
    drop(refused);

    // A comment: stored in one batch, answered 201, delivered to the one viewer.
    let before = Scrape::of(&s).await;
    let (status, first) = s.post("p", "alice", "one").await;
    assert_eq!(status, 201, "{first}");
    let got = viewer.next_comment(WAIT).await.expect("the live comment");
    assert_eq!(got["id"], first["id"]);
    let resume_from = viewer.last_id.clone().expect("an event id");
    moved_by(&s, &before, "comments_created_total", 1.0).await;
    moved_by(&s, &before, "store_batches_total", 1.0).await;
    moved_by(&s, &before, "store_commit_seconds_count", 1.0).await;
    moved_by(&s, &before, "post_seconds_count", 1.0).await;
    moved_by(&s, &before, "sse_events_delivered_total", 1.0).await;
    // Once per comment per hub, not per viewer.
    moved_by(&s, &before, "publish_to_sse_seconds_count", 1.0).await;
    let after = Scrape::of(&s).await;
    assert!(after.get("post_seconds_sum") > before.get("post_seconds_sum"));
    // The comment reached the viewer's queue within 10 s of its id time: the +Inf-less
    // top bucket counts it (a clock that ran backwards would put it in `le="0.001"`).
    assert_eq!(
        after.get("publish_to_sse_seconds_bucket{le=\"10\"}"),
        before.get("publish_to_sse_seconds_bucket{le=\"10\"}") + 1.0
    );

    // The same Idempotency-Key twice: one comment, one replay, two 201s timed.
    let before = Scrape::of(&s).await;
    assert_eq!(post_keyed(&s, "carol", "keyed", "k-1").await, 201);
    assert_eq!(post_keyed(&s, "carol", "keyed", "k-1").await, 201);
    moved_by(&s, &before, "comments_created_total", 1.0).await;
    moved_by(&s, &before, "comments_idempotent_replays_total", 1.0).await;
    moved_by(&s, &before, "post_seconds_count", 2.0).await;

    // A POST without a token is a 4xx.
    let before = Scrape::of(&s).await;
    let r = client()
        .post(s.url("/comment?post_id=p"))
        .json(&serde_json::json!({"text": "anonymous"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    moved_by(&s, &before, "requests_rejected_total", 1.0).await;

    // The third comment of one user within the window.
    let before = Scrape::of(&s).await;
    for text in ["s1", "s2"] {
        assert_eq!(s.post("p", "spammer", text).await.0, 201);
    }
    assert_eq!(s.post("p", "spammer", "s3").await.0, 429);
    moved_by(&s, &before, "rate_limited_total", 1.0).await;
    moved_by(&s, &before, "comments_created_total", 2.0).await;

    // A banned user's comment and reaction (CONTRACT §8): moderation refusals, not the limit.
    let (status, _) = ban(
        &s.base,
        Some(&mod_token("mod")),
        &serde_json::json!({"user_id": "troll", "post_id": "p"}),
    )
    .await;
    assert_eq!(status, 201);
    let before = Scrape::of(&s).await;
    assert_eq!(s.post("p", "troll", "hi").await.0, 403);
    assert_eq!(s.react("p", "troll", "angry").await, 403);
    moved_by(&s, &before, "moderation_refused_total", 2.0).await;
    moved_by(&s, &before, "rate_limited_total", 0.0).await;

    // A deletion by the author.
    let before = Scrape::of(&s).await;
    let id = first["id"].as_str().unwrap();
    let r = client()
        .delete(s.url(&format!("/comment/{id}?post_id=p")))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    moved_by(&s, &before, "comments_deleted_total", 1.0).await;

    // The viewer leaves; two comments while it is away; it resumes from "one".
    drop(viewer);
    moved_by(&s, &start, "sse_streams", 0.0).await;
    moved_by(&s, &start, "sse_posts", 0.0).await;
    for text in ["d1", "d2"] {
        assert_eq!(s.post("p", "dave", text).await.0, 201);
    }
    let before = Scrape::of(&s).await;
    let mut resumed = Sse::connect(&s.base, "p", Some(&resume_from)).await;
    // After "one": carol's, the spammer's two, dave's two. The fresh hub's start scan
    // covers all five (they are in the store), so all five come as the replay.
    let missed = resumed.comments(5, WAIT).await;
    assert_eq!(missed.len(), 5, "{missed:?}");
    moved_by(&s, &before, "sse_replayed_total", 5.0).await;
    moved_by(&s, &before, "sse_replay_length_count", 1.0).await;
    moved_by(&s, &before, "sse_replay_length_sum", 5.0).await;
    // 5 comments: in the `le="5"` bucket, not in `le="2"`.
    let after = Scrape::of(&s).await;
    for (bucket, by) in [("2", 0.0), ("5", 1.0)] {
        let series = format!("sse_replay_length_bucket{{le=\"{bucket}\"}}");
        assert_eq!(after.get(&series), before.get(&series) + by, "{series}");
    }

    // What only faults or other setups move is still exported (at 0 here). Not
    // `since_query_seconds`: it has a series per remote region, and this one has none (the
    // test below has one).
    for name in [
        "store_errors_total",
        "write_queue_full_total",
        "withdraw_failures_total",
        "withdrawals_retracted_total",
        "bus_publish_errors_total",
        "bus_decode_errors_total",
        "bus_dropped_total",
        "hub_repairs_total",
        "writers_lost_total",
        "sse_slow_disconnects_total",
        "since_queries_served_total",
        "remote_region_failures_total",
    ] {
        let full = format!("livecomments_{name}");
        assert!(after.names.contains(&full), "{full} not exported");
    }
}

#[tokio::test]
async fn since_queries_to_another_region_are_timed_per_region() {
    let nats = Nats::start().await;
    // Region "far" is on the list but nobody answers its since-queries.
    let s = Server::standalone()
        .nats(&nats.url)
        .args(["--region", "near", "--regions", "near,far"])
        .start()
        .await;
    let before = Scrape::of(&s).await;
    // The series exists from the start, so a dashboard's rate of it does too.
    let far = "since_query_seconds_count{region=\"far\"}";
    assert!(
        before.series.contains_key(&format!("livecomments_{far}")),
        "no {far} before the first query"
    );
    // A page reads every region; "far" fails (no responders, or the 1.5 s timeout).
    let (status, body) = s.get_json("/comments?post_id=p").await;
    assert!(status == 200 || status == 503, "{status} {body}");
    moved_by(&s, &before, far, 1.0).await;
    moved(&s, &before, "remote_region_failures_total").await;
    // Nothing above the timeout: the 1.5 s bucket holds every query.
    let after = Scrape::of(&s).await;
    assert_eq!(
        after.get("since_query_seconds_bucket{region=\"far\",le=\"1.5\"}"),
        after.get(far),
        "{:?}",
        after.series
    );
}

/// The dashboard's queries, from every panel (rows' panels too).
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/livecomments.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dash["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        for t in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            out.push((title, t["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// `livecomments_…` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("livecomments_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn every_dashboard_query_names_an_exported_metric() {
    // With a remote region, so that the per-region since-query series exist too.
    let nats = Nats::start().await;
    let s = Server::standalone()
        .nats(&nats.url)
        .args(["--region", "near", "--regions", "near,far"])
        .start()
        .await;
    let scrape = Scrape::of(&s).await;
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut shown = BTreeSet::new();
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "panel {title:?}: {expr} names no metric");
        for n in names {
            assert!(
                scrape.names.contains(&n),
                "panel {title:?}: {n} is not exported; exported: {:?}",
                scrape.names
            );
            shown.insert(n);
        }
    }
    // And the other way: every exported metric has a panel (a histogram by any series).
    for name in &scrape.names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        let on_dashboard = shown
            .iter()
            .any(|n| n == name || n.strip_prefix(base).is_some_and(|s| s.starts_with('_')));
        assert!(on_dashboard, "{name} has no panel");
    }
}
