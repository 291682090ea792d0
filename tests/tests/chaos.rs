//! CONTRACT §7 under chaos (issue 15, "Proof"): one region as in production — 3 `ingest`
//! nodes, 2 fanouts and a reader on a 3-node Cassandra cluster (RF 3, LOCAL_QUORUM) and a
//! 3-server NATS cluster — under steady POSTs from many users, spread over the ingest nodes by
//! a client that plays the load balancer (Idempotency-Keys, retries on another node), with
//! viewers on both fanouts, some connected throughout and some dropping and resuming with
//! Last-Event-ID. Meanwhile a nemesis, every few seconds, picks a random ingest, fanout, NATS
//! server or Cassandra node and kills it (`kill -9`, restarted a few seconds later), freezes it
//! (SIGSTOP for a few seconds, then SIGCONT) or restarts it (SIGTERM, then start), keeping at
//! least 2 of 3 Cassandra nodes, 2 of 3 NATS servers, 2 of 3 ingest nodes and 1 of 2 fanouts
//! up. A viewer cut off by its fanout's death resumes with its Last-Event-ID on the other.
//!
//! Then the checker: every 201 stored exactly once (unique ids, every acknowledged id read back
//! through the reader, one id per Idempotency-Key and one stored comment per key); every viewer
//! received every stored comment exactly once (a viewer with one segment: all of them; a
//! resumer: the union of its segments, no duplicates across them), nothing else (a comment
//! answered 503 whose write landed anyway only if a deletion of it follows: it was withdrawn
//! and retracted), and each writer's comments (characters 10..18 of the id) in id order. It
//! prints the figures (POSTs,
//! retries and failures per nemesis action, how long writes stopped, deliveries).
//!
//! Needs the cluster: `scripts/chaos` starts it (`scripts/cassandra cluster start`), sets
//! `LIVECOMMENTS_CHAOS_CQL`, runs this for `LIVECOMMENTS_CHAOS_SECS` (default 60) and stops it.
//! In a plain `cargo test --workspace` it is skipped with a `SKIPPED` line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livecomments_tests::*;
use tokio::sync::Mutex as AsyncMutex;

const POST: &str = "chaos";
/// One POST attempt; a frozen node answers nothing and is given up after this.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts per comment before the client gives up on it (every node failed: 200 ms apart).
const ATTEMPTS: usize = 60;
/// A pause between one user's comments: steady load, not a flood.
const PACE: Duration = Duration::from_millis(40);
/// How long the end of the test waits for every viewer to have every stored comment.
const DRAIN: Duration = Duration::from_secs(120);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift generator (reproducible from the printed seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// A duration between `lo` and `hi` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Role {
    Ingest,
    Fanout,
    Nats,
    Cassandra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Act {
    Kill,
    Freeze,
    Restart,
}

/// One nemesis action: what, when it began, when the target was back, and how it went.
#[derive(Debug, Clone)]
struct Action {
    role: Role,
    index: usize,
    act: Act,
    start: Instant,
    back: Option<Instant>,
    error: Option<String>,
}

impl Action {
    fn kind(&self) -> String {
        format!("{:?} {:?}", self.act, self.role).to_lowercase()
    }
}

/// Everything the nemesis can hit.
struct Region {
    ingest: Vec<Arc<AsyncMutex<Server>>>,
    fanout: Vec<Arc<AsyncMutex<Server>>>,
    nats: Arc<AsyncMutex<NatsCluster>>,
    cql: Arc<CqlCluster>,
    /// Targets being hit or brought back (not up).
    busy: Mutex<HashSet<(Role, usize)>>,
}

impl Region {
    fn count(&self, role: Role) -> usize {
        match role {
            Role::Ingest => self.ingest.len(),
            Role::Fanout => self.fanout.len(),
            Role::Nats => 3,
            Role::Cassandra => self.cql.nodes.len(),
        }
    }

    /// Targets the nemesis may hit now: not busy, and at most one of each role down at a time
    /// (2 of 3 Cassandra nodes, 2 of 3 NATS servers, 2 of 3 ingest nodes, 1 of 2 fanouts up).
    fn eligible(&self) -> Vec<(Role, usize)> {
        let busy = self.busy.lock().expect("busy");
        let mut out = Vec::new();
        for role in [Role::Ingest, Role::Fanout, Role::Nats, Role::Cassandra] {
            if !role_enabled(role) || busy.iter().any(|(r, _)| *r == role) {
                continue;
            }
            out.extend((0..self.count(role)).map(|i| (role, i)));
        }
        out
    }
}

/// `LIVECOMMENTS_CHAOS_ROLES` (comma separated: ingest, fanout, nats, cassandra; default all)
/// limits what the nemesis hits (to look at one kind of fault alone); CI's 60 s run and the
/// 10-minute run hit every role.
fn role_enabled(role: Role) -> bool {
    let name = match role {
        Role::Ingest => "ingest",
        Role::Fanout => "fanout",
        Role::Nats => "nats",
        Role::Cassandra => "cassandra",
    };
    match std::env::var("LIVECOMMENTS_CHAOS_ROLES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').any(|r| r.trim() == name),
        _ => true,
    }
}

fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("kill -{sig} {pid} failed"))
    }
}

async fn cql_ctl(cql: &Arc<CqlCluster>, cmd: &'static str, i: usize) -> Result<String, String> {
    let cql = cql.clone();
    tokio::task::spawn_blocking(move || cql.ctl(cmd, i))
        .await
        .map_err(|e| e.to_string())?
}

/// Until every Cassandra node sees every other UP again (a node that is only "ready" may still
/// be down in the others' eyes; hitting another one then would leave one of three).
async fn cql_formed(cql: &Arc<CqlCluster>) -> Result<(), String> {
    let ok = eventually(Duration::from_secs(120), || {
        let cql = cql.clone();
        async move {
            tokio::task::spawn_blocking(move || cql.formed())
                .await
                .ok()
                .filter(|f| *f)
        }
    })
    .await;
    ok.map(|_| ())
        .ok_or_else(|| "the Cassandra nodes did not all see each other UP within 120 s".into())
}

/// Runs one action on `target` and brings it back; returns when it is up again.
async fn hit(
    region: &Region,
    role: Role,
    i: usize,
    act: Act,
    down_for: Duration,
) -> Result<(), String> {
    match role {
        Role::Ingest | Role::Fanout => {
            let s = if role == Role::Ingest {
                &region.ingest[i]
            } else {
                &region.fanout[i]
            };
            match act {
                Act::Kill => {
                    s.lock().await.kill9();
                    tokio::time::sleep(down_for).await;
                    s.lock().await.restart().await;
                }
                Act::Freeze => {
                    let pid = s.lock().await.pid();
                    signal(pid, "STOP")?;
                    tokio::time::sleep(down_for).await;
                    signal(pid, "CONT")?;
                }
                Act::Restart => {
                    let mut s = s.lock().await;
                    tokio::task::block_in_place(|| s.terminate());
                    s.restart().await;
                }
            }
        }
        Role::Nats => match act {
            Act::Kill => {
                region.nats.lock().await.kill(i);
                tokio::time::sleep(down_for).await;
                let mut n = region.nats.lock().await;
                n.restart(i).await;
                n.wait_meshed().await;
            }
            Act::Freeze => {
                let pid = region.nats.lock().await.servers[i].pid();
                signal(pid, "STOP")?;
                tokio::time::sleep(down_for).await;
                signal(pid, "CONT")?;
            }
            Act::Restart => {
                let mut n = region.nats.lock().await;
                n.restart(i).await;
                n.wait_meshed().await;
            }
        },
        Role::Cassandra => {
            match act {
                Act::Kill => {
                    cql_ctl(&region.cql, "kill", i).await?;
                    tokio::time::sleep(down_for).await;
                    cql_ctl(&region.cql, "start", i).await?;
                }
                Act::Freeze => {
                    cql_ctl(&region.cql, "freeze", i).await?;
                    tokio::time::sleep(down_for).await;
                    cql_ctl(&region.cql, "thaw", i).await?;
                }
                Act::Restart => {
                    cql_ctl(&region.cql, "stop", i).await?;
                    cql_ctl(&region.cql, "start", i).await?;
                }
            }
            cql_formed(&region.cql).await?;
        }
    }
    Ok(())
}

/// Every few seconds, one action on a random eligible target, until `stop`; then waits until
/// everything is back.
async fn nemesis(
    region: Arc<Region>,
    stop: Arc<AtomicBool>,
    seed: u64,
    actions: Arc<Mutex<Vec<Action>>>,
) {
    let mut rng = Rng(seed);
    let mut running = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        // Time passing between actions, not synchronisation.
        tokio::time::sleep(rng.ms(2_000, 5_000)).await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let targets = region.eligible();
        if targets.is_empty() {
            continue;
        }
        let (role, i) = targets[rng.below(targets.len())];
        let act = [Act::Kill, Act::Freeze, Act::Restart][rng.below(3)];
        let down_for = rng.ms(1_500, 5_000);
        region.busy.lock().expect("busy").insert((role, i));
        let n = {
            let mut a = actions.lock().expect("actions");
            a.push(Action {
                role,
                index: i,
                act,
                start: Instant::now(),
                back: None,
                error: None,
            });
            a.len() - 1
        };
        eprintln!("nemesis: {act:?} {role:?} {i} (down for {down_for:?})");
        let region = region.clone();
        let actions = actions.clone();
        running.push(tokio::spawn(async move {
            let r = hit(&region, role, i, act, down_for).await;
            {
                let mut a = actions.lock().expect("actions");
                a[n].back = Some(Instant::now());
                a[n].error = r.err();
            }
            region.busy.lock().expect("busy").remove(&(role, i));
        }));
    }
    for t in running {
        if let Err(e) = t.await {
            // A restart that panicked (did not come up): the checker reports it.
            eprintln!("nemesis: an action failed: {e}");
        }
    }
}

/// What one user saw: every attempt, and the ids of its acknowledged comments by key.
#[derive(Default)]
struct Writer {
    attempts: Vec<Attempt>,
    acked: HashMap<String, Vec<String>>,
    gave_up: Vec<String>,
}

async fn writer(w: usize, bases: Vec<String>, stop: Arc<AtomicBool>) -> Writer {
    let mut lb = Balancer::new(&bases, w, ATTEMPT_TIMEOUT);
    let user = format!("u{w}");
    let tok = token(&user);
    let mut out = Writer::default();
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("{user}-{i}");
        let mut attempts = Vec::new();
        let id = lb
            .post(&tok, POST, &key, &format!("{user} #{i}"), ATTEMPTS, |a| {
                attempts.push(a)
            })
            .await;
        out.attempts.extend(attempts);
        match id {
            Some(id) => out.acked.entry(key).or_default().push(id),
            None => out.gave_up.push(key),
        }
        i += 1;
        tokio::time::sleep(PACE).await;
    }
    out
}

/// One connection of a viewer: which fanout, the ids it received, how it ended.
#[derive(Debug, Clone, Default)]
struct Segment {
    fanout: usize,
    resumed: bool,
    ids: Vec<String>,
    /// Deletions received: the comment's id, with how many comments of this segment came
    /// before it (a retraction counts only after the comment it retracts).
    deleted: Vec<(usize, String)>,
    ended: &'static str,
}

#[derive(Debug, Default)]
struct ViewerLog {
    segments: Vec<Segment>,
    /// Connection attempts that failed (a fanout down or frozen).
    refused: usize,
}

impl ViewerLog {
    fn all(&self) -> impl Iterator<Item = &String> {
        self.segments.iter().flat_map(|s| s.ids.iter())
    }
}

/// A viewer: reads its stream; when cut off (or told to reconnect) it resumes with its
/// Last-Event-ID on the other fanout, as a browser behind a load balancer would. A `dropper`
/// also drops its stream every 1–4 s (while `dropping`) and resumes on a random fanout.
#[allow(clippy::too_many_arguments)]
async fn viewer(
    first: Sse,
    fanouts: Vec<String>,
    at_start: usize,
    dropper: bool,
    seed: u64,
    dropping: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
    log: Arc<Mutex<ViewerLog>>,
) {
    let mut rng = Rng(seed);
    let mut at = at_start;
    let mut sse = Some(first);
    let mut last: Option<String> = None;
    let mut resumed = false;
    loop {
        let mut s = match sse.take() {
            Some(s) => s,
            None => {
                if finish.load(Ordering::SeqCst) {
                    return;
                }
                let url = format!("{}/comments/stream?post_id={POST}", fanouts[at]);
                match Sse::try_connect_url(&url, last.as_deref(), Some(Duration::from_secs(3)))
                    .await
                {
                    Ok(s) if s.status == 200 => s,
                    _ => {
                        log.lock().expect("viewer log").refused += 1;
                        at = (at + 1) % fanouts.len();
                        // A browser's reconnection delay: time passing.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                }
            }
        };
        let n = {
            let mut l = log.lock().expect("viewer log");
            l.segments.push(Segment {
                fanout: at,
                resumed,
                ids: Vec::new(),
                deleted: Vec::new(),
                ended: "",
            });
            l.segments.len() - 1
        };
        let drop_at = Instant::now() + rng.ms(1_000, 4_000);
        let ended = loop {
            match s.next(Duration::from_millis(200)).await {
                Some(ev) if ev.event == "comment" => {
                    let id = ev.json()["id"].as_str().unwrap_or("?").to_string();
                    log.lock().expect("viewer log").segments[n].ids.push(id);
                }
                Some(ev) if ev.event == "delete" => {
                    let id = ev.json()["id"].as_str().unwrap_or("?").to_string();
                    let mut l = log.lock().expect("viewer log");
                    let before = l.segments[n].ids.len();
                    l.segments[n].deleted.push((before, id));
                }
                Some(ev) if ev.event == "closed" => break "cut off",
                Some(ev) if ev.event == "reconnect" => break "told to reconnect",
                Some(_) => {}
                None if finish.load(Ordering::SeqCst) => break "end",
                None => {}
            }
            if dropper && dropping.load(Ordering::SeqCst) && Instant::now() >= drop_at {
                break "dropped";
            }
        };
        last = s.last_id.clone();
        log.lock().expect("viewer log").segments[n].ended = ended;
        drop(s);
        if ended == "end" {
            return;
        }
        resumed = true;
        at = if ended == "dropped" {
            rng.below(fanouts.len())
        } else {
            (at + 1) % fanouts.len()
        };
    }
}

/// Whether the viewer received a deletion of `id` after `id` itself: a comment answered 503
/// whose write landed anyway is withdrawn and retracted in the stream (`ingest::pipeline`).
fn retracted_after(log: &ViewerLog, id: &str) -> bool {
    let at = |k: usize, seg: &Segment| seg.ids.iter().position(|x| x == id).map(|i| (k, i));
    let Some(received) = log.segments.iter().enumerate().find_map(|(k, s)| at(k, s)) else {
        return false;
    };
    log.segments.iter().enumerate().any(|(k, seg)| {
        seg.deleted
            .iter()
            .any(|(before, d)| d == id && (k, *before) > received)
    })
}

/// Problems with one viewer's stream: duplicates, missing, unknown, and writers out of order.
fn check_viewer(name: &str, log: &ViewerLog, stored: &HashSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut last: HashMap<&str, &str> = HashMap::new();
    for (k, seg) in log.segments.iter().enumerate() {
        for id in &seg.ids {
            *seen.entry(id).or_default() += 1;
            let Some(writer) = id.get(10..18) else {
                problems.push(format!("{name}: malformed id {id:?} in segment {k}"));
                continue;
            };
            if let Some(prev) = last.insert(writer, id)
                && prev >= id.as_str()
            {
                problems.push(format!(
                        "{name}: writer {writer} out of order in segment {k} (fanout {}): {prev} then {id}",
                        seg.fanout
                    ));
            }
        }
    }
    for (id, n) in &seen {
        if *n > 1 {
            let segs: Vec<usize> = log
                .segments
                .iter()
                .enumerate()
                .filter(|(_, s)| s.ids.iter().any(|x| x == id))
                .map(|(k, _)| k)
                .collect();
            problems.push(format!(
                "{name}: {id} received {n} times (segments {segs:?})"
            ));
        }
        if !stored.contains(*id) && !retracted_after(log, id) {
            problems.push(format!(
                "{name}: received {id}, which is not stored (and no deletion of it followed)"
            ));
        }
    }
    let mut missing: Vec<&String> = stored
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .collect();
    missing.sort();
    if !missing.is_empty() {
        problems.push(format!(
            "{name}: {} stored comments never received: {missing:?}",
            missing.len()
        ));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_region_loses_nothing_and_duplicates_nothing() {
    let Some(cql) = CqlCluster::from_env() else {
        eprintln!(
            "SKIPPED: set {CHAOS_CQL_ENV} (scripts/chaos runs this on a 3-node Cassandra cluster it starts)"
        );
        return;
    };
    let secs = env_u64("LIVECOMMENTS_CHAOS_SECS", 60);
    let users = env_u64("LIVECOMMENTS_CHAOS_USERS", 12) as usize;
    let seed = env_u64(
        "LIVECOMMENTS_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1,
    );
    eprintln!(
        "chaos: {secs} s, {users} users, seed {seed} (LIVECOMMENTS_CHAOS_SEED), Cassandra {}",
        cql.contact()
    );

    // The region: keyspace RF 3, the NATS cluster, 3 ingest, a reader, 2 fanouts.
    let ks = fresh_keyspace("chaos");
    let contact = cql.contact();
    migrate_keyspace_with(&contact, &ks, &["--cql-replication", "SimpleStrategy:3"]);
    let nats = NatsCluster::start("local", 3).await;
    let urls = nats.urls();
    let cql_args = [
        "--cql-nodes",
        contact.as_str(),
        "--cql-keyspace",
        ks.as_str(),
        "--cql-consistency",
        "local_quorum",
    ];
    let mut ingest = Vec::new();
    for _ in 0..3 {
        ingest.push(
            Server::role("ingest")
                .nats(&urls)
                .args(cql_args)
                .start()
                .await,
        );
    }
    let reader = Server::role("reader")
        .nats(&urls)
        .args(cql_args)
        .start()
        .await;
    let mut fanout = Vec::new();
    for _ in 0..2 {
        fanout.push(Server::role("fanout").nats(&urls).start().await);
    }
    let bases: Vec<String> = ingest.iter().map(|s| s.base.clone()).collect();
    let fanout_bases: Vec<String> = fanout.iter().map(|s| s.base.clone()).collect();
    let region = Arc::new(Region {
        ingest: ingest
            .into_iter()
            .map(|s| Arc::new(AsyncMutex::new(s)))
            .collect(),
        fanout: fanout
            .into_iter()
            .map(|s| Arc::new(AsyncMutex::new(s)))
            .collect(),
        nats: Arc::new(AsyncMutex::new(nats)),
        cql: Arc::new(cql),
        busy: Mutex::new(HashSet::new()),
    });

    // Viewers, all joined before the first POST: on each fanout two that stay connected (unless
    // their fanout dies under them) and two that drop and resume.
    let dropping = Arc::new(AtomicBool::new(true));
    let finish = Arc::new(AtomicBool::new(false));
    let mut viewers = Vec::new();
    for f in 0..2 {
        for k in 0..4 {
            let dropper = k >= 2;
            let name = format!(
                "{} viewer {k} of fanout {f}",
                if dropper { "resuming" } else { "connected" }
            );
            let mut first = Sse::connect(&fanout_bases[f], POST, None).await;
            assert!(
                first.started(Duration::from_secs(30)).await,
                "{name} joined"
            );
            let log = Arc::new(Mutex::new(ViewerLog::default()));
            let task = tokio::spawn(viewer(
                first,
                fanout_bases.clone(),
                f,
                dropper,
                seed ^ (0x9e37_79b9 * (f * 4 + k + 1) as u64),
                dropping.clone(),
                finish.clone(),
                log.clone(),
            ));
            viewers.push((name, log, task));
        }
    }

    // The load and the nemesis, for `secs`.
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let actions = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..users)
        .map(|w| tokio::spawn(writer(w, bases.clone(), stop.clone())))
        .collect();
    let nemesis_task = tokio::spawn(nemesis(region.clone(), stop.clone(), seed, actions.clone()));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::SeqCst);
    let t_stop = Instant::now();
    let mut writes = Vec::new();
    for w in writers {
        writes.push(w.await.expect("writer task"));
    }
    let nemesis_ok = nemesis_task.await.is_ok();
    let t_back = Instant::now();
    dropping.store(false, Ordering::SeqCst);
    let actions = actions.lock().expect("actions").clone();
    let mut failures: Vec<String> = Vec::new();
    if !nemesis_ok {
        failures.push("the nemesis task panicked".into());
    }
    for a in &actions {
        if let Some(e) = &a.error {
            failures.push(format!("nemesis {} {}: {e}", a.kind(), a.index));
        }
    }

    // Every 201 stored exactly once.
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    let mut gave_up = Vec::new();
    let mut attempts: Vec<Attempt> = Vec::new();
    for w in writes {
        for (k, v) in w.acked {
            acked.entry(k).or_default().extend(v);
        }
        gave_up.extend(w.gave_up);
        attempts.extend(w.attempts);
    }
    let mut acked_ids: HashMap<String, String> = HashMap::new(); // id -> key
    for (k, v) in &acked {
        if v.iter().any(|id| id != &v[0]) {
            failures.push(format!("key {k} acknowledged with different ids: {v:?}"));
        }
        for id in v {
            acked_ids.insert(id.clone(), k.clone());
        }
    }
    if !gave_up.is_empty() {
        failures.push(format!(
            "{} comments never acknowledged after {ATTEMPTS} attempts: {:?}",
            gave_up.len(),
            &gave_up[..gave_up.len().min(20)]
        ));
    }
    let read_stored = || async {
        let comments = reader_comments(&reader).await;
        let ids: Vec<String> = ids(&comments);
        let texts: Vec<String> = comments
            .iter()
            .map(|c| c["text"].as_str().unwrap_or_default().to_string())
            .collect();
        (ids, texts)
    };
    let (stored, texts) = read_stored().await;
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    if stored_set.len() != stored.len() {
        failures.push(format!(
            "{} ids stored more than once",
            stored.len() - stored_set.len()
        ));
    }
    let mut lost: Vec<(&String, &String)> = acked_ids
        .iter()
        .filter(|(id, _)| !stored_set.contains(*id))
        .collect();
    lost.sort();
    if !lost.is_empty() {
        failures.push(format!(
            "{} acknowledged comments not stored (id, key): {lost:?}",
            lost.len()
        ));
    }
    let mut by_text: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, text) in stored.iter().zip(&texts) {
        by_text.entry(text).or_default().push(id);
    }
    for (text, ids) in &by_text {
        if ids.len() > 1 {
            failures.push(format!(
                "the comment {text:?} (one Idempotency-Key) is stored {} times: {ids:?}",
                ids.len()
            ));
        }
    }
    let unacked = stored
        .iter()
        .filter(|id| !acked_ids.contains_key(*id))
        .count();

    // Every viewer has every stored comment: a bounded drain, then a moment for late extras.
    let t_drain = Instant::now();
    let drained = eventually(DRAIN, || {
        let ok = viewers.iter().all(|(_, log, _)| {
            let l = log.lock().expect("viewer log");
            let got: HashSet<&String> = l.all().collect();
            stored_set.iter().all(|id| got.contains(id))
        });
        async move { ok.then_some(()) }
    })
    .await
    .is_some();
    let drain_took = t_drain.elapsed();
    // Absence of late duplicates: a quiet second, then the streams end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    finish.store(true, Ordering::SeqCst);
    for (_, _, task) in &mut viewers {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    // Visible late (after the first read)? Then it belongs to what viewers must have.
    let (stored_again, _) = read_stored().await;
    let late: Vec<&String> = stored_again
        .iter()
        .filter(|id| !stored_set.contains(*id))
        .collect();
    if !late.is_empty() {
        failures.push(format!(
            "{} comments became visible in the store after the load ended: {late:?}",
            late.len()
        ));
    }
    if !drained {
        failures.push(format!(
            "the viewers did not all have every stored comment within {DRAIN:?}"
        ));
    }
    let mut deliveries = 0;
    let mut viewer_lines = Vec::new();
    for (name, log, _) in &viewers {
        let l = log.lock().expect("viewer log");
        failures.extend(check_viewer(name, &l, &stored_set));
        let n: usize = l.segments.iter().map(|s| s.ids.len()).sum();
        deliveries += n;
        let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &l.segments[..l.segments.len().saturating_sub(1)] {
            *ends.entry(s.ended).or_default() += 1;
        }
        // Each segment as fanout:received, then how it ended (c cut off, t told to reconnect,
        // d dropped, e the end).
        let trace: Vec<String> = l
            .segments
            .iter()
            .map(|s| {
                format!(
                    "f{}:{}{}",
                    s.fanout,
                    s.ids.len(),
                    s.ended.chars().next().unwrap_or('?')
                )
            })
            .collect();
        viewer_lines.push(format!(
            "  {name}: {n} received in {} segments ({} resumed; ended: {ends:?}; {} connection attempts refused) [{}]",
            l.segments.len(),
            l.segments.iter().filter(|s| s.resumed).count(),
            l.refused,
            trace.join(" ")
        ));
    }

    // The figures.
    let ok_posts = attempts.iter().filter(|a| a.status == Some(201)).count();
    let failed = attempts.len() - ok_posts;
    let mut acks: Vec<Instant> = attempts
        .iter()
        .filter(|a| a.status == Some(201))
        .map(|a| a.end)
        .collect();
    acks.sort();
    // Gaps between consecutive 201s over the whole region, each put down to the last action
    // that began before the gap did.
    let action_before = |t: Instant| actions.iter().rposition(|a| a.start <= t);
    let mut per_kind: BTreeMap<String, (usize, usize, Duration)> = BTreeMap::new();
    for a in &actions {
        per_kind.entry(a.kind()).or_default().0 += 1;
    }
    for a in attempts.iter().filter(|a| a.status != Some(201)) {
        if let Some(k) = action_before(a.end) {
            per_kind.entry(actions[k].kind()).or_default().1 += 1;
        }
    }
    let mut longest = (Duration::ZERO, None);
    for w in acks.windows(2) {
        let gap = w[1] - w[0];
        if gap > longest.0 {
            longest = (gap, action_before(w[0]));
        }
        if let Some(k) = action_before(w[0]) {
            let e = per_kind.entry(actions[k].kind()).or_default();
            e.2 = e.2.max(gap);
        }
    }
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.status != Some(201)) {
        let s = a.status.map_or("no answer".to_string(), |s| s.to_string());
        *statuses.entry(s).or_default() += 1;
    }
    let mut latency: Vec<Duration> = attempts
        .iter()
        .filter(|a| a.status == Some(201))
        .map(|a| a.end - a.start)
        .collect();
    latency.sort();
    let dur = t_stop - t0;
    println!("chaos figures (seed {seed}):");
    println!(
        "  load {:.0} s: {users} users, {} POST attempts, {ok_posts} answered 201 ({:.0}/s), {failed} failed and retried ({statuses:?}), {} comments acknowledged, {} given up",
        dur.as_secs_f64(),
        attempts.len(),
        ok_posts as f64 / dur.as_secs_f64(),
        acked.len(),
        gave_up.len()
    );
    println!(
        "  POST latency (201s): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&latency, 50.0).as_secs_f64() * 1e3,
        percentile(&latency, 99.0).as_secs_f64() * 1e3,
        latency.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  stored {} ({} without a 201 reaching the client); longest stop of all writes {:.2} s{}",
        stored.len(),
        unacked,
        longest.0.as_secs_f64(),
        longest
            .1
            .map(|k| format!(
                " (after {} {} at +{:.1} s)",
                actions[k].kind(),
                actions[k].index,
                (actions[k].start - t0).as_secs_f64()
            ))
            .unwrap_or_default()
    );
    println!(
        "  nemesis: {} actions; everything back {:.1} s after the load stopped",
        actions.len(),
        (t_back - t_stop).as_secs_f64()
    );
    for (kind, (n, failed, gap)) in &per_kind {
        println!(
            "    {kind}: {n}×, {failed} POST attempts failed until the next action, longest write stop after it {:.2} s",
            gap.as_secs_f64()
        );
    }
    for a in &actions {
        println!(
            "    +{:6.1} s {} {}: back after {}{}",
            (a.start - t0).as_secs_f64(),
            a.kind(),
            a.index,
            a.back
                .map(|b| format!("{:.1} s", (b - a.start).as_secs_f64()))
                .unwrap_or_else(|| "never".into()),
            a.error
                .as_ref()
                .map(|e| format!(" (error: {e})"))
                .unwrap_or_default()
        );
    }
    println!(
        "  deliveries: {deliveries} comments to {} viewers; every viewer complete {:.1} s after the nemesis stopped",
        viewers.len(),
        drain_took.as_secs_f64()
    );
    for l in &viewer_lines {
        println!("{l}");
    }
    if !failures.is_empty() {
        println!("  FAILURES ({}):", failures.len());
        for f in &failures {
            let f: String = f.chars().take(4_000).collect();
            println!("    {f}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems (above); logs under {}",
        failures.len(),
        std::env::temp_dir().join("livecomments-tests").display()
    );
    assert!(
        acked.len() > 100,
        "the load ran: {} acknowledged",
        acked.len()
    );
    assert!(!actions.is_empty(), "the nemesis acted");
    drop(region);
}

/// Every comment of the post through the reader (newest first), retrying a failed page: the
/// store is whole again by now, but the reader's driver may still be reconnecting.
async fn reader_comments(reader: &Server) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/comments?post_id={POST}&page_size=100");
        if let Some(c) = &cursor {
            path.push_str(&format!("&before={c}"));
        }
        let page = eventually(Duration::from_secs(30), || {
            let url = reader.url(&path);
            async move {
                let (status, body) = get_json(&url).await;
                (status == 200).then_some(body)
            }
        })
        .await
        .expect("the reader answers GET /comments");
        out.extend(page["comments"].as_array().into_iter().flatten().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}
