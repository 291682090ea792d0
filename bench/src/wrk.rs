//! wrk as the light POST generator (`reactions`/`ingest --generator wrk`). The bench's own publisher
//! checks every answer and records every latency; wrk (C, one thread, pre-built requests)
//! spends about half its CPU per POST, which on this 2-core box leaves the servers more of
//! the machine. A side-by-side run reports both: a light generator shows what the server can
//! take, a heavier one what it takes when the clients compete for the cores.
//!
//! The script holds one pre-formatted request per token and sends them in turn, so the
//! per-request work in Lua is a table index; livecomments and nchan get byte-for-byte the
//! same requests but for the path (nchan ignores the `Authorization` header).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::stats;

/// What one wrk run did, from its summary.
#[derive(Debug, Default)]
pub struct WrkRun {
    /// Completed requests (in flight at the end are not counted: at most `conns` more may
    /// have reached the server).
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub secs: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// wrk's own CPU (user + system), seconds.
    pub cpu_secs: f64,
}

/// POSTs `body` to `base` (`http://host:port`) over `conns` connections for `secs`: request
/// k goes to `paths[k % paths.len()]` with `tokens[k % tokens.len()]` (`tokens` empty: no
/// `Authorization`), one pre-formatted request per k up to the longer of the two, sent in turn.
pub async fn post(
    base: &str,
    paths: &[String],
    tokens: &[String],
    body: &str,
    conns: usize,
    secs: f64,
) -> Result<WrkRun> {
    if paths.is_empty() {
        bail!("wrk: no path to POST to");
    }
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let script = std::env::temp_dir().join(format!("lcb-wrk-{}-{n}.lua", std::process::id()));
    std::fs::File::create(&script)
        .and_then(|mut f| f.write_all(lua(paths, tokens, body).as_bytes()))
        .with_context(|| format!("writing {}", script.display()))?;
    let result = run(&script, base, conns, secs).await;
    let _ = std::fs::remove_file(&script);
    result
}

/// The path and query of `url` (`http://host:port/path?query` → `/path?query`), and the rest.
pub fn split_url(url: &str) -> (String, String) {
    let mut parts = url.splitn(4, '/');
    let base: Vec<&str> = parts.by_ref().take(3).collect();
    let path = parts.next().map_or_else(|| "/".into(), |p| format!("/{p}"));
    (base.join("/"), path)
}

async fn run(script: &std::path::Path, url: &str, conns: usize, secs: f64) -> Result<WrkRun> {
    let mut child = Command::new("wrk")
        .args([
            "-t1".to_string(),
            format!("-c{}", conns.max(1)),
            format!("-d{}s", secs.ceil().max(1.0) as u64),
            "--latency".into(),
            "-s".into(),
        ])
        .arg(script)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk (apt-get install wrk)")?;
    let pid = child.id();
    let started = Instant::now();
    // The last reading before it exits: at most one interval (100 ms of ~10 s) unseen.
    let mut cpu = 0.0;
    loop {
        if let Some(c) = stats::cpu_secs(pid) {
            cpu = c;
        }
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs_f64(secs + 60.0) {
            let _ = child.kill();
            bail!("wrk did not finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {} {}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut run = parse(&text)?;
    run.cpu_secs = cpu;
    Ok(run)
}

fn lua(paths: &[String], tokens: &[String], body: &str) -> String {
    let list = |name: &str, items: &[String]| {
        let mut s = format!("local {name} = {{\n");
        for t in items {
            s.push_str(&format!("  {t:?},\n"));
        }
        s.push_str("}\n");
        s
    };
    let mut s = String::from("local reqs = {}\nlocal n = 0\nlocal i = 0\n");
    s.push_str(&list("tokens", tokens));
    s.push_str(&list("paths", paths));
    s.push_str(&format!(
        r#"init = function(args)
  local count = math.max(#paths, #tokens)
  for k = 1, count do
    local h = {{ ["Content-Type"] = "application/json" }}
    if #tokens > 0 then h["Authorization"] = "Bearer " .. tokens[(k - 1) % #tokens + 1] end
    n = n + 1
    reqs[n] = wrk.format("POST", paths[(k - 1) % #paths + 1], h, {body:?})
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
"#
    ));
    s
}

/// `605.00us`, `4.44ms`, `1.02s` → ms.
fn ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn parse(text: &str) -> Result<WrkRun> {
    let mut r = WrkRun::default();
    let mut found = false;
    for line in text.lines().map(str::trim) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["50%", v] => r.p50_ms = ms(v),
            ["99%", v] => r.p99_ms = ms(v),
            [n, "requests", "in", t, ..] => {
                r.requests = n.parse()?;
                r.secs = ms(t.trim_end_matches(',')).map_or(0.0, |m| m / 1000.0);
                found = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                r.socket_errors = rest
                    .iter()
                    .filter_map(|x| x.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    if !found {
        bail!("no summary in wrk's output: {text}");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary() {
        let out = "Running 10s test @ http://127.0.0.1:8181/reaction?post_id=p1
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms    1.11ms  38.30ms   93.85%
  Latency Distribution
     50%  605.00us
     75%    1.05ms
     90%    2.01ms
     99%    4.44ms
  715270 requests in 10.00s, 142.60MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  71526.97
";
        let r = parse(out).unwrap();
        assert_eq!(r.requests, 715_270);
        assert_eq!(r.non_2xx, 12);
        assert_eq!(r.socket_errors, 3);
        assert_eq!(r.p50_ms, Some(0.605));
        assert_eq!(r.p99_ms, Some(4.44));
        assert!((r.secs - 10.0).abs() < 1e-9);
        assert!(parse("garbage").is_err());
    }

    #[test]
    fn splits_a_url_into_base_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8090/pub/p1"),
            ("http://127.0.0.1:8090".to_string(), "/pub/p1".to_string())
        );
        assert_eq!(
            split_url("http://h:1/comment?post_id=a"),
            ("http://h:1".to_string(), "/comment?post_id=a".to_string())
        );
        assert_eq!(
            split_url("http://h:1"),
            ("http://h:1".to_string(), "/".to_string())
        );
    }
}
