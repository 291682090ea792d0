//! Moderation as a client does it (CONTRACT §8 bans, §9 post settings): moderator tokens and
//! the calls of the moderation API.

use serde_json::Value;

use crate::{Sse, client, now_secs, token_with};

/// A moderator's token (`"role": "moderator"`).
pub fn mod_token(user: &str) -> String {
    token_with(serde_json::json!({"sub": user, "exp": now_secs() + 3600, "role": "moderator"}))
}

async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST /moderation/bans` with `body` and `token` (None: no Authorization header).
pub async fn ban(base: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = client().post(format!("{base}/moderation/bans")).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    answer(req.send().await.expect("POST /moderation/bans")).await
}

/// `DELETE /moderation/bans/<user>?post_id=` (post None: the global ban).
pub async fn unban(base: &str, token: &str, user: &str, post: Option<&str>) -> u16 {
    let mut url = format!("{base}/moderation/bans/{user}");
    if let Some(p) = post {
        url.push_str(&format!("?post_id={p}"));
    }
    let r = client()
        .delete(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("DELETE ban");
    r.status().as_u16()
}

/// `GET /moderation/bans?post_id=`.
pub async fn list_bans(base: &str, token: &str, post: Option<&str>) -> (u16, Value) {
    let mut url = format!("{base}/moderation/bans");
    if let Some(p) = post {
        url.push_str(&format!("?post_id={p}"));
    }
    answer(
        client()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("GET bans"),
    )
    .await
}

/// `PUT /posts/<post>/settings` with `body`.
pub async fn put_settings(base: &str, token: &str, post: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .put(format!("{base}/posts/{post}/settings"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("PUT settings");
    answer(r).await
}

/// `GET /posts/<post>/settings` (public).
pub async fn get_settings(base: &str, post: &str) -> (u16, Value) {
    crate::get_json(&format!("{base}/posts/{post}/settings")).await
}

impl Sse {
    /// The next event named `name` (skipping every other kind), or None after `timeout`.
    pub async fn next_named(
        &mut self,
        name: &str,
        timeout: std::time::Duration,
    ) -> Option<crate::Event> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let ev = self.next(left).await?;
            if ev.event == name {
                return Some(ev);
            }
            if ev.event == "closed" {
                return None;
            }
        }
    }
}
