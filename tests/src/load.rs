//! A client that posts the way a careful integrator does behind a load balancer: each comment
//! with its own Idempotency-Key, sent to one of several ingest nodes, and on a refused or
//! broken connection, a timeout or a 503, sent again with the same key to the next node. What
//! it records is what the checker needs: every acknowledged (key, id) and every answer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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

/// One HTTP attempt of a [`Balancer`]: when, on which node, and the answer (None: no answer —
/// refused, reset or timed out).
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub start: Instant,
    pub end: Instant,
    pub node: usize,
    pub status: Option<u16>,
}

/// The client side of a load balancer over several ingest nodes: round robin, and a node that
/// failed is skipped for the next 5 s, as a load balancer's passive health check does (nginx
/// `max_fails=1 fail_timeout=5s`).
pub struct Balancer {
    nodes: Vec<String>,
    client: reqwest::Client,
    at: usize,
    down_until: Vec<Instant>,
}

impl Balancer {
    /// `timeout` bounds one attempt; the first request goes to node `first`.
    pub fn new(nodes: &[String], first: usize, timeout: Duration) -> Balancer {
        Balancer {
            nodes: nodes.to_vec(),
            client: reqwest::Client::builder()
                .timeout(timeout)
                .pool_max_idle_per_host(2)
                .build()
                .expect("http client"),
            at: first,
            down_until: vec![Instant::now(); nodes.len()],
        }
    }

    /// Posts `text` with Idempotency-Key `key`, sending it again with the same key to the next
    /// node on a refused or broken connection, a timeout or a 503, at most `attempts` times
    /// (once every node failed once, 200 ms apart; after a 503's `Retry-After`, to any node). Returns the id of the 201, and calls
    /// `seen` with every attempt.
    pub async fn post(
        &mut self,
        tok: &str,
        post_id: &str,
        key: &str,
        text: &str,
        attempts: usize,
        mut seen: impl FnMut(Attempt),
    ) -> Option<String> {
        let n = self.nodes.len();
        for attempt in 0..attempts {
            let now = Instant::now();
            // The next node not marked down (all down: the next one anyway).
            let pick = (0..n)
                .map(|k| (self.at + k) % n)
                .find(|&j| self.down_until[j] <= now)
                .unwrap_or(self.at % n);
            self.at = pick + 1;
            let base = &self.nodes[pick];
            let start = Instant::now();
            let r = self
                .client
                .post(format!("{base}/comment?post_id={post_id}"))
                .bearer_auth(tok)
                .header("Idempotency-Key", key)
                .json(&serde_json::json!({ "text": text }))
                .send()
                .await;
            let status = r.as_ref().ok().map(|r| r.status().as_u16());
            // A 503 with Retry-After: the node is fine, an earlier attempt of this key is
            // still being written; come back then (as a client honouring the header does).
            let retry_after = r
                .as_ref()
                .ok()
                .filter(|r| r.status().as_u16() == 503)
                .and_then(|r| r.headers().get("retry-after"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let id = match r {
                Ok(r) if r.status().as_u16() == 201 => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    v["id"].as_str().map(str::to_string)
                }
                Ok(r) if r.status().as_u16() == 429 => {
                    panic!("rate limited; raise the test's --rate-limit")
                }
                _ => None,
            };
            seen(Attempt {
                start,
                end: Instant::now(),
                node: pick,
                // A 201 whose body was cut off is no answer.
                status: status.filter(|s| *s != 201 || id.is_some()),
            });
            if id.is_some() {
                return id;
            }
            if let Some(secs) = retry_after {
                tokio::time::sleep(Duration::from_secs(secs.min(10))).await;
                continue;
            }
            self.down_until[pick] = Instant::now() + Duration::from_secs(5);
            if attempt + 1 >= n {
                // Every node failed once: give the deployment a moment (a node restarting,
                // a retry waiting out the first attempt of its key).
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        None
    }
}

/// Posts `n` comments as `user` on `post_id` through a [`Balancer`] starting at node `first`
/// (each comment with its own key, at most `4 × nodes` attempts). `timeout` bounds one attempt.
pub async fn post_spread(
    nodes: &[String],
    first: usize,
    user: &str,
    post_id: &str,
    n: usize,
    timeout: Duration,
) -> Posted {
    let mut lb = Balancer::new(nodes, first, timeout);
    let tok = token(user);
    let mut out = Posted::default();
    for i in 0..n {
        let key = format!("{user}-{i}");
        let mut tries = 0;
        let id = lb
            .post(
                &tok,
                post_id,
                &key,
                &format!("{user} #{i}"),
                4 * nodes.len(),
                |_| tries += 1,
            )
            .await;
        match id {
            Some(id) => {
                out.retried += tries - 1;
                out.acked.entry(key).or_default().push(id);
            }
            None => {
                out.retried += tries;
                out.gave_up.push(key);
            }
        }
    }
    out
}
