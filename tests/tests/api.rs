//! CONTRACT §1–§3 over HTTP against a real standalone process: happy paths and every bad
//! input, each answered with the right status and error body, storing nothing, and leaving
//! the process healthy.

use std::time::Duration;

use livecomments_tests::*;
use serde_json::{Value, json};

async fn raw_post(
    s: &Server,
    query: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client().post(s.url(&format!("/comment{query}"))).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

#[tokio::test]
async fn post_then_read_back_newest_first_with_cursors() {
    let s = Server::standalone().start().await;
    let mut posted = Vec::new();
    for i in 0..25 {
        let (st, c) = s.post("match-42", "alice", &format!("comment {i}")).await;
        assert_eq!(st, 201, "{c}");
        assert_eq!(c["post_id"], "match-42");
        assert_eq!(c["user_id"], "alice");
        assert_eq!(c["region"], "local");
        assert!(c["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            c["timestamp"].as_str().unwrap().len(),
            24,
            "millisecond precision: {c}"
        );
        posted.push(c["id"].as_str().unwrap().to_string());
    }
    // Ids grow in creation order.
    let mut sorted = posted.clone();
    sorted.sort();
    assert_eq!(sorted, posted);

    let (st, page1) = s.get_json("/comments?post_id=match-42").await;
    assert_eq!(st, 200);
    let p1 = ids(page1["comments"].as_array().unwrap());
    assert_eq!(p1.len(), 20, "default page_size is 20");
    assert_eq!(p1[0], posted[24], "newest first");
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = s
        .get_json(&format!("/comments?post_id=match-42&before={cursor}"))
        .await;
    let p2 = ids(page2["comments"].as_array().unwrap());
    assert_eq!(p2, posted[..5].iter().rev().cloned().collect::<Vec<_>>());
    assert!(page2["next_cursor"].is_null());

    let (_, n2) = s
        .get_json("/comments?post_id=match-42&page_size=10&page_number=2")
        .await;
    assert_eq!(
        ids(n2["comments"].as_array().unwrap()),
        posted[5..15].iter().rev().cloned().collect::<Vec<_>>()
    );

    // since: oldest first, strictly newer than t.
    let t = posted[19].clone();
    let (_, all) = s
        .get_json(&format!(
            "/comments?post_id=match-42&page_size=100&after={t}"
        ))
        .await;
    assert_eq!(
        ids(all["comments"].as_array().unwrap()),
        posted[20..].to_vec()
    );
    let (_, since0) = s
        .get_json("/comments?post_id=match-42&since=0&page_size=3")
        .await;
    assert_eq!(
        ids(since0["comments"].as_array().unwrap()),
        posted[..3].to_vec()
    );
    assert!(since0["next_cursor"].is_null());
    // Combined, each part keeps its meaning: a window between two cursors (oldest first),
    // page_number skipping forward, the later of since and after.
    let (_, window) = s
        .get_json(&format!(
            "/comments?post_id=match-42&after={}&before={}",
            posted[3], posted[8]
        ))
        .await;
    assert_eq!(
        ids(window["comments"].as_array().unwrap()),
        posted[4..8].to_vec()
    );
    assert!(
        window["next_after"].is_null(),
        "the window ends before the page does"
    );
    let (_, forward2) = s
        .get_json(&format!(
            "/comments?post_id=match-42&after={}&page_size=5&page_number=2",
            posted[0]
        ))
        .await;
    assert_eq!(
        ids(forward2["comments"].as_array().unwrap()),
        posted[6..11].to_vec()
    );
    let (_, later) = s
        .get_json(&format!(
            "/comments?post_id=match-42&since=0&after={}&page_size=2",
            posted[10]
        ))
        .await;
    assert_eq!(
        ids(later["comments"].as_array().unwrap()),
        posted[11..13].to_vec()
    );
    let (_, since_future) = s
        .get_json("/comments?post_id=match-42&since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(since_future["comments"].as_array().unwrap().len(), 0);

    let (_, empty) = s.get_json("/comments?post_id=nobody-here").await;
    assert_eq!(empty["comments"], json!([]));
    assert!(empty["next_cursor"].is_null());
}

#[tokio::test]
async fn metadata_and_text_rules() {
    let s = Server::standalone().start().await;
    let tok = token("bob");
    let auth = format!("Bearer {tok}");
    let h: &[(&str, &str)] = &[
        ("authorization", &auth),
        ("content-type", "application/json"),
    ];
    let (st, c, _) = raw_post(
        &s,
        "?post_id=p",
        h,
        json!({"text": "  hi\n", "metadata": {"lang": "en"}}).to_string(),
    )
    .await;
    assert_eq!(st, 201, "{c}");
    assert_eq!(c["text"], "hi", "trimmed");
    assert_eq!(c["metadata"]["lang"], "en");

    let long_meta: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"text": ""}), "invalid_text"),
        (json!({"text": "   \n "}), "invalid_text"),
        (json!({"text": "x".repeat(2001)}), "invalid_text"),
        (json!({"text": "bell\u{7}"}), "invalid_text"),
        (
            json!({"text": "ok", "metadata": long_meta}),
            "invalid_metadata",
        ),
        (
            json!({"text": "ok", "metadata": {"": "v"}}),
            "invalid_metadata",
        ),
        (
            json!({"text": "ok", "metadata": {"k".repeat(33): "v"}}),
            "invalid_metadata",
        ),
        (
            json!({"text": "ok", "metadata": {"k": "v".repeat(257)}}),
            "invalid_metadata",
        ),
        (json!({"text": "ok", "metadata": {"k": 5}}), "invalid_json"),
        (json!({"text": 5}), "invalid_json"),
        (json!({"nope": "x"}), "invalid_json"),
        (json!(["text"]), "invalid_json"),
    ];
    for (body, code) in cases {
        let (st, b, _) = raw_post(&s, "?post_id=p", h, body.to_string()).await;
        assert_error(st, &b, 400, code);
    }
    // 2000 scalar values of a multi-byte character is fine.
    let (st, _, _) = raw_post(
        &s,
        "?post_id=p",
        h,
        json!({"text": "é".repeat(2000)}).to_string(),
    )
    .await;
    assert_eq!(st, 201);
    let (st, b, _) = raw_post(&s, "?post_id=p", h, "{not json").await;
    assert_error(st, &b, 400, "invalid_json");
    let (st, b, _) = raw_post(&s, "?post_id=p", h, vec![0xff, 0xfe, 0x00]).await;
    assert_error(st, &b, 400, "invalid_json");

    // Nothing from the refused requests was stored.
    assert_eq!(s.all_comments("p").await.len(), 2);
    assert_eq!(s.get_json("/healthz").await.0, 200);
}

#[tokio::test]
async fn post_id_injection_and_query_errors() {
    let s = Server::standalone().start().await;
    let tok = format!("Bearer {}", token("eve"));
    let h: &[(&str, &str)] = &[
        ("authorization", &tok),
        ("content-type", "application/json"),
    ];
    let body = json!({"text": "x"}).to_string();
    for q in [
        "",
        "?post_id=",
        "?post_id=a.b",
        "?post_id=a*",
        "?post_id=a%3E",
        "?post_id=a%20b",
        "?post_id=comments.live.x",
        &format!("?post_id={}", "a".repeat(65)),
        "?post_id=%C3%A9",
        "?post_id=a&post_id=b",
    ] {
        let (st, b, _) = raw_post(&s, q, h, body.clone()).await;
        assert_eq!(st, 400, "{q}: {b}");
        assert!(
            b["error"]["code"].as_str().unwrap().starts_with("invalid_"),
            "{q}: {b}"
        );
    }
    for q in [
        "/comments?post_id=p&page_size=0",
        "/comments?post_id=p&page_size=101",
        "/comments?post_id=p&page_size=abc",
        "/comments?post_id=p&page_number=0",
        "/comments?post_id=p&page_number=-1",
        "/comments?post_id=p&page_number=999999",
        "/comments?post_id=p&page_number=101",
        "/comments?post_id=p&since=yesterday",
        "/comments?post_id=p&before=not-a-cursor",
        "/comments?post_id=p.x",
        "/comments",
    ] {
        let (st, b) = s.get_json(q).await;
        assert_eq!(st, 400, "{q}: {b}");
        assert!(b["error"]["message"].is_string());
    }
    assert_eq!(s.all_comments("p").await.len(), 0);
}

#[tokio::test]
async fn content_type_size_method_and_route_errors() {
    let s = Server::standalone().start().await;
    let tok = format!("Bearer {}", token("carol"));
    let (st, b, _) = raw_post(
        &s,
        "?post_id=p",
        &[("authorization", &tok), ("content-type", "text/plain")],
        r#"{"text":"x"}"#,
    )
    .await;
    assert_error(st, &b, 415, "unsupported_media_type");
    let (st, b, _) = raw_post(
        &s,
        "?post_id=p",
        &[("authorization", &tok)],
        r#"{"text":"x"}"#,
    )
    .await;
    assert_error(st, &b, 415, "unsupported_media_type");
    let big = json!({"text": "x".repeat(17 * 1024)}).to_string();
    let (st, b, _) = raw_post(
        &s,
        "?post_id=p",
        &[
            ("authorization", &tok),
            ("content-type", "application/json"),
        ],
        big.clone(),
    )
    .await;
    assert_error(st, &b, 413, "payload_too_large");
    // Without a Content-Length (chunked) the limit still holds.
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(big))]);
    let (st, b, _) = raw_post(
        &s,
        "?post_id=p",
        &[
            ("authorization", &tok),
            ("content-type", "application/json"),
        ],
        reqwest::Body::wrap_stream(stream),
    )
    .await;
    assert_error(st, &b, 413, "payload_too_large");

    let r = client()
        .put(s.url("/comment?post_id=p"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "method_not_allowed");
    let (st, b) = s.get_json("/no/such/route").await;
    assert_error(st, &b, 404, "not_found");
    assert_eq!(s.all_comments("p").await.len(), 0);
}

#[tokio::test]
async fn auth_failures_are_401_with_www_authenticate() {
    let s = Server::standalone().start().await;
    let now = now_secs();
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "x", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-0123456789"),
    )
    .unwrap();
    // alg: none, hand-made.
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({"sub": "x", "exp": now + 600}).to_string())
    );
    let cases = vec![
        None,
        Some("Basic abc".to_string()),
        Some("Bearer".to_string()),
        Some("Bearer not.a.jwt".to_string()),
        Some(format!("Bearer {none}")),
        Some(format!("Bearer {wrong_key}")),
        Some(format!(
            "Bearer {}",
            token_with(json!({"sub": "x", "exp": now - 120}))
        )),
        Some(format!(
            "Bearer {}",
            token_with(json!({"sub": "x", "exp": now + 600, "nbf": now + 300}))
        )),
        Some(format!("Bearer {}", token_with(json!({"exp": now + 600})))),
        Some(format!("Bearer {}", token_with(json!({"sub": "x"})))),
        Some(format!(
            "Bearer {}",
            token_with(json!({"sub": "", "exp": now + 600}))
        )),
        Some(format!("Bearer {}", "a".repeat(20_000))),
    ];
    for auth in cases {
        let mut h = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            h.push(("authorization", a.as_str()));
        }
        let (st, b, headers) =
            raw_post(&s, "?post_id=p", &h, json!({"text": "x"}).to_string()).await;
        assert_error(st, &b, 401, "invalid_token");
        assert_eq!(
            headers.get("www-authenticate").unwrap(),
            "Bearer error=\"invalid_token\"",
            "{auth:?}"
        );
    }
    assert_eq!(s.all_comments("p").await.len(), 0);
    // With a key configured there is no dev token endpoint.
    let (st, b) = s.get_json("/dev/token?user_id=x").await;
    assert_error(st, &b, 404, "not_found");
}

fn b64(s: &str) -> String {
    base64_url::encode(s)
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_set() {
    let s = Server::standalone()
        .env("LIVECOMMENTS_JWT_ISSUER", "https://auth.example")
        .env("LIVECOMMENTS_JWT_AUDIENCE", "livecomments")
        .start()
        .await;
    let now = now_secs();
    let good = token_with(
        json!({"sub": "a", "exp": now + 600, "iss": "https://auth.example", "aud": "livecomments"}),
    );
    let (st, _) = post_comment(&s.base, "p", &good, "ok").await;
    assert_eq!(st, 201);
    for claims in [
        json!({"sub": "a", "exp": now + 600, "iss": "https://evil.example", "aud": "livecomments"}),
        json!({"sub": "a", "exp": now + 600, "iss": "https://auth.example", "aud": "other"}),
        json!({"sub": "a", "exp": now + 600}),
    ] {
        let (st, b) = post_comment(&s.base, "p", &token_with(claims.clone()), "no").await;
        assert_error(st, &b, 401, "invalid_token");
    }
    assert_eq!(s.all_comments("p").await.len(), 1);
}

#[tokio::test]
async fn idempotency_key_returns_the_same_comment() {
    let s = Server::standalone().start().await;
    let send = |user: &'static str, post: &'static str, key: &'static str, text: &'static str| {
        let url = s.url(&format!("/comment?post_id={post}"));
        async move {
            let r = client()
                .post(url)
                .bearer_auth(token(user))
                .header("idempotency-key", key)
                .json(&json!({"text": text}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st1, a) = send("alice", "p", "key-1", "first").await;
    let (st2, b) = send("alice", "p", "key-1", "first").await;
    assert_eq!((st1, st2), (201, 201));
    assert_eq!(a["id"], b["id"]);
    assert_eq!(a, b);
    // Different user or post: a different comment.
    let (_, c) = send("bob", "p", "key-1", "first").await;
    let (_, d) = send("alice", "q", "key-1", "first").await;
    assert_ne!(c["id"], a["id"]);
    assert_ne!(d["id"], a["id"]);
    // Concurrent retries: one comment.
    let results =
        futures::future::join_all((0..8).map(|_| send("alice", "p", "key-2", "racy"))).await;
    let first = &results[0].1["id"];
    assert!(
        results
            .iter()
            .all(|(st, c)| *st == 201 && c["id"] == *first)
    );
    assert_eq!(s.all_comments("p").await.len(), 3);
    // Bad keys.
    for key in ["", "has space", &"k".repeat(129)] {
        let r = client()
            .post(s.url("/comment?post_id=p"))
            .bearer_auth(token("alice"))
            .header("idempotency-key", key)
            .json(&json!({"text": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{key:?}");
    }
    assert_eq!(s.all_comments("p").await.len(), 3);
}

#[tokio::test]
async fn per_user_rate_limit_answers_429_with_retry_after() {
    let s = Server::standalone()
        .rate_limit(3)
        .args(["--rate-window-secs", "60"])
        .start()
        .await;
    for i in 0..3 {
        assert_eq!(s.post("p", "spammer", &format!("m{i}")).await.0, 201);
    }
    assert_eq!(s.metric("livecomments_rate_limited_total").await, 0);
    let r = client()
        .post(s.url("/comment?post_id=p"))
        .bearer_auth(token("spammer"))
        .json(&json!({"text": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "rate_limited");
    assert_eq!(s.metric("livecomments_rate_limited_total").await, 1);
    // Others are not affected.
    assert_eq!(s.post("p", "polite", "hello").await.0, 201);
    assert_eq!(s.all_comments("p").await.len(), 4);

    // At the limit, a retry of a stored comment (its Idempotency-Key) gets it back; a new
    // key is still refused.
    let keyed = |key: &'static str, user: &'static str| {
        client()
            .post(s.url("/comment?post_id=p"))
            .bearer_auth(token(user))
            .header("Idempotency-Key", key)
            .json(&json!({"text": "keyed"}))
            .send()
    };
    let mut first_id = Value::Null;
    for i in 0..3 {
        let r = keyed(["k0", "k1", "k2"][i], "retrier").await.unwrap();
        assert_eq!(r.status().as_u16(), 201);
        if i == 2 {
            first_id = r.json::<Value>().await.unwrap()["id"].clone();
        }
    }
    let r = keyed("k2", "retrier").await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        201,
        "a retry at the limit gets its comment"
    );
    assert_eq!(r.json::<Value>().await.unwrap()["id"], first_id);
    assert_eq!(keyed("k3", "retrier").await.unwrap().status().as_u16(), 429);
    assert_eq!(s.all_comments("p").await.len(), 7);
}

#[tokio::test]
async fn delete_by_author_or_moderator_only() {
    let s = Server::standalone().start().await;
    let (_, c) = s.post("p", "alice", "mine").await;
    let id = c["id"].as_str().unwrap().to_string();
    let del = |user_token: String, id: String, post: &'static str| {
        let url = s.url(&format!("/comment/{id}?post_id={post}"));
        async move {
            client()
                .delete(url)
                .bearer_auth(user_token)
                .send()
                .await
                .unwrap()
        }
    };
    let r = del(token("mallory"), id.clone(), "p").await;
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "forbidden"
    );
    assert_eq!(
        del(token("alice"), "01JDQ7Z8XK3M4N5P6Q7R8S9T0V".into(), "p")
            .await
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        del(token("alice"), "garbage".into(), "p")
            .await
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        del(token("alice"), id.clone(), "other-post")
            .await
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        client()
            .delete(s.url(&format!("/comment/{id}?post_id=p")))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );

    let mut viewer = Sse::connect(&s.base, "p", None).await;
    let r = del(token("alice"), id.clone(), "p").await;
    assert_eq!(r.status().as_u16(), 204);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut saw_delete = false;
    while std::time::Instant::now() < deadline {
        if let Some(ev) = viewer.next(Duration::from_secs(1)).await
            && ev.event == "delete"
        {
            assert_eq!(ev.json()["id"], id.as_str());
            assert_eq!(ev.json()["post_id"], "p");
            saw_delete = true;
            break;
        }
    }
    assert!(saw_delete, "stream received event: delete");
    assert_eq!(s.all_comments("p").await.len(), 0);
    assert_eq!(
        del(token("alice"), id.clone(), "p").await.status().as_u16(),
        404
    );

    let (_, c2) = s.post("p", "bob", "rude").await;
    let mod_token = token_with(json!({"sub": "mod", "exp": now_secs() + 600, "role": "moderator"}));
    assert_eq!(
        del(mod_token, c2["id"].as_str().unwrap().into(), "p")
            .await
            .status()
            .as_u16(),
        204
    );
}

#[tokio::test]
async fn operations_endpoints() {
    let s = Server::standalone().start().await;
    assert_eq!(s.get_json("/healthz").await.0, 200);
    let (st, ready) = s.get_json("/readyz").await;
    assert_eq!(st, 200, "{ready}");
    s.post("p", "a", "x").await;
    let metrics = s.metrics().await;
    assert!(metrics.contains("# TYPE livecomments_comments_created_total counter"));
    assert!(
        metrics.contains("livecomments_comments_created_total 1"),
        "{metrics}"
    );
    let (st, api) = s.get_json("/openapi.json").await;
    assert_eq!(st, 200);
    assert!(api["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/comment",
        "/comments",
        "/comments/stream",
        "/comment/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(api["paths"][path].is_object(), "openapi lacks {path}");
    }
    let page = client().get(s.url("/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

#[tokio::test]
async fn dev_tokens_only_without_a_configured_key() {
    let s = Server::standalone().no_secret().start().await;
    let (st, t) = s.get_json("/dev/token?user_id=zoe").await;
    assert_eq!(st, 200, "{t}");
    let tok = t["token"].as_str().unwrap();
    let (st, c) = post_comment(&s.base, "p", tok, "via dev token").await;
    assert_eq!(st, 201);
    assert_eq!(c["user_id"], "zoe");
    // A token signed with any other secret is still refused.
    let (st, _) = post_comment(&s.base, "p", &token("zoe"), "forged").await;
    assert_eq!(st, 401);
}
