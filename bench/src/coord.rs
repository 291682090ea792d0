//! The coordinator side: resolves targets, starts the server if asked, spawns viewer agents,
//! aggregates their reports, and prints results (a table and one JSON line).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::Common;
use crate::agent::{AgentConfig, AgentReport};
use crate::http::{Url, fill};
use crate::publish::{Kind, Publisher, make_tokens};
use crate::server::Server;
use crate::stats;

pub struct Ctx {
    pub common: Common,
    pub kind: Kind,
    pub sub_bases: Vec<String>,
    pub pub_base: String,
    pub sub_template: String,
    pub pub_template: String,
    pub prefix: String,
    pub secret: Option<String>,
    pub server: Option<Server>,
    pub server_pids: Vec<u32>,
}

impl Ctx {
    pub async fn new(common: Common) -> Result<Ctx> {
        let kind = common.kind;
        let mut server = None;
        let mut sub_bases = common.urls.clone();
        let mut pub_base = common
            .pub_url
            .clone()
            .unwrap_or_else(|| sub_bases[0].clone());
        let mut secret = common.secret.clone();
        let mut server_pids = common.server_pid.clone();
        if let Some(bin) = &common.server_bin {
            let s = Server::start(
                bin,
                common.server_data_dir.clone(),
                &common.server_arg,
                secret.clone(),
            )
            .await?;
            sub_bases = vec![s.base.clone()];
            pub_base = s.base.clone();
            secret = Some(s.secret.clone());
            server_pids = vec![s.pid];
            server = Some(s);
        } else if kind == Kind::Limit && common.server_pid.is_empty() {
            // No running broadcaster named (its pid is how RSS and CPU are read): start one.
            let s = Server::start_limit().await?;
            sub_bases = vec![s.base.clone()];
            pub_base = s.base.clone();
            server_pids = vec![s.pid];
            server = Some(s);
        }
        let sub_template = common.sub_template.clone().unwrap_or_else(|| match kind {
            Kind::Lc => "{base}/comments/stream?post_id={post}".into(),
            Kind::Nchan | Kind::Limit => "{base}/sub/{post}".into(),
        });
        let pub_template = common.pub_template.clone().unwrap_or_else(|| match kind {
            Kind::Lc => "{base}/comment?post_id={post}".into(),
            Kind::Nchan | Kind::Limit => "{base}/pub/{post}".into(),
        });
        let prefix = common
            .post_prefix
            .clone()
            .unwrap_or_else(|| format!("b{:x}-", stats::now_ns() / 1_000_000 % 0xffff_ffff));
        if kind == Kind::Lc && secret.is_none() {
            bail!(
                "livecomments needs the JWT secret: --secret or LIVECOMMENTS_JWT_SECRET (or --server-bin)"
            );
        }
        Ok(Ctx {
            common,
            kind,
            sub_bases,
            pub_base,
            sub_template,
            pub_template,
            prefix,
            secret,
            server,
            server_pids,
        })
    }

    pub fn post_name(&self, i: usize) -> String {
        format!("{}{}", self.prefix, i)
    }

    pub fn publisher(&self, posts: usize, conns: usize, users: usize) -> Result<Publisher> {
        self.publisher_to(&self.pub_template, posts, conns, users)
    }

    /// A publisher to another URL template (e.g. `{base}/reaction?post_id={post}`).
    pub fn publisher_to(
        &self,
        template: &str,
        posts: usize,
        conns: usize,
        users: usize,
    ) -> Result<Publisher> {
        // Several publish bases (ingest nodes of one region): post p goes to base p mod n.
        let bases: Vec<&str> = self.pub_base.split(',').map(str::trim).collect();
        let urls = (0..posts)
            .map(|p| Url::parse(&fill(template, bases[p % bases.len()], &self.post_name(p))))
            .collect::<Result<Vec<_>>>()?;
        let tokens = match (&self.kind, &self.secret) {
            (Kind::Lc, Some(s)) => make_tokens(s, users)?,
            _ => vec![String::new()],
        };
        Ok(Publisher::new(self.kind, urls, tokens, conns, 1000))
    }

    /// Viewers of post p: `viewers / posts` (+1 for the first `viewers % posts`).
    pub fn viewers_per_post(viewers: usize, posts: usize) -> Vec<u64> {
        (0..posts)
            .map(|p| (viewers / posts + usize::from(p < viewers % posts)) as u64)
            .collect()
    }

    pub async fn spawn_agents(
        &self,
        viewers: usize,
        posts: usize,
        initial_last_event_id: Option<String>,
    ) -> Result<Agents> {
        let per_post = Self::viewers_per_post(viewers, posts);
        // (post, base index, count), viewers of a post spread round-robin over the bases.
        let nb = self.sub_bases.len();
        let mut groups: Vec<(usize, usize, u32)> = Vec::new();
        for (p, &n) in per_post.iter().enumerate() {
            for b in 0..nb {
                let k = n as usize / nb + usize::from(b < n as usize % nb);
                if k > 0 {
                    groups.push((p, (p + b) % nb, k as u32));
                }
            }
        }
        let per_agent = self.common.per_agent.max(1);
        let mut configs: Vec<AgentConfig> = Vec::new();
        let mut cur: Vec<(usize, String, u32)> = Vec::new();
        let mut cur_n = 0usize;
        let mut offset = 0usize;
        let mut agent_offset = 0usize;
        let mut flush = |cur: &mut Vec<(usize, String, u32)>,
                         cur_n: &mut usize,
                         agent_offset: &mut usize,
                         offset: usize| {
            if !cur.is_empty() {
                configs.push(AgentConfig {
                    entries: std::mem::take(cur),
                    viewer_offset: *agent_offset,
                    src_count: self.common.src_ips,
                    connect_concurrency: self.common.connect_concurrency,
                    initial_last_event_id: initial_last_event_id.clone(),
                    read_buf: self.common.read_buf,
                    client: self.common.client,
                });
            }
            *cur_n = 0;
            *agent_offset = offset;
        };
        for (p, b, mut k) in groups {
            let url = fill(&self.sub_template, &self.sub_bases[b], &self.post_name(p));
            while k > 0 {
                let room = (per_agent - cur_n) as u32;
                let take = k.min(room);
                cur.push((p, url.clone(), take));
                cur_n += take as usize;
                offset += take as usize;
                k -= take;
                if cur_n >= per_agent {
                    flush(&mut cur, &mut cur_n, &mut agent_offset, offset);
                }
            }
        }
        flush(&mut cur, &mut cur_n, &mut agent_offset, offset);
        Agents::spawn(configs, per_post).await
    }

    pub fn server_rss_kb(&self) -> u64 {
        stats::sum_rss_kb(&self.server_pids)
    }

    pub fn server_cpu(&self) -> f64 {
        stats::sum_cpu(&self.server_pids)
    }

    pub async fn finish(self) {
        if let Some(s) = self.server {
            s.stop().await;
        }
    }
}

pub struct Agents {
    children: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
    pub pids: Vec<u32>,
    /// Viewers per post (global post index).
    pub per_post: Vec<u64>,
    pub total: u64,
}

impl Agents {
    async fn spawn(configs: Vec<AgentConfig>, per_post: Vec<u64>) -> Result<Agents> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        let mut pids = Vec::new();
        for c in configs {
            let mut child = tokio::process::Command::new(&exe)
                .arg("agent")
                .env("LCB_AGENT_CONFIG", serde_json::to_string(&c)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawn agent")?;
            pids.push(child.id().unwrap_or(0));
            let stdin = child.stdin.take().unwrap();
            let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
            children.push((child, stdin, stdout));
        }
        let total = per_post.iter().sum();
        Ok(Agents {
            children,
            pids,
            per_post,
            total,
        })
    }

    async fn command(&mut self, cmd: &str) -> Result<Vec<String>> {
        for (_, stdin, _) in self.children.iter_mut() {
            stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        let mut out = Vec::new();
        for (_, _, lines) in self.children.iter_mut() {
            let l = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .map_err(|_| anyhow!("agent did not answer {cmd:?}"))??
                .ok_or_else(|| anyhow!("agent exited"))?;
            out.push(l);
        }
        Ok(out)
    }

    pub async fn report(&mut self) -> Result<AgentReport> {
        let mut r = AgentReport::default();
        for l in self.command("report").await? {
            let a: AgentReport = serde_json::from_str(&l)?;
            r.merge(&a);
        }
        Ok(r)
    }

    pub async fn reset(&mut self) -> Result<()> {
        self.command("reset").await.map(|_| ())
    }

    /// Tells every agent a `wow` probe was sent at `t0_ns`.
    pub async fn probe(&mut self, t0_ns: u64) -> Result<()> {
        self.command(&format!("probe {t0_ns}")).await.map(|_| ())
    }

    pub async fn drop_all(&mut self, window_ms: u64) -> Result<()> {
        self.command(&format!("drop {window_ms}")).await.map(|_| ())
    }

    /// Waits until every viewer holds an open stream; returns the final report.
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<AgentReport> {
        let t0 = Instant::now();
        loop {
            let r = self.report().await?;
            if r.connected >= self.total || t0.elapsed() > timeout {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Expected distinct deliveries for the given accepted counts per post.
    pub fn expected(&self, accepted: &[u64]) -> u64 {
        self.per_post.iter().zip(accepted).map(|(v, a)| v * a).sum()
    }

    /// Polls until every accepted comment reached every viewer, or nothing new arrived for
    /// `quiet` (then what is left is missing).
    pub async fn drain(
        &mut self,
        accepted: &[u64],
        quiet: Duration,
        max: Duration,
    ) -> Result<AgentReport> {
        let expected = self.expected(accepted);
        let t0 = Instant::now();
        let mut last = 0u64;
        let mut last_change = Instant::now();
        loop {
            let r = self.report().await?;
            let got = r.distinct_total();
            if got >= expected || t0.elapsed() > max || last_change.elapsed() > quiet {
                return Ok(r);
            }
            if got != last {
                last = got;
                last_change = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn cpu(&self) -> f64 {
        stats::sum_cpu(&self.pids)
    }

    pub async fn quit(mut self) {
        for (_, stdin, _) in self.children.iter_mut() {
            let _ = stdin.write_all(b"quit\n").await;
        }
        for (child, _, _) in self.children.iter_mut() {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// Results: printed as an aligned table and as one JSON line (prefixed `JSON `).
pub struct Out {
    pub fields: Vec<(String, Value)>,
}

impl Out {
    pub fn new(scenario: &str, ctx: &Ctx) -> Out {
        let mut o = Out::bare(scenario);
        o.set("kind", json!(ctx.kind));
        o.set("label", json!(ctx.common.label));
        o
    }

    /// For a scenario with no server of its own (`cql-loop`).
    pub fn bare(scenario: &str) -> Out {
        let mut o = Out { fields: Vec::new() };
        o.set("scenario", json!(scenario));
        o.set("nofile_limit", json!(stats::nofile_limit()));
        o.set("loadavg_start", json!(stats::loadavg()));
        o
    }

    pub fn set(&mut self, k: &str, v: Value) {
        if let Some(f) = self.fields.iter_mut().find(|f| f.0 == k) {
            f.1 = v;
        } else {
            self.fields.push((k.to_string(), v));
        }
    }

    pub fn print(&self, ctx: &Ctx) -> Result<()> {
        self.print_to(ctx.common.json_out.as_deref())
    }

    /// Prints the table and the JSON line, and appends the line to `json_out` if given.
    pub fn print_to(&self, json_out: Option<&std::path::Path>) -> Result<()> {
        let w = self.fields.iter().map(|f| f.0.len()).max().unwrap_or(0);
        println!("{:-<1$}", "", w + 30);
        for (k, v) in &self.fields {
            let vs = match v {
                Value::Number(n) => match n.as_f64() {
                    Some(f) if n.is_f64() => format!("{f:.3}"),
                    _ => n.to_string(),
                },
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k:<w$}  {vs}");
        }
        println!("{:-<1$}", "", w + 30);
        let mut m = serde_json::Map::new();
        for (k, v) in &self.fields {
            m.insert(k.clone(), v.clone());
        }
        let line = Value::Object(m).to_string();
        println!("JSON {line}");
        if let Some(p) = json_out {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Round to 3 decimals for JSON.
pub fn r3(x: f64) -> Value {
    json!((x * 1000.0).round() / 1000.0)
}
