//! The invariants of ARCHITECTURE.md that are absences, checked on the source tree (as
//! rust-analyzer's `tidy` tests do), so that breaking one fails a test instead of a review.
//!
//! The store is a crate of its own (`livecomments-store`), so what may write comments is
//! visible in each crate's dependencies; inside this binary crate, these checks keep the
//! fanout away from it, NATS behind `bus/`, and the SSE wire format in `fanout/sse.rs`.
//! Making the fanout a crate of its own would check the first one in the compiler too, but
//! would pull `bus`, `metrics` and `reader::History` out with it; not worth it at 2,000 lines.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no sources under {}", dir.display());
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of a file without its comments (`//` to the end of the line), so that a doc
/// comment may name what the code must not use.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files under `src/` whose code contains `needle`, relative to `src/`.
fn users_of(needle: &str) -> Vec<String> {
    let root = src();
    sources(&root)
        .into_iter()
        .filter(|p| code(p).contains(needle))
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect()
}

fn is_fanout(file: &str) -> bool {
    file.starts_with("fanout/") || file == "http/stream.rs" || file == "http/sse_conn.rs"
}

#[test]
fn the_fanout_never_opens_a_store() {
    // It reads history through `reader::History`, which a process without a store (the
    // fanout role) serves over NATS.
    let users = users_of("livecomments_store");
    assert!(
        !users.is_empty(),
        "the check looks for the store crate's name"
    );
    let fanout: Vec<_> = users.iter().filter(|f| is_fanout(f)).collect();
    assert!(fanout.is_empty(), "fanout code uses the store: {fanout:?}");
}

#[test]
fn only_the_bus_module_touches_nats() {
    let users = users_of("async_nats");
    assert!(
        !users.is_empty(),
        "the check looks for the NATS crate's name"
    );
    let outside: Vec<_> = users.iter().filter(|f| !f.starts_with("bus/")).collect();
    assert!(outside.is_empty(), "NATS used outside bus/: {outside:?}");
}

#[test]
fn the_sse_wire_format_lives_in_one_module() {
    for line in ["event: ", "data: ", "retry: ", "id: "] {
        for quote in ["\"", "b\""] {
            let needle = format!("{quote}{line}");
            let outside: Vec<_> = users_of(&needle)
                .into_iter()
                .filter(|f| f != "fanout/sse.rs")
                .collect();
            assert!(
                outside.is_empty(),
                "SSE framing {needle:?} outside fanout/sse.rs: {outside:?}"
            );
        }
    }
    assert!(code(&src().join("fanout/sse.rs")).contains("\"event: "));
}

/// `[dependencies]` of a crate's manifest, by name.
fn dependencies(manifest: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && let Some((name, _)) = line.split_once(['=', '.']) {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                out.push(name.to_string());
            }
        }
    }
    assert!(
        !out.is_empty(),
        "no [dependencies] in {}",
        manifest.display()
    );
    out
}

#[test]
fn shared_does_no_io_and_the_store_never_talks_to_the_bus_or_http() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let io = [
        "tokio",
        "async-nats",
        "scylla",
        "redb",
        "axum",
        "hyper",
        "reqwest",
    ];
    let shared = dependencies(&root.join("shared/Cargo.toml"));
    let found: Vec<_> = shared.iter().filter(|d| io.contains(&d.as_str())).collect();
    assert!(found.is_empty(), "shared depends on I/O crates: {found:?}");

    let store = dependencies(&root.join("services/store/Cargo.toml"));
    assert!(store.iter().any(|d| d == "redb"), "{store:?}");
    let found: Vec<_> = store
        .iter()
        .filter(|d| ["async-nats", "axum", "hyper", "livecomments"].contains(&d.as_str()))
        .collect();
    assert!(found.is_empty(), "the store depends on {found:?}");
}
