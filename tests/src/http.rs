//! HTTP as a client sends it: the JSON API, contract errors, and raw bytes no client would send.

use std::time::{Duration, Instant};

use serde_json::Value;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(8)
        .build()
        .unwrap()
}

pub async fn post_comment(base: &str, post_id: &str, token: &str, text: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/comment?post_id={post_id}"))
        .bearer_auth(token)
        .json(&serde_json::json!({"text": text}))
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST /reaction?post_id=...` with a token and a raw JSON body (CONTRACT §11).
pub async fn post_reaction(base: &str, post_id: &str, token: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/reaction?post_id={post_id}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("POST /reaction");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `DELETE /comment/<id>?post_id=...` with a token.
pub async fn delete_comment(base: &str, post_id: &str, id: &str, token: &str) -> (u16, Value) {
    let r = client()
        .delete(format!("{base}/comment/{id}?post_id={post_id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("DELETE");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A GET with `Authorization: Bearer <token>`.
pub async fn get_json_bearer(url: &str, token: &str) -> (u16, Value) {
    let r = client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Asserts a contract error: status, `error.code`, a message, nothing else surprising.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(body["error"]["code"], want_code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
}

/// Sends raw bytes on a fresh connection and returns what the server answered before it
/// closed the connection or `timeout` passed (for requests no HTTP client would send).
pub async fn raw_http(port: u16, request: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    // The server may answer and close before it read everything: ignore write errors.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
