//! Properties checked on every fuzz input. Each function takes raw bytes, must never panic on
//! its own account, and panics (an `assert!`) only when a property of the parsers is broken.
//!
//! Compiled twice: by the fuzz crate (the libFuzzer targets call these) and by
//! `shared/tests/fuzz_regressions.rs` (`#[path]`), which replays every file kept under
//! `fuzz/regressions/<target>/` in the ordinary `cargo test --workspace`. So it may use only
//! `livecomments_shared`, `serde_json` and `rmp_serde` (dependencies of both).

use livecomments_shared::wire::{
    self, DeleteReply, DeleteRequest, LiveEvent, SinceReply, SinceRequest,
};
use livecomments_shared::{Comment, CommentInput, Position, id, time, validate};

/// The greatest `since` in integer form (end of year 9999), as `time::parse_since` documents.
pub const SINCE_MAX_MS: i64 = 253_402_300_799_999;

/// Target `input`: query values and request bodies, as the HTTP handlers see them.
/// The bytes are tried as a JSON `POST /comment` body, and (as UTF-8) as a whole query value
/// and as each `&`-separated `k=v` value: post_id, region, text, Idempotency-Key, user id and
/// `since`.
pub fn input(data: &[u8]) {
    body(data);
    let s = String::from_utf8_lossy(data);
    field(&s);
    for pair in s.split('&') {
        let v = pair.split_once('=').map_or(pair, |(_, v)| v);
        field(v);
    }
}

/// A `POST /comment` body: JSON into [`CommentInput`], then the handler's validation.
pub fn body(data: &[u8]) {
    let Ok(input) = serde_json::from_slice::<CommentInput>(data) else {
        return;
    };
    if let Ok(t) = validate::text(&input.text) {
        text_ok(&t);
    }
    if let Some(m) = &input.metadata
        && validate::metadata(m).is_ok()
    {
        assert!(m.len() <= validate::METADATA_MAX_ENTRIES);
        for (k, v) in m {
            let kl = k.chars().count();
            assert!((1..=validate::METADATA_KEY_MAX).contains(&kl));
            assert!(v.chars().count() <= validate::METADATA_VALUE_MAX);
        }
    }
}

/// One query or header value through every validator that could receive it.
pub fn field(v: &str) {
    if validate::post_id(v).is_ok() {
        assert!((1..=validate::POST_ID_MAX).contains(&v.len()), "{v:?}");
        assert!(
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{v:?}"
        );
        subject_ok(&wire::live_subject("eu", v));
        subject_ok(&wire::live_subject_all_regions(v).replace('*', "x"));
    }
    if validate::is_region(v) {
        assert!(v.len() <= validate::REGION_MAX);
        subject_ok(&wire::live_subject(v, "p"));
        subject_ok(&wire::since_subject(v));
    }
    if let Ok(t) = validate::text(v) {
        text_ok(&t);
    }
    if validate::idempotency_key(v).is_ok() {
        assert!(
            v.len() <= validate::IDEMPOTENCY_KEY_MAX && v.bytes().all(|b| b.is_ascii_graphic()),
            "{v:?}"
        );
    }
    if validate::user_id(v) {
        assert!(v.len() <= validate::USER_ID_MAX && !v.chars().any(char::is_control));
    }
    since(v);
    // A `before`/`after` cursor or a comment id in a path.
    if id::is_valid(v) {
        assert_eq!(v.len(), id::ID_LEN);
        assert!(id::millis_of(v).is_some());
    }
}

/// The `since` parser (RFC 3339 or integer milliseconds).
pub fn since(v: &str) {
    let Some(ms) = time::parse_since(v) else {
        return;
    };
    assert!(ms >= 0, "{v:?} -> {ms}");
    // It becomes a ULID bound (`id::max_at`): the time must fit a ULID's 48 bits.
    assert!(ms < 1 << 48, "{v:?} -> {ms}");
    let bound = id::max_at(ms);
    assert!(id::is_valid(&bound), "{v:?} -> {bound}");
    assert_eq!(id::millis_of(&bound), Some(ms), "{v:?}");
    if ms <= SINCE_MAX_MS {
        // What the API writes (`timestamp`) is accepted back as `since` at the same instant.
        let s = time::format_millis(ms);
        assert_eq!(time::parse_since(&s), Some(ms), "{v:?} -> {s}");
        assert_eq!(time::parse_since(&ms.to_string()), Some(ms), "{v:?}");
    }
}

fn text_ok(t: &str) {
    assert_eq!(t, t.trim());
    assert!(!t.is_empty());
    assert!(t.chars().count() <= validate::TEXT_MAX_CHARS);
    assert!(
        !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
        "{t:?}"
    );
    assert_eq!(
        validate::text(t).as_deref(),
        Ok(t),
        "validation is idempotent"
    );
}

/// A subject built from validated parts has exactly the tokens the contract names and no
/// wildcard or whitespace that would change its meaning.
fn subject_ok(s: &str) {
    assert!(
        !s.bytes()
            .any(|b| b == b'*' || b == b'>' || b.is_ascii_whitespace() || b == 0),
        "{s:?}"
    );
    assert!(s.split('.').all(|t| !t.is_empty()), "{s:?}");
    let n = s.split('.').count();
    assert!(n == 3 || n == 4, "{s:?}");
}

/// Target `position`: the resume token of `Last-Event-ID` / `?last_event_id=`.
pub fn position(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(p) = Position::parse(s) else { return };
    assert!(!p.is_empty());
    let regions: Vec<(String, String)> = p
        .ids()
        .map(|(r, i)| (r.to_string(), i.to_string()))
        .collect();
    assert!(p.regions().count() <= livecomments_shared::position::MAX_REGIONS);
    for (r, i) in &regions {
        assert!(validate::is_region(r), "{r:?}");
        assert!(id::is_valid(i), "{i:?}");
        assert!(p.covers(r, i));
    }
    // Round trip: the text the stream writes as `id:` parses to the same position.
    let text = p.to_string();
    assert!(text.len() <= s.len(), "{s:?} -> {text:?}");
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
        "{text:?}"
    );
    assert_eq!(
        Position::parse(&text).as_ref(),
        Some(&p),
        "{s:?} -> {text:?}"
    );
    // Advancing to what it already covers changes nothing; merging with itself neither.
    let mut q = p.clone();
    for (r, i) in &regions {
        assert!(!q.advance(r, i));
    }
    q.merge(&p);
    assert_eq!(q, p);
}

/// The fanout's sanity check of a decoded live event, built from the same shared validators
/// as `livecomments::bus::nats::event_is_sane` (which the server crate keeps next to its NATS
/// client; the fuzz crate does not link the server). It reads the event's fields by name, as
/// a client in another language would, so it holds whatever Rust type carries them.
pub fn event_is_sane(ev: &LiveEvent) -> bool {
    let v = serde_json::to_value(ev).expect("a decoded event serialises");
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let common = id::is_valid(s("id"))
        && validate::is_region(s("region"))
        && validate::post_id(s("post_id")).is_ok();
    match s("type") {
        "comment" => common && s("text").len() <= 4 * validate::TEXT_MAX_CHARS,
        "delete" => common,
        _ => false,
    }
}

/// Target `live_event`: a message on `comments.live.<region>.<post_id>` from anyone.
pub fn live_event(data: &[u8]) {
    let Ok(ev) = wire::decode::<LiveEvent>(data) else {
        return;
    };
    let again = wire::encode(&ev).expect("a decoded event encodes");
    assert_eq!(
        wire::decode::<LiveEvent>(&again).ok().as_ref(),
        Some(&ev),
        "round trip"
    );
    let _ = ev.post_id();
    if !event_is_sane(&ev) {
        return;
    }
    // What the fanout does with a sane event: advance a position, render an SSE frame.
    let v = serde_json::to_value(&ev).unwrap();
    if v["type"] == "comment" {
        let c: Comment =
            serde_json::from_value(v).expect("a live comment carries every field of a comment");
        comment_ok(&c);
    } else {
        subject_ok(&wire::live_subject(
            v["region"].as_str().unwrap(),
            ev.post_id(),
        ));
        let data =
            serde_json::to_string(&serde_json::json!({"id": v["id"], "post_id": v["post_id"]}))
                .unwrap();
        assert!(!data.contains(['\n', '\r']));
    }
}

/// A comment that passed the sanity check can be delivered: its position round-trips and its
/// JSON is one line (a raw newline would end the SSE `data:` field and inject events).
fn comment_ok(c: &Comment) {
    subject_ok(&wire::live_subject(&c.region, &c.post_id));
    let p = wire::position_after(Position::new(), c);
    assert_eq!(Position::parse(&p.to_string()), Some(p.clone()));
    let _ = c.timestamp_millis();
    let json = serde_json::to_string(c).expect("comment JSON");
    assert!(!json.contains(['\n', '\r']), "{json:?}");
    let back: Comment = serde_json::from_str(&json).expect("comment JSON parses back");
    assert_eq!(&back, c);
}

fn comment_is_sane(c: &Comment) -> bool {
    id::is_valid(&c.id)
        && validate::is_region(&c.region)
        && validate::post_id(&c.post_id).is_ok()
        && c.text.len() <= 4 * validate::TEXT_MAX_CHARS
}

/// Target `requests`: the request/reply messages between roles. The first byte picks the type
/// (modulo 4): `SinceRequest`, `SinceReply` (`comments.since.<region>`), `DeleteRequest`,
/// `DeleteReply` (`comments.delete.<region>`); the rest is the MessagePack body.
pub fn requests(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 | 1 => since_message(sel, rest),
        2 => {
            let Ok(q) = wire::decode::<DeleteRequest>(rest) else {
                return;
            };
            let again = wire::encode(&q).expect("encodes");
            assert_eq!(
                wire::decode::<DeleteRequest>(&again).ok().as_ref(),
                Some(&q)
            );
            // The delete responder's checks before it touches the store.
            if validate::post_id(&q.post_id).is_ok()
                && id::is_valid(&q.id)
                && validate::user_id(&q.user_id)
            {
                subject_ok(&wire::live_subject("eu", &q.post_id));
                assert!(id::millis_of(&q.id).is_some());
            }
        }
        _ => {
            let Ok(r) = wire::decode::<DeleteReply>(rest) else {
                return;
            };
            let again = wire::encode(&r).expect("encodes");
            assert_eq!(wire::decode::<DeleteReply>(&again).ok().as_ref(), Some(&r));
        }
    }
}

fn since_message(sel: u8, rest: &[u8]) {
    if sel.is_multiple_of(2) {
        let Ok(q) = wire::decode::<SinceRequest>(rest) else {
            return;
        };
        let again = wire::encode(&q).expect("encodes");
        assert_eq!(wire::decode::<SinceRequest>(&again).ok().as_ref(), Some(&q));
        // The responder's checks before it touches the store.
        if validate::post_id(&q.post_id).is_ok() {
            subject_ok(&wire::live_subject("eu", &q.post_id));
        }
        for c in [&q.after, &q.before].into_iter().flatten() {
            if id::is_valid(c) {
                assert!(id::millis_of(c).is_some());
            }
        }
    } else {
        let Ok(r) = wire::decode::<SinceReply>(rest) else {
            return;
        };
        let again = wire::encode(&r).expect("encodes");
        assert_eq!(wire::decode::<SinceReply>(&again).ok().as_ref(), Some(&r));
        let mut pos = Position::new();
        for c in &r.comments {
            if comment_is_sane(c) {
                comment_ok(c);
                pos.advance(&c.region, &c.id);
            }
        }
        if !pos.is_empty() {
            assert_eq!(Position::parse(&pos.to_string()), Some(pos));
        }
    }
}
