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

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Reads `n` responses (framed by `content-length`, as every answer of this server is) off
/// one connection, for pipelined and keep-alive requests. Panics on a malformed answer, on
/// a close before `n`, or after `timeout`.
pub async fn read_responses(
    s: &mut tokio::net::TcpStream,
    n: usize,
    timeout: Duration,
) -> Vec<RawResponse> {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or("");
            let status: u16 = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("status line {status_line:?}"));
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or_else(|| panic!("no content-length in {head:?}"));
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                out.push(RawResponse {
                    status,
                    headers,
                    body,
                });
                continue;
            }
        }
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("{} of {n} responses before the timeout", out.len()));
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&chunk[..k]),
            other => panic!(
                "connection ended after {} of {n} responses: {other:?}",
                out.len()
            ),
        }
    }
    out
}

/// Whether the server closes `s` (reads end) within `timeout`, anything it still sends
/// being discarded.
pub async fn closed_within(s: &mut tokio::net::TcpStream, timeout: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
    false
}
