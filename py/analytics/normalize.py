"""The public face of the Rust normalizer (`analytics._normalize`).

Callers import from here, never from the private extension. The rules live in
rust/normalize/README.md; the COPY column order in `COPY_COLUMNS` (and in the stub).

Every function here runs its work with the GIL released, so large bodies may be handed to
a worker thread and run in parallel with the event loop and with each other.
"""

from analytics._normalize import (
    DEDUP_FINGERPRINT,
    TS_CLAMPED,
    TS_DEFAULTED,
    TS_SKEW_CORRECTED,
    Limits,
    NormalizedBatch,
    NormalizeError,
    SignatureError,
    normalize_batch,
    normalize_event_name,
    sign,
    verify_signature,
)

#: Columns of each binary COPY tuple in `NormalizedBatch.copy_data`, in order.
COPY_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "dedup_key",
    "event_id",
    "name",
    "ts",
    "received_at",
    "user_id",
    "value",
    "properties",
    "flags",
)

__all__ = [
    "COPY_COLUMNS",
    "DEDUP_FINGERPRINT",
    "TS_CLAMPED",
    "TS_DEFAULTED",
    "TS_SKEW_CORRECTED",
    "Limits",
    "NormalizeError",
    "NormalizedBatch",
    "SignatureError",
    "normalize_batch",
    "normalize_event_name",
    "sign",
    "verify_signature",
]
