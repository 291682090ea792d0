//! The huge-stream scenarios (CONTRACT §11): reactions under 10k viewers beside nchan's
//! in-memory publish, rate sampling against full delivery, and the cluster-wide viewer count.

// libc kill(SIGKILL) of the fanout the viewer-count scenario takes away.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::Common;
use crate::agent::{AgentReport, REACTION_KINDS};
use crate::coord::{Agents, Ctx, Out, r3};
use crate::http::{Client, Url, fill};
use crate::publish::{Kind, Payload, PhaseResult, Publisher, user_token};
use crate::scenarios::connect_viewers;
use crate::stats::{self, hist_from_pairs, lat_json, now_ns};

const SEC_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    Bench,
    Wrk,
}

const REACTION_BODY: &str = r#"{"kind":"like"}"#;

/// A wrk run as a [`Load`] (see [`crate::wrk::post`]): `pids` are the server's; wrk's CPU
/// is the generator's.
pub(crate) async fn wrk_load(
    base: &str,
    paths: &[String],
    tokens: &[String],
    body: &str,
    (conns, secs): (usize, f64),
    pids: &[u32],
) -> Result<Load> {
    let c0 = stats::sum_cpu(pids);
    let t0 = Instant::now();
    let w = crate::wrk::post(base, paths, tokens, body, conns, secs).await?;
    let wall = t0.elapsed().as_secs_f64();
    let c = stats::sum_cpu(pids) - c0;
    Ok(Load {
        pr: PhaseResult {
            attempted: w.requests,
            accepted: w.requests - w.non_2xx.min(w.requests),
            errors: w.non_2xx + w.socket_errors,
            elapsed: Duration::from_secs_f64(w.secs),
            first_error: (w.non_2xx + w.socket_errors > 0).then(|| {
                format!(
                    "wrk: {} non-2xx, {} socket errors",
                    w.non_2xx, w.socket_errors
                )
            }),
            ..PhaseResult::default()
        },
        secs: w.secs,
        server_cpu_secs: c,
        server_cpu_pct: 100.0 * c / wall,
        generator_cpu_pct: 100.0 * w.cpu_secs / wall,
        wrk_latency: Some((w.p50_ms, w.p99_ms)),
    })
}

/// The same POST load against nchan in the same run, and who generates it: shared by the
/// scenarios that compare a POST path with nchan's in-memory publish (`reactions`, `ingest`).
#[derive(Args, Debug, Clone)]
pub struct SideBySide {
    /// Also run the same POST load, same client, against nchan's publisher location
    /// (`{nchan}/pub/<post>`, a channel without subscribers) in this run.
    #[arg(long)]
    pub nchan_url: Option<String>,
    /// nginx worker pids for nchan's CPU.
    #[arg(long, value_delimiter = ',')]
    pub nchan_pid: Vec<u32>,
    /// Run nchan's load before livecomments' (alternate it between rounds).
    #[arg(long)]
    pub nchan_first: bool,
    /// Who sends the POSTs: this bench's publisher (checks and times every answer), or wrk
    /// (`crate::wrk`, lighter: more of the box left to the servers). Same for both servers.
    #[arg(long, value_enum, default_value = "bench")]
    pub generator: Generator,
}

#[derive(Args, Debug)]
pub struct ReactionsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Viewers of the post (livecomments), each reading `event: reactions`.
    #[arg(long, default_value_t = 10_000)]
    pub viewers: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Concurrent POST connections (closed loop unless --rate).
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    /// Target rate, reactions/s (0: as fast as the connections go).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Distinct users reacting, one token each, used in turn (the limit is 20/s per user).
    #[arg(long, default_value_t = 10_000)]
    pub reactors: usize,
    /// Post one `wow` (the only source of `wow`) at second + 0.5 every this many seconds.
    #[arg(long, default_value_t = 3)]
    pub probe_every: u64,
    /// After the load, wait this long for the last `event: reactions`.
    #[arg(long, default_value_t = 4.0)]
    pub drain_secs: f64,
    /// Reaction URL template (livecomments).
    #[arg(long, default_value = "{base}/reaction?post_id={post}")]
    pub reaction_template: String,
    #[command(flatten)]
    pub side: SideBySide,
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout_secs: f64,
}

#[derive(Args, Debug)]
pub struct SamplingArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10_000)]
    pub viewers: usize,
    /// Comments per second posted to the one post.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of posting.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// `rate=R` of the sampled viewers.
    #[arg(long, default_value_t = 10)]
    pub sample_rate: u32,
    /// Which runs, in this order: `sampled` (viewers with rate=R), `full` (without).
    #[arg(long, value_delimiter = ',', default_value = "sampled,full")]
    pub modes: Vec<String>,
    /// Seconds of idle viewers before posting.
    #[arg(long, default_value_t = 1.0)]
    pub idle_secs: f64,
    /// After posting, nothing new for this long ends the run.
    #[arg(long, default_value_t = 3.0)]
    pub drain_secs: f64,
    /// Longest wait for the drain (a full-delivery server far behind).
    #[arg(long, default_value_t = 40.0)]
    pub max_drain_secs: f64,
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout_secs: f64,
}

#[derive(Args, Debug)]
pub struct ViewerCountArgs {
    #[command(flatten)]
    pub common: Common,
    /// Viewers of the one post, spread round-robin over --url.
    #[arg(long, default_value_t = 50_000)]
    pub viewers: usize,
    /// Where to poll `GET /posts/<id>/viewers` (default: the first --url).
    #[arg(long)]
    pub count_url: Option<String>,
    /// nats-server's monitoring base URL (`-m PORT`): in_msgs/out_msgs of `/varz`.
    #[arg(long)]
    pub nats_monitor: Option<String>,
    /// Seconds each NATS message rate is measured over (before and with the viewers).
    #[arg(long, default_value_t = 10.0)]
    pub nats_secs: f64,
    /// The fanout process to kill -9 after the count is right (the one serving --url number
    /// --kill-url-index).
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Index into --url of the fanout --kill-pid serves (default: the last).
    #[arg(long)]
    pub kill_url_index: Option<usize>,
    /// Poll interval, ms.
    #[arg(long, default_value_t = 100)]
    pub poll_ms: u64,
    /// Give up waiting for a right count after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub count_timeout_secs: f64,
    #[arg(long, default_value_t = 180.0)]
    pub connect_timeout_secs: f64,
}

/// GET `base` + `path`, expecting 200 and a JSON body.
async fn get_json(base: &str, path: &str) -> Result<Value> {
    let mut c = Client::new(Url::parse(base)?, None);
    let st = c
        .request(
            "GET",
            path,
            &[("Accept", "application/json")],
            b"",
            Duration::from_secs(10),
        )
        .await?;
    if st != 200 {
        bail!(
            "GET {path}: HTTP {st}: {}",
            String::from_utf8_lossy(&c.body)
        );
    }
    serde_json::from_slice(&c.body).with_context(|| format!("GET {path}: not JSON"))
}

fn q_ms(h: &Histogram<u64>, q: f64) -> Value {
    if h.is_empty() {
        Value::Null
    } else {
        r3(h.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// Sleeps until the wall clock reads `t_ns`.
async fn sleep_until_wall(t_ns: u64) {
    let now = now_ns();
    if t_ns > now {
        tokio::time::sleep(Duration::from_nanos(t_ns - now)).await;
    }
}

/// One closed- or open-loop POST load: what it took and the CPU it cost `pids`.
pub(crate) struct Load {
    pub(crate) pr: PhaseResult,
    pub(crate) secs: f64,
    server_cpu_pct: f64,
    generator_cpu_pct: f64,
    /// wrk's p50 and p99 (ms), which has no histogram to give.
    wrk_latency: Option<(Option<f64>, Option<f64>)>,
    server_cpu_secs: f64,
}

impl Load {
    pub(crate) fn write(&self, o: &mut Out, prefix: &str) {
        let k = |s: &str| format!("{prefix}{s}");
        o.set(&k("accepted"), json!(self.pr.accepted));
        o.set(&k("rejected_429"), json!(self.pr.rejected_429));
        o.set(&k("errors"), json!(self.pr.errors));
        o.set(&k("load_secs"), r3(self.secs));
        o.set(&k("per_s"), r3(self.per_s()));
        let l = lat_json(self.pr.post_lat.as_ref().unwrap_or(&stats::new_hist()));
        match self.wrk_latency {
            Some((p50, p99)) => {
                o.set(&k("post_p50_ms"), json!(p50));
                o.set(&k("post_p99_ms"), json!(p99));
            }
            None => {
                for q in ["p50_ms", "p99_ms", "p999_ms", "max_ms"] {
                    o.set(&k(&format!("post_{q}")), l[q].clone());
                }
            }
        }
        o.set(&k("server_cpu_pct"), r3(self.server_cpu_pct));
        o.set(
            &k("server_cpu_us_per_post"),
            r3(1e6 * self.server_cpu_secs / self.pr.accepted.max(1) as f64),
        );
        o.set(&k("generator_cpu_pct"), r3(self.generator_cpu_pct));
        if let Some(e) = &self.pr.first_error {
            o.set(&k("first_error"), json!(e));
        }
    }

    pub(crate) fn per_s(&self) -> f64 {
        self.pr.accepted as f64 / self.secs.max(1e-6)
    }
}

/// Runs `load` (a publisher's run, and whatever else has to happen meanwhile) and measures
/// the CPU it cost `pids` (the server) and the generator (`agent_pids` and this process).
pub(crate) async fn measured<F, T>(pids: &[u32], agent_pids: &[u32], load: F) -> Result<(Load, T)>
where
    F: std::future::Future<Output = Result<(PhaseResult, T)>>,
{
    let c0 = stats::sum_cpu(pids);
    let g0 = stats::sum_cpu(agent_pids) + stats::cpu_secs(std::process::id()).unwrap_or(0.0);
    let t0 = Instant::now();
    let (pr, extra) = load.await?;
    let wall = t0.elapsed().as_secs_f64();
    let c = stats::sum_cpu(pids) - c0;
    let g = stats::sum_cpu(agent_pids) + stats::cpu_secs(std::process::id()).unwrap_or(0.0) - g0;
    Ok((
        Load {
            secs: pr.elapsed.as_secs_f64().min(wall),
            pr,
            server_cpu_secs: c,
            server_cpu_pct: 100.0 * c / wall,
            generator_cpu_pct: 100.0 * g / wall,
            wrk_latency: None,
        },
        extra,
    ))
}

const CLOSED_LOOP: u64 = 1_000_000_000_000;

/// nchan's side: the same client and body POSTed to `template` for `secs`, no subscribers.
async fn nchan_load(
    base: &str,
    template: &str,
    post: &str,
    a: &ReactionsArgs,
    pids: &[u32],
    wrk_tokens: &[String],
) -> Result<Load> {
    if a.side.generator == Generator::Wrk {
        let (base, path) = crate::wrk::split_url(&fill(template, base, post));
        return wrk_load(
            &base,
            &[path],
            wrk_tokens,
            REACTION_BODY,
            (a.conns, a.secs),
            pids,
        )
        .await;
    }
    let url = Url::parse(&fill(template, base, post))?;
    let mut p = Publisher::new(Kind::Nchan, vec![url], vec![String::new()], a.conns, 1000);
    p.payload = Payload::Reaction("like");
    let secs = a.secs;
    let rate = a.rate;
    let (l, ()) = measured(pids, &[], async {
        let pr = p
            .run(CLOSED_LOOP, rate, Some(Duration::from_secs_f64(secs)))
            .await?;
        Ok((pr, ()))
    })
    .await?;
    Ok(l)
}

/// What the `wow` probes did.
#[derive(Default)]
struct Probes {
    sent: u64,
    accepted: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Posts a `wow` at second + 0.5 every `every` seconds until `end` (an Instant), telling the
/// agents each send time first.
async fn run_probes(
    agents: &mut Option<Agents>,
    url: &Url,
    token: &str,
    every: u64,
    end: Instant,
) -> Result<Probes> {
    let mut pr = Probes::default();
    let mut c = Client::new(url.clone(), Some(crate::http::src_ip(999)));
    let auth = format!("Bearer {token}");
    // The first probe one whole second after the start, at its half.
    let mut at = (now_ns() / SEC_NS + 2) * SEC_NS + SEC_NS / 2;
    loop {
        let wait = Duration::from_nanos(at.saturating_sub(now_ns()));
        if Instant::now() + wait >= end {
            return Ok(pr);
        }
        sleep_until_wall(at).await;
        let t0 = now_ns();
        if let Some(ag) = agents.as_mut() {
            ag.probe(t0).await?;
        }
        pr.sent += 1;
        match c
            .request(
                "POST",
                &url.path,
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                br#"{"kind":"wow"}"#,
                Duration::from_secs(10),
            )
            .await
        {
            Ok(st) if (200..300).contains(&st) => pr.accepted += 1,
            other => {
                pr.errors += 1;
                if pr.first_error.is_none() {
                    pr.first_error = Some(match other {
                        Ok(st) => format!("HTTP {st}: {}", String::from_utf8_lossy(&c.body)),
                        Err(e) => format!("{e:#}"),
                    });
                }
            }
        }
        at += every.max(1) * SEC_NS;
    }
}

pub async fn reactions(a: ReactionsArgs) -> Result<bool> {
    let mut common = a.common.clone();
    // A server started here gets the per-user reaction limit (20/s) lifted as well.
    if common.server_bin.is_some() && !common.server_arg.iter().any(|x| x == "--reaction-limit") {
        common
            .server_arg
            .extend(["--reaction-limit".into(), "1000000000".into()]);
    }
    let ctx = Ctx::new(common).await?;
    let res = reactions_inner(&ctx, &a).await;
    ctx.finish().await;
    res
}

async fn reactions_inner(ctx: &Ctx, a: &ReactionsArgs) -> Result<bool> {
    let mut o = Out::new("reactions", ctx);
    let post = ctx.post_name(0);
    o.set("secs", json!(a.secs));
    o.set("conns", json!(a.conns));
    o.set("reactors", json!(a.reactors));
    o.set("rate_target", json!(a.rate));
    if ctx.kind != Kind::Lc {
        // nchan (or limit) alone: the publish side only.
        let l = nchan_load(
            &ctx.pub_base,
            &ctx.pub_template,
            &post,
            a,
            &ctx.server_pids,
            &[],
        )
        .await?;
        l.write(&mut o, "reactions_");
        let ok = l.pr.errors == 0 && l.pr.accepted > 0;
        o.set("ok", json!(ok));
        o.print(ctx)?;
        return Ok(ok);
    }
    let post_ref = post.as_str();
    // wrk sends the same requests to both servers: the tokens livecomments checks.
    let wrk_tokens = match (a.side.generator, &ctx.secret) {
        (Generator::Wrk, Some(secret)) => crate::publish::make_tokens(secret, a.reactors)?,
        _ => Vec::new(),
    };
    let wrk_tokens = &wrk_tokens;
    let nchan = move || async move {
        match &a.side.nchan_url {
            Some(base) => nchan_load(
                base,
                "{base}/pub/{post}",
                post_ref,
                a,
                &a.side.nchan_pid,
                wrk_tokens,
            )
            .await
            .map(Some),
            None => Ok(None),
        }
    };
    let mut nchan_result = None;
    if a.side.nchan_first {
        nchan_result = nchan().await?;
    }
    let ok = reactions_lc(ctx, a, &post, &mut o, wrk_tokens).await?;
    if !a.side.nchan_first {
        nchan_result = nchan().await?;
    }
    if let Some(l) = &nchan_result {
        l.write(&mut o, "nchan_");
        let lc = o
            .fields
            .iter()
            .find(|f| f.0 == "reactions_per_s")
            .and_then(|f| f.1.as_f64())
            .unwrap_or(0.0);
        o.set("lc_over_nchan", r3(lc / l.per_s().max(1e-6)));
        o.set("nchan_first", json!(a.side.nchan_first));
    }
    o.set("ok", json!(ok));
    o.print(ctx)?;
    Ok(ok)
}

async fn reactions_lc(
    ctx: &Ctx,
    a: &ReactionsArgs,
    post: &str,
    o: &mut Out,
    wrk_tokens: &[String],
) -> Result<bool> {
    let secret = ctx
        .secret
        .clone()
        .ok_or_else(|| anyhow!("livecomments needs the JWT secret"))?;
    let mut agents = if a.viewers > 0 {
        Some(connect_viewers(ctx, o, a.viewers, 1, a.connect_timeout_secs).await?)
    } else {
        None
    };
    let mut ok = true;
    let mut before = AgentReport::default();
    if let Some(ag) = agents.as_mut() {
        ag.reset().await?;
        before = ag.report().await?;
        ok &= before.connected == ag.total;
    }
    let mut publisher = ctx.publisher_to(&a.reaction_template, 1, a.conns, a.reactors)?;
    publisher.payload = Payload::Reaction("like");
    let first_base = ctx.pub_base.split(',').next().unwrap_or_default().trim();
    let probe_url = Url::parse(&fill(&a.reaction_template, first_base, post))?;
    let wow_token = user_token(&secret, "bench-wow")?;
    let agent_pids = agents
        .as_ref()
        .map(|ag| ag.pids.clone())
        .unwrap_or_default();
    let secs = a.secs;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let (load, probes) = if a.side.generator == Generator::Wrk {
        let (base, path) = crate::wrk::split_url(&fill(&a.reaction_template, first_base, post));
        let paths = [path];
        let run = wrk_load(
            &base,
            &paths,
            wrk_tokens,
            REACTION_BODY,
            (a.conns, a.secs),
            &ctx.server_pids,
        );
        let probes = run_probes(&mut agents, &probe_url, &wow_token, a.probe_every, end);
        let (load, probes) = tokio::join!(run, probes);
        (load?, probes?)
    } else {
        measured(&ctx.server_pids, &agent_pids, async {
            let run = publisher.run(CLOSED_LOOP, a.rate, Some(Duration::from_secs_f64(secs)));
            let probes = run_probes(&mut agents, &probe_url, &wow_token, a.probe_every, end);
            let (pr, probes) = tokio::join!(run, probes);
            Ok((pr?, probes?))
        })
        .await?
    };
    // wrk does not count what was in flight when it stopped: up to `conns` more reactions
    // may have been accepted (and counted) than it reports.
    let slack = if a.side.generator == Generator::Wrk {
        a.conns as u64
    } else {
        0
    };
    o.set(
        "generator",
        json!(format!("{:?}", a.side.generator).to_lowercase()),
    );
    load.write(o, "reactions_");
    o.set("wow_probes", json!(probes.accepted));
    o.set("wow_probe_errors", json!(probes.errors));
    if let Some(e) = &probes.first_error {
        o.set("wow_first_error", json!(e));
    }
    ok &= load.pr.errors == 0 && load.pr.accepted > 0 && probes.errors == 0;
    if let Some(ag) = agents.as_mut() {
        let mid = ag.report().await?;
        tokio::time::sleep(Duration::from_secs_f64(a.drain_secs)).await;
        let fin = ag.report().await?;
        let v = ag.total as f64;
        o.set(
            "reactions_events_per_viewer_per_s",
            r3((mid.reactions_events - before.reactions_events) as f64 / v / load.secs),
        );
        // Every accepted like, summed over the events each viewer got: viewers × accepted
        // when none was lost, never more (a reaction is counted once).
        let seen_like = fin.reactions_sum[0] - before.reactions_sum[0];
        let expected_like = ag.total * load.pr.accepted;
        o.set("likes_seen_by_viewers", json!(seen_like));
        o.set("likes_expected", json!(expected_like));
        o.set(
            "likes_seen_ratio",
            json!(seen_like as f64 / expected_like.max(1) as f64),
        );
        let seen_wow = fin.reactions_sum[3] - before.reactions_sum[3];
        o.set("wow_seen_by_viewers", json!(seen_wow));
        let wow_expected = ag.total * probes.accepted;
        o.set("wow_expected", json!(wow_expected));
        o.set("wow_first_sightings", json!(fin.wow_seen - before.wow_seen));
        o.set("wow_early", json!(fin.wow_early - before.wow_early));
        o.set("wow_repeat", json!(fin.wow_repeat - before.wow_repeat));
        let lag = hist_from_pairs(&fin.wow_lag_us);
        o.set("reactions_lag_p50_ms", q_ms(&lag, 0.5));
        o.set("reactions_lag_p99_ms", q_ms(&lag, 0.99));
        o.set(
            "reactions_lag_max_ms",
            if lag.is_empty() {
                Value::Null
            } else {
                r3(lag.max() as f64 / 1000.0)
            },
        );
        o.set("still_connected", json!(fin.connected));
        o.set(
            "stream_disconnects",
            json!(fin.disconnects - before.disconnects),
        );
        ok &= seen_like <= ag.total * (load.pr.accepted + slack) && seen_wow <= wow_expected;
        ok &= fin.wow_seen - before.wow_seen == wow_expected;
    } else {
        tokio::time::sleep(Duration::from_secs_f64(a.drain_secs.min(2.5))).await;
    }
    match get_json(first_base, &format!("/posts/{post}/reactions")).await {
        Ok(t) => {
            let r = &t["reactions"];
            for k in REACTION_KINDS {
                if let Some(n) = r[k].as_u64().filter(|&n| n > 0) {
                    o.set(&format!("totals_{k}"), json!(n));
                }
            }
            let like = r["like"].as_u64().unwrap_or(0);
            let wow = r["wow"].as_u64().unwrap_or(0);
            o.set(
                "totals_match_accepted",
                json!(
                    (load.pr.accepted..=load.pr.accepted + slack).contains(&like)
                        && wow == probes.accepted
                ),
            );
            ok &= like <= load.pr.accepted + slack && wow <= probes.accepted;
        }
        Err(e) => {
            o.set("totals_error", json!(format!("{e:#}")));
            ok = false;
        }
    }
    if let Some(ag) = agents {
        ag.quit().await;
    }
    Ok(ok)
}

pub async fn sampling(a: SamplingArgs) -> Result<bool> {
    if a.common.kind != Kind::Lc {
        bail!("sampling: only livecomments has rate=R");
    }
    let mut o: Option<Out> = None;
    let mut ok = true;
    let mut cpu = Vec::new();
    for (i, mode) in a.modes.iter().enumerate() {
        let sampled = match mode.as_str() {
            "sampled" => true,
            "full" => false,
            m => bail!("sampling: unknown mode {m:?} (sampled, full)"),
        };
        let mut common = a.common.clone();
        if let Some(p) = &common.post_prefix {
            common.post_prefix = Some(format!("{p}{mode}{i}-"));
        }
        // A fresh server per run (with --server-bin), so neither run inherits the other's.
        let mut ctx = Ctx::new(common).await?;
        if sampled {
            let sep = if ctx.sub_template.contains('?') {
                '&'
            } else {
                '?'
            };
            ctx.sub_template = format!("{}{sep}rate={}", ctx.sub_template, a.sample_rate);
        }
        let out = o.get_or_insert_with(|| {
            let mut o = Out::new("sampling", &ctx);
            o.set("rate", json!(a.rate));
            o.set("secs", json!(a.secs));
            o.set("sample_rate", json!(a.sample_rate));
            o
        });
        let prefix = if sampled { "sampled_" } else { "full_" };
        out.set(&format!("{prefix}loadavg_before"), json!(stats::loadavg()));
        match sampling_run(&ctx, &a, sampled, out).await {
            Ok((run_ok, c)) => {
                ok &= run_ok;
                cpu.push((prefix, c));
            }
            Err(e) => {
                out.set(&format!("{prefix}error"), json!(format!("{e:#}")));
                ok = false;
            }
        }
        ctx.finish().await;
    }
    let Some(mut out) = o else {
        bail!("sampling: no --modes");
    };
    let get = |p: &str| cpu.iter().find(|c| c.0 == p).map(|c| c.1);
    if let (Some(s), Some(f)) = (get("sampled_"), get("full_")) {
        out.set("cpu_pct_ratio_sampled_over_full", r3(s.0 / f.0.max(1e-6)));
        out.set("cpu_secs_ratio_sampled_over_full", r3(s.1 / f.1.max(1e-6)));
        ok &= s.1 < f.1;
    }
    out.set("ok", json!(ok));
    out.print_to(a.common.json_out.as_deref())?;
    Ok(ok)
}

/// One run of the sampling scenario; returns (ok, (server CPU % while posting, server CPU
/// seconds from the first post to the end of the drain)).
async fn sampling_run(
    ctx: &Ctx,
    a: &SamplingArgs,
    sampled: bool,
    o: &mut Out,
) -> Result<(bool, (f64, f64))> {
    let prefix = if sampled { "sampled_" } else { "full_" };
    let k = |s: &str| format!("{prefix}{s}");
    let mut co = Out { fields: Vec::new() };
    let mut agents = connect_viewers(ctx, &mut co, a.viewers, 1, a.connect_timeout_secs).await?;
    for f in ["connected", "connect_all_secs", "server_kib_per_viewer"] {
        if let Some((_, v)) = co.fields.iter().find(|x| x.0 == f) {
            o.set(&k(f), v.clone());
        }
    }
    let mut ok = agents.report().await?.connected == agents.total;
    tokio::time::sleep(Duration::from_secs_f64(a.idle_secs)).await;
    let mut publisher = ctx.publisher(1, ctx.common.pub_conns, ctx.common.users)?;
    agents.reset().await?;
    let before = agents.report().await?;
    let c0 = ctx.server_cpu();
    let g0 = agents.cpu() + stats::cpu_secs(std::process::id()).unwrap_or(0.0);
    let t0 = Instant::now();
    let count = (a.rate * a.secs).ceil() as u64;
    let pr = publisher
        .run(count, a.rate, Some(Duration::from_secs_f64(a.secs * 1.5)))
        .await?;
    let pub_wall = t0.elapsed().as_secs_f64();
    let c_pub = ctx.server_cpu() - c0;
    let g_pub = agents.cpu() + stats::cpu_secs(std::process::id()).unwrap_or(0.0) - g0;
    let acc = publisher.accepted_by_post();
    let fin = agents
        .drain(
            &acc,
            Duration::from_secs_f64(a.drain_secs),
            Duration::from_secs_f64(a.max_drain_secs),
        )
        .await?;
    let c_all = ctx.server_cpu() - c0;
    let delivered = fin.distinct_total() - before.distinct_total();
    let span = if fin.last_rx_ns > pr.first_send_ns && pr.first_send_ns != u64::MAX {
        (fin.last_rx_ns - pr.first_send_ns) as f64 / 1e9
    } else {
        pub_wall
    };
    let v = agents.total;
    o.set(&k("published"), json!(pr.accepted));
    o.set(&k("publish_errors"), json!(pr.errors + pr.rejected_429));
    o.set(
        &k("publish_rate"),
        r3(if pr.accepted > 1 {
            (pr.accepted - 1) as f64 / ((pr.last_send_ns - pr.first_send_ns) as f64 / 1e9).max(1e-6)
        } else {
            0.0
        }),
    );
    let pl = lat_json(pr.post_lat.as_ref().unwrap_or(&stats::new_hist()));
    o.set(&k("post_p99_ms"), pl["p99_ms"].clone());
    o.set(&k("delivered"), json!(delivered));
    o.set(
        &k("of_all_comments"),
        r3(delivered as f64 / (v * pr.accepted).max(1) as f64),
    );
    o.set(
        &k("deliveries_per_s"),
        r3(delivered as f64 / span.max(1e-6)),
    );
    o.set(
        &k("per_viewer_per_s"),
        r3(delivered as f64 / v.max(1) as f64 / span.max(1e-6)),
    );
    let ps = hist_from_pairs(&fin.per_sec);
    let psq = |q: f64| {
        if ps.is_empty() {
            Value::Null
        } else {
            json!(ps.value_at_quantile(q))
        }
    };
    o.set(&k("viewer_second_p50"), psq(0.5));
    o.set(&k("viewer_second_p99"), psq(0.99));
    o.set(&k("viewer_second_max"), psq(1.0));
    let over_from = u64::from(a.sample_rate) + 1;
    let over = if sampled && !ps.is_empty() && ps.max() >= over_from {
        ps.count_between(over_from, ps.max())
    } else {
        0
    };
    if sampled {
        o.set(&k("viewer_seconds_over_rate"), json!(over));
        o.set(&k("viewer_seconds"), json!(ps.len()));
    }
    o.set(
        &k("sampling_events"),
        json!(fin.sampling_events - before.sampling_events),
    );
    o.set(
        &k("id_only_events"),
        json!(fin.id_only_events - before.id_only_events),
    );
    let lat = hist_from_pairs(&fin.lat_us);
    o.set(&k("latency_p50_ms"), q_ms(&lat, 0.5));
    o.set(&k("latency_p99_ms"), q_ms(&lat, 0.99));
    o.set(&k("duplicates"), json!(fin.dups - before.dups));
    o.set(
        &k("stream_disconnects"),
        json!(fin.disconnects - before.disconnects),
    );
    o.set(&k("still_connected"), json!(fin.connected));
    let cpu_pct = 100.0 * c_pub / pub_wall;
    o.set(&k("server_cpu_pct"), r3(cpu_pct));
    o.set(&k("server_cpu_secs"), r3(c_all));
    o.set(&k("generator_cpu_pct"), r3(100.0 * g_pub / pub_wall));
    o.set(
        &k("server_cpu_us_per_delivery"),
        r3(1e6 * c_all / delivered.max(1) as f64),
    );
    ok &= pr.errors == 0 && fin.dups == before.dups;
    if sampled && !ps.is_empty() {
        // At most R per second, give or take the second's edges (arrival time is not the
        // server's second): a tenth over.
        ok &= ps.max() <= u64::from(a.sample_rate) + u64::from(a.sample_rate).div_ceil(10);
    }
    agents.quit().await;
    Ok((ok, (cpu_pct, c_all)))
}

async fn varz(base: &str) -> Result<(u64, u64)> {
    let v = get_json(base, "/varz").await?;
    Ok((
        v["in_msgs"].as_u64().unwrap_or(0),
        v["out_msgs"].as_u64().unwrap_or(0),
    ))
}

/// NATS messages per second (in, out) over `secs`.
async fn nats_rate(base: &str, secs: f64) -> Result<(f64, f64)> {
    let (i0, o0) = varz(base).await?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (i1, o1) = varz(base).await?;
    let el = t.elapsed().as_secs_f64();
    Ok((
        i1.saturating_sub(i0) as f64 / el,
        o1.saturating_sub(o0) as f64 / el,
    ))
}

/// Polls the count until `done(count)`; returns (wall ns when it was, the count, every
/// distinct reading as [ms since `from_ns`, count]).
async fn poll_count(
    base: &str,
    path: &str,
    poll: Duration,
    timeout: Duration,
    from_ns: u64,
    done: impl Fn(u64) -> bool,
) -> Result<(Option<u64>, u64, Vec<Value>)> {
    let t0 = Instant::now();
    let mut trace: Vec<Value> = Vec::new();
    let mut last = None;
    loop {
        let v = get_json(base, path).await?;
        let at = now_ns();
        let n = v["viewers"]
            .as_u64()
            .ok_or_else(|| anyhow!("no \"viewers\" in {v}"))?;
        if last != Some(n) {
            trace.push(json!([r3((at as f64 - from_ns as f64) / 1e6), n]));
            last = Some(n);
        }
        if done(n) {
            return Ok((Some(at), n, trace));
        }
        if t0.elapsed() > timeout {
            return Ok((None, n, trace));
        }
        tokio::time::sleep(poll).await;
    }
}

pub async fn viewer_count(a: ViewerCountArgs) -> Result<bool> {
    let ctx = Ctx::new(a.common.clone()).await?;
    let res = viewer_count_inner(&ctx, &a).await;
    ctx.finish().await;
    res
}

async fn viewer_count_inner(ctx: &Ctx, a: &ViewerCountArgs) -> Result<bool> {
    if ctx.kind != Kind::Lc {
        bail!("viewer-count: livecomments only");
    }
    let mut o = Out::new("viewer-count", ctx);
    let post = ctx.post_name(0);
    let count_base = a
        .count_url
        .clone()
        .unwrap_or_else(|| ctx.sub_bases[0].clone());
    let path = format!("/posts/{post}/viewers");
    let poll = Duration::from_millis(a.poll_ms.max(1));
    let timeout = Duration::from_secs_f64(a.count_timeout_secs);
    if let Some(m) = &a.nats_monitor {
        let (i, out) = nats_rate(m, a.nats_secs).await?;
        o.set("nats_in_msgs_per_s_before", r3(i));
        o.set("nats_out_msgs_per_s_before", r3(out));
    }
    // Poll the count while the viewers connect, on its own (an agent busy connecting answers
    // its report slowly): the clock runs from the last connect the agents saw.
    let spawned_ns = now_ns();
    let mut agents = ctx.spawn_agents(a.viewers, 1, None).await?;
    let total = agents.total;
    let connect_timeout = Duration::from_secs_f64(a.connect_timeout_secs);
    let counting = poll_count(
        &count_base,
        &path,
        poll,
        connect_timeout + timeout,
        spawned_ns,
        |n| n == total,
    );
    let connecting = agents.wait_connected(connect_timeout);
    let (counted, connected) = tokio::join!(counting, connecting);
    let (right_at, last_n, trace) = counted?;
    let last_connect = connected?.last_connect_ns;
    let rep = agents.report().await?;
    let mut ok = right_at.is_some() && rep.connected == total;
    o.set("viewers", json!(a.viewers));
    o.set("fanout_urls", json!(ctx.sub_bases.len()));
    o.set("connected", json!(rep.connected));
    o.set(
        "connect_errors",
        json!(rep.connect_errors + rep.http_errors),
    );
    o.set(
        "connect_all_secs",
        r3(last_connect.saturating_sub(spawned_ns) as f64 / 1e9),
    );
    // [ms since the agents were spawned, count], at each new count.
    o.set("count_trace_to_right", json!(trace));
    o.set("count_at_end_of_wait", json!(last_n));
    o.set(
        "count_right_after_last_connect_secs",
        match right_at {
            Some(t) => r3((t as f64 - last_connect as f64) / 1e9),
            None => Value::Null,
        },
    );
    if let Some(m) = &a.nats_monitor {
        let (i, out) = nats_rate(m, a.nats_secs).await?;
        o.set("nats_in_msgs_per_s_with_viewers", r3(i));
        o.set("nats_out_msgs_per_s_with_viewers", r3(out));
    }
    let r = agents.report().await?;
    if r.viewers_events > 0 {
        o.set("viewers_events", json!(r.viewers_events));
        o.set("viewers_event_last", json!(r.viewers_last));
    }
    if let Some(pid) = a.kill_pid {
        let nb = ctx.sub_bases.len();
        let j = a.kill_url_index.unwrap_or(nb - 1).min(nb - 1);
        // Viewers of post 0 on base j (Ctx::spawn_agents spreads them round-robin).
        let share = total / nb as u64 + u64::from((j as u64) < total % nb as u64);
        let want = total - share;
        o.set("killed_share", json!(share));
        let t_kill = now_ns();
        // SAFETY: a plain kill(2) of a process this run was pointed at.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
            bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
        }
        let (drop_at, n, trace) =
            poll_count(&count_base, &path, poll, timeout, t_kill, |n| n <= want).await?;
        o.set("count_trace_after_kill", json!(trace));
        o.set("count_after_kill", json!(n));
        match drop_at {
            Some(t) => o.set(
                "count_dropped_after_kill_secs",
                r3((t - t_kill) as f64 / 1e9),
            ),
            None => {
                o.set("count_dropped_after_kill_secs", Value::Null);
                ok = false;
            }
        }
        ok &= n == want;
    }
    o.set("ok", json!(ok));
    agents.quit().await;
    o.print(ctx)?;
    Ok(ok)
}
