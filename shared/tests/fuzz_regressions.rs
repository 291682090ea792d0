//! Replays the fuzz corpus that matters in the ordinary test run: every input kept under
//! `fuzz/regressions/<target>/` (inputs that once crashed or broke a property) and the seeds
//! under `fuzz/seeds/<target>/`, through the same property checks the libFuzzer targets run
//! (`fuzz/src/checks.rs`, compiled here with `#[path]`). `scripts/fuzz` copies any new crash
//! into `fuzz/regressions/`, so a crash found once is tested forever.

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(
                r.is_ok(),
                "{} broke a property (see the panic above)",
                f.display()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn input_corpus() {
    assert!(replay("input", checks::input) > 0, "seeds present");
}

#[test]
fn position_corpus() {
    assert!(replay("position", checks::position) > 0);
}

#[test]
fn live_event_corpus() {
    assert!(replay("live_event", checks::live_event) > 0);
}

#[test]
fn requests_corpus() {
    assert!(replay("requests", checks::requests) > 0);
}

/// Hand-written edge cases next to the fuzzer's: offsets that push a `since` past year 9999,
/// huge declared MessagePack lengths, deep nesting.
#[test]
fn edge_cases() {
    for s in [
        "9999-12-31T23:59:59.999-23:59",
        "0000-01-01T00:00:00Z",
        "253402300799999",
        "253402300800000",
        "18446744073709551616",
        "1970-01-01T00:00:00+23:59",
        " 5 ",
        "",
    ] {
        checks::since(s);
        checks::input(s.as_bytes());
    }
    // A map/array/string announcing 4 G entries must fail fast, not allocate.
    for bytes in [
        &b"\xdf\xff\xff\xff\xff"[..],
        b"\xdd\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\x81\xa4type\xa7comment",
        b"\x87\xa4type\xa7comment\xa2id\xdd\xff\xff\xff\xff",
    ] {
        checks::live_event(bytes);
        for sel in 0u8..4 {
            let mut msg = vec![sel];
            msg.extend_from_slice(bytes);
            checks::requests(&msg);
        }
    }
    let deep: Vec<u8> = std::iter::repeat_n(0x91u8, 100_000).collect();
    checks::live_event(&deep);
    checks::position("eu.01JDQ7Z8XK3M4N5P6Q7R8S9T0V~".repeat(40).as_bytes());
}
