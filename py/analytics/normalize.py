"""The public face of the Rust normalizer (`analytics._normalize`).

Callers import from here, never from the private extension. The rules live in
rust/normalize/README.md. The facts both sides need are declared once, in the Rust crate,
and only read here: `ERROR_CODES` (every error code with its HTTP status; also `.status` on
a raised `NormalizeError`/`SignatureError`) and `COPY_SCHEMA` (the COPY columns in order,
with their PostgreSQL types). `MAX_ABS_VALUE` is the largest `value` magnitude accepted.

Every function here but `copy_columns` runs its work with the GIL released, so large bodies
may be handed to a worker thread and run in parallel with the event loop and with each other.

The `hll_*` functions are HyperLogLog sketches of user ids (rust/normalize/src/hll.rs
documents the byte format, version `HLL_VERSION`): `hll_build(ids, precision)` makes one,
`hll_group(rows_json, dims)` the rollup job's sketches of a fold's events by key,
`hll_merge(sketches)` the sketch of their union, `hll_estimate(sketch)` the distinct count,
within a relative standard error of `hll_standard_error(precision)` = 1.04 / sqrt(2^p)
(1.625 % at the default precision 12). A sketch of a few ids is a few bytes (its sparse
form), of many ids 2^p bytes. `rebuild_rows(rows_json, dims, minute_since)` makes a rebuild's
minute, hour and pair rollup rows (as COPY tuples) and sketches (rust/normalize/src/rebuild.rs).
"""

from collections.abc import Mapping
from types import MappingProxyType

from analytics._normalize import (
    COPY_SCHEMA,
    DEDUP_FINGERPRINT,
    ERROR_CODES,
    HLL_DEFAULT_PRECISION,
    HLL_VERSION,
    MAX_ABS_VALUE,
    TS_CLAMPED,
    TS_DEFAULTED,
    TS_SKEW_CORRECTED,
    Limits,
    NormalizedBatch,
    NormalizeError,
    SignatureError,
    compat_key,
    copy_columns,
    hll_build,
    hll_estimate,
    hll_group,
    hll_merge,
    hll_standard_error,
    normalize_batch,
    normalize_compat,
    normalize_event_name,
    rebuild_rows,
    sign,
    verify_signature,
)

#: Columns of each binary COPY tuple in `NormalizedBatch.copy_data`, in order.
COPY_COLUMNS: tuple[str, ...] = tuple(name for name, _ in COPY_SCHEMA)

#: The HTTP status of every normalization and signature error code.
ERROR_STATUS: Mapping[str, int] = MappingProxyType(dict(ERROR_CODES))

__all__ = [
    "COPY_COLUMNS",
    "COPY_SCHEMA",
    "DEDUP_FINGERPRINT",
    "ERROR_CODES",
    "ERROR_STATUS",
    "HLL_DEFAULT_PRECISION",
    "HLL_VERSION",
    "MAX_ABS_VALUE",
    "TS_CLAMPED",
    "TS_DEFAULTED",
    "TS_SKEW_CORRECTED",
    "Limits",
    "NormalizeError",
    "NormalizedBatch",
    "SignatureError",
    "compat_key",
    "copy_columns",
    "hll_build",
    "hll_estimate",
    "hll_group",
    "hll_merge",
    "hll_standard_error",
    "normalize_batch",
    "normalize_compat",
    "normalize_event_name",
    "rebuild_rows",
    "sign",
    "verify_signature",
]
