//! `compose.yaml` kept in step with the real binary, the NATS configs and the proxy config.
//!
//! No Docker engine is needed: the file is parsed, every `livecomments` command is handed to the
//! real binary's argument parser (`livecomments <command...> --help` exits 0 only when every
//! flag exists and every value parses), every `LIVECOMMENTS_*` variable must be listed by
//! `livecomments <role> --help`, every NATS config is checked by `nats-server -t` and for the
//! supercluster rules (nats/README.md), and the nginx routes are resolved the way nginx does.

//!
//! The parsers live in modules of their own: `compose_file` (YAML), `help` (`--help`),
//! `nats_conf` and `nginx`; this file holds the checks, but for those of the replicated layout
//! of a region (ingest nodes, proxy upstreams, ScyllaDB cluster), which are in `layout` as
//! functions that return their findings, so that `the_layout_checks_catch_drift` can show each
//! one failing on an altered copy of the files.

mod compose_file;
mod help;
mod layout;
mod nats_conf;
mod nginx;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use compose_file::*;
use help::*;
use layout::*;
use livecomments_tests::{ClosedPort, Server, bin};
use nats_conf::*;
use nginx::*;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

#[test]
fn livecomments_commands_flags_and_env_are_accepted_by_the_binary() {
    let c = compose();
    let svcs = services(&c);
    let mut checked = 0;
    let mut roles_seen = BTreeSet::new();
    for (name, svc) in svcs {
        if !is_livecomments(svc) {
            continue;
        }
        let cmd = command(svc);
        let role = cmd
            .first()
            .unwrap_or_else(|| panic!("{name}: a livecomments service needs a command (its role)"));
        let h = help(role);
        roles_seen.insert(role.clone());

        // Every flag exists for this role.
        for a in &cmd[1..] {
            if let Some(f) = a.strip_prefix("--") {
                let f = format!("--{}", f.split_once('=').map_or(f, |(k, _)| k));
                assert!(
                    h.takes_value.contains_key(&f),
                    "{name}: `livecomments {role}` has no flag {f} (see `livecomments {role} --help`)"
                );
            }
        }
        // Every LIVECOMMENTS_* variable exists for this role.
        let env = environment(svc);
        let mut args: Vec<String> = cmd.clone();
        for (k, v) in &env {
            if !k.starts_with("LIVECOMMENTS_") {
                continue;
            }
            let f = h.env_flag.get(k).unwrap_or_else(|| {
                panic!(
                    "{name}: `livecomments {role}` reads no {k} (see `livecomments {role} --help`)"
                )
            });
            // Hand the variable's value to the parser as its flag (command line wins over env,
            // so only when the command does not set it).
            if flag(&cmd, f).is_some() || cmd.iter().any(|a| a == f) {
                continue;
            }
            let v = interpolated(v).unwrap_or_else(|| v.clone());
            if h.takes_value[f] {
                args.push(f.clone());
                args.push(v);
            } else if v == "true" {
                args.push(f.clone());
            }
        }
        // The real parser: unknown flags, missing values and values that do not parse fail.
        args.push("--help".into());
        let out = Command::new(bin())
            .args(&args)
            .env_clear()
            .output()
            .expect("run livecomments");
        assert!(
            out.status.success(),
            "{name}: `livecomments {}` is rejected by the binary:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );

        // What clap cannot check but the binary's validation does at start.
        let region = flag(&cmd, "--region")
            .or_else(|| env.get("LIVECOMMENTS_REGION").cloned())
            .unwrap_or_else(|| panic!("{name}: set --region"));
        let regions = flag(&cmd, "--regions")
            .or_else(|| env.get("LIVECOMMENTS_REGIONS").cloned())
            .unwrap_or_else(|| panic!("{name}: set --regions (every region of the deployment)"));
        assert!(
            regions.split(',').any(|r| r == region),
            "{name}: --regions {regions} must include --region {region}"
        );
        let secret = flag(&cmd, "--jwt-secret")
            .or_else(|| env.get("LIVECOMMENTS_JWT_SECRET").cloned())
            .or_else(|| env.get("LIVECOMMENTS_JWT_PUBLIC_KEY_FILE").cloned());
        if role == "ingest" {
            assert!(
                secret.is_some(),
                "{name}: ingest needs LIVECOMMENTS_JWT_SECRET"
            );
        }
        if matches!(role.as_str(), "ingest" | "reader" | "fanout") {
            let nats = flag(&cmd, "--nats-url")
                .or_else(|| env.get("LIVECOMMENTS_NATS_URL").cloned())
                .unwrap_or_else(|| panic!("{name}: {role} needs --nats-url"));
            for url in nats.split(',') {
                let (host, _) = host_port(url);
                let target = svcs
                    .get(&host)
                    .unwrap_or_else(|| panic!("{name}: --nats-url host {host} is no service"));
                assert!(
                    image(target).starts_with("nats"),
                    "{name}: {host} is not NATS"
                );
            }
        }
        if matches!(role.as_str(), "ingest" | "reader" | "migrate") {
            let nodes = flag(&cmd, "--cql-nodes")
                .or_else(|| env.get("LIVECOMMENTS_CQL_NODES").cloned())
                .unwrap_or_else(|| {
                    panic!("{name}: {role} without --cql-nodes would use an embedded store")
                });
            for node in nodes.split(',') {
                let (host, port) = host_port(node);
                let target = svcs
                    .get(&host)
                    .unwrap_or_else(|| panic!("{name}: --cql-nodes host {host} is no service"));
                assert!(
                    image(target).contains("scylla"),
                    "{name}: {host} is not ScyllaDB"
                );
                assert_eq!(port, 9042, "{name}: CQL listens on 9042");
                let keyspace = flag(&cmd, "--cql-keyspace").unwrap_or("livecomments".into());
                assert!(!keyspace.is_empty());
            }
        }
        for dep in svc["depends_on"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .or_else(|| {
                svc["depends_on"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
            })
            .unwrap_or_default()
        {
            assert!(
                svcs.contains_key(&dep),
                "{name}: depends_on unknown service {dep}"
            );
        }
        checked += 1;
    }
    for role in ["migrate", "ingest", "reader", "fanout"] {
        assert!(roles_seen.contains(role), "compose.yaml runs no `{role}`");
    }
    assert!(checked >= 10, "only {checked} livecomments services found");
}

/// clap takes any string for `--nats-url`; the NATS client parses it at start. Start a fanout
/// with each form compose.yaml uses (hosts pointed at a loopback port that refuses
/// connections: the client keeps retrying) and wait until it serves `/healthz`: a fanout that
/// got that far accepted the value.
#[tokio::test]
async fn the_nats_url_values_are_accepted_at_start() {
    let c = compose();
    let dead = ClosedPort::new();
    let mut forms = BTreeSet::new();
    for svc in services(&c).values().filter(|s| is_livecomments(s)) {
        if let Some(urls) = flag(&command(svc), "--nats-url") {
            let local: Vec<String> = urls
                .split(',')
                .map(|u| {
                    let (h, _) = host_port(u);
                    u.replacen(&h, "127.0.0.1", 1)
                        .rsplit_once(':')
                        .unwrap()
                        .0
                        .to_string()
                        + &format!(":{}", dead.port)
                })
                .collect();
            forms.insert((urls.clone(), local.join(",")));
        }
    }
    assert!(!forms.is_empty());
    for (orig, local) in forms {
        let started = Server::role("fanout")
            .no_secret()
            .nats(&local)
            .no_ready_wait()
            .try_start()
            .await;
        if let Err(e) = started {
            panic!("--nats-url {orig:?} (as {local:?}): the binary does not start: {e}");
        }
    }
}

#[test]
fn the_check_catches_drift() {
    // The same parser path as above, on commands the binary must refuse.
    for bad in [
        vec!["ingest", "--no-such-flag", "1"],
        vec!["fanout", "--max-streams-per-ip", "many"],
        vec!["no-such-role"],
    ] {
        let mut args: Vec<&str> = bad.clone();
        args.push("--help");
        let ok = Command::new(bin())
            .args(&args)
            .env_clear()
            .output()
            .expect("run livecomments")
            .status
            .success();
        assert!(!ok, "`livecomments {}` should be refused", bad.join(" "));
    }
    assert!(
        !help("ingest")
            .env_flag
            .contains_key("LIVECOMMENTS_NO_SUCH_VAR")
    );
}

#[test]
fn compose_nats_configs_exist_parse_and_form_one_supercluster() {
    let c = compose();
    let svcs = services(&c);
    let mut servers = BTreeMap::new();
    for (name, svc) in svcs {
        if !image(svc).starts_with("nats") {
            continue;
        }
        let cmd = command(svc);
        let i = cmd
            .iter()
            .position(|a| a == "-c" || a == "--config")
            .unwrap_or_else(|| panic!("{name}: nats-server needs -c <config>"));
        let inside = &cmd[i + 1];
        let path = mounted(svc, inside)
            .unwrap_or_else(|| panic!("{name}: {inside} is not mounted from the repository"));
        assert!(path.exists(), "{name}: {} does not exist", path.display());
        servers.insert(name.clone(), nats_server_of(&path));
    }
    assert!(servers.len() >= 4, "two NATS servers per region");
    // The regions are the livecomments processes' --regions.
    let mut regions = BTreeSet::new();
    for (name, svc) in svcs.iter().filter(|(_, s)| is_livecomments(s)) {
        let cmd = command(svc);
        let rs: BTreeSet<String> = flag(&cmd, "--regions")
            .expect("--regions")
            .split(',')
            .map(String::from)
            .collect();
        if regions.is_empty() {
            regions = rs.clone();
        }
        assert_eq!(
            rs, regions,
            "{name}: every process lists the same --regions"
        );
        // A process talks to its own region's cluster, on the client port.
        if let Some(urls) = flag(&cmd, "--nats-url") {
            let region = flag(&cmd, "--region").expect("--region");
            for url in urls.split(',') {
                let (host, port) = host_port(url);
                let s = &servers[&host];
                assert_eq!(s.region, region, "{name}: {host} is another region's NATS");
                assert_eq!(port, s.client_port, "{name}: {host}'s client port");
            }
        }
    }
    assert!(regions.len() >= 2, "compose.yaml runs at least two regions");
    check_supercluster(&servers, &regions);
}

#[test]
fn local_nats_configs_form_a_three_region_supercluster() {
    let dir = repo().join("nats/local");
    let mut servers = BTreeMap::new();
    for e in std::fs::read_dir(&dir).expect("nats/local") {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name == "gateways.conf" || !name.ends_with(".conf") {
            continue;
        }
        let s = nats_server_of(&p);
        let host = format!("127.0.0.1#{}", s.server_name);
        servers.insert(host, s);
    }
    let regions: BTreeSet<String> = ["eu", "us", "ap"].map(String::from).into();
    let mut ports = BTreeSet::new();
    for s in servers.values() {
        for p in [s.client_port, s.route_port, s.gateway_port] {
            assert!(ports.insert(p), "{}: port {p} used twice", s.file);
        }
    }
    let found: BTreeSet<_> = servers.values().map(|s| s.region.clone()).collect();
    assert_eq!(found, regions);
    let names: BTreeSet<_> = servers.values().map(|s| s.server_name.clone()).collect();
    assert_eq!(names.len(), servers.len(), "server_name must be unique");
    for s in servers.values() {
        let listed: BTreeSet<_> = s.gateways.keys().cloned().collect();
        assert_eq!(
            listed, regions,
            "{}: the gateway block must list every region",
            s.file
        );
        for (region, urls) in &s.gateways {
            for (host, port) in urls {
                assert_eq!(
                    host, "127.0.0.1",
                    "{}: local configs stay on loopback",
                    s.file
                );
                let t = servers
                    .values()
                    .find(|t| t.gateway_port == *port)
                    .unwrap_or_else(|| panic!("{}: no local server's gateway on {port}", s.file));
                assert_eq!(
                    &t.region, region,
                    "{}: port {port} is not region {region}",
                    s.file
                );
            }
        }
    }
}

#[test]
fn each_regions_proxy_routes_the_four_api_paths_to_the_right_role() {
    let c = compose();
    let svcs = services(&c);
    let mut proxies = 0;
    for (name, svc) in svcs {
        if !image(svc).starts_with("nginx") {
            continue;
        }
        proxies += 1;
        let text = rendered(name, svc);
        let top = nginx_conf(&text);
        let upstreams: BTreeMap<String, Vec<String>> = top
            .iter()
            .filter(|d| d.name == "upstream")
            .map(|d| {
                let servers = d
                    .block
                    .as_ref()
                    .unwrap()
                    .iter()
                    .filter(|s| s.name == "server");
                (
                    d.args[0].clone(),
                    servers.map(|s| s.args[0].clone()).collect(),
                )
            })
            .collect();
        let server = top
            .iter()
            .find(|d| d.name == "server")
            .and_then(|d| d.block.as_ref())
            .unwrap_or_else(|| panic!("{name}: no server block"));
        let listen = get(server, "listen").expect("listen").args[0].clone();
        let published = svc["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|p| p.ends_with(&format!(":{listen}")));
        assert!(
            published,
            "{name}: the proxy's port {listen} is not published"
        );

        // The role and region behind each path.
        let mut region_seen = BTreeSet::new();
        for (method, path, role) in [
            ("POST", "/comment", "ingest"),
            ("DELETE", "/comment/01JDQ7Z8XK3M4N5P6Q7R8S9T0V", "ingest"),
            ("GET", "/comments", "reader"),
            ("GET", "/comments/stream", "fanout"),
        ] {
            let loc = location(server, path);
            let body = loc.block.as_ref().unwrap();
            let pass = get(body, "proxy_pass")
                .unwrap_or_else(|| panic!("{name}: {method} {path}: no proxy_pass"))
                .args[0]
                .clone();
            let up = pass.strip_prefix("http://").expect("http:// upstream");
            let targets = upstreams
                .get(up)
                .cloned()
                .unwrap_or_else(|| vec![up.to_string()]);
            for t in &targets {
                let (host, port) = host_port(t);
                let tsvc = svcs
                    .get(&host)
                    .unwrap_or_else(|| panic!("{name}: {method} {path} goes to unknown {host}"));
                let cmd = command(tsvc);
                assert_eq!(
                    cmd.first().map(String::as_str),
                    Some(role),
                    "{name}: {method} {path} must reach {role}, reaches {host}"
                );
                let listen = flag(&cmd, "--listen").expect("--listen");
                assert_eq!(port, host_port(&listen).1, "{name}: {host}'s port");
                region_seen.insert(flag(&cmd, "--region").unwrap());
            }
            if role == "fanout" {
                // Every fanout replica of the region behind the stream, unbuffered, with an idle
                // timeout well above the 15 s heartbeat.
                let region = region_seen.iter().next().unwrap().clone();
                let replicas = svcs
                    .values()
                    .filter(|s| {
                        let c = command(s);
                        c.first().map(String::as_str) == Some("fanout")
                            && flag(&c, "--region").as_deref() == Some(&region)
                    })
                    .count();
                assert!(replicas >= 2, "{name}: two fanouts in region {region}");
                assert_eq!(
                    targets.len(),
                    replicas,
                    "{name}: every fanout behind the stream"
                );
                let off = get(body, "proxy_buffering").map(|d| d.args[0].as_str());
                assert_eq!(
                    off,
                    Some("off"),
                    "{name}: the stream needs proxy_buffering off"
                );
                let timeout = get(body, "proxy_read_timeout")
                    .map(|d| seconds(&d.args[0]))
                    .unwrap_or(60);
                assert!(
                    timeout >= 60,
                    "{name}: proxy_read_timeout too short for SSE"
                );
            }
        }
        assert_eq!(region_seen.len(), 1, "{name}: one proxy serves one region");
        let health = &svc["healthcheck"]["test"];
        assert!(!health.is_null(), "{name}: healthcheck");
    }
    assert!(proxies >= 2, "a proxy per region");
}

#[test]
fn every_long_running_service_has_a_healthcheck_and_stateful_ones_named_volumes() {
    let c = compose();
    let named: BTreeSet<String> = c["volumes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for (name, svc) in services(&c) {
        let one_shot = command(svc).first().map(String::as_str) == Some("migrate");
        if one_shot {
            continue;
        }
        let hc = &svc["healthcheck"];
        assert!(
            hc["test"].is_array() && hc["disable"] != json!(true),
            "{name}: needs a healthcheck"
        );
        if is_livecomments(svc) {
            let t = hc["test"].to_string();
            let cmd = command(svc);
            let port = host_port(&flag(&cmd, "--listen").expect("--listen")).1;
            assert!(
                t.contains("/readyz") && t.contains(&format!(":{port}/")),
                "{name}: the healthcheck asks /readyz on --listen's port {port}"
            );
        }
        if image(svc).contains("scylla") {
            let vols = svc["volumes"].to_string();
            assert!(
                named
                    .iter()
                    .any(|v| vols.contains(&format!("\"{v}:/var/lib/scylla"))),
                "{name}: ScyllaDB data on a named volume"
            );
        }
    }
}

fn assert_none(what: &str, found: Findings) {
    assert!(found.is_empty(), "{what}:\n  {}", found.join("\n  "));
}

/// The binary's default of `flag` for `role`, from its `--help`.
fn binary_default(role: &str, flag: &str) -> Option<String> {
    help(role).default.get(flag).cloned()
}

#[test]
fn every_region_runs_two_or_more_ingest_nodes_of_one_definition() {
    assert_none("ingest nodes", check_ingest_nodes(&compose()));
}

#[test]
fn each_proxy_sends_every_path_to_every_node_of_its_role_and_writes_around_a_dead_one() {
    let c = compose();
    let mut proxies = 0;
    for (name, svc) in services(&c) {
        if image(svc).starts_with("nginx") {
            proxies += 1;
            assert_none(name, check_proxy(&c, name, &rendered(name, svc)));
        }
    }
    assert!(proxies >= 2, "a proxy per region");
}

#[test]
fn each_regions_store_is_a_cluster_that_keeps_working_with_one_node_down() {
    let c = compose();
    assert_none("ScyllaDB", check_store(&c, &binary_default));
    // The defaults the check relied on are the binary's.
    assert_eq!(
        binary_default("ingest", "--cql-consistency").as_deref(),
        Some("local_quorum")
    );
    assert!(binary_default("migrate", "--cql-replication").is_some());
}

/// Every rule of `layout` on altered copies of compose.yaml and of a rendered proxy config:
/// each alteration is one a change could make, and the check must name it.
#[test]
fn the_layout_checks_catch_drift() {
    fn expect(what: &str, found: Findings, needle: &str) {
        assert!(
            found.iter().any(|f| f.contains(needle)),
            "{what}: expected a finding with {needle:?}, got:\n  {}",
            found.join("\n  ")
        );
    }
    fn cmd<'a>(c: &'a mut Value, svc: &str) -> &'a mut Vec<Value> {
        c["services"][svc]["command"]
            .as_array_mut()
            .unwrap_or_else(|| panic!("{svc}: command"))
    }
    fn set_flag(c: &mut Value, svc: &str, name: &str, value: &str) {
        let a = cmd(c, svc);
        match a.iter().position(|v| v == name) {
            Some(i) => a[i + 1] = json!(value),
            None => a.extend([json!(name), json!(value)]),
        }
    }
    fn del_flag(c: &mut Value, svc: &str, name: &str) {
        let a = cmd(c, svc);
        let i = a
            .iter()
            .position(|v| v == name)
            .unwrap_or_else(|| panic!("{svc}: no {name}"));
        a.drain(i..i + 2);
    }
    fn svcs_mut(c: &mut Value) -> &mut serde_json::Map<String, Value> {
        c["services"].as_object_mut().unwrap()
    }
    let base = compose();
    let eu_nodes = ["scylla-eu-1", "scylla-eu-2", "scylla-eu-3"];
    let all_nodes = [
        "scylla-eu-1",
        "scylla-eu-2",
        "scylla-eu-3",
        "scylla-us-1",
        "scylla-us-2",
        "scylla-us-3",
    ];
    for n in all_nodes {
        assert!(services(&base).contains_key(n), "compose.yaml has no {n}");
    }
    let ingest = |f: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        f(&mut c);
        check_ingest_nodes(&c)
    };
    let store = |f: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        f(&mut c);
        check_store(&c, &binary_default)
    };

    // Ingest nodes.
    expect(
        "one ingest node",
        ingest(&|c| {
            svcs_mut(c).remove("ingest-eu-2");
        }),
        "region eu: 1 ingest node(s)",
    );
    expect(
        "a per-node flag",
        ingest(&|c| set_flag(c, "ingest-eu-2", "--rate-limit", "5")),
        "ingest-eu-2's `command` differs",
    );
    expect(
        "a per-node variable",
        ingest(&|c| {
            c["services"]["ingest-eu-2"]["environment"]["LIVECOMMENTS_RATE_LIMIT"] = json!("5")
        }),
        "ingest-eu-2's `environment` differs",
    );
    expect(
        "replicas instead of named nodes",
        ingest(&|c| c["services"]["ingest-us-1"]["deploy"] = json!({"replicas": 2})),
        "ingest-us-1: replicated with deploy.replicas",
    );

    // The proxy of region eu.
    let conf = rendered("proxy-eu", &services(&base)["proxy-eu"]);
    assert_none("proxy-eu", check_proxy(&base, "proxy-eu", &conf));
    let edit = |from: &str, to: &str| {
        assert!(conf.contains(from), "proxy-eu's config has no {from:?}");
        check_proxy(&base, "proxy-eu", &conf.replace(from, to))
    };
    expect(
        "an ingest node missing from the upstream",
        edit("server ingest-eu-2:8080 resolve;", ""),
        "/comment goes to {\"ingest-eu-1\"}",
    );
    expect(
        "a fanout missing from the upstream",
        edit("server fanout-eu-2:8080 resolve;", ""),
        "/comments/stream goes to",
    );
    let mut three = base.clone();
    let node = services(&base)["ingest-eu-1"].clone();
    svcs_mut(&mut three).insert("ingest-eu-3".into(), node);
    expect(
        "a third ingest node the upstream does not list",
        check_proxy(&three, "proxy-eu", &conf),
        "\"ingest-eu-3\"}",
    );
    expect(
        "POSTs resent",
        edit(
            "proxy_next_upstream error timeout;",
            "proxy_next_upstream error timeout non_idempotent;",
        ),
        "must not be resent",
    );
    expect(
        "no failover on connection errors",
        edit(
            "proxy_next_upstream error timeout;",
            "proxy_next_upstream timeout;",
        ),
        "lacks `error`",
    );
    expect(
        "no failover at all",
        edit(
            "proxy_next_upstream error timeout;",
            "proxy_next_upstream off;",
        ),
        "lacks `error`",
    );
    expect(
        "a long connect timeout",
        edit("proxy_connect_timeout 1s;", "proxy_connect_timeout 30s;"),
        "proxy_connect_timeout 30s",
    );
    expect(
        "nginx's default connect timeout",
        edit("proxy_connect_timeout 1s;", ""),
        "proxy_connect_timeout 60s",
    );
    expect(
        "a backup node",
        edit(
            "server ingest-eu-2:8080 resolve;",
            "server ingest-eu-2:8080 resolve backup;",
        ),
        "`backup` on ingest-eu-2:8080",
    );
    expect(
        "names resolved only at start",
        edit(
            "server ingest-eu-2:8080 resolve;",
            "server ingest-eu-2:8080;",
        ),
        "ingest-eu-2:8080 without `resolve`",
    );
    expect(
        "resolve without a zone",
        edit("zone ingest 64k;", ""),
        "upstream ingest: `resolve` needs a `zone`",
    );
    let resolver = conf
        .lines()
        .find(|l| l.starts_with("resolver "))
        .expect("proxy-eu: a resolver line");
    expect(
        "resolve without a resolver",
        edit(resolver, ""),
        "without a `resolver`",
    );
    expect(
        "a resolver that does not know the services",
        edit(resolver, "resolver 8.8.8.8;"),
        "only Docker's embedded DNS",
    );
    for old in ["nginx:1.27.2-alpine", "nginx:1.26-alpine", "nginx:latest"] {
        let mut c = base.clone();
        c["services"]["proxy-eu"]["image"] = json!(old);
        expect(
            old,
            check_proxy(&c, "proxy-eu", &conf),
            "needs nginx 1.27.3",
        );
    }

    // The ScyllaDB clusters.
    expect(
        "replication factor 1",
        store(&|c| set_flag(c, "migrate-eu", "--cql-replication", "SimpleStrategy:1")),
        "with one node down LWTs",
    );
    expect(
        "replication factor 2",
        store(&|c| set_flag(c, "migrate-eu", "--cql-replication", "SimpleStrategy:2")),
        "with one node down LWTs",
    );
    expect(
        "no replication flag: the binary's default (SimpleStrategy:1)",
        store(&|c| del_flag(c, "migrate-us", "--cql-replication")),
        "migrate-us: replication factor 1",
    );
    expect(
        "more replicas than nodes",
        store(&|c| set_flag(c, "migrate-eu", "--cql-replication", "SimpleStrategy:5")),
        "replication factor 5 over 3 nodes",
    );
    expect(
        "replicas in a datacenter the nodes are not in",
        store(&|c| {
            set_flag(
                c,
                "migrate-eu",
                "--cql-replication",
                "NetworkTopologyStrategy:eu=3",
            )
        }),
        "places no replica in datacenter1",
    );
    assert_none(
        "NetworkTopologyStrategy in the nodes' datacenter",
        store(&|c| {
            set_flag(
                c,
                "migrate-eu",
                "--cql-replication",
                "NetworkTopologyStrategy:datacenter1=3",
            )
        }),
    );
    expect(
        "a consistency one node down stops",
        store(&|c| set_flag(c, "ingest-eu-1", "--cql-consistency", "all")),
        "ingest-eu-1: --cql-consistency all waits for 3 of 3",
    );
    expect(
        "the same, from the environment",
        store(&|c| {
            c["services"]["reader-us"]["environment"]["LIVECOMMENTS_CQL_CONSISTENCY"] =
                json!("three")
        }),
        "reader-us: --cql-consistency three waits for 3 of 3",
    );
    expect(
        "a contact point missing",
        store(&|c| {
            set_flag(
                c,
                "reader-eu",
                "--cql-nodes",
                "scylla-eu-1:9042,scylla-eu-2:9042",
            )
        }),
        "reader-eu: --cql-nodes lists",
    );
    expect(
        "another region's node as contact point",
        store(&|c| {
            set_flag(
                c,
                "ingest-us-2",
                "--cql-nodes",
                "scylla-us-1:9042,scylla-us-2:9042,scylla-eu-3:9042",
            )
        }),
        "ingest-us-2: --cql-nodes scylla-us-1:9042,scylla-us-2:9042,scylla-eu-3:9042 spans 2 clusters",
    );
    let two_nodes = store(&|c| {
        svcs_mut(c).remove("scylla-eu-3");
        for s in ["migrate-eu", "ingest-eu-1", "ingest-eu-2", "reader-eu"] {
            set_flag(c, s, "--cql-nodes", "scylla-eu-1:9042,scylla-eu-2:9042");
        }
    });
    expect("two nodes", two_nodes.clone(), "2 node(s)");
    expect("two nodes", two_nodes, "replication factor 3 over 2 nodes");
    expect(
        "one node unlike the others",
        store(&|c| set_flag(c, "scylla-eu-2", "--memory", "1G")),
        "scylla-eu-2's command differs",
    );
    expect(
        "a seed outside the cluster",
        store(&|c| {
            for n in eu_nodes {
                set_flag(c, n, "--seeds", "scylla-us-1");
            }
        }),
        "seed scylla-us-1 is not a node of cluster livecomments-eu",
    );
    expect(
        "a node that joins before the seed is up",
        store(&|c| {
            c["services"]["scylla-eu-3"]
                .as_object_mut()
                .unwrap()
                .remove("depends_on");
        }),
        "scylla-eu-3: starts before seed(s)",
    );
    expect(
        "a seed that waits for another node",
        store(&|c| {
            c["services"]["scylla-eu-1"]["depends_on"] =
                json!({"scylla-eu-2": {"condition": "service_healthy"}})
        }),
        "scylla-eu-1: a seed waits for",
    );
    expect(
        "two nodes on one volume",
        store(&|c| {
            c["services"]["scylla-eu-3"]["volumes"] = json!(["scylla-eu-1:/var/lib/scylla"])
        }),
        "share the data volume scylla-eu-1",
    );
    expect(
        "one cluster name for both regions",
        store(&|c| {
            for n in ["scylla-us-1", "scylla-us-2", "scylla-us-3"] {
                set_flag(c, n, "--cluster-name", "livecomments-eu");
            }
        }),
        "share cluster livecomments-eu",
    );
    expect(
        "no cluster name",
        store(&|c| {
            for n in all_nodes {
                del_flag(c, n, "--cluster-name");
            }
        }),
        "no --cluster-name",
    );
    expect(
        "no memory limit",
        store(&|c| {
            for n in eu_nodes {
                del_flag(c, n, "--memory");
            }
        }),
        "scylla-eu-1: no --memory",
    );
    expect(
        "more memory than README.md says",
        store(&|c| {
            for n in all_nodes {
                set_flag(c, n, "--memory", "1G");
            }
        }),
        "take 6144 MiB together",
    );
    expect(
        "small memory outside developer mode",
        store(&|c| {
            for n in eu_nodes {
                set_flag(c, n, "--developer-mode", "0");
            }
        }),
        "refuses to start unless --developer-mode 1",
    );
    expect(
        "no keyspace migration",
        store(&|c| {
            svcs_mut(c).remove("migrate-eu");
        }),
        "region eu: no migrate creates its keyspace",
    );
}
