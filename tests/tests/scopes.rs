//! Token scopes and token expiry on streams (CONTRACT §12), against the real binary: a token
//! with a `posts` claim (exact ids, prefixes ending in `*`) acts only on those posts — POST,
//! DELETE, and with `--read-requires-token` GET /comments and the stream — and anything else
//! is 403 `forbidden` with nothing changed; a claim that cannot be read exactly is 401
//! `invalid_token`; a stream opened with a token is closed with `event: reconnect` at the
//! token's `exp`, and a fresh token resumes it with Last-Event-ID without loss.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use livecomments_tests::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

fn scoped(user: &str, posts: Value) -> String {
    token_with(json!({"sub": user, "exp": now_secs() + 600, "posts": posts}))
}

async fn count(s: &Server, post_id: &str) -> usize {
    s.all_comments(post_id).await.len()
}

/// POST and DELETE with a scoped token: exact ids and prefixes are allowed, every other post
/// is 403 `forbidden` and nothing is stored or deleted; a scoped moderator moderates only
/// its posts.
#[tokio::test]
async fn scoped_tokens_write_only_to_their_posts() {
    let s = Server::standalone().start().await;
    let tok = scoped("alice", json!(["match-42", "cup-*"]));
    for post in ["match-42", "cup-", "cup-final"] {
        let (st, body) = post_comment(&s.base, post, &tok, "in scope").await;
        assert_eq!(st, 201, "{post}: {body}");
    }
    for post in ["match-421", "match-4", "Match-42", "cu", "xcup-1", "other"] {
        let (st, body) = post_comment(&s.base, post, &tok, "out of scope").await;
        assert_error(st, &body, 403, "forbidden");
        assert_eq!(count(&s, post).await, 0, "{post}: nothing stored");
    }

    // DELETE: alice's own comment outside the scope stays; inside it goes.
    let (_, outside) = s.post("other", "alice", "posted with a full token").await;
    let outside_id = outside["id"].as_str().unwrap();
    let (st, body) = delete_comment(&s.base, "other", outside_id, &tok).await;
    assert_error(st, &body, 403, "forbidden");
    assert_eq!(count(&s, "other").await, 1, "still there");
    let (_, inside) = post_comment(&s.base, "cup-semi", &tok, "mine").await;
    let (st, _) = delete_comment(&s.base, "cup-semi", inside["id"].as_str().unwrap(), &tok).await;
    assert_eq!(st, 204);
    assert_eq!(count(&s, "cup-semi").await, 0);

    // A moderator limited to `cup-*` deletes others' comments there, and nowhere else.
    let moderator = token_with(
        json!({"sub": "mod", "exp": now_secs() + 600, "role": "moderator", "posts": ["cup-*"]}),
    );
    let (_, bobs) = s.post("cup-final", "bob", "bob's").await;
    let (st, _) = delete_comment(
        &s.base,
        "cup-final",
        bobs["id"].as_str().unwrap(),
        &moderator,
    )
    .await;
    assert_eq!(st, 204);
    let (st, body) = delete_comment(&s.base, "other", outside_id, &moderator).await;
    assert_error(st, &body, 403, "forbidden");
    assert_eq!(count(&s, "other").await, 1);

    // `"*"` alone is every post.
    let every = scoped("carol", json!(["*"]));
    let (st, _) = post_comment(&s.base, "anything-at-all", &every, "anywhere").await;
    assert_eq!(st, 201);
}

/// With `--read-requires-token`, GET /comments and the stream (token in the header or in
/// `access_token=`) follow the scope; without the flag reads stay public, whatever a token
/// says.
#[tokio::test]
async fn reads_and_streams_follow_the_scope_when_reads_require_a_token() {
    let s = Server::standalone()
        .arg("--read-requires-token")
        .start()
        .await;
    let tok = scoped("viewer", json!(["match-42", "cup-*"]));
    s.post("cup-final", "alice", "hello").await;
    s.post("other", "alice", "elsewhere").await;

    let (st, body) = get_json_bearer(&s.url("/comments?post_id=cup-final"), &tok).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["comments"].as_array().unwrap().len(), 1);
    let (st, body) = get_json_bearer(&s.url("/comments?post_id=other"), &tok).await;
    assert_error(st, &body, 403, "forbidden");
    let (st, body) = get_json(&s.url(&format!("/comments?post_id=other&access_token={tok}"))).await;
    assert_error(st, &body, 403, "forbidden");
    let (st, _) = get_json(&s.url(&format!("/comments?post_id=match-42&access_token={tok}"))).await;
    assert_eq!(st, 200);
    // Token problems come first: no token at all is a 401 on any post.
    let (st, body) = get_json(&s.url("/comments?post_id=other")).await;
    assert_error(st, &body, 401, "invalid_token");

    // Streams: in scope by header and by query, out of scope refused with the contract body.
    let mut v = Sse::connect_bearer(&s.url("/comments/stream?post_id=cup-final"), &tok, None).await;
    assert_eq!(v.status, 200);
    assert!(v.started(T).await);
    let mut q = Sse::connect_url(
        &s.url(&format!(
            "/comments/stream?post_id=match-42&access_token={tok}"
        )),
        None,
    )
    .await;
    assert_eq!(q.status, 200);
    assert!(q.started(T).await);
    for url in [
        s.url("/comments/stream?post_id=other"),
        s.url("/comments/stream?post_id=cup"),
    ] {
        let r = client().get(&url).bearer_auth(&tok).send().await.unwrap();
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 403, "forbidden");
    }
    let r = client()
        .get(s.url(&format!(
            "/comments/stream?post_id=other&access_token={tok}"
        )))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    assert_error(st, &r.json().await.unwrap(), 403, "forbidden");
    // The open streams still work.
    let (_, c) = s.post("cup-final", "alice", "live").await;
    assert_eq!(v.next_comment(T).await.unwrap()["id"], c["id"]);

    // Public reads: the scope limits what the token does, not what anyone may read.
    let public = Server::standalone().start().await;
    public.post("other", "alice", "public").await;
    let (st, _) = get_json_bearer(&public.url("/comments?post_id=other"), &tok).await;
    assert_eq!(st, 200);
    let pv = Sse::connect_bearer(&public.url("/comments/stream?post_id=other"), &tok, None).await;
    assert_eq!(pv.status, 200);
}

/// A `posts` claim that cannot be read exactly refuses the whole token: 401 `invalid_token`
/// with `WWW-Authenticate`, on every route, and nothing is stored.
#[tokio::test]
async fn malformed_posts_claims_are_invalid_tokens() {
    let s = Server::standalone()
        .arg("--read-requires-token")
        .start()
        .await;
    let bad_claims = [
        json!(null),
        json!("match-42"),
        json!({"match-42": true}),
        json!([]),
        json!([42]),
        json!(["match-42", null]),
        json!(["cup-*-final"]),
        json!(["*cup"]),
        json!(["cup**"]),
        json!([""]),
        json!(["has space"]),
        json!(["dot.ted*"]),
        json!(["a>"]),
        json!(["x".repeat(65)]),
        Value::Array((0..300).map(|i| json!(format!("p{i}"))).collect()),
    ];
    for claim in bad_claims {
        let tok = scoped("mallory", claim.clone());
        let r = client()
            .post(s.url("/comment?post_id=p"))
            .bearer_auth(&tok)
            .json(&json!({"text": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{claim}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\"",
            "{claim}"
        );
        assert_error(401, &r.json().await.unwrap(), 401, "invalid_token");
        let (st, body) = get_json_bearer(&s.url("/comments?post_id=p"), &tok).await;
        assert_error(st, &body, 401, "invalid_token");
        let r = client()
            .get(s.url("/comments/stream?post_id=p"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 401, "invalid_token");
    }
    let (st, body) = get_json_bearer(&s.url("/comments?post_id=p"), &token("reader")).await;
    assert_eq!(st, 200);
    assert!(body["comments"].as_array().unwrap().is_empty(), "{body}");
}

/// A stream opened with a token that expires in a few seconds gets `event: reconnect` with
/// reason `token_expired` once `exp` passes, and is closed; the same token is then refused;
/// a fresh token with the last `id:` resumes, and every comment posted before, around and
/// after the expiry arrives exactly once, in order.
#[tokio::test]
async fn a_stream_closes_at_token_expiry_and_resumes_without_loss() {
    let s = Server::standalone()
        .arg("--read-requires-token")
        .start()
        .await;
    let post = "expiring";
    let exp = now_secs() + 4;
    let short = token_with(json!({"sub": "viewer", "exp": exp, "posts": [post]}));
    let url = s.url(&format!("/comments/stream?post_id={post}"));
    let mut v = Sse::connect_bearer(&url, &short, None).await;
    assert_eq!(v.status, 200);
    assert!(v.started(T).await);

    // Comments every 100 ms from before the expiry until well after it.
    let base = s.base.clone();
    let writer = tokio::spawn(async move {
        let tok = token("poster");
        let mut ids = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for i in 0..70 {
            tick.tick().await;
            let (st, c) = post_comment(&base, post, &tok, &format!("n{i}")).await;
            assert_eq!(st, 201, "{c}");
            ids.push(c["id"].as_str().unwrap().to_string());
        }
        ids
    });

    let mut got = Vec::new();
    let ev = v
        .until_event("reconnect", Duration::from_secs(15), &mut got)
        .await
        .expect("event: reconnect at the token's expiry");
    let at_ms = livecomments_shared::time::now_millis() as u64;
    assert_eq!(ev.json()["reason"], "token_expired", "{}", ev.data);
    assert!(
        at_ms >= exp * 1000,
        "closed {} ms before exp",
        exp * 1000 - at_ms
    );
    assert!(
        at_ms < exp * 1000 + 2000,
        "closed {} ms after exp",
        at_ms - exp * 1000
    );
    assert!(
        v.closed_within(T).await,
        "the stream ends after event: reconnect"
    );
    assert!(!got.is_empty(), "comments arrived before the expiry");
    let last = v.last_id.clone().expect("an id before the expiry");

    // The expired token no longer opens a stream (even within the verifier's leeway).
    let r = client().get(&url).bearer_auth(&short).send().await.unwrap();
    let st = r.status().as_u16();
    assert_error(st, &r.json().await.unwrap(), 401, "invalid_token");

    // A fresh token resumes from the last id.
    let fresh = token_with(json!({"sub": "viewer", "exp": now_secs() + 600, "posts": [post]}));
    let mut v2 = Sse::connect_bearer(&url, &fresh, Some(&last)).await;
    assert_eq!(v2.status, 200);
    let posted = writer.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < posted.len() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("{} of {} comments arrived", got.len(), posted.len()));
        match v2.next_comment(left).await {
            Some(c) => got.push(c),
            None => panic!("{} of {} comments arrived", got.len(), posted.len()),
        }
    }
    let got_ids = ids(&got);
    let unique: HashSet<&String> = got_ids.iter().collect();
    assert_eq!(unique.len(), got_ids.len(), "no duplicates");
    assert_eq!(got_ids, posted, "every comment exactly once, in order");
    assert_eq!(s.metric("livecomments_sse_token_expired_total").await, 1);
}
