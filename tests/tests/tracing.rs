//! Request ids: echoed or made on every response (routed and lean stream path), carried on
//! NATS so a comment can be followed from the POST in one region to the fanout of another in
//! the logs, and present in `--log-format json` lines. Tokens never reach the log.

use std::time::Duration;

use livecomments_tests::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);
/// The log filter that shows the lines following a request id (`livecomments::trace`).
const TRACE_LOG: &str = "info,livecomments::trace=debug";

fn rid(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on {} {}", r.status(), r.url()))
        .to_str()
        .unwrap()
        .to_string()
}

/// A made id: a ULID (26 characters of Crockford base32).
fn is_made(id: &str) -> bool {
    id.len() == 26
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

async fn get_with(url: &str, id: Option<&[u8]>) -> reqwest::Response {
    let mut req = client().get(url);
    if let Some(id) = id {
        req = req.header(
            "x-request-id",
            reqwest::header::HeaderValue::from_bytes(id).unwrap(),
        );
    }
    req.send().await.unwrap()
}

async fn post_with_id(base: &str, post: &str, user: &str, text: &str, id: &str) -> Value {
    let r = client()
        .post(format!("{base}/comment?post_id={post}"))
        .bearer_auth(token(user))
        .header("x-request-id", id)
        .json(&json!({ "text": text }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(rid(&r), id);
    r.json().await.unwrap()
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let s = Server::standalone().start().await;
    let stream = s.url("/comments/stream?post_id=rid");
    for url in [
        s.url("/healthz"),
        s.url("/comments?post_id=rid"),
        s.url("/no/such/route"),
        stream.clone(),
        s.url("/comments/stream"),
    ] {
        // Given: echoed, on successes and refusals alike (the 404, the stream's 400).
        let r = get_with(&url, Some(b"trace-me-123")).await;
        assert_eq!(rid(&r), "trace-me-123", "{url}");
        let longest = "x".repeat(64);
        assert_eq!(
            rid(&get_with(&url, Some(longest.as_bytes())).await),
            longest
        );
        // Absent: made, and different for each request.
        let a = rid(&get_with(&url, None).await);
        let b = rid(&get_with(&url, None).await);
        assert!(is_made(&a) && is_made(&b), "{url}: {a} {b}");
        assert_ne!(a, b, "{url}");
        // Not acceptable: too long, not ASCII, not visible (space): replaced by a made one.
        let too_long = "y".repeat(65);
        let bad: [&[u8]; 4] = [
            too_long.as_bytes(),
            "café".as_bytes(),
            b"two words",
            b"tab\there",
        ];
        for bad in bad {
            let got = rid(&get_with(&url, Some(bad)).await);
            assert!(is_made(&got), "{url}: {bad:?} gave {got}");
        }
    }
    // A POST (and its refusal) too.
    let c = post_with_id(&s.base, "rid", "alice", "hi", "post-1").await;
    assert!(c["id"].is_string());
    let r = client()
        .post(s.url("/comment?post_id=rid"))
        .header("x-request-id", "no-token")
        .json(&json!({"text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(rid(&r), "no-token");
    // The request line: method, path without its query, status, the id.
    let line = s
        .await_log_line(T, |l| l.contains("post-1") && l.contains("status=201"))
        .await
        .expect("the POST's request line");
    assert!(
        line.contains("method=POST") && line.contains("path=/comment "),
        "{line}"
    );
    let line = s
        .await_log_line(T, |l| {
            l.contains("trace-me-123") && l.contains("path=/comments/stream")
        })
        .await
        .expect("the stream's request line");
    assert!(line.contains("status=200"), "{line}");
    assert!(!line.contains("post_id=rid"), "no query string: {line}");
}

#[tokio::test]
async fn json_log_lines_carry_the_request_id_and_never_a_token() {
    let s = Server::standalone()
        .args(["--log-format", "json"])
        .start()
        .await;
    let secret = token("mallory");
    for path in [
        format!("/comments?post_id=js&access_token={secret}"),
        format!("/comments/stream?post_id=js&access_token={secret}"),
    ] {
        let r = get_with(&s.url(&path), Some(b"json-rid-1")).await;
        assert_eq!(rid(&r), "json-rid-1");
    }
    for path in ["/comments", "/comments/stream"] {
        let line = s
            .await_log_line(T, |l| {
                l.contains("json-rid-1") && l.contains(&format!("\"path\":\"{path}\""))
            })
            .await
            .unwrap_or_else(|| panic!("no JSON request line for {path}"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["span"]["request_id"], "json-rid-1", "{line}");
        assert_eq!(v["span"]["method"], "GET", "{line}");
        assert_eq!(v["span"]["status"], 200, "{line}");
        assert!(v["span"]["latency_ms"].is_number(), "{line}");
        println!("{line}");
    }
    let log = std::fs::read_to_string(s.log_path()).unwrap();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    assert!(!log.contains(&secret), "a token reached the log");
    assert!(
        !log.contains("access_token"),
        "a query string reached the log"
    );
}

/// Posts probes in `from` until `viewer` receives one: gateway interest has propagated.
async fn await_interest(from: &Server, post: &str, viewer: &mut Sse) {
    for i in 0..100 {
        let (st, _) = from.post(post, "probe", &format!("probe {i}")).await;
        assert_eq!(st, 201);
        if viewer
            .next_comment(Duration::from_millis(200))
            .await
            .is_some()
        {
            while viewer
                .next_comment(Duration::from_millis(100))
                .await
                .is_some()
            {}
            return;
        }
    }
    panic!("no cross-region delivery after 100 probes");
}

#[tokio::test]
async fn a_comment_is_followed_by_its_request_id_across_regions() {
    let sc = Supercluster::start(&["eu", "us"]).await;
    let eu = region_server_builder(&sc, "eu")
        .env("RUST_LOG", TRACE_LOG)
        .start()
        .await;
    let us = region_server_builder(&sc, "us")
        .env("RUST_LOG", TRACE_LOG)
        .start()
        .await;
    let mut viewer = Sse::connect(&us.base, "traced", None).await;
    await_interest(&eu, "traced", &mut viewer).await;

    let c = post_with_id(&eu.base, "traced", "alice", "follow me", "trace-me-123").await;
    let id = c["id"].as_str().unwrap().to_string();
    let got = viewer.next_comment(T).await.expect("the comment in us");
    assert_eq!(got["id"], id.as_str());

    // Ingest (eu): the request, and the publish with the comment id.
    let published = eu
        .await_log_line(T, |l| {
            l.contains("published live comment") && l.contains(&id)
        })
        .await
        .expect("eu logs the publish");
    assert!(published.contains("trace-me-123"), "{published}");
    // Fanout (us, another process): the id came in the NATS header, next to the comment id.
    let received = us
        .await_log_line(T, |l| {
            l.contains("live comment received") && l.contains(&id)
        })
        .await
        .expect("us logs the received comment");
    assert!(received.contains("trace-me-123"), "{received}");
    assert!(received.contains("region=eu"), "{received}");

    // A read in us asks eu over NATS: eu's responder logs the reader's request id.
    let r = get_with(&us.url("/comments?post_id=traced"), Some(b"read-me-456")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(rid(&r), "read-me-456");
    let answered = eu
        .await_log_line(T, |l| {
            l.contains("answered a bus request") && l.contains("read-me-456")
        })
        .await
        .expect("eu logs the since-query it answered");
    assert!(answered.contains("comments.since.eu"), "{answered}");

    // A DELETE in us of eu's comment is forwarded; its event reaches us carrying the id.
    let r = client()
        .delete(us.url(&format!("/comment/{id}?post_id=traced")))
        .bearer_auth(token("alice"))
        .header("x-request-id", "delete-me-789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let deleted = us
        .await_log_line(T, |l| {
            l.contains("live deletion received") && l.contains("delete-me-789")
        })
        .await
        .expect("us logs the deletion with the DELETE's request id");
    assert!(deleted.contains(&id), "{deleted}");
}

/// On the wire: the request id is a NATS header of the live event; the payload is the same
/// MessagePack as ever (it decodes as the comment, and does not contain the id).
#[tokio::test]
async fn the_request_id_is_a_nats_header_and_the_payload_is_unchanged() {
    let nats = Nats::start().await;
    let s = Server::standalone().nats(&nats.url).start().await;
    let mut watch = RawNats::connect(&nats.url).await;
    watch.subscribe("comments.live.>").await;
    watch.flush().await;
    let c = post_with_id(&s.base, "wire", "alice", "on the wire", "wire-id-1").await;
    let id = c["id"].as_str().unwrap();
    let msg = loop {
        let m = watch.next(T).await.expect("the live event on NATS");
        if m.subject == "comments.live.local.wire" {
            break m;
        }
    };
    assert!(
        msg.headers
            .contains("Livecomments-Request-Id: wire-id-1\r\n"),
        "{:?}",
        msg.headers
    );
    let ev: livecomments_shared::wire::LiveEvent =
        livecomments_shared::wire::decode(&msg.payload).expect("MessagePack as before");
    match ev {
        livecomments_shared::wire::LiveEvent::Comment(lc) => assert_eq!(lc.comment.id.as_str(), id),
        other => panic!("{other:?}"),
    }
    assert!(!String::from_utf8_lossy(&msg.payload).contains("wire-id-1"));
}

/// A log that goes to a file (not a terminal) is plain text: no colour escape codes around
/// the field names, even without `NO_COLOR` (which every other test sets).
#[tokio::test]
async fn a_log_file_gets_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(bin())
        .args(["standalone", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .env("LIVECOMMENTS_JWT_SECRET", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start livecomments");
    let text = eventually(T, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains("serving").then_some(text) }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = text.expect("the serving line");
    assert!(text.contains("listen="), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a log file: {text:?}"
    );
}
