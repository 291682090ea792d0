//! Histograms, clocks and /proc readings.

// libc getrlimit/setrlimit and sysconf(_SC_CLK_TCK): std has no safe API for them.
#![allow(unsafe_code)]

use hdrhistogram::Histogram;

/// Microsecond histogram, 1 µs .. 1 h, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

pub fn hist_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn hist_from_pairs(p: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_hist();
    for &(v, c) in p {
        h.saturating_record_n(v.max(1), c);
    }
    h
}

/// Wall clock in ns since the Unix epoch (shared by every process on this machine, so a send
/// time written by the publisher can be compared with a receive time in an agent).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// Raises RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            return r.rlim_cur;
        }
    }
    0
}

pub fn nofile_limit() -> u64 {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur
        } else {
            0
        }
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after ")" start at field 3 (state); utime is field 14, stime 15.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ut + st) / tck)
}

pub fn sum_rss_kb(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| rss_kb(p)).sum()
}

pub fn sum_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| cpu_secs(p)).sum()
}

/// p50/p90/p99/p99.9/max in ms, as JSON.
pub fn lat_json(h: &Histogram<u64>) -> serde_json::Value {
    let q = |x: f64| {
        if h.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!(h.value_at_quantile(x) as f64 / 1000.0)
        }
    };
    serde_json::json!({
        "count": h.len(),
        "p50_ms": q(0.5),
        "p90_ms": q(0.9),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": if h.is_empty() { serde_json::Value::Null } else { serde_json::json!(h.max() as f64 / 1000.0) },
    })
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), as the box's load beside a result.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
