"""Writes the seed corpus of the `normalize` fuzz target: fuzz/corpus/normalize/<name>.

The bodies are the examples of tests/test_normalize.py and tests/test_parity.py (every
framing, the whole-body and per-event error codes, gzip in both modes, signatures), each
behind the control byte that picks its framing (the layout: rust/normalize/README.md,
"Fuzzing", and fuzz/fuzz_targets/normalize.rs). Run from the repo root:

    .venv/bin/python fuzz/seeds.py

It rewrites the directory, so a seed removed here disappears there too.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

NDJSON = 1
GZIP_HERE = 1 << 1  # the harness compresses the payload
GZIP_RAW = 2 << 1  # the payload is the gzip stream itself
IDENTITY = 3 << 1
TIGHT = 8
SIGNATURE = 16  # first payload line is the X-Signature header
SIGNED = 32  # ...after a valid signature of the body
UPPER = 64  # "GZIP"/"IDENTITY"; with no encoding, "br"

NOW_MS = 1_700_000_000_000
HEX = "0123456789abcdef" * 4


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)  # mtime=0: the same seeds on every run


def js(doc: object) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def ev(**fields: object) -> dict[str, object]:
    return {"name": "x", **fields}


def event(**fields: object) -> bytes:
    return js(ev(**fields))


SEEDS: dict[str, tuple[int, bytes]] = {
    # JSON, one event.
    "single-full": (
        0,
        js(
            {
                "name": "  Page \t\n  VIEW ",
                "event_id": " e-1 ",
                "ts": "2023-11-14T22:13:19.5+00:00",
                "user_id": 42,
                "value": 3,
                "properties": {
                    "Path": " /home ",
                    "utm": {"source": "ads", "empty": {}},
                    "tags": ["a", 1, None, True, 2.5],
                },
                "customer_id": "evil",
            }
        ),
    ),
    "single-unicode-name": (0, js({"name": "\u00a0Über\u2003 Ñ İ", "user_id": " u "})),
    "dup-top-key": (0, b'{"name":"a","name":"b"}'),
    "dup-property": (0, b'{"name":"a","properties":{"k":1,"k":2}}'),
    "dup-flattened": (0, b'{"name":"a","properties":{"a.b":1,"a":{"b":2}}}'),
    "dup-trimmed": (0, b'{"name":"a","properties":{"k":1," k ":2}}'),
    "props-depth5": (0, event(properties={"a": {"b": {"c": {"d": {"e": 1}}}}})),
    "props-bad-leaves": (0, event(properties={"a": [[1]], "b": [{"c": 1}], "": 1})),
    "props-nul": (0, event(properties={"nul": "a\u0000b", "k\u0000": 1})),
    "props-257": (0, event(properties={f"k{i}": i for i in range(257)})),
    "ts-forms": (
        0,
        js(
            {
                "events": [
                    ev(ts=t)
                    for t in (
                        1_699_999_999_123,
                        1_699_999_999_123.9,
                        "2023-11-14 23:13:19.1234569+01:00",
                        "2023-11-14t22:13:19z",
                        "2023-02-29T00:00:00Z",
                        "1969-12-31T23:59:59Z",
                        "9999-12-31T23:59:59.999999Z",
                        -1,
                        True,
                    )
                ]
            }
        ),
    ),
    "values-at-bound": (
        0,
        b'{"events": [{"name": "x", "value": 1e15}, {"name": "x", "value": -1000000000000001},'
        b' {"name": "x", "value": 1e308}, {"name": "x", "value": -0},'
        b' {"name": "x", "value": 18446744073709551615}, {"name": "x", "value": "1"}]}',
    ),
    # JSON, batches.
    "batch-rejections": (
        0,
        js(
            {
                "events": [
                    {"name": "ok"},
                    {"nam": "typo"},
                    "not an object",
                    {"name": ""},
                    {"name": 5},
                    {"name": "x", "ts": "yesterday"},
                    {"name": "x", "user_id": True},
                    {"name": "x", "value": "1"},
                    {"name": "x", "properties": []},
                    {"name": "x", "event_id": "e" * 129},
                    {"name": "ok2"},
                ]
            }
        ),
    ),
    "batch-skew": (
        0,
        js({"sent_at": NOW_MS + 600_000, "events": [{"name": "x", "ts": NOW_MS + 595_000}]}),
    ),
    "batch-skew-out-of-range": (
        0,
        js({"sent_at": "2023-11-14T22:23:20Z", "events": [{"name": "x", "ts": 1000}]}),
    ),
    "batch-clamp": (
        0,
        js({"events": [{"name": "x", "ts": NOW_MS + 3_600_000}, {"name": "x", "ts": 2e12}]}),
    ),
    "batch-dedup": (
        0,
        js(
            {
                "events": [
                    {"name": "x", "ts": 1_699_999_999_000, "properties": {"b": 1, "a": "z"}},
                    {"properties": {"a": "z", "b": 1}, "ts": 1_699_999_999_000, "name": " X "},
                    {"name": "x"},
                    {"name": "x"},
                ]
            }
        ),
    ),
    "batch-empty": (0, b'{"events": []}'),
    "batch-bad-element": (0, b'{"events": [{"name": "x"}, {"name": 1e999}]}'),
    "batch-dup-events": (0, b'{"events": [], "events": []}'),
    "batch-events-object": (0, b'{"events": {}}'),
    "batch-bad-sent-at": (0, b'{"events": [], "sent_at": "soon"}'),
    "batch-null-sent-at": (0, b'{"sent_at": null, "events": [{"name": "x"}], "x": [1]}'),
    "tight-too-many": (TIGHT, js({"events": [{"name": "a"}] * 4})),
    "tight-limits": (
        TIGHT,
        js(
            {
                "events": [
                    {"name": "abcd", "event_id": "12345", "user_id": "1234"},
                    {"name": "a", "properties": {"abcde": 1, "s": "123456", "a": {"b": {}}}},
                    {"name": "a", "pad": "z" * 100},
                ]
            }
        ),
    ),
    # Whole-body errors.
    "empty": (0, b""),
    "whitespace": (0, b" \n\t"),
    "truncated": (0, b"{"),
    "not-utf8": (0, b"\xff\xfe{}"),
    "bom": (0, b"\xef\xbb\xbf{}"),
    "nan": (0, b'{"name": NaN}'),
    "overflow": (0, b'{"name": "x", "value": 1e400}'),
    "lone-surrogate": (0, b'{"name": "\\ud800"}'),
    "deep-nesting": (0, b"[" * 200 + b"]" * 200),
    "array": (0, b"[]"),
    "string": (0, b'"x"'),
    # NDJSON.
    "ndjson-lines": (NDJSON, b'{"name":"a"}\n\n  {"name": \n{"name":"c"}\r\n[1]\n"x"\n'),
    "ndjson-tight": (NDJSON | TIGHT, b'{"name":"a"}\n{"name":"' + b"b" * 130 + b'"}\n{"x":1}'),
    "ndjson-blank": (NDJSON, b"\n \r\n\t\n"),
    # Encodings.
    "gzip-here-batch": (GZIP_HERE, js({"events": [{"name": "x"}] * 10})),
    "gzip-here-ndjson": (GZIP_HERE | NDJSON | UPPER, b'{"name":"a"}\n{"name":"b","value":2}'),
    "gzip-raw": (GZIP_RAW, gz(event(value=1))),
    "gzip-raw-truncated": (GZIP_RAW, gz(event(value=1))[:-5]),
    "gzip-raw-multi-member": (
        GZIP_RAW | NDJSON,
        gz(b'{"name":"a"}\n') + gz(b'{"name":"b"}\n'),
    ),
    "gzip-raw-trailing-zeros": (GZIP_RAW, gz(event()) + b"\0\0\0\0"),
    "gzip-raw-not-gzip": (GZIP_RAW | UPPER, b"not gzip"),
    "gzip-raw-bomb": (GZIP_RAW, gz(b" " * 200_000)),
    "gzip-raw-tight-too-large": (GZIP_RAW | TIGHT, gz(b" " * 70_000)),
    "tight-too-large": (TIGHT | NDJSON, b"\n".join([b'{"name":"a"}'] * 200)),
    "identity": (IDENTITY | UPPER, event(user_id=7)),
    "unsupported-encoding": (UPPER, event()),
    # Signatures: the first line is the header.
    "sig-mismatch": (SIGNATURE, f"t=1700000000,v1={HEX}\n".encode() + event()),
    "sig-rotation": (
        SIGNATURE | SIGNED,
        f" v1={HEX.upper()} , v2=zz,x\n".encode() + event(),
    ),
    "sig-signed-gzip": (SIGNATURE | SIGNED | GZIP_HERE, b"\n" + event()),
    "sig-stale": (SIGNATURE, f"t=1,v1={HEX}\n{{}}".encode()),
    "sig-future": (SIGNATURE, f"t=999999999999,v1={HEX}\n{{}}".encode()),
    "sig-malformed": (SIGNATURE, b"t=0100,t=2,v1=00\n{}"),
    "sig-too-many": (SIGNATURE, (f"t=1700000000{f',v1={HEX}' * 9}\n{{}}").encode()),
}


def main() -> None:
    out = Path(__file__).parent / "corpus" / "normalize"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name, (control, payload) in SEEDS.items():
        (out / name).write_bytes(bytes([control]) + payload)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
