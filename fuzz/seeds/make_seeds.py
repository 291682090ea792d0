#!/usr/bin/env python3
"""Writes the starting corpus of each fuzz target into fuzz/seeds/<target>/.

Valid and nearly valid examples of each input, so libFuzzer starts from inside the formats
instead of discovering MessagePack maps byte by byte. MessagePack is encoded by hand (no
third-party module needed): maps, strings, unsigned ints, booleans, nil, arrays.
Run again after changing the formats; the files are committed.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def mp(v):
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if 0 <= v < 2**32:
            return b"\xce" + struct.pack(">I", v)
        return b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        if len(b) < 256:
            return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, list):
        out = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return out + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        out = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xde" + struct.pack(">H", len(v))
        return out + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


ID = "01JDQ7Z8XK3M4N5P6Q7R8S9T0V"
ID2 = "01JDQ7Z8XK3M4N5P6Q7R8S9T0W"
COMMENT = {
    "id": ID,
    "post_id": "match-42",
    "user_id": "alice",
    "text": "what a goal!\nreally",
    "timestamp": "2026-11-25T19:44:32.123Z",
    "region": "eu",
    "metadata": {"lang": "en"},
}


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def main():
    # input: bodies and query strings.
    write("input", "body", json.dumps({"text": "  hi\n", "metadata": {"lang": "en"}}))
    write("input", "body-min", '{"text":"x"}')
    write("input", "body-unknown", '{"text":"x","extra":1}')
    write("input", "query", "post_id=match-42&page_size=20&page_number=1&since=2026-11-25T19:44:32.123Z")
    write("input", "query-ms", "post_id=p&since=1795808672123&before=" + ID)
    write("input", "since-offset", "since=2026-11-27T20:44:32.123+01:00")
    write("input", "idempotency", "key-1&region=eu-west-1")
    write("input", "text-controls", "a\tb\nc\x07d\u200b\u00e9")
    # position
    write("position", "one", "eu." + ID)
    write("position", "two", "eu.%s~us.%s" % (ID, ID2))
    write("position", "unsorted", "us.%s~eu.%s" % (ID2, ID))
    write("position", "dup", "eu.%s~eu.%s" % (ID, ID2))
    # live_event
    write("live_event", "comment", mp(dict(type="comment", **COMMENT)))
    c2 = dict(COMMENT)
    del c2["metadata"]
    write("live_event", "comment-nometa", mp(dict(type="comment", **c2)))
    write("live_event", "comment-prev", mp(dict(type="comment", prev=ID2, **COMMENT)))
    write("live_event", "delete", mp({"type": "delete", "id": ID, "post_id": "match-42", "region": "eu"}))
    write("live_event", "wrong-type", mp({"type": "edit", "id": ID}))
    write("live_event", "array", mp(["comment", ID, "p"]))
    # requests: first byte even = request, odd = reply.
    write("requests", "request", b"\x00" + mp({"post_id": "match-42", "after": ID, "limit": 100}))
    write(
        "requests",
        "request-full",
        b"\x00" + mp({"post_id": "p", "after": None, "before": ID2, "newest_first": True, "limit": 20}),
    )
    write("requests", "reply", b"\x01" + mp({"region": "eu", "comments": [COMMENT], "more": False}))
    write("requests", "delete-request", b"\x02" + mp({"post_id": "match-42", "id": ID, "user_id": "alice", "moderator": False}))
    write("requests", "delete-reply", b"\x03" + mp({"outcome": "deleted"}))
    write("requests", "reply-error", b"\x01" + mp({"region": "eu", "comments": [], "more": False, "error": "store unavailable"}))


if __name__ == "__main__":
    main()
