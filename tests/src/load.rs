//! A client that posts the way a careful integrator does behind a load balancer: each comment
//! with its own Idempotency-Key, sent to one of several ingest nodes, and on a refused or
//! broken connection, a timeout or a 503, sent again with the same key to the next node. What
//! it records is what the checker needs: every acknowledged (key, id) and every answer.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::auth::token;

/// What one writer task saw.
#[derive(Debug, Default)]
pub struct Posted {
    /// Idempotency-Key → the id of every 201 for it (retries included).
    pub acked: HashMap<String, Vec<String>>,
    /// Requests that failed on one node and were sent again.
    pub retried: usize,
    /// Keys never acknowledged after every attempt.
    pub gave_up: Vec<String>,
}

impl Posted {
    pub fn merge(&mut self, other: Posted) {
        for (k, v) in other.acked {
            self.acked.entry(k).or_default().extend(v);
        }
        self.retried += other.retried;
        self.gave_up.extend(other.gave_up);
    }

    /// One id per key, however many times it was acknowledged; panics when a retry answered
    /// with a different comment (the exactly-once promise of Idempotency-Key).
    pub fn ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.acked {
            assert!(
                v.iter().all(|id| id == &v[0]),
                "key {k} acknowledged with different ids: {v:?}"
            );
            out.push(v[0].clone());
        }
        out
    }
}

/// Posts `n` comments as `user` on `post_id`, starting at node `first` and moving to the
/// next node after every comment (and after every failure). `timeout` bounds one attempt.
/// A node that failed is skipped for the next 5 s, as a load balancer's passive health check
/// does (nginx `max_fails=1 fail_timeout=5s`).
pub async fn post_spread(
    nodes: &[String],
    first: usize,
    user: &str,
    post_id: &str,
    n: usize,
    timeout: Duration,
) -> Posted {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(2)
        .build()
        .unwrap();
    let tok = token(user);
    let mut out = Posted::default();
    let mut at = first;
    let mut down_until = vec![std::time::Instant::now(); nodes.len()];
    for i in 0..n {
        let key = format!("{user}-{i}");
        let mut done = false;
        for attempt in 0..(4 * nodes.len()) {
            let now = std::time::Instant::now();
            // The next node not marked down (all down: the next one anyway).
            let pick = (0..nodes.len())
                .map(|k| (at + k) % nodes.len())
                .find(|&j| down_until[j] <= now)
                .unwrap_or(at % nodes.len());
            at = pick + 1;
            let base = &nodes[pick];
            let r = client
                .post(format!("{base}/comment?post_id={post_id}"))
                .bearer_auth(&tok)
                .header("Idempotency-Key", &key)
                .json(&serde_json::json!({"text": format!("{user} #{i}")}))
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 201 => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    if let Some(id) = v["id"].as_str() {
                        out.acked
                            .entry(key.clone())
                            .or_default()
                            .push(id.to_string());
                        done = true;
                        break;
                    }
                }
                Ok(r) if r.status().as_u16() == 429 => {
                    panic!("rate limited; raise the test's --rate-limit")
                }
                _ => {}
            }
            out.retried += 1;
            down_until[pick] = std::time::Instant::now() + Duration::from_secs(5);
            if attempt >= nodes.len() {
                // Every node failed once: give the deployment a moment (a node restarting,
                // a retry waiting out the first attempt of its key).
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if !done {
            out.gave_up.push(key);
        }
    }
    out
}
