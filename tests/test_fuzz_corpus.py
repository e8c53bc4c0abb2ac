"""The fuzz corpus, differentially: every input of fuzz/corpus/normalize (the committed seeds)
and fuzz/regressions/normalize (minimized inputs of crashes the fuzzer found, if any) goes
through the Rust extension and the pure-Python reference with the framing its control byte
picks, as the libFuzzer target (fuzz/fuzz_targets/normalize.rs) does, and both must give the
same outcome: the same rows (COPY tuples decoded) and rejections, or the same body error
code, and the same signature verdict (and, for a valid signature, the same rows again when
normalized with its signing time).

`FUZZ_CORPUS=<dir>[:<dir>…]` adds directories, e.g. the corpus a `just fuzz` run grew
(fuzz/corpus-work/normalize), for a deeper differential run than the suite's seconds allow.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import pytest

from analytics import _normalize as rust
from benches import normalize_reference as reference
from test_parity import NOW_US, outcome, same

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "corpus" / "normalize"
REGRESSIONS = ROOT / "fuzz" / "regressions" / "normalize"
NOW_S = NOW_US // 1_000_000
SECRET = b"fuzz-secret"

# The control byte (first byte of an input); the README's "Fuzzing" table.
NDJSON, TIGHT, SIGNATURE, SIGNED, UPPER = 1, 8, 16, 32, 64
TIGHT_LIMITS = {
    "max_body_bytes": 2048,
    "max_ratio": 2,
    "max_events": 3,
    "max_event_bytes": 120,
    "max_name_chars": 3,
    "max_event_id_chars": 4,
    "max_user_id_chars": 4,
    "max_property_depth": 2,
    "max_properties": 3,
    "max_key_chars": 4,
    "max_string_bytes": 5,
    "max_future_us": 1_000_000,
}


def corpus() -> list[Path]:
    dirs = [SEEDS, REGRESSIONS]
    dirs += [Path(d) for d in os.environ.get("FUZZ_CORPUS", "").split(os.pathsep) if d]
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file())


def case(data: bytes) -> tuple[bytes, dict, dict | None, str | None]:
    """(body, framing keywords, limits, signature header) of one fuzz input."""
    control, payload = data[0], data[1:]
    header = None
    if control & SIGNATURE:
        line, _, payload = payload.partition(b"\n")
        header = line.decode("utf-8", "replace")  # as Rust's String::from_utf8_lossy
    upper = bool(control & UPPER)
    mode = (control >> 1) & 3
    if mode == 0:
        body, encoding = payload, "br" if upper else None
    else:
        body = gzip.compress(payload) if mode == 1 else payload
        encoding = "identity" if mode == 3 else "gzip"
        encoding = encoding.upper() if upper else encoding
    kwargs = {"ndjson": bool(control & NDJSON), "content_encoding": encoding}
    if header is not None and control & SIGNED:
        header = f"{rust.sign(SECRET, body, NOW_S)},{header}"
    return body, kwargs, TIGHT_LIMITS if control & TIGHT else None, header


def verdict(impl, header: str, body: bytes) -> str | int:
    """The signature's error code, or the signing time of a valid one."""
    try:
        return impl.verify_signature(SECRET, header, body, NOW_S)
    except rust.SignatureError as e:
        return e.code


@pytest.mark.parametrize("path", corpus(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_rust_and_reference_agree_on_the_fuzz_corpus(path):
    data = path.read_bytes()
    if not data:
        return  # the target skips an input without a control byte
    body, kwargs, limits, header = case(data)
    got, want = outcome(rust, body, kwargs, limits), outcome(reference, body, kwargs, limits)
    assert same(got, want), (got, want)
    if header is None:
        return
    signed_at = verdict(rust, header, body)
    assert signed_at == verdict(reference, header, body)
    if isinstance(signed_at, int):  # verified: normalized with its signing time, as the API does
        kwargs = {**kwargs, "signed_at": signed_at}
        got, want = outcome(rust, body, kwargs, limits), outcome(reference, body, kwargs, limits)
        assert same(got, want), (got, want)


def test_the_seeds_are_what_fuzz_seeds_py_writes():
    spec = importlib.util.spec_from_file_location("fuzz_seeds", ROOT / "fuzz" / "seeds.py")
    assert spec is not None and spec.loader is not None
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)
    assert {p.name for p in SEEDS.iterdir()} == set(seeds.SEEDS)
    for name, (control, payload) in seeds.SEEDS.items():
        if (control >> 1) & 3 != 2:  # a gzip stream's bytes depend on the zlib build
            assert (SEEDS / name).read_bytes() == bytes([control]) + payload, name


def test_the_seeds_reach_every_framing_and_every_code():
    """The seeds are a map of the input space: each framing, and each code of the registry
    from either implementation, so the fuzzer starts from all of them."""
    seen: set[str] = set()
    framings: set[tuple] = set()
    for path in SEEDS.iterdir():
        body, kwargs, limits, header = case(path.read_bytes())
        framings.add((kwargs["ndjson"], kwargs["content_encoding"], limits is None))
        result = outcome(rust, body, kwargs, limits)
        if result[0] == "error":
            seen.add(result[1])
        else:
            seen.update(code for _, code in result[2])
        if header is not None:
            signed_at = verdict(rust, header, body)
            seen.add("ok" if isinstance(signed_at, int) else signed_at)
    assert {code for code, _ in rust.ERROR_CODES} <= seen
    assert {(n, e) for n, e, _ in framings} >= {
        (False, None),
        (True, None),
        (False, "gzip"),
        (True, "gzip"),
        (True, "GZIP"),
        (False, "IDENTITY"),
        (False, "br"),
    }
