//! compose.yaml read as compose reads it (YAML with aliases, by yaml-rust2, and `<<` merges)
//! and the parts of a service the checks look at.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value, json};
use yaml_rust2::{Yaml, YamlLoader};

use crate::repo;

/// YAML → JSON, with aliases resolved (by the loader) and `<<` merge keys applied as compose
/// does: keys of the mapping itself win over merged ones.
pub(crate) fn to_json(y: &Yaml) -> Value {
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

pub(crate) fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("compose.yaml")).expect("read compose.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("compose.yaml is YAML");
    assert_eq!(docs.len(), 1, "compose.yaml: one document");
    to_json(&docs[0])
}

pub(crate) fn services(c: &Value) -> &Map<String, Value> {
    c["services"].as_object().expect("compose.yaml: services")
}

pub(crate) fn image(svc: &Value) -> &str {
    svc["image"].as_str().unwrap_or("")
}

pub(crate) fn is_livecomments(svc: &Value) -> bool {
    image(svc).starts_with("livecomments") || !svc["build"].is_null()
}

/// `command` as compose runs it: a list, or a string split on whitespace.
pub(crate) fn command(svc: &Value) -> Vec<String> {
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
pub(crate) fn environment(svc: &Value) -> BTreeMap<String, String> {
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
pub(crate) fn flag(cmd: &[String], name: &str) -> Option<String> {
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
pub(crate) fn host_port(url: &str) -> (String, u16) {
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
pub(crate) fn mounted(svc: &Value, container_path: &str) -> Option<PathBuf> {
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

/// A value that stands for `${VAR...}` interpolations (compose fills them from the host).
pub(crate) fn interpolated(v: &str) -> Option<String> {
    if !v.contains("${") && !v.contains('$') {
        return None;
    }
    Some("interpolated-value-0123456789abcdef".into())
}
