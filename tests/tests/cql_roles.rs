//! The production shape of one region: `ingest`, `reader` and two `fanout` processes sharing
//! one CQL keyspace (Cassandra here, ScyllaDB in production) and one nats-server.

use std::time::Duration;

use livecomments_tests::*;

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn separate_roles_on_cql_serve_the_whole_contract() {
    let Some(node) = cql_node() else { return };
    let ks = fresh_keyspace("roles");
    migrate_keyspace(&node, &ks);
    // Running migrate again is a no-op.
    migrate_keyspace(&node, &ks);
    let cql = ["--cql-nodes", node.as_str(), "--cql-keyspace", ks.as_str()];
    let nats = Nats::start().await;
    let ingest = Server::role("ingest")
        .nats(&nats.url)
        .args(cql)
        .start()
        .await;
    let reader = Server::role("reader")
        .nats(&nats.url)
        .args(cql)
        .start()
        .await;
    let mut f1 = Server::role("fanout").nats(&nats.url).start().await;
    let f2 = Server::role("fanout").nats(&nats.url).start().await;

    // Each role serves its own routes only.
    assert_eq!(ingest.get_json("/comments?post_id=x").await.0, 404);
    assert_eq!(reader.post("x", "a", "no").await.0, 404);

    let mut v1 = Sse::connect(&f1.base, "cqlpost", None).await;
    let mut v2 = Sse::connect(&f2.base, "cqlpost", None).await;
    let mut posted = vec![ingest.post("cqlpost", "alice", "probe").await.1];
    assert_eq!(v1.next_comment(T).await.unwrap()["id"], posted[0]["id"]);
    assert_eq!(v2.next_comment(T).await.unwrap()["id"], posted[0]["id"]);
    for i in 0..30 {
        let (st, c) = ingest.post("cqlpost", "alice", &format!("c{i}")).await;
        assert_eq!(st, 201, "{c}");
        posted.push(c);
    }
    assert_eq!(ids(&v1.comments(30, T).await), ids(&posted[1..]));
    assert_eq!(ids(&v2.comments(30, T).await), ids(&posted[1..]));

    // Reads through the reader: newest first, cursors, since.
    let all = reader.all_comments("cqlpost").await;
    let mut want = ids(&posted);
    want.reverse();
    assert_eq!(ids(&all), want);
    let (_, since) = reader
        .get_json(&format!(
            "/comments?post_id=cqlpost&page_size=5&after={}",
            posted[9]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        ids(since["comments"].as_array().unwrap()),
        ids(&posted[10..15])
    );

    // Idempotency through the CQL store.
    let send = || async {
        client()
            .post(ingest.url("/comment?post_id=cqlpost"))
            .bearer_auth(token("bob"))
            .header("idempotency-key", "once")
            .json(&serde_json::json!({"text": "once"}))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let (a, b) = (send().await, send().await);
    assert_eq!(a["id"], b["id"]);
    posted.push(a.clone());

    // A fanout dies; its viewer resumes on the other one, history coming from the reader.
    let resume = v1.last_id.clone().unwrap();
    f1.kill9();
    let (_, gap) = ingest.post("cqlpost", "alice", "while away").await;
    let mut v1b = Sse::connect(&f2.base, "cqlpost", Some(&resume)).await;
    let got = v1b.comments(2, T).await;
    assert_eq!(
        ids(&got),
        vec![
            a["id"].as_str().unwrap().to_string(),
            gap["id"].as_str().unwrap().to_string()
        ]
    );

    // Deletes reach the stream and the reads.
    let r = client()
        .delete(ingest.url(&format!(
            "/comment/{}?post_id=cqlpost",
            gap["id"].as_str().unwrap()
        )))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let mut deleted = None;
    while let Some(ev) = v1b.next(T).await {
        if ev.event == "delete" {
            deleted = Some(ev.json());
            break;
        }
    }
    let deleted = deleted.expect("delete event");
    assert_eq!(deleted["id"], gap["id"]);
    assert_eq!(reader.all_comments("cqlpost").await.len(), posted.len());
}
