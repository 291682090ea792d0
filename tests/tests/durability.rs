//! A 201 means durable: `kill -9` right after the answers loses nothing, duplicates nothing,
//! and viewers resuming after the restart see each comment exactly once.

use std::collections::HashSet;
use std::time::Duration;

use livecomments_tests::*;

/// Comments delivered before the kill: the load is running by then.
const LOAD: usize = 500;

#[tokio::test]
async fn kill_9_under_load_loses_no_acknowledged_comment() {
    let mut s = Server::standalone().start().await;
    let mut viewer = Sse::connect_url(&s.url("/comments/stream?post_id=d&since=0"), None).await;
    let base = s.base.clone();
    // Eight concurrent writers; the server is killed while they run.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let base = base.clone();
            tokio::spawn(async move {
                let tok = token(&format!("w{w}"));
                let c = reqwest::Client::new();
                let mut acked = Vec::new();
                for i in 0..100_000 {
                    let r = c
                        .post(format!("{base}/comment?post_id=d"))
                        .bearer_auth(&tok)
                        .json(&serde_json::json!({"text": format!("w{w} #{i}")}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 201 => {
                            let v: serde_json::Value = match r.json().await {
                                Ok(v) => v,
                                Err(_) => break,
                            };
                            acked.push(v["id"].as_str().unwrap().to_string());
                        }
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    // The load is running once the viewer got LOAD of its comments; it reads a little more,
    // then the server dies under the writers.
    let mut seen_before: Vec<String> = ids(&viewer.comments(LOAD, Duration::from_secs(20)).await);
    seen_before.extend(ids(&viewer
        .comments(usize::MAX, Duration::from_millis(200))
        .await));
    let resume = viewer.last_id.clone();
    s.kill9();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 50, "load ran: {} acknowledged", acked.len());
    s.restart().await;
    let stored: Vec<String> = ids(&s.all_comments("d").await);
    let stored_set: HashSet<_> = stored.iter().cloned().collect();
    assert_eq!(stored_set.len(), stored.len(), "no duplicates in the store");
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !stored_set.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged comments lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // The viewer resumes after the restart and gets every stored comment it had not seen.
    let mut v2 = Sse::connect(&s.base, "d", resume.as_deref()).await;
    let want = stored.len() - seen_before.len();
    let replayed: Vec<String> = ids(&v2.comments(want, Duration::from_secs(20)).await);
    let mut all: Vec<String> = seen_before.clone();
    all.extend(replayed);
    let all_set: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all_set.len(), all.len(), "viewer saw nothing twice");
    assert_eq!(all_set, stored_set, "viewer saw every stored comment");
}
