"""Pure-Python reference implementation of the ``analytics._normalize`` contract.

``rust/normalize/README.md`` is the binding contract; this package implements it rule for
rule, independently of the Rust crate, so tests can compare the two row for row
(``tests/test_parity.py``) and the case study's baselines and the benchmarks can use it as
the pure-Python normalizer. Points the README leaves open are resolved in comments that
start with ``Reading:``; the Rust side must make the same choices. It is a development tool:
nothing in ``py/`` imports it.

What it shares with the crate, and why: the registries the crate exports through
``analytics.normalize``, which are facts of the interface rather than rules:

- ``ERROR_STATUS``: a refused body or signature raises the extension's own
  ``NormalizeError``/``SignatureError`` with ``.code`` and ``.status`` set, as the extension
  does, so callers (the case study's baselines) handle both the same way. The code strings
  themselves are spelled here, from the README, so parity also checks Rust's codes; one the
  registry does not know fails at once (``KeyError``).
- ``COPY_SCHEMA``: rows are written and decoded in the registry's column order (the order
  the staging table is created in); how each value is encoded, and which columns may be
  NULL, is this package's own reading of the README.

Everything else (JSON strictness, limits and their defaults, the per-event checks,
timestamps, fingerprints, signatures) is implemented here from the README alone.

Modules follow the crate's: ``strict_json`` (parsing), ``timestamps``, ``event`` (one
event's checks and row), ``body`` (decoding, framing, ``normalize_batch``), ``copy_tuples``
(encoding and ``decode_copy``), ``signature``, ``errors``, ``limits``.
"""

from benches.normalize_reference.body import NormalizedBatch, normalize_batch
from benches.normalize_reference.copy_tuples import decode_copy
from benches.normalize_reference.errors import NormalizeError, SignatureError
from benches.normalize_reference.event import (
    DEDUP_FINGERPRINT,
    MAX_ABS_VALUE,
    TS_CLAMPED,
    TS_DEFAULTED,
    TS_SKEW_CORRECTED,
)
from benches.normalize_reference.limits import Limits
from benches.normalize_reference.signature import sign, verify_signature

__all__ = [
    "DEDUP_FINGERPRINT",
    "MAX_ABS_VALUE",
    "TS_CLAMPED",
    "TS_DEFAULTED",
    "TS_SKEW_CORRECTED",
    "Limits",
    "NormalizeError",
    "NormalizedBatch",
    "SignatureError",
    "decode_copy",
    "normalize_batch",
    "sign",
    "verify_signature",
]
