//! What the logs and error bodies must never contain.

use super::*;

/// Nothing secret in the log: after requests with good, bad and URL-borne tokens, the
/// server's log holds no token, no part of a signature and not the secret. Error bodies name
/// no internals.
#[tokio::test]
async fn logs_and_error_bodies_leak_nothing() {
    let s = Server::standalone()
        .env("LIVECOMMENTS_READ_REQUIRES_TOKEN", "true")
        .env("RUST_LOG", "debug")
        .start()
        .await;
    let good = token("alice");
    let wrong = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": now_secs() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"an-attacker-secret-0123456789"),
    )
    .unwrap();
    let expired = token_with(json!({"sub": "alice", "exp": now_secs() - 600}));
    let mut bodies: Vec<(String, Value)> = Vec::new();
    let (st, _) = post_comment(&s.base, "p", &good, "hello").await;
    assert_eq!(st, 201);
    for t in [&wrong, &expired, &format!("{good}x"), &SECRET.to_string()] {
        let (st, b) = post_comment(&s.base, "p", t, "nope").await;
        assert_eq!(st, 401);
        bodies.push(("401".into(), b));
        let r = client()
            .get(s.url(&format!("/comments?post_id=p&access_token={t}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        bodies.push(("401 read".into(), r.json().await.unwrap_or(Value::Null)));
        let r = client()
            .get(s.url(&format!("/comments/stream?post_id=p&access_token={t}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    // Good tokens in the URL and the header for reads.
    let r = client()
        .get(s.url(&format!("/comments?post_id=p&access_token={good}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut v = Sse::connect_url(
        &s.url(&format!("/comments/stream?post_id=p&access_token={good}")),
        None,
    )
    .await;
    assert_eq!(v.status, 200);
    let _ = v.next(Duration::from_millis(200)).await;
    // Assorted refusals whose bodies must stay generic.
    let h = |r: reqwest::RequestBuilder| r.bearer_auth(&good);
    let reqs = vec![
        (
            "bad json",
            h(client().post(s.url("/comment?post_id=p")))
                .header("content-type", "application/json")
                .body("{\"text\": \"x\", oops"),
        ),
        (
            "wrong type",
            h(client().post(s.url("/comment?post_id=p")))
                .header("content-type", "application/json")
                .body("{\"text\": [1,2]}"),
        ),
        (
            "unknown field",
            h(client().post(s.url("/comment?post_id=p")))
                .header("content-type", "application/json")
                .body("{\"text\": \"x\", \"admin\": true}"),
        ),
        (
            "not utf-8",
            h(client().post(s.url("/comment?post_id=p")))
                .header("content-type", "application/json")
                .body(vec![b'{', 0xff, b'}']),
        ),
        (
            "too large",
            h(client().post(s.url("/comment?post_id=p")))
                .header("content-type", "application/json")
                .body(vec![b' '; 20_000]),
        ),
        (
            "bad cursor",
            h(client().get(s.url("/comments?post_id=p&before=../../etc/passwd"))),
        ),
        (
            "bad since",
            h(client().get(s.url("/comments?post_id=p&since=%00"))),
        ),
        (
            "bad delete",
            h(client().delete(s.url("/comment/..%2F..%2Fetc?post_id=p"))),
        ),
        ("no route", h(client().get(s.url("/..%2F..%2Fetc/passwd")))),
        ("method", h(client().patch(s.url("/comments")))),
    ];
    for (what, r) in reqs {
        let r = r.send().await.unwrap();
        let st = r.status().as_u16();
        assert!((400..500).contains(&st), "{what}: {st}");
        bodies.push((what.to_string(), r.json().await.unwrap_or(Value::Null)));
    }
    for (what, b) in &bodies {
        assert!(b["error"]["code"].is_string(), "{what}: {b}");
        let text = b.to_string();
        for leak in [
            "/work",
            "/tmp",
            "/root",
            "/home",
            ".rs",
            "redb",
            "scylla",
            "cassandra",
            "panicked",
            "backtrace",
            "at line",
            "column",
            "tokio",
            "hyper",
            "serde",
            "eyJ",
            SECRET,
        ] {
            assert!(
                !text.contains(leak),
                "{what}: error body contains {leak:?}: {text}"
            );
        }
    }
    drop(v);
    // The server has seen the stream end (and logged what it logs then): no stream, no post.
    let ended = eventually(T, || async {
        (s.metric("livecomments_sse_streams").await == 0
            && s.metric("livecomments_sse_posts").await == 0)
            .then_some(())
    })
    .await;
    assert!(ended.is_some(), "the server never saw the stream end");
    let log = std::fs::read_to_string(s.log_path()).unwrap();
    assert!(!log.is_empty(), "the server logged something");
    for (what, secret) in [
        ("good token", good.as_str()),
        ("wrong-key token", wrong.as_str()),
        ("expired token", expired.as_str()),
        ("secret", SECRET),
    ] {
        assert!(
            !log.contains(secret),
            "{what} in the log {}",
            s.log_path().display()
        );
        // Not even the signature part alone.
        let sig = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(sig), "{what} signature in the log");
    }
    assert!(
        !log.contains("eyJ"),
        "something JWT-shaped in the log {}",
        s.log_path().display()
    );
}
