//! NATS configs: a parser for the subset the files use, `nats-server -t`, and the
//! supercluster rules of nats/README.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use livecomments_tests::which_nats;
use serde_json::{Map, Value, json};

use crate::compose_file::host_port;

/// A NATS config (the subset these files use: maps, arrays, strings, numbers, `include`),
/// as JSON. Keys are lower-cased, as nats-server treats them.
pub(crate) fn nats_conf(path: &Path) -> Value {
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

pub(crate) struct ConfParser {
    pub(crate) s: Vec<char>,
    pub(crate) i: usize,
    pub(crate) dir: PathBuf,
    pub(crate) file: String,
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

pub(crate) fn nats_server() -> PathBuf {
    which_nats()
}

/// `nats-server -c <file> -t` accepts the file.
pub(crate) fn nats_server_accepts(path: &Path) {
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

pub(crate) fn port_of(listen: &Value) -> u16 {
    match listen {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(s) => host_port(s).1,
        other => panic!("listen {other}"),
    }
}

/// One server's view of the supercluster.
pub(crate) struct NatsServer {
    pub(crate) file: String,
    pub(crate) server_name: String,
    pub(crate) region: String,
    pub(crate) client_port: u16,
    pub(crate) route_port: u16,
    pub(crate) gateway_port: u16,
    pub(crate) routes: Vec<(String, u16)>,
    /// region → gateway URLs `(host, port)`
    pub(crate) gateways: BTreeMap<String, Vec<(String, u16)>>,
}

pub(crate) fn nats_server_of(path: &Path) -> NatsServer {
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
pub(crate) fn check_supercluster(
    servers: &BTreeMap<String, NatsServer>,
    regions: &BTreeSet<String>,
) {
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
