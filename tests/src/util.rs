//! Waiting for things, and small helpers over results.

use std::time::{Duration, Instant};

use serde_json::Value;

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A comment JSON value's id.
pub fn id_of(c: &Value) -> String {
    c["id"].as_str().unwrap_or_default().to_string()
}

/// (event, comment id) of each stream event, as a client sees them.
pub fn kinds(events: &[crate::Event]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.event.clone(),
                e.json()["id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// One entry of [`kinds`].
pub fn ev(kind: &str, id: &str) -> (String, String) {
    (kind.to_string(), id.to_string())
}

/// Ids of a list of comment JSON values.
pub fn ids(comments: &[Value]) -> Vec<String> {
    comments
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Nearest-rank percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
