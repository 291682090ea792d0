//! nginx configs: directives parsed, locations resolved the way nginx resolves them.

/// An nginx directive: name, arguments, and the block's directives if it has one.
#[derive(Debug, Clone)]
pub(crate) struct Directive {
    pub(crate) name: String,
    pub(crate) args: Vec<String>,
    pub(crate) block: Option<Vec<Directive>>,
}

pub(crate) fn nginx_conf(text: &str) -> Vec<Directive> {
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

/// The location nginx picks for `path`, by nginx's rules: an exact match; else the longest
/// prefix, unless it is a plain prefix (no `^~`) and a regex location matches (the first one
/// in the file, `~` case-sensitive, `~*` not).
pub(crate) fn location<'a>(server: &'a [Directive], path: &str) -> &'a Directive {
    let locs: Vec<&Directive> = server.iter().filter(|d| d.name == "location").collect();
    if let Some(exact) = locs
        .iter()
        .find(|l| l.args.len() == 2 && l.args[0] == "=" && l.args[1] == path)
    {
        return exact;
    }
    let is_regex = |l: &Directive| l.args.first().is_some_and(|a| a == "~" || a == "~*");
    let prefix = locs
        .iter()
        .filter(|l| {
            l.args
                .first()
                .is_some_and(|a| a != "=" && !a.starts_with('@'))
                && !is_regex(l)
        })
        .filter(|l| path.starts_with(l.args.last().unwrap().as_str()))
        .max_by_key(|l| l.args.last().unwrap().len());
    if let Some(p) = prefix
        && p.args[0] == "^~"
    {
        return p;
    }
    let regex = locs.iter().find(|l| {
        is_regex(l) && {
            let pattern = if l.args[0] == "~*" {
                format!("(?i){}", l.args[1])
            } else {
                l.args[1].clone()
            };
            regex::Regex::new(&pattern)
                .unwrap_or_else(|e| panic!("location {pattern}: {e}"))
                .is_match(path)
        }
    });
    regex
        .or(prefix)
        .copied()
        .unwrap_or_else(|| panic!("no location matches {path}"))
}

pub(crate) fn get<'a>(ds: &'a [Directive], name: &str) -> Option<&'a Directive> {
    ds.iter().find(|d| d.name == name)
}

pub(crate) fn seconds(v: &str) -> u64 {
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

/// The config an nginx service of compose.yaml runs: the file it mounts under /etc/nginx/,
/// rendered as the image renders /etc/nginx/templates/*.template (each `${VAR}` of the
/// service's environment replaced; nginx's own `$host` etc. stay).
pub(crate) fn rendered(name: &str, svc: &serde_json::Value) -> String {
    use crate::compose_file::{environment, mounted};
    let target = svc["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .filter_map(|v| v.split(':').nth(1))
        .find(|t| t.starts_with("/etc/nginx/"))
        .unwrap_or_else(|| panic!("{name}: mounts no nginx config"))
        .to_string();
    let path = mounted(svc, &target).unwrap();
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{name}: {}: {e}", path.display()));
    if target.ends_with(".template") {
        for (k, v) in &environment(svc) {
            text = text.replace(&format!("${{{k}}}"), v);
        }
        assert!(
            !text.contains("${"),
            "{name}: a template variable is not set"
        );
    }
    text
}
