//! The scenarios of the benchmark issue.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use crate::Common;
use crate::coord::{Agents, Ctx, Out, r3};
use crate::http::{Url, fill};
use crate::huge::{Generator, Load, SideBySide, measured, wrk_load};
use crate::publish::{Kind, Publisher};
use crate::stats::{self, hist_from_pairs, lat_json};

#[derive(Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// SSE viewers in all.
    #[arg(long, default_value_t = 1000)]
    pub viewers: usize,
    /// Posts the viewers are spread over.
    #[arg(long, default_value_t = 1)]
    pub posts: usize,
    /// Comments to publish after everyone is connected (0: idle only).
    #[arg(long, default_value_t = 0)]
    pub comments: u64,
    /// Publish rate, comments per second (over all posts).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds to hold the idle viewers (idle CPU) before publishing.
    #[arg(long, default_value_t = 2.0)]
    pub idle_secs: f64,
    /// Give up connecting after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout_secs: f64,
    /// After publishing, wait this long without progress before declaring the rest missing.
    #[arg(long, default_value_t = 5.0)]
    pub drain_secs: f64,
    /// Stop publishing after this many seconds even if not all comments went out (a server
    /// that cannot take the rate); 0: no limit.
    #[arg(long, default_value_t = 0.0)]
    pub max_secs: f64,
}

#[derive(Args, Debug)]
pub struct MaxRateArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10_000)]
    pub viewers: usize,
    #[arg(long, default_value_t = 1)]
    pub posts: usize,
    /// First rate tried, comments/s.
    #[arg(long, default_value_t = 10.0)]
    pub start_rate: f64,
    /// Never try above this rate.
    #[arg(long, default_value_t = 5000.0)]
    pub max_rate: f64,
    /// When the first rate fails, halve down to this rate at the lowest.
    #[arg(long, default_value_t = 0.5)]
    pub min_rate: f64,
    /// Seconds each step publishes.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// The latency bound: p99 publish→receipt, ms.
    #[arg(long, default_value_t = 200.0)]
    pub p99_ms: f64,
    /// Bisection steps after the first failure.
    #[arg(long, default_value_t = 3)]
    pub refine: u32,
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout_secs: f64,
}

#[derive(Args, Debug)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10_000)]
    pub viewers: usize,
    #[arg(long, default_value_t = 1)]
    pub posts: usize,
    /// Comments per second flowing throughout.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of publishing before the drop.
    #[arg(long, default_value_t = 3.0)]
    pub before_secs: f64,
    /// Every viewer reconnects at a random moment within this window.
    #[arg(long, default_value_t = 5.0)]
    pub window_secs: f64,
    /// Seconds of publishing after the window.
    #[arg(long, default_value_t = 3.0)]
    pub after_secs: f64,
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout_secs: f64,
    #[arg(long, default_value_t = 10.0)]
    pub drain_secs: f64,
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub common: Common,
    /// Comments to post (stops earlier at --secs).
    #[arg(long, default_value_t = 20_000)]
    pub comments: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    #[arg(long, default_value_t = 100)]
    pub posts: usize,
    /// Concurrent POST connections.
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    /// Target rate (0: as fast as it goes).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Active bans to create first (global bans of users who do not post, as a moderator):
    /// what POST pays for the ban check (CONTRACT §8).
    #[arg(long, default_value_t = 0)]
    pub bans: usize,
    #[command(flatten)]
    pub side: SideBySide,
}

/// What wrk POSTs as a comment (the bench's own publisher sends its marker text instead):
/// 53 bytes, a typical live comment.
const WRK_COMMENT_BODY: &str = r#"{"text":"hello from wrk, a comment of typical length"}"#;

/// Creates `n` global bans of users `banned-<i>` through `POST /moderation/bans` with a
/// moderator token, 32 at a time.
async fn create_bans(base: &str, secret: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let token = crate::publish::moderator_token(secret)?;
    let url = Url::parse(base)?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (url, token, next) = (url.clone(), token.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = crate::http::Client::new(url, None);
            let auth = format!("Bearer {token}");
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let body = format!("{{\"user_id\": \"banned-{i}\", \"reason\": \"bench\"}}");
                let st = c
                    .request(
                        "POST",
                        "/moderation/bans",
                        &[
                            ("Authorization", &auth),
                            ("Content-Type", "application/json"),
                        ],
                        body.as_bytes(),
                        Duration::from_secs(10),
                    )
                    .await?;
                if st != 201 {
                    bail!("ban {i}: status {st}");
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!("bans: {n} created in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    #[command(flatten)]
    pub common: Common,
    /// Post to read (default: the run's post 0).
    #[arg(long)]
    pub post: Option<String>,
    /// Post this many comments into the post first (as fast as it goes).
    #[arg(long, default_value_t = 0)]
    pub fill: u64,
    /// Connections used to fill.
    #[arg(long, default_value_t = 64)]
    pub fill_conns: usize,
    /// Concurrent readers.
    #[arg(long, default_value_t = 16)]
    pub conns: usize,
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    #[arg(long, default_value_t = 20)]
    pub page_size: u32,
}

#[derive(Args, Debug)]
pub struct SmokeArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 60)]
    pub viewers: usize,
    #[arg(long, default_value_t = 3)]
    pub posts: usize,
    #[arg(long, default_value_t = 300)]
    pub comments: u64,
    #[arg(long, default_value_t = 150.0)]
    pub rate: f64,
}

/// What one publish phase measured.
struct Phase {
    attempted: u64,
    accepted: u64,
    errors: u64,
    r429: u64,
    expected: u64,
    delivered: u64,
    dups: u64,
    lat: hdrhistogram::Histogram<u64>,
    deliveries_per_s: f64,
    pub_rate: f64,
    server_cpu_pct: f64,
    gen_cpu_pct: f64,
    post_lat: hdrhistogram::Histogram<u64>,
    first_error: Option<String>,
    disconnects: u64,
}

impl Phase {
    fn missing(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    fn write(&self, o: &mut Out, prefix: &str) {
        let k = |s: &str| format!("{prefix}{s}");
        o.set(&k("published"), json!(self.accepted));
        o.set(&k("publish_errors"), json!(self.errors + self.r429));
        o.set(&k("publish_attempted"), json!(self.attempted));
        o.set(&k("publish_rate"), r3(self.pub_rate));
        o.set(&k("expected_deliveries"), json!(self.expected));
        o.set(&k("delivered"), json!(self.delivered));
        o.set(&k("missing"), json!(self.missing()));
        o.set(&k("duplicates"), json!(self.dups));
        o.set(&k("deliveries_per_s"), r3(self.deliveries_per_s));
        let l = lat_json(&self.lat);
        for q in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
            o.set(&k(&format!("latency_{q}")), l[q].clone());
        }
        let pl = lat_json(&self.post_lat);
        o.set(&k("post_p50_ms"), pl["p50_ms"].clone());
        o.set(&k("post_p99_ms"), pl["p99_ms"].clone());
        o.set(&k("server_cpu_pct"), r3(self.server_cpu_pct));
        o.set(&k("generator_cpu_pct"), r3(self.gen_cpu_pct));
        o.set(&k("stream_disconnects"), json!(self.disconnects));
        if let Some(e) = &self.first_error {
            o.set(&k("first_publish_error"), json!(e));
        }
    }
}

async fn publish_phase(
    ctx: &Ctx,
    agents: &mut Agents,
    publisher: &mut Publisher,
    count: u64,
    rate: f64,
    quiet: Duration,
    max_secs: f64,
) -> Result<Phase> {
    agents.reset().await?;
    let before = agents.report().await?;
    let acc_before = publisher.accepted_by_post();
    let scpu0 = ctx.server_cpu();
    let gcpu0 = agents.cpu() + stats::cpu_secs(std::process::id()).unwrap_or(0.0);
    let t0 = Instant::now();
    let pr = publisher
        .run(
            count,
            rate,
            (max_secs > 0.0).then(|| Duration::from_secs_f64(max_secs)),
        )
        .await?;
    let acc_after = publisher.accepted_by_post();
    let accepted_delta: Vec<u64> = acc_after
        .iter()
        .zip(&acc_before)
        .map(|(a, b)| a - b)
        .collect();
    let total_expected = agents.expected(&acc_after);
    let after = agents
        .drain(&acc_after, quiet, quiet * 6 + Duration::from_secs(10))
        .await?;
    let _ = total_expected;
    let wall = t0.elapsed().as_secs_f64();
    let scpu = ctx.server_cpu() - scpu0;
    let gcpu = agents.cpu() + stats::cpu_secs(std::process::id()).unwrap_or(0.0) - gcpu0;
    let expected = agents.expected(&accepted_delta);
    let delivered = after.distinct_total() - before.distinct_total();
    let span = if after.last_rx_ns > pr.first_send_ns && pr.first_send_ns != u64::MAX {
        (after.last_rx_ns - pr.first_send_ns) as f64 / 1e9
    } else {
        wall
    };
    let send_span = (pr.last_send_ns.saturating_sub(pr.first_send_ns)) as f64 / 1e9;
    Ok(Phase {
        attempted: pr.attempted,
        accepted: pr.accepted,
        errors: pr.errors,
        r429: pr.rejected_429,
        expected,
        delivered,
        dups: after.dups - before.dups,
        lat: hist_from_pairs(&after.lat_us),
        deliveries_per_s: delivered as f64 / span.max(1e-6),
        pub_rate: if pr.accepted > 1 {
            (pr.accepted - 1) as f64 / send_span.max(1e-6)
        } else {
            0.0
        },
        server_cpu_pct: 100.0 * scpu / wall,
        gen_cpu_pct: 100.0 * gcpu / wall,
        post_lat: pr.post_lat.unwrap_or_else(stats::new_hist),
        first_error: pr.first_error,
        disconnects: after.disconnects - before.disconnects,
    })
}

/// Spawns the agents, waits for every viewer, and records connect time and RSS per viewer.
pub(crate) async fn connect_viewers(
    ctx: &Ctx,
    o: &mut Out,
    viewers: usize,
    posts: usize,
    timeout: f64,
) -> Result<Agents> {
    let rss0 = ctx.server_rss_kb();
    let t0 = Instant::now();
    let mut agents = ctx.spawn_agents(viewers, posts, None).await?;
    let rep = agents
        .wait_connected(Duration::from_secs_f64(timeout))
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    o.set("viewers", json!(viewers));
    o.set("posts", json!(posts));
    o.set("fanout_urls", json!(ctx.sub_bases.len()));
    o.set("agents", json!(agents.pids.len()));
    o.set("connected", json!(rep.connected));
    o.set(
        "connect_errors",
        json!(rep.connect_errors + rep.http_errors),
    );
    o.set("connect_all_secs", r3(secs));
    o.set("connects_per_s", r3(rep.connected as f64 / secs.max(1e-6)));
    let c = lat_json(&hist_from_pairs(&rep.connect_us));
    o.set("connect_p50_ms", c["p50_ms"].clone());
    o.set("connect_p99_ms", c["p99_ms"].clone());
    o.set("connect_max_ms", c["max_ms"].clone());
    if rep.connected < agents.total {
        eprintln!(
            "warning: only {} of {} viewers connected",
            rep.connected, agents.total
        );
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    if !ctx.server_pids.is_empty() {
        let rss1 = ctx.server_rss_kb();
        o.set("server_rss_before_mib", r3(rss0 as f64 / 1024.0));
        o.set("server_rss_after_mib", r3(rss1 as f64 / 1024.0));
        o.set(
            "server_kib_per_viewer",
            r3((rss1 as f64 - rss0 as f64) / (rep.connected.max(1)) as f64),
        );
    }
    Ok(agents)
}

pub async fn fanout(a: FanoutArgs) -> Result<bool> {
    let ctx = Ctx::new(a.common.clone()).await?;
    let res = fanout_inner(&ctx, &a).await;
    ctx.finish().await;
    res
}

async fn fanout_inner(ctx: &Ctx, a: &FanoutArgs) -> Result<bool> {
    let mut o = Out::new("fanout", ctx);
    o.set("rate_target", json!(a.rate));
    let mut agents =
        connect_viewers(ctx, &mut o, a.viewers, a.posts, a.connect_timeout_secs).await?;
    let mut ok = agents.report().await?.connected == agents.total;
    if a.idle_secs > 0.0 && !ctx.server_pids.is_empty() {
        let c0 = ctx.server_cpu();
        let g0 = agents.cpu();
        tokio::time::sleep(Duration::from_secs_f64(a.idle_secs)).await;
        o.set(
            "idle_server_cpu_pct",
            r3(100.0 * (ctx.server_cpu() - c0) / a.idle_secs),
        );
        o.set(
            "idle_generator_cpu_pct",
            r3(100.0 * (agents.cpu() - g0) / a.idle_secs),
        );
    }
    if a.comments > 0 {
        let mut publisher = ctx.publisher(a.posts, ctx.common.pub_conns, ctx.common.users)?;
        let ph = publish_phase(
            ctx,
            &mut agents,
            &mut publisher,
            a.comments,
            a.rate,
            Duration::from_secs_f64(a.drain_secs),
            a.max_secs,
        )
        .await?;
        ph.write(&mut o, "");
        ok &= ph.missing() == 0 && ph.dups == 0 && ph.errors == 0;
    }
    let fin = agents.report().await?;
    o.set("still_connected", json!(fin.connected));
    o.set("ok", json!(ok));
    agents.quit().await;
    o.print(ctx)?;
    Ok(ok)
}

pub async fn max_rate(a: MaxRateArgs) -> Result<bool> {
    let ctx = Ctx::new(a.common.clone()).await?;
    let res = max_rate_inner(&ctx, &a).await;
    ctx.finish().await;
    res
}

async fn max_rate_inner(ctx: &Ctx, a: &MaxRateArgs) -> Result<bool> {
    let mut o = Out::new("max-rate", ctx);
    o.set("p99_bound_ms", json!(a.p99_ms));
    let mut agents =
        connect_viewers(ctx, &mut o, a.viewers, a.posts, a.connect_timeout_secs).await?;
    let mut publisher = ctx.publisher(a.posts, ctx.common.pub_conns.max(8), ctx.common.users)?;
    let mut best: Option<(f64, Phase)> = None;
    let mut lo = 0.0f64;
    let mut hi: Option<f64> = None;
    let mut rate = a.start_rate;
    let mut steps = Vec::new();
    let mut refine = 0;
    loop {
        let count = (rate * a.step_secs).ceil().max(1.0) as u64;
        let ph = publish_phase(
            ctx,
            &mut agents,
            &mut publisher,
            count,
            rate,
            Duration::from_secs(3),
            a.step_secs * 1.5,
        )
        .await?;
        let p99 = if ph.lat.is_empty() {
            f64::INFINITY
        } else {
            ph.lat.value_at_quantile(0.99) as f64 / 1000.0
        };
        let p50 = if ph.lat.is_empty() {
            f64::INFINITY
        } else {
            ph.lat.value_at_quantile(0.5) as f64 / 1000.0
        };
        // The publisher must also keep up: an ingest that cannot take the rate fails the step.
        let kept_up = ph.pub_rate >= rate * 0.9;
        let pass =
            ph.missing() == 0 && ph.dups == 0 && ph.errors == 0 && p99 <= a.p99_ms && kept_up;
        eprintln!(
            "max-rate: {rate:.1}/s → {} deliveries/s, p99 {p99:.1} ms, missing {}, dups {}, published {:.0}/s: {}",
            ph.deliveries_per_s as u64,
            ph.missing(),
            ph.dups,
            ph.pub_rate,
            if pass { "pass" } else { "FAIL" }
        );
        steps.push(json!({"rate": rate, "pass": pass, "p50_ms": p50, "p99_ms": p99, "deliveries_per_s": r3(ph.deliveries_per_s), "missing": ph.missing(), "duplicates": ph.dups, "published_per_s": r3(ph.pub_rate), "server_cpu_pct": r3(ph.server_cpu_pct), "generator_cpu_pct": r3(ph.gen_cpu_pct)}));
        if pass {
            lo = rate;
            best = Some((rate, ph));
        } else {
            hi = Some(rate);
            if !(ph.missing() == 0 && ph.dups == 0) {
                // let a lagging server catch up before the next step
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        let next = match hi {
            None => rate * 2.0,
            Some(h) if lo == 0.0 => {
                // Nothing passed yet: halve until something does.
                let _ = h;
                if rate / 2.0 < a.min_rate {
                    break;
                }
                rate / 2.0
            }
            Some(h) => {
                if refine >= a.refine {
                    break;
                }
                refine += 1;
                (lo + h) / 2.0
            }
        };
        if next > a.max_rate {
            if rate >= a.max_rate {
                break;
            }
            rate = a.max_rate;
        } else {
            rate = (next * 10.0).round() / 10.0;
        }
    }
    o.set("steps", json!(steps));
    let ok = best.is_some();
    if let Some((r, ph)) = &best {
        o.set("max_rate", r3(*r));
        ph.write(&mut o, "at_max_");
    } else {
        o.set("max_rate", json!(0));
    }
    o.set("ok", json!(ok));
    agents.quit().await;
    o.print(ctx)?;
    Ok(ok)
}

pub async fn storm(a: StormArgs) -> Result<bool> {
    let ctx = Ctx::new(a.common.clone()).await?;
    let res = storm_inner(&ctx, &a).await;
    ctx.finish().await;
    res
}

async fn storm_inner(ctx: &Ctx, a: &StormArgs) -> Result<bool> {
    let mut o = Out::new("storm", ctx);
    let mut agents =
        connect_viewers(ctx, &mut o, a.viewers, a.posts, a.connect_timeout_secs).await?;
    let mut publisher = ctx.publisher(a.posts, ctx.common.pub_conns, ctx.common.users)?;
    let ok = storm_core(
        ctx,
        &mut agents,
        &mut publisher,
        &mut o,
        a.rate,
        a.before_secs,
        a.window_secs,
        a.after_secs,
        a.drain_secs,
    )
    .await?;
    agents.quit().await;
    o.print(ctx)?;
    Ok(ok)
}

/// Publishes at `rate` throughout; after `before` seconds every viewer drops its stream and
/// reconnects with Last-Event-ID within `window`; publishing goes on for `after` more seconds.
#[allow(clippy::too_many_arguments)]
async fn storm_core(
    ctx: &Ctx,
    agents: &mut Agents,
    publisher: &mut Publisher,
    o: &mut Out,
    rate: f64,
    before: f64,
    window: f64,
    after: f64,
    drain: f64,
) -> Result<bool> {
    let acc0 = publisher.accepted_by_post();
    let total_secs = before + window + after;
    let count = (rate * total_secs).ceil() as u64;
    agents.reset().await?;
    let base = agents.report().await?;
    let scpu0 = ctx.server_cpu();
    let t0 = Instant::now();
    let pub_task = publisher.run(count, rate, None);
    let drop_task = async {
        tokio::time::sleep(Duration::from_secs_f64(before)).await;
        agents.drop_all((window * 1000.0) as u64).await?;
        let dropped_at = Instant::now();
        // Let every viewer come back (they reconnect at random moments within the window).
        tokio::time::sleep(Duration::from_secs_f64(window * 0.8)).await;
        loop {
            let r = agents.report().await?;
            if r.resumed >= agents.total
                || dropped_at.elapsed() > Duration::from_secs_f64(window + 30.0)
            {
                return anyhow::Ok((r, dropped_at.elapsed().as_secs_f64()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (pr, resumed) = tokio::join!(pub_task, drop_task);
    let pr = pr?;
    let (resumed, back_after) = resumed?;
    let acc = publisher.accepted_by_post();
    let fin = agents
        .drain(
            &acc,
            Duration::from_secs_f64(drain),
            Duration::from_secs(120),
        )
        .await?;
    let scpu = ctx.server_cpu() - scpu0;
    let acc_delta: Vec<u64> = acc.iter().zip(&acc0).map(|(a, b)| a - b).collect();
    let expected = agents.expected(&acc_delta);
    let delivered = fin.distinct_total() - base.distinct_total();
    let missing = expected.saturating_sub(delivered);
    let dups = fin.dups - base.dups;
    o.set("rate", json!(rate));
    o.set("drop_window_secs", json!(window));
    o.set("published", json!(pr.accepted));
    o.set("publish_errors", json!(pr.errors + pr.rejected_429));
    o.set("resumed", json!(resumed.resumed));
    o.set("all_back_after_secs", r3(back_after));
    let rc = lat_json(&hist_from_pairs(&resumed.reconnect_us));
    o.set("reconnect_p50_ms", rc["p50_ms"].clone());
    o.set("reconnect_p99_ms", rc["p99_ms"].clone());
    o.set("reconnect_max_ms", rc["max_ms"].clone());
    o.set("expected_deliveries", json!(expected));
    o.set("delivered", json!(delivered));
    o.set("missing", json!(missing));
    o.set("duplicates", json!(dups));
    let l = lat_json(&hist_from_pairs(&fin.lat_us));
    o.set("latency_p50_ms", l["p50_ms"].clone());
    o.set("latency_p99_ms", l["p99_ms"].clone());
    o.set("latency_max_ms", l["max_ms"].clone());
    o.set(
        "server_cpu_pct",
        r3(100.0 * scpu / t0.elapsed().as_secs_f64()),
    );
    o.set("still_connected", json!(fin.connected));
    // Every viewer disconnects once for the drop; anything above that the server cut.
    o.set(
        "stream_disconnects",
        json!(fin.disconnects - base.disconnects),
    );
    if let Some(e) = &pr.first_error {
        o.set("first_publish_error", json!(e));
    }
    let ok = missing == 0 && dups == 0 && resumed.resumed >= agents.total && pr.errors == 0;
    o.set("ok", json!(ok));
    Ok(ok)
}

pub async fn ingest(a: IngestArgs) -> Result<bool> {
    let ctx = Ctx::new(a.common.clone()).await?;
    let res = async {
        let mut o = Out::new("ingest", &ctx);
        let users = if ctx.common.users <= 1 {
            1000
        } else {
            ctx.common.users
        };
        let first_base = ctx.pub_base.split(',').next().unwrap_or_default();
        create_bans(
            first_base,
            ctx.secret.as_deref().unwrap_or_default(),
            a.bans,
        )
        .await?;
        o.set("posts", json!(a.posts));
        o.set("active_bans", json!(a.bans));
        o.set("users", json!(users));
        o.set("conns", json!(a.conns));
        o.set(
            "generator",
            json!(format!("{:?}", a.side.generator).to_lowercase()),
        );
        // wrk sends nchan byte-for-byte the requests livecomments gets, tokens included.
        let tokens = match &ctx.secret {
            Some(secret) if ctx.kind == Kind::Lc => crate::publish::make_tokens(secret, users)?,
            _ => Vec::new(),
        };
        let nchan = || async {
            match &a.side.nchan_url {
                Some(base) => {
                    let target = Target {
                        kind: Kind::Nchan,
                        base,
                        template: "{base}/pub/{post}",
                        pids: &a.side.nchan_pid,
                    };
                    ingest_load(&ctx, &a, &target, &tokens).await.map(Some)
                }
                None => Ok(None),
            }
        };
        let mut nchan_load = None;
        if a.side.nchan_first {
            nchan_load = nchan().await?;
        }
        let own = Target {
            kind: ctx.kind,
            base: &ctx.pub_base,
            template: &ctx.pub_template,
            pids: &ctx.server_pids,
        };
        let load = ingest_load(&ctx, &a, &own, &tokens).await?;
        if !a.side.nchan_first {
            nchan_load = nchan().await?;
        }
        load.write(&mut o, "");
        o.set("secs", r3(load.secs));
        o.set("comments_per_s", r3(load.per_s()));
        let mut ok = load.pr.errors == 0 && load.pr.accepted > 0;
        if let Some(n) = &nchan_load {
            n.write(&mut o, "nchan_");
            o.set("lc_over_nchan", r3(load.per_s() / n.per_s().max(1e-6)));
            o.set("nchan_first", json!(a.side.nchan_first));
            ok &= n.pr.errors == 0 && n.pr.accepted > 0;
        }
        o.set("ok", json!(ok));
        o.print(&ctx)?;
        Ok(ok)
    }
    .await;
    ctx.finish().await;
    res
}

/// Where an ingest load goes: the server under test, or nchan beside it.
struct Target<'a> {
    kind: Kind,
    /// Comma-separated bases (several ingest nodes: post p goes to base p mod n).
    base: &'a str,
    template: &'a str,
    /// Whose CPU the load costs.
    pids: &'a [u32],
}

/// One POST load of `a.secs` over `a.posts` posts and `a.conns` connections, with the
/// generator `a.side.generator`.
async fn ingest_load(
    ctx: &Ctx,
    a: &IngestArgs,
    to: &Target<'_>,
    tokens: &[String],
) -> Result<Load> {
    let bases: Vec<&str> = to.base.split(',').map(str::trim).collect();
    let url_of = |p: usize| fill(to.template, bases[p % bases.len()], &ctx.post_name(p));
    match a.side.generator {
        Generator::Wrk => {
            if bases.len() > 1 {
                bail!("--generator wrk sends to one address; give one --pub-url");
            }
            let (root, _) = crate::wrk::split_url(&url_of(0));
            let paths: Vec<String> = (0..a.posts)
                .map(|p| crate::wrk::split_url(&url_of(p)).1)
                .collect();
            wrk_load(
                &root,
                &paths,
                tokens,
                WRK_COMMENT_BODY,
                (a.conns, a.secs),
                to.pids,
            )
            .await
        }
        Generator::Bench => {
            let urls = (0..a.posts)
                .map(|p| Url::parse(&url_of(p)))
                .collect::<Result<Vec<_>>>()?;
            let tokens = match to.kind {
                Kind::Lc => tokens.to_vec(),
                _ => vec![String::new()],
            };
            let mut publisher = Publisher::new(to.kind, urls, tokens, a.conns, 1000);
            let max = Some(Duration::from_secs_f64(a.secs));
            let (load, ()) = measured(to.pids, &[], async {
                Ok((publisher.run(a.comments, a.rate, max).await?, ()))
            })
            .await?;
            Ok(load)
        }
    }
}

pub async fn read(a: ReadArgs) -> Result<bool> {
    let ctx = Ctx::new(a.common.clone()).await?;
    let res = async {
        if ctx.kind != Kind::Lc {
            bail!("read: nchan has no paged history API");
        }
        let mut o = Out::new("read", &ctx);
        let post = a.post.clone().unwrap_or_else(|| ctx.post_name(0));
        if a.fill > 0 {
            let url = Url::parse(&fill(&ctx.pub_template, &ctx.pub_base, &post))?;
            let tokens =
                crate::publish::make_tokens(ctx.secret.as_deref().unwrap_or_default(), 1000)?;
            let mut p = Publisher::new(Kind::Lc, vec![url], tokens, a.fill_conns, 1000);
            let t = Instant::now();
            let mut done = 0;
            while done < a.fill {
                let chunk = (a.fill - done).min(100_000);
                let pr = p.run(chunk, 0.0, None).await?;
                done += pr.attempted;
                if pr.errors > 0 {
                    eprintln!("fill: {} errors, first: {:?}", pr.errors, pr.first_error);
                }
                eprintln!(
                    "fill: {done}/{} ({:.0}/s)",
                    a.fill,
                    done as f64 / t.elapsed().as_secs_f64()
                );
            }
            o.set("filled", json!(p.accepted_by_post()[0]));
            o.set("fill_per_s", r3(a.fill as f64 / t.elapsed().as_secs_f64()));
        }
        let base = Url::parse(&ctx.pub_base)?;
        let path = format!("/comments?post_id={post}&page_size={}", a.page_size);
        let c0 = ctx.server_cpu();
        let (n, errs, h, el, fe) =
            crate::publish::get_load(base, path, a.conns, a.secs, 1000).await?;
        o.set("post", json!(post));
        o.set("conns", json!(a.conns));
        o.set("page_size", json!(a.page_size));
        o.set("requests", json!(n));
        o.set("errors", json!(errs));
        o.set("requests_per_s", r3(n as f64 / el.as_secs_f64()));
        let l = lat_json(&h);
        for q in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
            o.set(&format!("get_{q}"), l[q].clone());
        }
        o.set(
            "server_cpu_pct",
            r3(100.0 * (ctx.server_cpu() - c0) / el.as_secs_f64()),
        );
        if let Some(e) = fe {
            o.set("first_error", json!(e));
        }
        let ok = errs == 0 && n > 0;
        o.set("ok", json!(ok));
        o.print(&ctx)?;
        Ok(ok)
    }
    .await;
    ctx.finish().await;
    res
}

/// Small and quick: viewers over a few posts, a burst of comments, then a drop-and-resume of
/// every viewer while comments flow. Fails on anything missing or duplicated.
pub async fn smoke(a: SmokeArgs) -> Result<bool> {
    let ctx = Ctx::new(a.common.clone()).await?;
    let res = async {
        let mut o = Out::new("smoke", &ctx);
        let mut agents = connect_viewers(&ctx, &mut o, a.viewers, a.posts, 20.0).await?;
        let connected = agents.report().await?.connected == agents.total;
        let mut publisher = ctx.publisher(a.posts, ctx.common.pub_conns, ctx.common.users)?;
        let ph = publish_phase(
            &ctx,
            &mut agents,
            &mut publisher,
            a.comments,
            a.rate,
            Duration::from_secs(3),
            0.0,
        )
        .await?;
        ph.write(&mut o, "");
        let mut ok = connected
            && ph.missing() == 0
            && ph.dups == 0
            && ph.errors == 0
            && ph.accepted == a.comments;
        let mut o2 = Out { fields: Vec::new() };
        let storm_ok = storm_core(
            &ctx,
            &mut agents,
            &mut publisher,
            &mut o2,
            a.rate / 3.0,
            0.5,
            1.0,
            0.5,
            3.0,
        )
        .await?;
        for (k, v) in o2.fields {
            o.set(&format!("resume_{k}"), v);
        }
        ok &= storm_ok;
        o.set("ok", json!(ok));
        agents.quit().await;
        o.print(&ctx)?;
        if !ok {
            eprintln!("smoke: FAILED (see missing/duplicates above)");
        }
        Ok(ok)
    }
    .await;
    ctx.finish().await;
    res
}
