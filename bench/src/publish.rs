//! The publisher: posts comments at a steady rate through the real API over a few keep-alive
//! connections, with real HS256 JWTs. Comment `i` goes to post `i % posts` with sequence
//! `i / posts`; its text carries the marker, post, sequence and the send time in ns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use parking::Mutex;
use serde::Serialize;

use crate::http::{Client, Url};
use crate::stats::{new_hist, now_ns};

mod parking {
    pub type Mutex<T> = std::sync::Mutex<T>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// livecomments: JWT-authenticated POST /comment, comment JSON on the stream.
    Lc,
    /// nchan: unauthenticated POST to the publisher location, body relayed as is.
    Nchan,
    /// This box's limit: the minimal broadcaster of `limit-server` (nchan's URLs, no auth,
    /// no store), started by the coordinator unless `--url` names a running one.
    Limit,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// `n` HS256 tokens for users `bench-0..n`, valid for a day.
pub fn make_tokens(secret: &str, n: usize) -> Result<Vec<String>> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let exp = now_ns() / 1_000_000_000 + 86_400;
    (0..n.max(1))
        .map(|i| {
            let sub = format!("bench-{i}");
            Ok(jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &Claims { sub: &sub, exp },
                &key,
            )?)
        })
        .collect()
}

/// One HS256 token for user `sub`, valid for a day.
pub fn user_token(secret: &str, sub: &str) -> Result<String> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let exp = now_ns() / 1_000_000_000 + 86_400;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub, exp },
        &key,
    )?)
}

/// A moderator's token (`"role": "moderator"`) signed with `secret`.
pub fn moderator_token(secret: &str) -> Result<String> {
    #[derive(serde::Serialize)]
    struct ModClaims<'a> {
        sub: &'a str,
        exp: u64,
        role: &'a str,
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &ModClaims {
            sub: "bench-moderator",
            exp: now_ns() / 1_000_000_000 + 86_400,
            role: "moderator",
        },
        &key,
    )?)
}

/// What each request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A comment whose text is the marker (`lcb1 <post> <seq> <send-ns>`).
    Comment,
    /// `{"kind": "<kind>"}` (POST /reaction; nchan relays the same body).
    Reaction(&'static str),
}

pub struct Publisher {
    pub kind: Kind,
    pub payload: Payload,
    /// Full publish URL per post.
    pub urls: Vec<Url>,
    pub tokens: Arc<Vec<String>>,
    pub conns: usize,
    pub next: u64,
    pub accepted: Arc<Vec<AtomicU64>>,
    pub src_first: usize,
}

#[derive(Debug, Default)]
pub struct PhaseResult {
    pub attempted: u64,
    pub accepted: u64,
    pub rejected_429: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub first_send_ns: u64,
    pub last_send_ns: u64,
    pub post_lat: Option<Histogram<u64>>,
    pub first_error: Option<String>,
}

struct PhaseShared {
    next: AtomicU64,
    end: u64,
    accepted: AtomicU64,
    r429: AtomicU64,
    errors: AtomicU64,
    first_send: AtomicU64,
    last_send: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Publisher {
    pub fn new(
        kind: Kind,
        urls: Vec<Url>,
        tokens: Vec<String>,
        conns: usize,
        src_first: usize,
    ) -> Publisher {
        let n = urls.len();
        Publisher {
            kind,
            payload: Payload::Comment,
            urls,
            tokens: Arc::new(tokens),
            conns: conns.max(1),
            next: 0,
            accepted: Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()),
            src_first,
        }
    }

    pub fn accepted_by_post(&self) -> Vec<u64> {
        self.accepted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    /// Posts `count` comments at `rate` per second (0: as fast as `conns` connections go),
    /// stopping early at `deadline` if given.
    pub async fn run(
        &mut self,
        count: u64,
        rate: f64,
        deadline: Option<Duration>,
    ) -> Result<PhaseResult> {
        let start_idx = self.next;
        let sh = Arc::new(PhaseShared {
            next: AtomicU64::new(start_idx),
            end: start_idx + count,
            accepted: AtomicU64::new(0),
            r429: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_send: AtomicU64::new(u64::MAX),
            last_send: AtomicU64::new(0),
            hist: Mutex::new(new_hist()),
            first_error: Mutex::new(None),
        });
        let t0 = Instant::now() + Duration::from_millis(5);
        let mut tasks = Vec::new();
        for c in 0..self.conns {
            let sh = sh.clone();
            let urls = self.urls.clone();
            let tokens = self.tokens.clone();
            let accepted = self.accepted.clone();
            let kind = self.kind;
            let payload = self.payload;
            let src = Some(crate::http::src_ip(self.src_first + c % 50));
            tasks.push(tokio::spawn(async move {
                let posts = urls.len() as u64;
                let mut clients: Vec<(std::net::SocketAddr, Client)> = Vec::new();
                let mut local = new_hist();
                let mut body = String::with_capacity(128);
                loop {
                    let i = sh.next.fetch_add(1, Ordering::Relaxed);
                    if i >= sh.end {
                        break;
                    }
                    let rel = i - start_idx;
                    if rate > 0.0 {
                        let at = t0 + Duration::from_secs_f64(rel as f64 / rate);
                        tokio::time::sleep_until(at.into()).await;
                    }
                    if deadline.is_some_and(|d| t0.elapsed() > d) {
                        break;
                    }
                    let post = (i % posts) as usize;
                    let seq = i / posts;
                    // One keep-alive connection per (task, url host), reused across posts of that host.
                    let url = &urls[post];
                    let slot = match clients.iter().position(|(a, _)| *a == url.addr) {
                        Some(k) => k,
                        None => {
                            clients.push((url.addr, Client::new(url.clone(), src)));
                            clients.len() - 1
                        }
                    };
                    let client = &mut clients[slot].1;
                    let sent = now_ns();
                    body.clear();
                    use std::fmt::Write;
                    let _ = match payload {
                        Payload::Comment => write!(
                            body,
                            "{{\"text\":\"{} {} {} {}\"}}",
                            crate::MARKER_STR,
                            post,
                            seq,
                            sent
                        ),
                        Payload::Reaction(k) => write!(body, "{{\"kind\":\"{k}\"}}"),
                    };
                    sh.first_send.fetch_min(sent, Ordering::Relaxed);
                    sh.last_send.fetch_max(sent, Ordering::Relaxed);
                    let auth;
                    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
                    if kind == Kind::Lc {
                        auth = format!("Bearer {}", tokens[(i as usize) % tokens.len()]);
                        headers.push(("Authorization", &auth));
                    }
                    let began = Instant::now();
                    let res = client
                        .request(
                            "POST",
                            &url.path,
                            &headers,
                            body.as_bytes(),
                            Duration::from_secs(30),
                        )
                        .await;
                    match res {
                        Ok(st) if (200..300).contains(&st) => {
                            local.saturating_record((began.elapsed().as_micros() as u64).max(1));
                            sh.accepted.fetch_add(1, Ordering::Relaxed);
                            accepted[post].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(429) => {
                            sh.r429.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(st) => {
                            sh.errors.fetch_add(1, Ordering::Relaxed);
                            let mut fe = sh.first_error.lock().unwrap();
                            if fe.is_none() {
                                *fe = Some(format!(
                                    "HTTP {st}: {}",
                                    String::from_utf8_lossy(&client.body)
                                ));
                            }
                        }
                        Err(e) => {
                            sh.errors.fetch_add(1, Ordering::Relaxed);
                            let mut fe = sh.first_error.lock().unwrap();
                            if fe.is_none() {
                                *fe = Some(format!("{e:#}"));
                            }
                        }
                    }
                }
                sh.hist.lock().unwrap().add(&local).ok();
            }));
        }
        for t in tasks {
            t.await?;
        }
        let issued = sh.next.load(Ordering::Relaxed).min(sh.end) - start_idx;
        self.next = start_idx + issued;
        let hist = std::mem::replace(&mut *sh.hist.lock().unwrap(), new_hist());
        Ok(PhaseResult {
            attempted: issued,
            accepted: sh.accepted.load(Ordering::Relaxed),
            rejected_429: sh.r429.load(Ordering::Relaxed),
            errors: sh.errors.load(Ordering::Relaxed),
            elapsed: t0.elapsed(),
            first_send_ns: sh.first_send.load(Ordering::Relaxed),
            last_send_ns: sh.last_send.load(Ordering::Relaxed),
            post_lat: Some(hist),
            first_error: sh.first_error.lock().unwrap().clone(),
        })
    }
}

/// Closed-loop GETs of one path over `conns` connections for `secs`; returns (requests, errors,
/// latency histogram, elapsed).
pub async fn get_load(
    url: Url,
    path: String,
    conns: usize,
    secs: f64,
    src_first: usize,
) -> Result<(u64, u64, Histogram<u64>, Duration, Option<String>)> {
    let ok = Arc::new(AtomicU64::new(0));
    let errs = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(new_hist()));
    let first_err: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..conns.max(1) {
        let (url, path, ok, errs, hist, first_err) = (
            url.clone(),
            path.clone(),
            ok.clone(),
            errs.clone(),
            hist.clone(),
            first_err.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(url, Some(crate::http::src_ip(src_first + c % 50)));
            let mut local = new_hist();
            while Instant::now() < end {
                let began = Instant::now();
                match client
                    .request(
                        "GET",
                        &path,
                        &[("Accept", "application/json")],
                        b"",
                        Duration::from_secs(30),
                    )
                    .await
                {
                    Ok(200) => {
                        local.saturating_record((began.elapsed().as_micros() as u64).max(1));
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        errs.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut fe = first_err.lock().unwrap();
                            if fe.is_none() {
                                *fe = Some(match other {
                                    Ok(st) => format!(
                                        "HTTP {st}: {}",
                                        String::from_utf8_lossy(&client.body)
                                    ),
                                    Err(e) => format!("{e:#}"),
                                });
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            hist.lock().unwrap().add(&local).ok();
        }));
    }
    for t in tasks {
        t.await?;
    }
    let h = hist.lock().unwrap().clone();
    let fe = first_err.lock().unwrap().clone();
    Ok((
        ok.load(Ordering::Relaxed),
        errs.load(Ordering::Relaxed),
        h,
        t0.elapsed(),
        fe,
    ))
}
