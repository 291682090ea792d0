//! The SSE stream against a real standalone process: headers, live delivery, resume without
//! gaps or duplicates, `since`, heartbeats, slow viewers cut off while others keep going.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use livecomments_tests::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn stream_headers_retry_and_live_comments() {
    let s = Server::standalone().start().await;
    let mut v = Sse::connect(&s.base, "live", None).await;
    assert_eq!(v.status, 200);
    assert_eq!(v.headers["content-type"], "text/event-stream");
    assert_eq!(v.headers["cache-control"], "no-cache");
    assert_eq!(v.headers["x-accel-buffering"], "no");
    let first = v.next(T).await.unwrap();
    assert_eq!(first.event, "retry", "a retry: line comes first");
    let (_, posted) = s.post("live", "alice", "<b>hi</b> & bye").await;
    let got = v.next_comment(T).await.expect("live comment");
    assert_eq!(got, posted, "the stream carries exactly the comment JSON");
    assert!(
        v.last_id
            .as_deref()
            .unwrap()
            .contains(posted["id"].as_str().unwrap())
    );
    // Another post's comments do not leak in.
    s.post("other", "alice", "elsewhere").await;
    let (_, p2) = s.post("live", "bob", "second").await;
    assert_eq!(v.next_comment(T).await.unwrap()["id"], p2["id"]);
}

#[tokio::test]
async fn resume_replays_exactly_what_was_missed() {
    let s = Server::standalone().start().await;
    let mut v = Sse::connect(&s.base, "r", None).await;
    let mut posted = Vec::new();
    for i in 0..5 {
        posted.push(s.post("r", "u", &format!("a{i}")).await.1);
    }
    let got = v.comments(3, T).await;
    assert_eq!(ids(&got), ids(&posted[..3]));
    let resume_from = v.last_id.clone().unwrap();
    drop(v);
    for i in 0..5 {
        posted.push(s.post("r", "u", &format!("b{i}")).await.1);
    }
    // Header form.
    let mut v2 = Sse::connect(&s.base, "r", Some(&resume_from)).await;
    let got = v2.comments(7, T).await;
    assert_eq!(
        ids(&got),
        ids(&posted[3..]),
        "missed ones, in order, none twice"
    );
    // Live continues after the replay with no duplicate at the seam.
    let (_, live) = s.post("r", "u", "after").await;
    assert_eq!(v2.next_comment(T).await.unwrap()["id"], live["id"]);
    assert!(
        v2.next_comment(Duration::from_millis(500)).await.is_none(),
        "nothing doubled"
    );
    // Query form, from the middle.
    let mid = format!("local.{}", posted[7]["id"].as_str().unwrap());
    let mut v3 = Sse::connect_url(
        &s.url(&format!("/comments/stream?post_id=r&last_event_id={mid}")),
        None,
    )
    .await;
    let got = v3.comments(3, T).await;
    assert_eq!(
        ids(&got),
        vec![
            posted[8]["id"].as_str().unwrap(),
            posted[9]["id"].as_str().unwrap(),
            live["id"].as_str().unwrap()
        ]
    );
    // since= starts from a time.
    let mut v4 = Sse::connect_url(&s.url("/comments/stream?post_id=r&since=0"), None).await;
    assert_eq!(v4.comments(11, T).await.len(), 11);
}

#[tokio::test]
async fn resume_under_concurrent_posting_has_no_gap_or_duplicate() {
    let s = Server::standalone().start().await;
    let base = s.base.clone();
    let writer = tokio::spawn(async move {
        let tok = token("w");
        let mut ids = Vec::new();
        for i in 0..150 {
            let (st, c) = post_comment(&base, "seam", &tok, &format!("m{i}")).await;
            assert_eq!(st, 201);
            ids.push(c["id"].as_str().unwrap().to_string());
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        ids
    });
    // A viewer that keeps disconnecting and resuming while comments flow.
    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 150 && Instant::now() < deadline {
        let mut v = Sse::connect_url(
            &s.url("/comments/stream?post_id=seam&since=0"),
            last.as_deref(),
        )
        .await;
        for c in v.comments(7, Duration::from_secs(3)).await {
            seen.push(c["id"].as_str().unwrap().to_string());
        }
        last = v.last_id.clone().or(last);
    }
    let posted = writer.await.unwrap();
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates across resumes");
    assert_eq!(seen, posted, "every comment, in order, exactly once");
}

/// A viewer that drops while another keeps the post's hub open resumes from the hub's memory
/// (its token is one this fanout sent): exactly what it missed, deletions included, in order,
/// ending at the in-step viewers' token, then live with nothing twice. A token the hub never
/// sent replays from history instead.
#[tokio::test]
async fn a_resume_on_the_same_fanout_is_served_from_memory() {
    let s = Server::standalone().start().await;
    let mut keeper = Sse::connect(&s.base, "mem", None).await;
    let mut v = Sse::connect(&s.base, "mem", None).await;
    let mut posted = Vec::new();
    for i in 0..3 {
        posted.push(s.post("mem", "u", &format!("a{i}")).await.1);
    }
    assert_eq!(ids(&v.comments(3, T).await), ids(&posted));
    let token = v.last_id.clone().unwrap();
    drop(v);
    for i in 0..4 {
        posted.push(s.post("mem", "u", &format!("b{i}")).await.1);
    }
    assert_eq!(s.delete("mem", &id_of(&posted[0]), "u").await, 204);
    assert_eq!(
        keeper.stream_events(8, T).await.len(),
        8,
        "the hub sent it all"
    );
    let from_memory = "livecomments_sse_resumes_from_memory_total";
    let (resumed, replayed) = (
        s.metric(from_memory).await,
        s.metric("livecomments_sse_replayed_total").await,
    );

    let mut v2 = Sse::connect(&s.base, "mem", Some(&token)).await;
    let mut want: Vec<_> = posted[3..]
        .iter()
        .map(|c| ev("comment", &id_of(c)))
        .collect();
    want.push(ev("delete", &id_of(&posted[0])));
    assert_eq!(kinds(&v2.stream_events(5, T).await), want);
    assert_eq!(v2.last_id, keeper.last_id, "in step with the hub again");
    assert_eq!(s.metric(from_memory).await, resumed + 1);
    assert_eq!(
        s.metric("livecomments_sse_replayed_total").await,
        replayed,
        "history was not read"
    );
    let (_, live) = s.post("mem", "u", "live").await;
    assert_eq!(
        kinds(&v2.stream_events(1, T).await),
        vec![ev("comment", &id_of(&live))]
    );
    assert!(
        v2.stream_events(1, Duration::from_millis(500))
            .await
            .is_empty(),
        "nothing twice"
    );

    // A position this hub never sent (a comment id as the token): from history.
    let mid = format!("local.{}", id_of(&posted[4]));
    let mut v3 = Sse::connect(&s.base, "mem", Some(&mid)).await;
    let got = ids(&v3.comments(3, T).await);
    assert_eq!(
        got,
        ids(&[posted[5].clone(), posted[6].clone(), live.clone()])
    );
    assert_eq!(s.metric(from_memory).await, resumed + 1);
}

#[tokio::test]
async fn heartbeats_when_idle() {
    let s = Server::standalone()
        .args(["--heartbeat-secs", "1"])
        .start()
        .await;
    let mut v = Sse::connect(&s.base, "quiet", None).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pings = 0;
    while Instant::now() < deadline && pings < 2 {
        if let Some(ev) = v.next(Duration::from_secs(3)).await
            && ev.event == "comment-line"
            && ev.data == "ping"
        {
            pings += 1;
        }
    }
    assert!(pings >= 2, "got {pings} pings");
}

#[tokio::test]
async fn bad_resume_tokens_are_refused() {
    let s = Server::standalone().start().await;
    for bad in [
        "garbage",
        "local.",
        "local.01JDQ7Z8XK3M4N5P6Q7R8S9T0",
        "LOCAL.01JDQ7Z8XK3M4N5P6Q7R8S9T0V",
        "a.b.c",
    ] {
        let v = Sse::connect(&s.base, "p", Some(bad)).await;
        assert_eq!(v.status, 400, "{bad}");
    }
    let v = Sse::connect_url(&s.url("/comments/stream?post_id=p&since=tomorrow"), None).await;
    assert_eq!(v.status, 400);
    let v = Sse::connect_url(&s.url("/comments/stream?post_id=a.b"), None).await;
    assert_eq!(v.status, 400);
    assert_eq!(s.get_json("/healthz").await.0, 200);
}

/// A viewer that never reads is cut off once its buffer is full; a reading viewer keeps
/// receiving everything meanwhile.
#[tokio::test]
async fn slow_viewer_is_cut_off_and_others_keep_up() {
    let s = Server::standalone()
        .args(["--viewer-buffer", "16"])
        .start()
        .await;
    // The stalled viewer: a raw socket that sends the request and never reads.
    use tokio::io::AsyncWriteExt;
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    stalled
        .write_all(b"GET /comments/stream?post_id=hot HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    // Shrink the receive buffer's effect: comments are large so the kernel buffers fill fast.
    let mut good = Sse::connect(&s.base, "hot", None).await;
    let big = "x".repeat(1900);
    let tok = token("w");
    let mut latencies = Vec::new();
    let mut slow_cut = false;
    for i in 0..4000 {
        let t0 = Instant::now();
        let (st, c) = post_comment(&s.base, "hot", &tok, &format!("{i} {big}")).await;
        assert_eq!(st, 201);
        let got = good
            .next_comment(T)
            .await
            .expect("good viewer keeps receiving");
        assert_eq!(got["id"], c["id"]);
        latencies.push(t0.elapsed());
        if i % 50 == 49 {
            let metrics = s.metrics().await;
            if metrics.lines().any(|l| {
                l.starts_with("livecomments_sse_slow_disconnects_total") && !l.ends_with(" 0")
            }) {
                slow_cut = true;
                break;
            }
        }
    }
    assert!(slow_cut, "the stalled viewer was disconnected");
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    assert!(p50 < Duration::from_secs(1), "good viewer p50 {p50:?}");
}

#[tokio::test]
async fn per_ip_stream_limit_answers_429() {
    let s = Server::standalone()
        .args(["--max-streams-per-ip", "3"])
        .start()
        .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let v = Sse::connect(&s.base, "p", None).await;
        assert_eq!(v.status, 200);
        open.push(v);
    }
    let refused = client()
        .get(s.url("/comments/stream?post_id=p"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "too_many_connections"
    );
    open.pop();
    let again = eventually(Duration::from_secs(5), || async {
        let v = Sse::connect(&s.base, "p", None).await;
        (v.status == 200).then_some(v)
    })
    .await;
    assert!(again.is_some(), "a slot frees when a stream closes");
}

/// Behind a trusted proxy the per-IP limit counts the address the proxy saw (the rightmost
/// untrusted `X-Forwarded-For` hop), not the proxy; from anyone else the header is ignored.
#[tokio::test]
async fn per_ip_limit_behind_a_trusted_proxy_counts_each_client() {
    async fn open(base: &str, forwarded_for: &str) -> reqwest::Response {
        client()
            .get(format!("{base}/comments/stream?post_id=xff"))
            .header("x-forwarded-for", forwarded_for)
            .send()
            .await
            .unwrap()
    }
    // Trusted: our own loopback address is the "proxy".
    let s = Server::standalone()
        .args([
            "--max-streams-per-ip",
            "2",
            "--trusted-proxies",
            "127.0.0.0/8",
        ])
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let r = open(&s.base, "203.0.113.5").await;
        assert_eq!(r.status().as_u16(), 200);
        held.push(r);
    }
    // The client wrote a different address on the left: the proxy-appended one still counts.
    let r = open(&s.base, "198.51.100.77, 203.0.113.5").await;
    assert_eq!(r.status().as_u16(), 429, "a third stream from 203.0.113.5");
    let r = open(&s.base, "203.0.113.6").await;
    assert_eq!(
        r.status().as_u16(),
        200,
        "another client behind the same proxy"
    );
    held.push(r);

    // Not trusted: the header changes nothing, the socket's address is the client.
    let s = Server::standalone()
        .args(["--max-streams-per-ip", "2"])
        .start()
        .await;
    let mut held = Vec::new();
    for n in 0..2 {
        let r = open(&s.base, &format!("203.0.113.{n}")).await;
        assert_eq!(r.status().as_u16(), 200);
        held.push(r);
    }
    let r = open(&s.base, "203.0.113.99").await;
    assert_eq!(
        r.status().as_u16(),
        429,
        "a forged X-Forwarded-For gets no new bucket"
    );
}

#[tokio::test]
async fn sigterm_tells_viewers_to_reconnect_and_exits_promptly() {
    let mut s = Server::standalone().start().await;
    let mut v = Sse::connect(&s.base, "bye", None).await;
    s.post("bye", "a", "x").await;
    assert!(v.next_comment(T).await.is_some());
    let took = s.terminate();
    assert!(took < Duration::from_secs(12), "exit took {took:?}");
    let mut saw_reconnect = false;
    while let Some(ev) = v.next(Duration::from_secs(2)).await {
        if ev.event == "reconnect" {
            saw_reconnect = true;
        }
        if ev.event == "closed" {
            break;
        }
    }
    assert!(saw_reconnect, "viewers are told to reconnect");
}

#[tokio::test]
async fn a_stream_dropped_before_its_first_comment_still_resumes() {
    let s = Server::standalone().start().await;
    let mut v = Sse::connect(&s.base, "silent", None).await;
    // The first chunk carries a position even though nothing was posted yet.
    let mut pos = None;
    while let Some(ev) = v.next(Duration::from_secs(2)).await {
        if ev.id.is_some() {
            pos = ev.id;
            break;
        }
    }
    drop(v);
    let pos = pos.expect("an id before any comment");
    let mut posted = Vec::new();
    for i in 0..3 {
        posted.push(s.post("silent", "a", &format!("while away {i}")).await.1);
    }
    let mut v2 = Sse::connect(&s.base, "silent", Some(&pos)).await;
    assert_eq!(ids(&v2.comments(3, T).await), ids(&posted));
}

/// A stream asked for on a kept-alive connection (after another request) is served through
/// hyper instead of the lean path: the same live delivery and exact resume there.
#[tokio::test]
async fn a_stream_on_a_kept_alive_connection_delivers_and_resumes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn stream_after_healthz(
        base: &str,
        post_id: &str,
        last_event_id: Option<&str>,
    ) -> tokio::net::TcpStream {
        let addr = base.trim_start_matches("http://");
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // Read the whole first response (it has a content-length) before the second request.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            c.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).await.unwrap();
        let resume = last_event_id
            .map(|id| format!("last-event-id: {id}\r\n"))
            .unwrap_or_default();
        c.write_all(
            format!(
                "GET /comments/stream?post_id={post_id} HTTP/1.1\r\nhost: {addr}\r\n{resume}\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        c
    }

    /// Reads until every id in `want` appeared in the stream (or the timeout).
    async fn read_until_ids(c: &mut tokio::net::TcpStream, want: &[String]) -> String {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + T;
        while !want.iter().all(|id| seen.contains(id.as_str())) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => panic!("stream ended or timed out; got: {seen}"),
            }
        }
        seen
    }

    let s = Server::standalone().start().await;
    let mut live = stream_after_healthz(&s.base, "ka", None).await;
    // The stream is open once its response head arrived.
    let opened = read_until_ids(&mut live, &["text/event-stream".to_string()]).await;
    assert!(opened.contains("transfer-encoding: chunked"), "{opened}");
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, c) = s.post("ka", "alice", &format!("kept alive {i}")).await;
        assert_eq!(status, 201);
        ids.push(c["id"].as_str().unwrap().to_string());
    }
    let got = read_until_ids(&mut live, &ids).await;
    for id in &ids {
        assert_eq!(
            got.matches(id.as_str()).count(),
            2,
            "id line and data once: {got}"
        );
    }
    // Resume from the first comment on another kept-alive connection: exactly the other two.
    let first_token = got
        .lines()
        .find(|l| l.starts_with("id: ") && l.contains(ids[0].as_str()))
        .map(|l| l.trim_start_matches("id: ").to_string())
        .expect("id line of the first comment");
    let mut resumed = stream_after_healthz(&s.base, "ka", Some(&first_token)).await;
    let got = read_until_ids(&mut resumed, &ids[1..]).await;
    assert!(!got.contains(&format!("\"id\":\"{}\"", ids[0])), "{got}");
}
