//! The replicated layout of a region (CONTRACT §7): its ingest nodes, the proxy's routes to
//! every node of a role, and its ScyllaDB cluster. Each check returns what it finds wrong
//! (nothing: in step), so that main.rs can assert the real files and also show, on altered
//! copies of them, that every rule catches the drift it is there for.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::compose_file::*;
use crate::nginx::*;

pub(crate) type Findings = Vec<String>;

/// A value a livecomments service runs with: its flag, else its `LIVECOMMENTS_*` variable
/// (every flag has one, named after it: CONTRACT §4), else `default` (the binary's, from
/// `--help`).
pub(crate) fn setting(svc: &Value, flag_name: &str, default: Option<&str>) -> Option<String> {
    let env = format!(
        "LIVECOMMENTS_{}",
        flag_name
            .trim_start_matches("--")
            .replace('-', "_")
            .to_ascii_uppercase()
    );
    flag(&command(svc), flag_name)
        .or_else(|| environment(svc).get(&env).cloned())
        .or_else(|| default.map(String::from))
}

fn role(svc: &Value) -> Option<String> {
    if !is_livecomments(svc) {
        return None;
    }
    command(svc).first().cloned()
}

/// Services of `role` by region (`--region`), names sorted.
pub(crate) fn by_region(c: &Value, r: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, svc) in services(c) {
        if role(svc).as_deref() == Some(r) {
            let region = setting(svc, "--region", None).unwrap_or_default();
            out.entry(region).or_default().insert(name.clone());
        }
    }
    out
}

/// Every region runs at least two ingest nodes, and they are replicas of one definition:
/// the same command, environment and everything else, so no node needs a flag of its own.
/// They are named services (not `deploy.replicas`/`scale`): the proxy's upstream names each.
pub(crate) fn check_ingest_nodes(c: &Value) -> Findings {
    let mut f = Findings::new();
    let svcs = services(c);
    for (name, svc) in svcs {
        if role(svc).as_deref() != Some("ingest") {
            continue;
        }
        if !svc["deploy"]["replicas"].is_null() || !svc["scale"].is_null() {
            f.push(format!(
                "{name}: replicated with deploy.replicas/scale; run named services (ingest-<region>-N), \
                 which the proxy's upstream lists one by one"
            ));
        }
    }
    let regions = by_region(c, "ingest");
    if regions.is_empty() {
        f.push("compose.yaml runs no ingest".into());
    }
    for (region, nodes) in &regions {
        if nodes.len() < 2 {
            f.push(format!(
                "region {region}: {} ingest node(s) ({nodes:?}); run at least two",
                nodes.len()
            ));
        }
        let first = nodes.iter().next().unwrap();
        let a = svcs[first].as_object().unwrap();
        for other in nodes.iter().skip(1) {
            let b = svcs[other].as_object().unwrap();
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                if a.get(k) != b.get(k) {
                    f.push(format!(
                        "region {region}: {other}'s `{k}` differs from {first}'s; every ingest node \
                         runs the same definition (no per-node flag): {} vs {}",
                        b.get(k).unwrap_or(&Value::Null),
                        a.get(k).unwrap_or(&Value::Null)
                    ));
                }
            }
        }
    }
    f
}

/// `(major, minor, patch)` of an image tag such as `nginx:1.28-alpine` (`1.28` is the newest
/// 1.28.x: `(1, 28, 0)` is its lowest); `None` for `latest`, a digest or no tag.
fn image_version(image: &str) -> Option<(u32, u32, u32)> {
    let tag = image.rsplit_once(':')?.1;
    let v = tag.split('-').next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().unwrap_or(Some(0))?;
    let patch = parts.next().unwrap_or(Some(0))?;
    Some((major, minor, patch))
}

fn effective<'a>(
    loc: &'a [Directive],
    server: &'a [Directive],
    name: &str,
) -> Option<&'a Directive> {
    get(loc, name).or_else(|| get(server, name))
}

/// The proxy `proxy` (an nginx service) with its rendered config `conf`: every API path goes
/// to an upstream that lists every service of its role in the proxy's region; the write paths
/// fail over (a failed connect moves to the next ingest node, quickly, and a POST that was
/// already sent is never resent); names are re-resolved at run time, with what that needs.
pub(crate) fn check_proxy(c: &Value, proxy: &str, conf: &str) -> Findings {
    let mut f = Findings::new();
    let svcs = services(c);
    let top = nginx_conf(conf);
    let Some(server) = top
        .iter()
        .find(|d| d.name == "server")
        .and_then(|d| d.block.as_deref())
    else {
        return vec![format!("{proxy}: no server block")];
    };
    let upstreams: BTreeMap<&str, &[Directive]> = top
        .iter()
        .filter(|d| d.name == "upstream")
        .map(|d| (d.args[0].as_str(), d.block.as_deref().unwrap_or(&[])))
        .collect();

    // Each path's upstream: exactly the services of its role in this proxy's region.
    let mut regions = BTreeSet::new();
    for (path, r) in [
        ("/comment", "ingest"),
        ("/comment/01JDQ7Z8XK3M4N5P6Q7R8S9T0V", "ingest"),
        ("/comments", "reader"),
        ("/comments/stream", "fanout"),
        ("/posts/match-42/settings", "ingest"),
        ("/posts/match-42/viewers", "reader"),
        ("/posts/match-42/reactions", "reader"),
        ("/reaction", "ingest"),
        ("/moderation/bans", "ingest"),
    ] {
        let loc = location(server, path);
        let body = loc.block.as_deref().unwrap_or(&[]);
        let Some(pass) = get(body, "proxy_pass") else {
            f.push(format!("{proxy}: {path}: no proxy_pass"));
            continue;
        };
        let up = pass.args[0].trim_start_matches("http://");
        let servers: Vec<&Directive> = upstreams
            .get(up)
            .map(|b| b.iter().filter(|d| d.name == "server").collect())
            .unwrap_or_default();
        let hosts: BTreeSet<String> = if servers.is_empty() {
            [host_port(up).0].into()
        } else {
            servers.iter().map(|s| host_port(&s.args[0]).0).collect()
        };
        for h in &hosts {
            if let Some(region) = svcs.get(h).and_then(|s| setting(s, "--region", None)) {
                regions.insert(region);
            }
        }
        let Some(region) = regions.iter().next().cloned() else {
            f.push(format!("{proxy}: {path} reaches no livecomments service"));
            continue;
        };
        let want = by_region(c, r).remove(&region).unwrap_or_default();
        if hosts != want {
            f.push(format!(
                "{proxy}: {path} goes to {hosts:?}; the {r} services of region {region} are {want:?} \
                 (the upstream lists every one)"
            ));
        }
        for s in &servers {
            for a in &s.args[1..] {
                if a == "backup" || a == "down" || a == "max_fails=0" {
                    f.push(format!(
                        "{proxy}: upstream {up}: `{a}` on {}: every node takes requests and \
                         failures count",
                        s.args[0]
                    ));
                }
            }
            // Two or more nodes: the proxy must start and route while one of them is gone.
            if servers.len() > 1 && !s.args.iter().any(|a| a == "resolve") {
                f.push(format!(
                    "{proxy}: upstream {up}: {} without `resolve`: nginx would refuse to start \
                     while that node is stopped (its name does not resolve)",
                    s.args[0]
                ));
            }
        }

        if r == "ingest" {
            let next = effective(body, server, "proxy_next_upstream")
                .map(|d| d.args.clone())
                .unwrap_or_else(|| vec!["error".into(), "timeout".into()]);
            for needed in ["error", "timeout"] {
                if !next.iter().any(|a| a == needed) {
                    f.push(format!(
                        "{proxy}: {path}: proxy_next_upstream {} lacks `{needed}`: a dead ingest \
                         node is not routed around",
                        next.join(" ")
                    ));
                }
            }
            if next.iter().any(|a| a == "non_idempotent" || a == "off") {
                f.push(format!(
                    "{proxy}: {path}: proxy_next_upstream {}: a POST already sent must not be \
                     resent (clients retry with Idempotency-Key)",
                    next.join(" ")
                ));
            }
            let connect = effective(body, server, "proxy_connect_timeout")
                .map(|d| seconds(&d.args[0]))
                .unwrap_or(60);
            if connect > 2 {
                f.push(format!(
                    "{proxy}: {path}: proxy_connect_timeout {connect}s: a stopped node's address \
                     does not answer, so each write would wait that long before the other node"
                ));
            }
            if let Some(t) = effective(body, server, "proxy_next_upstream_tries") {
                let n: usize = t.args[0].parse().unwrap_or(0);
                if n != 0 && n < servers.len() {
                    f.push(format!(
                        "{proxy}: {path}: proxy_next_upstream_tries {n} < {} ingest nodes",
                        servers.len()
                    ));
                }
            }
        }
    }
    if regions.len() > 1 {
        f.push(format!("{proxy}: serves several regions: {regions:?}"));
    }

    // `resolve`: needs the upstream in shared memory, a resolver that knows the compose
    // names, and an nginx that has it outside the commercial version.
    let mut resolving = false;
    for (up, block) in &upstreams {
        let resolve = block
            .iter()
            .any(|d| d.name == "server" && d.args.iter().any(|a| a == "resolve"));
        resolving |= resolve;
        if resolve && get(block, "zone").is_none() {
            f.push(format!(
                "{proxy}: upstream {up}: `resolve` needs a `zone` (nginx refuses the config)"
            ));
        }
    }
    if resolving {
        let resolver = get(&top, "resolver").or_else(|| get(server, "resolver"));
        match resolver {
            None => f.push(format!(
                "{proxy}: `resolve` without a `resolver` (nginx refuses the config)"
            )),
            Some(d)
                if !d
                    .args
                    .iter()
                    .any(|a| a == "127.0.0.11" || a == "127.0.0.11:53") =>
            {
                f.push(format!(
                    "{proxy}: resolver {}: only Docker's embedded DNS (127.0.0.11) knows the \
                     compose service names",
                    d.args.join(" ")
                ))
            }
            Some(_) => {}
        }
        let image = image(&svcs[proxy]);
        match image_version(image) {
            Some(v) if v >= (1, 27, 3) => {}
            _ => f.push(format!(
                "{proxy}: image {image}: `resolve` in an upstream needs nginx 1.27.3 or later \
                 (pin a version that has it)"
            )),
        }
    }
    f
}

/// Parsed `--memory` of ScyllaDB (`512M`, `1G`, bytes) in MiB.
fn mebibytes(v: &str) -> Option<u64> {
    let v = v.trim();
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n.parse().ok()?;
    match unit.to_ascii_uppercase().as_str() {
        "" => Some(n >> 20),
        "K" | "KB" => Some(n >> 10),
        "M" | "MB" => Some(n),
        "G" | "GB" => Some(n << 10),
        _ => None,
    }
}

/// Replicas per datacenter of `--cql-replication` (the binary's forms, store/cql/mod.rs).
fn replicas(s: &str) -> Result<BTreeMap<String, u32>, String> {
    let (class, rest) = s.split_once(':').ok_or(format!("{s:?}: no `:`"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("{s:?}: bad factor"))
    };
    match class.trim().to_ascii_lowercase().as_str() {
        "simplestrategy" | "simple" => Ok([(String::new(), n(rest)?)].into()),
        "networktopologystrategy" | "nts" => rest
            .split(',')
            .map(|i| {
                let (dc, v) = i.split_once('=').ok_or(format!("{s:?}: no `dc=rf`"))?;
                Ok((dc.trim().to_string(), n(v)?))
            })
            .collect(),
        _ => Err(format!("{s:?}: unknown class")),
    }
}

/// Replicas a read or write at `consistency` waits for, with replication factor `rf`.
fn needed(consistency: &str, rf: u32) -> Option<u32> {
    Some(
        match consistency.to_ascii_lowercase().replace('-', "_").as_str() {
            "any" | "one" | "local_one" => 1,
            "two" => 2,
            "three" => 3,
            "quorum" | "local_quorum" | "each_quorum" => rf / 2 + 1,
            "all" => rf,
            _ => return None,
        },
    )
}

/// The datacenter of the image's default snitch (SimpleSnitch): `nodetool status` shows it.
const IMAGE_DC: &str = "datacenter1";

/// What the ScyllaDB nodes of compose.yaml may take together (`--memory` summed), so that the
/// whole file fits the memory README.md states (about 4.5 GB with everything else).
pub(crate) const SCYLLA_MEMORY_BUDGET_MIB: u64 = 3 * 1024;

/// Each region's store is its own ScyllaDB cluster of at least three nodes that every store
/// process of the region lists in full, started seed first, with a keyspace replication factor
/// and a consistency under which any one node may be down (LWTs included), sized for a laptop.
/// `default(role, flag)` is the binary's default (`--help`).
pub(crate) fn check_store(c: &Value, default: &dyn Fn(&str, &str) -> Option<String>) -> Findings {
    let mut f = Findings::new();
    let svcs = services(c);
    let scylla: BTreeMap<&String, &Value> = svcs
        .iter()
        .filter(|(_, s)| image(s).contains("scylla"))
        .collect();

    // Clusters by name, and what each node needs on its own.
    let mut clusters: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut volumes: BTreeMap<String, String> = BTreeMap::new();
    let mut memory = 0;
    for (name, svc) in &scylla {
        let cmd = command(svc);
        let Some(cluster) = flag(&cmd, "--cluster-name") else {
            f.push(format!(
                "{name}: no --cluster-name: both regions' nodes share a Docker network, only \
                 distinct cluster names keep their clusters apart"
            ));
            continue;
        };
        clusters
            .entry(cluster)
            .or_default()
            .insert(name.to_string());
        match flag(&cmd, "--memory").as_deref().map(mebibytes) {
            Some(Some(m)) => {
                memory += m;
                let dev = flag(&cmd, "--developer-mode").unwrap_or("1".into()) == "1";
                let smp: u64 = flag(&cmd, "--smp")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1);
                if m / smp < 1024 && !dev {
                    f.push(format!(
                        "{name}: {m} MiB over {smp} shard(s) is under ScyllaDB's 1 GiB per shard: \
                         it refuses to start unless --developer-mode 1"
                    ));
                }
            }
            Some(None) => f.push(format!("{name}: --memory unreadable")),
            None => f.push(format!(
                "{name}: no --memory: ScyllaDB takes nearly all of the host's memory"
            )),
        }
        for v in svc["volumes"].as_array().into_iter().flatten() {
            if let Some((src, "/var/lib/scylla")) = v.as_str().and_then(|v| v.split_once(':'))
                && let Some(prev) = volumes.insert(src.to_string(), name.to_string())
            {
                f.push(format!("{name} and {prev} share the data volume {src}"));
            }
        }
    }
    if memory > SCYLLA_MEMORY_BUDGET_MIB {
        f.push(format!(
            "ScyllaDB nodes take {memory} MiB together, over the {SCYLLA_MEMORY_BUDGET_MIB} MiB \
             README.md's memory figure allows"
        ));
    }

    // Each cluster: enough nodes, one definition, seeds inside it, joined seed first.
    for (cluster, nodes) in &clusters {
        if nodes.len() < 3 {
            f.push(format!(
                "cluster {cluster}: {} node(s) ({nodes:?}); three, so that a quorum of RF 3 \
                 survives one node down",
                nodes.len()
            ));
        }
        let first = nodes.iter().next().unwrap();
        for other in nodes.iter().skip(1) {
            for k in ["image", "command"] {
                if svcs[first][k] != svcs[other][k] {
                    f.push(format!(
                        "cluster {cluster}: {other}'s {k} differs from {first}'s: {} vs {}",
                        svcs[other][k], svcs[first][k]
                    ));
                }
            }
        }
        let mut seeds = BTreeSet::new();
        for n in nodes {
            let s: BTreeSet<String> = flag(&command(&svcs[n]), "--seeds")
                .unwrap_or_else(|| n.clone())
                .split(',')
                .map(|s| s.trim().to_string())
                .collect();
            for seed in &s {
                if !nodes.contains(seed) {
                    f.push(format!(
                        "{n}: seed {seed} is not a node of cluster {cluster} ({nodes:?})"
                    ));
                }
            }
            seeds.extend(s);
        }
        // Who waits for whom (service_healthy between nodes of the cluster).
        let waits = |n: &str| -> BTreeSet<String> {
            svcs[n]["depends_on"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(d, cond)| {
                            nodes.contains(*d) && cond["condition"] == "service_healthy"
                        })
                        .map(|(d, _)| d.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        for n in nodes {
            let mut reach = BTreeSet::new();
            let mut todo = vec![n.clone()];
            while let Some(x) = todo.pop() {
                for d in waits(&x) {
                    if reach.insert(d.clone()) {
                        todo.push(d);
                    }
                }
            }
            if seeds.contains(n) {
                if !reach.is_empty() {
                    f.push(format!(
                        "{n}: a seed waits for {reach:?}, which cannot join before a seed is up"
                    ));
                }
            } else if !seeds.is_subset(&reach) {
                f.push(format!(
                    "{n}: starts before seed(s) {:?} are healthy (depends_on … service_healthy)",
                    seeds.difference(&reach).collect::<Vec<_>>()
                ));
            }
        }
    }

    // Each region: its store processes list every node of exactly one cluster, of its own.
    let mut cluster_of_region: BTreeMap<String, String> = BTreeMap::new();
    for (name, svc) in svcs {
        let Some(r) = role(svc) else { continue };
        if !matches!(r.as_str(), "ingest" | "reader" | "migrate") {
            continue;
        }
        let region = setting(svc, "--region", None).unwrap_or_default();
        let Some(list) = setting(svc, "--cql-nodes", None) else {
            continue; // main.rs: a store role without --cql-nodes is refused there
        };
        let hosts: BTreeSet<String> = list.split(',').map(|n| host_port(n).0).collect();
        let named: BTreeSet<&String> = clusters
            .iter()
            .filter(|(_, ns)| !ns.is_disjoint(&hosts))
            .map(|(c, _)| c)
            .collect();
        if named.len() != 1 {
            f.push(format!(
                "{name}: --cql-nodes {list} spans {} clusters ({named:?})",
                named.len()
            ));
            continue;
        }
        let cluster = named.into_iter().next().unwrap().clone();
        if hosts != clusters[&cluster] {
            f.push(format!(
                "{name}: --cql-nodes lists {hosts:?}, cluster {cluster} is {:?}: list every node, \
                 so that the process starts while any one is down",
                clusters[&cluster]
            ));
        }
        match cluster_of_region.get(&region) {
            Some(c) if *c != cluster => f.push(format!(
                "{name}: region {region} uses cluster {cluster}, other processes of it {c}"
            )),
            _ => {
                cluster_of_region.insert(region.clone(), cluster.clone());
            }
        }
    }
    let mut owner: BTreeMap<&String, &String> = BTreeMap::new();
    for (region, cluster) in &cluster_of_region {
        if let Some(other) = owner.insert(cluster, region) {
            f.push(format!(
                "regions {other} and {region} share cluster {cluster}: each region has its own store"
            ));
        }
    }
    for (cluster, nodes) in &clusters {
        if !cluster_of_region.values().any(|c| c == cluster) {
            f.push(format!(
                "cluster {cluster} ({nodes:?}) is used by no region"
            ));
        }
    }

    // Replication (migrate creates the keyspace) against the consistency the others use.
    for (region, cluster) in &cluster_of_region {
        let nodes = &clusters[cluster];
        let snitch = nodes
            .iter()
            .find_map(|n| flag(&command(&svcs[n]), "--endpoint-snitch"));
        let migrates: Vec<(&String, &Value)> = svcs
            .iter()
            .filter(|(_, s)| {
                role(s).as_deref() == Some("migrate")
                    && setting(s, "--region", None).as_deref() == Some(region)
            })
            .collect();
        if migrates.is_empty() {
            f.push(format!("region {region}: no migrate creates its keyspace"));
        }
        for (m, svc) in migrates {
            let d = default("migrate", "--cql-replication");
            let spec = setting(svc, "--cql-replication", d.as_deref()).unwrap_or_default();
            let rf = match replicas(&spec) {
                Err(e) => {
                    f.push(format!("{m}: --cql-replication {e}"));
                    continue;
                }
                Ok(map) if map.contains_key("") => map[""],
                Ok(map) => {
                    if let Some(s) = &snitch {
                        f.push(format!(
                            "{m}: --endpoint-snitch {s}: which datacenter the nodes are in is not \
                             checked here"
                        ));
                        continue;
                    }
                    match map.get(IMAGE_DC) {
                        Some(rf) => *rf,
                        None => {
                            f.push(format!(
                                "{m}: --cql-replication {spec} places no replica in {IMAGE_DC}, \
                                 the nodes' datacenter"
                            ));
                            continue;
                        }
                    }
                }
            };
            if rf as usize > nodes.len() {
                f.push(format!(
                    "{m}: replication factor {rf} over {} nodes: writes could never reach it",
                    nodes.len()
                ));
            }
            // LWTs (idempotency keys) run at LOCAL_SERIAL: a quorum of the replicas.
            if rf / 2 + 1 > rf.saturating_sub(1) {
                f.push(format!(
                    "{m}: replication factor {rf}: with one node down LWTs (LOCAL_SERIAL, a \
                     quorum of {}) fail; use 3",
                    rf / 2 + 1
                ));
            }
            for (name, s) in svcs {
                let Some(r) = role(s) else { continue };
                if !matches!(r.as_str(), "ingest" | "reader")
                    || setting(s, "--region", None).as_deref() != Some(region)
                {
                    continue;
                }
                let d = default(&r, "--cql-consistency");
                let cl = setting(s, "--cql-consistency", d.as_deref()).unwrap_or_default();
                match needed(&cl, rf) {
                    None => f.push(format!("{name}: --cql-consistency {cl:?} unknown")),
                    Some(n) if n + 1 > rf => f.push(format!(
                        "{name}: --cql-consistency {cl} waits for {n} of {rf} replicas: one node \
                         down stops it"
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    f
}
