//! Forged, truncated and foreign resume tokens.

use super::*;

/// Forged and truncated resume tokens: malformed ones are 400; well-formed ones naming
/// another region or another post replay exactly what the position implies; none disturbs
/// other viewers or the process.
#[tokio::test]
async fn forged_resume_tokens() {
    let s = Server::standalone().start().await;
    let mut posted = Vec::new();
    for i in 0..5 {
        posted.push(s.post("r", "a", &format!("r{i}")).await.1);
    }
    let (_, other) = s.post("other-post", "a", "elsewhere").await;
    let mut honest = Sse::connect(&s.base, "r", None).await;
    let id2 = posted[2]["id"].as_str().unwrap();
    let many = (0..33)
        .map(|i| format!("r{i}.{id2}"))
        .collect::<Vec<_>>()
        .join("~");
    for bad in [
        format!("local.{id2}~"),
        format!("local.{}", &id2[..20]),
        format!("local~{id2}"),
        format!("local.{id2}\u{0}"),
        format!("local.{}", id2.to_lowercase()),
        many,
        "local.".repeat(600),
    ] {
        let r = client()
            .get(s.url("/comments/stream?post_id=r"))
            .query(&[("last_event_id", bad.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad:?}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], "invalid_cursor");
    }
    // Raw header bytes a browser would never send.
    let resp = raw_http(s.port, b"GET /comments/stream?post_id=r HTTP/1.1\r\nHost: x\r\nLast-Event-ID: local.\xff\xfe\r\n\r\n", Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");

    // A region named twice (never written by the server) means what both ids cover: the
    // higher floor wins, and the replay is what follows it, once each.
    let id1 = posted[1]["id"].as_str().unwrap();
    let mut v = Sse::connect(&s.base, "r", Some(&format!("local.{id2}~local.{id1}"))).await;
    assert_eq!(v.status, 200);
    assert_eq!(ids(&v.comments(2, T).await), ids(&posted[3..]));

    // Another region's position only: this region's comments all replay, once each.
    let mut v = Sse::connect(&s.base, "r", Some(&format!("zz.{id2}"))).await;
    assert_eq!(v.status, 200);
    assert_eq!(ids(&v.comments(5, T).await), ids(&posted));
    // A position taken on another post: the comments of this post after that point in time.
    let mut v = Sse::connect(
        &s.base,
        "r",
        Some(&format!("local.{}", other["id"].as_str().unwrap())),
    )
    .await;
    assert_eq!(v.status, 200);
    assert!(
        v.next_comment(Duration::from_millis(500)).await.is_none(),
        "nothing of post r is newer"
    );
    // A position from the future replays nothing and stays open; only this client is affected.
    let future = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ";
    let mut f = Sse::connect(&s.base, "r", Some(&format!("local.{future}"))).await;
    assert_eq!(f.status, 200);
    let (_, live) = s.post("r", "a", "live").await;
    assert_eq!(honest.next_comment(T).await.unwrap()["id"], live["id"]);
    assert!(f.next_comment(Duration::from_millis(500)).await.is_none());
    assert_eq!(s.get_json("/healthz").await.0, 200);
}
