//! What `livecomments <role> --help` says the binary accepts.

use std::collections::BTreeMap;
use std::process::Command;

use livecomments_tests::bin;

/// What `livecomments <role> --help` accepts: every `--flag`, whether it takes a value, the
/// flag of every `[env: NAME]`, and every `[default: VALUE]` by flag.
pub(crate) struct Help {
    pub(crate) takes_value: BTreeMap<String, bool>,
    pub(crate) env_flag: BTreeMap<String, String>,
    pub(crate) default: BTreeMap<String, String>,
}

pub(crate) fn help(role: &str) -> Help {
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
        default: BTreeMap::new(),
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
        if let Some(i) = line.find("[default: ") {
            let value = line[i + 10..].split(']').next().unwrap_or("").to_string();
            let f = current.clone().expect("[default: ...] before any flag");
            h.default.insert(f, value);
        }
    }
    assert!(
        h.takes_value.contains_key("--listen") && h.env_flag.contains_key("LIVECOMMENTS_LISTEN"),
        "could not read `livecomments {role} --help`:\n{text}"
    );
    h
}
