//! Values that would change a NATS subject (post ids, regions) never reach NATS.

use super::*;

/// post_id values that would change a NATS subject are refused before anything is published:
/// a raw subscriber on `comments.>` sees only the one valid comment's subject.
#[tokio::test]
async fn nothing_reaches_nats_from_subject_injection() {
    let nats = Nats::start().await;
    let s = Server::standalone().nats(&nats.url).start().await;
    let mut spy = RawNats::connect(&nats.url).await;
    spy.subscribe("comments.>").await;
    spy.subscribe("_INBOX_NOT_USED.>").await;
    let tok = token("eve");
    let evil = [
        "a.b",
        "a.*",
        "a.>",
        "*",
        ">",
        "a%20b",
        "a%09b",
        "a%0D%0APUB%20comments.live.local.x%201%0D%0Ax",
        "a%00",
        "comments.live.local.x",
        "..",
        "a..b",
        "%2E",
        "%E2%80%A4",
        "a%2Eb",
        "local.x",
        &"a".repeat(65),
    ];
    for p in evil {
        let r = client()
            .post(s.url(&format!("/comment?post_id={p}")))
            .bearer_auth(&tok)
            .json(&json!({"text": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "POST post_id={p}");
        let r = client()
            .get(s.url(&format!("/comments/stream?post_id={p}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "stream post_id={p}");
        let r = client()
            .get(s.url(&format!("/comments?post_id={p}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "GET post_id={p}");
        let r = client()
            .delete(s.url(&format!("/comment/01JDQ7Z8XK3M4N5P6Q7R8S9T0V?post_id={p}")))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "DELETE post_id={p}");
    }
    // Comment ids in the path are checked too (they go into store keys and delete events).
    for id in ["a.b", "a..b", "%2A", "%3E", "01JDQ7Z8XK3M4N5P6Q7R8S9T0V.x"] {
        let r = client()
            .delete(s.url(&format!("/comment/{id}?post_id=ok")))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "DELETE id={id}");
    }
    let (st, c) = s.post("ok-1", "eve", "the only one").await;
    assert_eq!(st, 201);
    let seen = spy.drain(Duration::from_millis(1500)).await;
    let live: Vec<&NatsMsg> = seen
        .iter()
        .filter(|m| m.subject.starts_with("comments.live."))
        .collect();
    assert_eq!(
        live.len(),
        1,
        "subjects: {:?}",
        seen.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    assert_eq!(live[0].subject, "comments.live.local.ok-1");
    let ev: Value = rmp_serde_value(&live[0].payload);
    assert_eq!(ev["id"], c["id"]);
    for m in &seen {
        let tokens: Vec<&str> = m.subject.split('.').collect();
        assert!(
            tokens.iter().all(|t| !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
            "{}",
            m.subject
        );
    }
    assert_eq!(s.get_json("/healthz").await.0, 200);
}

fn rmp_serde_value(bytes: &[u8]) -> Value {
    // MessagePack -> JSON value through the shared decoder's types: any map decodes.
    wire::decode::<Value>(bytes).expect("MessagePack payload")
}

/// Region names that would change a subject are refused at start, with the flag named.
#[tokio::test]
async fn region_values_that_change_a_subject_refuse_to_start() {
    for (flag, value) in [
        ("--region", "eu.x"),
        ("--region", "*"),
        ("--region", ">"),
        ("--region", "eu west"),
        ("--regions", "local,us.*"),
        ("--regions", "local,>"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = Command::new(bin())
            .args([
                "standalone",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                tmp.path().to_str().unwrap(),
                flag,
                value,
            ])
            .env("LIVECOMMENTS_JWT_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} must not start");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}
