//! `compose.yaml` kept in step with the real binary, the NATS configs and the proxy config.
//!
//! No Docker engine is needed: the file is parsed, every `livecomments` command is handed to the
//! real binary's argument parser (`livecomments <command...> --help` exits 0 only when every
//! flag exists and every value parses), every `LIVECOMMENTS_*` variable must be listed by
//! `livecomments <role> --help`, every NATS config is checked by `nats-server -t` and for the
//! supercluster rules (nats/README.md), and the nginx routes are resolved the way nginx does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use livecomments_tests::{ClosedPort, Server, bin, which_nats};
use serde_json::{Map, Value, json};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------- compose.yaml

/// YAML → JSON, with aliases resolved (by the loader) and `<<` merge keys applied as compose
/// does: keys of the mapping itself win over merged ones.
fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Hash(h) => {
            let mut own = Map::new();
            let mut merged = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("unsupported mapping key {other:?}"),
                };
                if key == "<<" {
                    let sources = match v {
                        Yaml::Array(a) => a.iter().map(to_json).collect(),
                        other => vec![to_json(other)],
                    };
                    for src in sources {
                        let Value::Object(m) = src else {
                            panic!("`<<` must merge a mapping")
                        };
                        for (k, v) in m {
                            merged.entry(k).or_insert(v);
                        }
                    }
                } else {
                    own.insert(key, to_json(v));
                }
            }
            for (k, v) in merged {
                own.entry(k).or_insert(v);
            }
            Value::Object(own)
        }
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::String(s) => json!(s),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => json!(r),
        Yaml::Boolean(b) => json!(b),
        Yaml::Null => Value::Null,
        other => panic!("unsupported YAML node {other:?}"),
    }
}

fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("compose.yaml")).expect("read compose.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("compose.yaml is YAML");
    assert_eq!(docs.len(), 1, "compose.yaml: one document");
    to_json(&docs[0])
}

fn services(c: &Value) -> &Map<String, Value> {
    c["services"].as_object().expect("compose.yaml: services")
}

fn image(svc: &Value) -> &str {
    svc["image"].as_str().unwrap_or("")
}

fn is_livecomments(svc: &Value) -> bool {
    image(svc).starts_with("livecomments") || !svc["build"].is_null()
}

/// `command` as compose runs it: a list, or a string split on whitespace.
fn command(svc: &Value) -> Vec<String> {
    match &svc["command"] {
        Value::Array(a) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Null => Vec::new(),
        other => panic!("unsupported command {other}"),
    }
}

/// `environment` as a map (compose allows a mapping or a list of `K=V`).
fn environment(svc: &Value) -> BTreeMap<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match &svc["environment"] {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Value::Array(a) => a
            .iter()
            .map(|v| {
                let s = scalar(v);
                let (k, v) = s.split_once('=').unwrap_or((&s, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The value of `--flag v` or `--flag=v` in a command (the last one wins, as with clap).
fn flag(cmd: &[String], name: &str) -> Option<String> {
    let mut found = None;
    for (i, a) in cmd.iter().enumerate() {
        if a == name {
            found = cmd.get(i + 1).cloned();
        } else if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            found = Some(v.to_string());
        }
    }
    found
}

/// `(host, port)` of `scheme://host:port` or `host:port`.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.trim_end_matches('/');
    let (h, p) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url}: no port"));
    (
        h.to_string(),
        p.parse().unwrap_or_else(|_| panic!("{url}: bad port")),
    )
}

/// Host path of a file a service mounts at `container_path` (bind mounts `./host:/container`).
fn mounted(svc: &Value, container_path: &str) -> Option<PathBuf> {
    for v in svc["volumes"].as_array().into_iter().flatten() {
        let (src, dst) = match v {
            Value::String(s) => {
                let mut parts = s.split(':');
                (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                )
            }
            Value::Object(m) => (
                m.get("source")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                m.get("target")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
            _ => continue,
        };
        if !src.starts_with('.') && !src.starts_with('/') {
            continue; // a named volume
        }
        let dst = dst.trim_end_matches('/');
        if container_path == dst {
            return Some(repo().join(&src));
        }
        if let Some(rest) = container_path.strip_prefix(&format!("{dst}/")) {
            return Some(repo().join(&src).join(rest));
        }
    }
    None
}

// ------------------------------------------------------------------------------ the real binary

/// What `livecomments <role> --help` accepts: every `--flag`, whether it takes a value, and the
/// flag of every `[env: NAME]`.
struct Help {
    takes_value: BTreeMap<String, bool>,
    env_flag: BTreeMap<String, String>,
}

fn help(role: &str) -> Help {
    let out = Command::new(bin())
        .args([role, "--help"])
        .output()
        .expect("run livecomments --help");
    assert!(
        out.status.success(),
        "`livecomments {role} --help` failed: `{role}` is not a subcommand of the binary\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut h = Help {
        takes_value: BTreeMap::new(),
        env_flag: BTreeMap::new(),
    };
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        let t = t
            .strip_prefix('-')
            .filter(|r| !r.starts_with('-'))
            .and_then(|r| r.split_once(", "))
            .map_or(t, |(_, rest)| rest);
        if let Some(rest) = t.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let after = &rest[name.len()..];
            h.takes_value
                .insert(format!("--{name}"), after.trim_start().starts_with('<'));
            current = Some(format!("--{name}"));
        }
        if let Some(i) = line.find("[env: ") {
            let name: String = line[i + 6..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let f = current.clone().expect("[env: ...] before any flag");
            h.env_flag.insert(name, f);
        }
    }
    assert!(
        h.takes_value.contains_key("--listen") && h.env_flag.contains_key("LIVECOMMENTS_LISTEN"),
        "could not read `livecomments {role} --help`:\n{text}"
    );
    h
}

/// A value that stands for `${VAR...}` interpolations (compose fills them from the host).
fn interpolated(v: &str) -> Option<String> {
    if !v.contains("${") && !v.contains('$') {
        return None;
    }
    Some("interpolated-value-0123456789abcdef".into())
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

// ------------------------------------------------------------------------------------ NATS confs

/// A NATS config (the subset these files use: maps, arrays, strings, numbers, `include`),
/// as JSON. Keys are lower-cased, as nats-server treats them.
fn nats_conf(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut p = ConfParser {
        s: text.chars().collect(),
        i: 0,
        dir: path.parent().unwrap().to_path_buf(),
        file: path.display().to_string(),
    };
    let mut m = Map::new();
    p.entries(&mut m, None);
    Value::Object(m)
}

struct ConfParser {
    s: Vec<char>,
    i: usize,
    dir: PathBuf,
    file: String,
}

impl ConfParser {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }
    fn fail(&self, what: &str) -> ! {
        let line = self.s[..self.i.min(self.s.len())]
            .iter()
            .filter(|c| **c == '\n')
            .count()
            + 1;
        panic!("{}:{line}: {what}", self.file)
    }
    /// Skips whitespace, `,`/`;` separators and comments.
    fn skip(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() || c == ',' || c == ';' {
                self.i += 1;
            } else if c == '#' || (c == '/' && self.s.get(self.i + 1) == Some(&'/')) {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.i += 1;
                }
            } else {
                break;
            }
        }
    }
    fn word(&mut self, stop: &[char]) -> String {
        if let Some(q @ ('"' | '\'')) = self.peek() {
            self.i += 1;
            let start = self.i;
            while self.peek().is_some_and(|c| c != q) {
                self.i += 1;
            }
            if self.peek().is_none() {
                self.fail("unterminated string");
            }
            let w: String = self.s[start..self.i].iter().collect();
            self.i += 1;
            return w;
        }
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| !c.is_whitespace() && !stop.contains(&c))
        {
            self.i += 1;
        }
        if start == self.i {
            self.fail("expected a word");
        }
        self.s[start..self.i].iter().collect()
    }
    fn entries(&mut self, m: &mut Map<String, Value>, close: Option<char>) {
        loop {
            self.skip();
            match self.peek() {
                None if close.is_none() => return,
                None => self.fail("unexpected end of file"),
                Some(c) if Some(c) == close => {
                    self.i += 1;
                    return;
                }
                _ => {}
            }
            let key = self
                .word(&[':', '=', '{', '}', ',', ';', '#'])
                .to_lowercase();
            if key == "include" {
                while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
                    self.i += 1;
                }
                let file = self.word(&[',', ';', '#', '}']);
                let inc = nats_conf(&self.dir.join(&file));
                for (k, v) in inc.as_object().unwrap() {
                    m.insert(k.clone(), v.clone());
                }
                continue;
            }
            while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
                self.i += 1;
            }
            if matches!(self.peek(), Some(':' | '=')) {
                self.i += 1;
            }
            let v = self.value();
            m.insert(key, v);
        }
    }
    fn value(&mut self) -> Value {
        while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
            self.i += 1;
        }
        match self.peek() {
            Some('{') => {
                self.i += 1;
                let mut m = Map::new();
                self.entries(&mut m, Some('}'));
                Value::Object(m)
            }
            Some('[') => {
                self.i += 1;
                let mut a = Vec::new();
                loop {
                    self.skip();
                    match self.peek() {
                        Some(']') => {
                            self.i += 1;
                            return Value::Array(a);
                        }
                        None => self.fail("unterminated array"),
                        _ => a.push(self.value()),
                    }
                }
            }
            None => self.fail("missing value"),
            _ => {
                let w = self.word(&[',', ';', '#', '}', ']']);
                match w.as_str() {
                    "true" | "yes" | "on" => json!(true),
                    "false" | "no" | "off" => json!(false),
                    _ => w.parse::<i64>().map_or(json!(w), |n| json!(n)),
                }
            }
        }
    }
}

fn nats_server() -> PathBuf {
    which_nats()
}

/// `nats-server -c <file> -t` accepts the file.
fn nats_server_accepts(path: &Path) {
    let out = Command::new(nats_server())
        .arg("-c")
        .arg(path)
        .arg("-t")
        .output()
        .expect("run nats-server -t");
    assert!(
        out.status.success(),
        "nats-server rejects {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn port_of(listen: &Value) -> u16 {
    match listen {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(s) => host_port(s).1,
        other => panic!("listen {other}"),
    }
}

/// One server's view of the supercluster.
struct NatsServer {
    file: String,
    server_name: String,
    region: String,
    client_port: u16,
    route_port: u16,
    gateway_port: u16,
    routes: Vec<(String, u16)>,
    /// region → gateway URLs `(host, port)`
    gateways: BTreeMap<String, Vec<(String, u16)>>,
}

fn nats_server_of(path: &Path) -> NatsServer {
    nats_server_accepts(path);
    let c = nats_conf(path);
    let file = path.display().to_string();
    let s = |v: &Value, what: &str| {
        v.as_str()
            .unwrap_or_else(|| panic!("{file}: {what} missing"))
            .to_string()
    };
    let cluster_name = s(&c["cluster"]["name"], "cluster.name");
    let gateway_name = s(&c["gateway"]["name"], "gateway.name");
    assert_eq!(
        cluster_name, gateway_name,
        "{file}: cluster.name must equal gateway.name"
    );
    let mut gateways = BTreeMap::new();
    for g in c["gateway"]["gateways"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: gateway.gateways missing"))
    {
        let name = s(&g["name"], "gateways[].name");
        let urls: Vec<Value> = match (&g["urls"], &g["url"]) {
            (Value::Array(a), _) => a.clone(),
            (_, u @ Value::String(_)) => vec![u.clone()],
            _ => panic!("{file}: gateway {name} has no url"),
        };
        let urls = urls
            .iter()
            .map(|u| host_port(u.as_str().expect("url")))
            .collect();
        assert!(
            gateways.insert(name.clone(), urls).is_none(),
            "{file}: gateway {name} twice"
        );
    }
    let routes = c["cluster"]["routes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| host_port(u.as_str().expect("route")))
                .collect()
        })
        .unwrap_or_default();
    NatsServer {
        server_name: s(&c["server_name"], "server_name"),
        region: cluster_name,
        client_port: c.get("listen").map_or(4222, port_of),
        route_port: port_of(&c["cluster"]["listen"]),
        gateway_port: port_of(&c["gateway"]["listen"]),
        routes,
        gateways,
        file,
    }
}

/// The supercluster rules of nats/README.md, for servers addressed by `host`.
fn check_supercluster(servers: &BTreeMap<String, NatsServer>, regions: &BTreeSet<String>) {
    let names: BTreeSet<_> = servers.values().map(|s| s.server_name.clone()).collect();
    assert_eq!(names.len(), servers.len(), "server_name must be unique");
    let found: BTreeSet<_> = servers.values().map(|s| s.region.clone()).collect();
    assert_eq!(&found, regions, "the regions of the NATS clusters");
    for s in servers.values() {
        let listed: BTreeSet<_> = s.gateways.keys().cloned().collect();
        assert_eq!(
            &listed, regions,
            "{}: the gateway block must list every region",
            s.file
        );
        for (region, urls) in &s.gateways {
            for (host, port) in urls {
                let t = servers.get(host).unwrap_or_else(|| {
                    panic!("{}: gateway URL host {host} is no NATS server", s.file)
                });
                assert_eq!(
                    &t.region, region,
                    "{}: {host} is not in region {region}",
                    s.file
                );
                assert_eq!(*port, t.gateway_port, "{}: {host}'s gateway port", s.file);
            }
            let in_region: BTreeSet<_> = servers
                .iter()
                .filter(|(_, t)| &t.region == region)
                .map(|(h, _)| h.clone())
                .collect();
            let listed: BTreeSet<_> = urls.iter().map(|(h, _)| h.clone()).collect();
            assert_eq!(
                listed, in_region,
                "{}: gateway {region} lists its servers",
                s.file
            );
        }
        for (host, port) in &s.routes {
            let t = servers
                .get(host)
                .unwrap_or_else(|| panic!("{}: route host {host} is no NATS server", s.file));
            assert_eq!(
                t.region, s.region,
                "{}: route to another region's {host}",
                s.file
            );
            assert_eq!(*port, t.route_port, "{}: {host}'s route port", s.file);
        }
        let peers = servers.values().filter(|t| t.region == s.region).count();
        if peers > 1 {
            assert!(
                !s.routes.is_empty(),
                "{}: a cluster of {peers} needs routes",
                s.file
            );
        }
    }
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

// ------------------------------------------------------------------------------------ the proxy

/// An nginx directive: name, arguments, and the block's directives if it has one.
#[derive(Debug, Clone)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Option<Vec<Directive>>,
}

fn nginx_conf(text: &str) -> Vec<Directive> {
    // Tokens: words, quoted strings, `{`, `}`, `;`; `#` comments.
    let mut toks = Vec::new();
    let cs: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < cs.len() && cs[i] != '\n' {
                i += 1;
            }
        } else if matches!(c, '{' | '}' | ';') {
            toks.push(c.to_string());
            i += 1;
        } else if c == '"' || c == '\'' {
            let start = i + 1;
            i += 1;
            while i < cs.len() && cs[i] != c {
                i += 1;
            }
            toks.push(cs[start..i].iter().collect());
            i += 1;
        } else {
            let start = i;
            while i < cs.len() && !cs[i].is_whitespace() && !matches!(cs[i], '{' | '}' | ';') {
                i += 1;
            }
            toks.push(cs[start..i].iter().collect());
        }
    }
    fn block(toks: &[String], i: &mut usize) -> Vec<Directive> {
        let mut out = Vec::new();
        while *i < toks.len() {
            if toks[*i] == "}" {
                *i += 1;
                return out;
            }
            let name = toks[*i].clone();
            *i += 1;
            let mut args = Vec::new();
            while *i < toks.len() && toks[*i] != ";" && toks[*i] != "{" {
                args.push(toks[*i].clone());
                *i += 1;
            }
            assert!(*i < toks.len(), "nginx config: `{name}` not terminated");
            let b = if toks[*i] == "{" {
                *i += 1;
                Some(block(toks, i))
            } else {
                *i += 1;
                None
            };
            out.push(Directive {
                name,
                args,
                block: b,
            });
        }
        out
    }
    let mut i = 0;
    block(&toks, &mut i)
}

/// The location nginx picks for `path`: exact match, else the longest prefix (regex locations
/// are not used here and are refused, so the answer is certain).
fn location<'a>(server: &'a [Directive], path: &str) -> &'a Directive {
    let locs: Vec<&Directive> = server.iter().filter(|d| d.name == "location").collect();
    for l in &locs {
        assert!(
            !l.args.iter().any(|a| a == "~" || a == "~*"),
            "regex locations are not checked: use exact or prefix locations"
        );
        if l.args.len() == 2 && l.args[0] == "=" && l.args[1] == path {
            return l;
        }
    }
    locs.into_iter()
        .filter(|l| {
            l.args
                .first()
                .is_some_and(|a| a != "=" && !a.starts_with('@'))
        })
        .filter(|l| path.starts_with(l.args.last().unwrap().as_str()))
        .max_by_key(|l| l.args.last().unwrap().len())
        .unwrap_or_else(|| panic!("no location matches {path}"))
}

fn get<'a>(ds: &'a [Directive], name: &str) -> Option<&'a Directive> {
    ds.iter().find(|d| d.name == name)
}

fn seconds(v: &str) -> u64 {
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {v}"));
    match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        other => panic!("duration unit {other}"),
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
        let env = environment(svc);
        // The nginx image renders /etc/nginx/templates/*.template with the environment.
        let vols: Vec<String> = svc["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let target = vols
            .iter()
            .filter_map(|v| v.split(':').nth(1))
            .find(|t| t.starts_with("/etc/nginx/"))
            .unwrap_or_else(|| panic!("{name}: mounts no nginx config"));
        let path = mounted(svc, target).unwrap();
        let mut text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", path.display()));
        if target.ends_with(".template") {
            for (k, v) in &env {
                text = text.replace(&format!("${{{k}}}"), v);
            }
            assert!(
                !text.contains("${"),
                "{name}: a template variable is not set"
            );
        }
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
