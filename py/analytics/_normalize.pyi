"""Type stub for the Rust extension `analytics._normalize` (rust/normalize).

The rules are in rust/normalize/README.md. Every function runs with the GIL released.

`NormalizedBatch.copy_data` holds PostgreSQL binary COPY tuples (no file header or trailer,
so payloads from many requests concatenate), one field per column of `COPY_SCHEMA`, in its
order.

`flags` bits: TS_CLAMPED, TS_SKEW_CORRECTED, TS_DEFAULTED, DEDUP_FINGERPRINT.
"""

from collections.abc import Sequence
from typing import Final

TS_CLAMPED: Final[int]
TS_SKEW_CORRECTED: Final[int]
TS_DEFAULTED: Final[int]
DEDUP_FINGERPRINT: Final[int]

MAX_ABS_VALUE: Final[float]
"""The largest `value` magnitude an event may carry (1e15); beyond it the event is rejected
with `value_out_of_range`, so the rollups' `double precision` sums can never overflow."""

ERROR_CODES: Final[tuple[tuple[str, int], ...]]
"""(code, HTTP status) of every error code, from the crate's `ErrorCode` enum (error.rs).

Whole-body size errors are 413, `unsupported_encoding` 415, signature errors 401, the rest
400 (a per-event code has the status it would have as a whole-request error)."""

COPY_SCHEMA: Final[tuple[tuple[str, str], ...]]
"""(column, PostgreSQL type) of every field of a COPY tuple, in the order written (event.rs)."""

class NormalizeError(ValueError):
    """A whole body was refused. `args == (code, message)`."""

    code: str
    status: int
    """The HTTP status of `code` (from `ERROR_CODES`)."""

class SignatureError(ValueError):
    """A signature check failed. `args == (code, message)`."""

    code: str
    status: int
    """The HTTP status of `code` (from `ERROR_CODES`): 401."""

class Limits:
    """Size and complexity caps; any field may be overridden by keyword."""

    max_body_bytes: int
    max_ratio: int
    max_events: int
    max_event_bytes: int
    max_name_chars: int
    max_event_id_chars: int
    max_user_id_chars: int
    max_property_depth: int
    max_properties: int
    max_key_chars: int
    max_string_bytes: int
    max_future_us: int
    def __init__(
        self,
        *,
        max_body_bytes: int = ...,
        max_ratio: int = ...,
        max_events: int = ...,
        max_event_bytes: int = ...,
        max_name_chars: int = ...,
        max_event_id_chars: int = ...,
        max_user_id_chars: int = ...,
        max_property_depth: int = ...,
        max_properties: int = ...,
        max_key_chars: int = ...,
        max_string_bytes: int = ...,
        max_future_us: int = ...,
    ) -> None: ...

class NormalizedBatch:
    """The outcome of one body."""

    accepted: int
    total: int
    rejected: list[tuple[int, str, str]]
    """(index, code, message) for each refused event, in index order."""
    copy_data: bytes
    identities: list[tuple[str, str]]
    """(anonymous id, user id) links the body made (only `normalize_compat` makes any)."""

def normalize_batch(
    body: bytes,
    received_at_us: int,
    *,
    customer_id: str = "",
    content_encoding: str | None = None,
    ndjson: bool = False,
    limits: Limits | None = None,
    signed_at: int | None = None,
) -> NormalizedBatch:
    """Decode, validate, normalize and COPY-encode every event of `body`.

    Raises NormalizeError (with `.code`) when the body as a whole is refused;
    bad single events are listed in `.rejected` instead (e.g. `value_out_of_range` for a
    `value` beyond ±`MAX_ABS_VALUE`). `signed_at` is the signing time `verify_signature`
    returned for this body: events with neither `event_id` nor `ts` then get a dedup key
    from (signing time, SHA-256 of the body, index), so a replayed signed request counts once.
    """

def normalize_compat(
    body: bytes,
    received_at_us: int,
    *,
    dialect: str,
    customer_id: str = "",
    content_encoding: str | None = None,
    limits: Limits | None = None,
) -> NormalizedBatch:
    """`normalize_batch` for a body in Segment's or PostHog's format (`dialect`: `"segment"`
    for `/v1/batch`, `"segment/<call>"` for one call, `"posthog"`): their fields mapped to
    ours (rust/normalize/README.md, "Compatible formats"), then our rules. Raises
    NormalizeError for a refused body, ValueError for an unknown dialect."""

def compat_key(
    body: bytes,
    *,
    dialect: str,
    content_encoding: str | None = None,
    limits: Limits | None = None,
) -> str | None:
    """The API key a body in `dialect` carries (Segment `writeKey`, PostHog `api_key` or
    `token`), or None; raises NormalizeError for a body that cannot be framed."""

def verify_signature(
    secret: bytes | Sequence[bytes], header: str, body: bytes, now_s: int, tolerance_s: int = 300
) -> int:
    """Check `X-Signature` (`t=<secs>,v1=<hex>[,v1=…]`) and return its signing time `t`;
    raise SignatureError on failure. Several secrets: any of them may have signed (a key
    being rotated). `stale_signature`/`future_signature` messages name `t`, `now_s` and
    the window."""

def sign(secret: bytes, body: bytes, t: int) -> str:
    """A valid `X-Signature` value for `body` signed at unix time `t`."""

def copy_columns(data: bytes) -> tuple[list[object], ...]:
    """The values of concatenated COPY tuples (`copy_data` of one or more batches) as one list
    per column, in `COPY_SCHEMA` order: text as str or None, timestamptz as µs since the Unix
    epoch, double precision as float or None, jsonb as its JSON text, smallint as int.
    Raises ValueError on malformed data. Holds the GIL while it builds the lists: meant for
    a few hundred rows (the writer's small commits), not for large batches."""

def normalize_event_name(name: str) -> str:
    """A name as ingestion stores it (trimmed, collapsed, lowercased); ValueError if invalid."""

HLL_DEFAULT_PRECISION: Final[int]
"""The precision `hll_build` uses when none is given: 12 (4,096 registers, 1.625 %)."""

HLL_VERSION: Final[int]
"""The version of the sketches' byte format (their first byte)."""

def hll_build(user_ids: Sequence[str], precision: int = 12) -> bytes:
    """The HyperLogLog sketch of `user_ids` (XXH3-64 of their UTF-8 bytes) at `precision`
    (4..=18): sparse (3 + 4 bytes per distinct register) while that is no larger than the
    2^precision dense registers. ValueError for a precision out of range."""

def hll_group(
    rows_json: str, dims: Sequence[str], precision: int = 12
) -> list[tuple[int, str, str, str, int, bytes]]:
    """The sketches of a fold's events: `rows_json` is a JSON array with one row per event,
    `[customer_id, name, hour (Unix seconds), user, [the value of each of dims, or null]]`.
    One `(customer_id, name, dim, dim_value, hour, sketch)` per key, in key order: dim ''
    (value '') for the total, `d` for each value of `d`, `!d` (value '') for the events
    without `d`. ValueError for rows that do not parse or have another number of values."""

def rebuild_rows(
    rows_json: str, dims: Sequence[str], minute_since: int, precision: int = 12
) -> tuple[bytes, bytes, bytes, list[tuple[int, str, str, str, int, bytes]]]:
    """A rebuild's rollups: `rows_json` is a JSON array with one row per event, `[customer_id,
    name, minute (Unix seconds), value or null, user or null, [the value of each of dims
    (sorted), or null]]`. Returns the binary COPY tuples (no header or trailer, each in key
    order) of its `rollup_minute` rows (for the minutes from `minute_since`, Unix seconds,
    on) and `rollup_hour` rows (customer_id, name, dim, dim_value, bucket, count, sum_value:
    the total and each value), of its `rollup_pair_hour` rows (customer_id, name, dim_a,
    dim_b, value_a, value_b, bucket, count, sum_value: every pair of non-null values), and
    its sketches as `hll_group` gives them for the events with a user. ValueError for rows
    that do not parse, another number of values, or unsorted dims."""

def hll_merge(sketches: Sequence[bytes]) -> bytes:
    """The sketch of the union of `sketches` (at least one, all of one precision); byte for
    byte the sketch `hll_build` makes of all their ids. ValueError for bytes that are not a
    sketch, or mixed precisions."""

def hll_estimate(sketch: bytes) -> float:
    """The estimated number of distinct ids in `sketch` (Ertl's improved estimator, unbiased
    over the whole range). ValueError for bytes that are not a sketch."""

def hll_standard_error(precision: int = 12) -> float:
    """The relative standard error of an estimate at `precision`: 1.04 / sqrt(2^precision)."""
