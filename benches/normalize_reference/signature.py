"""``X-Signature``: HMAC-SHA256 over ``"<t>." + body``, several ``v1`` for key rotation, a
replay window on both sides of now."""

from __future__ import annotations

import hashlib
import hmac
import re

from benches.normalize_reference.errors import signature_error

_SIG_T = re.compile("[0-9]{1,12}")
_SIG_V1 = re.compile("[0-9a-fA-F]{64}")


def _mac(secret: bytes, t: str, body: bytes) -> bytes:
    return hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).digest()


def sign(secret: bytes, body: bytes, t: int) -> str:
    """A valid ``X-Signature`` value ``t=<t>,v1=<hex>`` for ``body`` at unix time ``t``."""
    return f"t={t},v1={_mac(secret, str(t), body).hex()}"


def verify_signature(
    secret: bytes, header: str, body: bytes, now_s: int, tolerance_s: int = 300
) -> int:
    """Check ``X-Signature: t=<unix s>,v1=<hex>[,v1=<hex>...]`` over the raw body bytes;
    return its ``t``.

    Raises :class:`SignatureError` with ``malformed_signature``, ``stale_signature``,
    ``future_signature`` or ``bad_signature``, checked in that order.
    """
    # Reading: items are split on ","; only U+0020 around an item is ignored; an item is
    # scheme "=" value split at the first "=" (no "=": the whole item is the scheme, value "");
    # schemes are case-sensitive and empty items are an unknown scheme. The MAC covers the
    # t digits exactly as sent (leading zeros included).
    if len(header.encode("utf-8", "surrogatepass")) > 4096:
        raise signature_error("malformed_signature", "header longer than 4096 bytes")
    ts: list[str] = []
    v1: list[str] = []
    for item in header.split(","):
        scheme, _, value = item.strip(" ").partition("=")
        if scheme == "t":
            ts.append(value)
        elif scheme == "v1":
            v1.append(value)
    if len(ts) != 1 or not _SIG_T.fullmatch(ts[0]):
        raise signature_error("malformed_signature", "need exactly one t of 1-12 digits")
    if not 1 <= len(v1) <= 8 or not all(_SIG_V1.fullmatch(v) for v in v1):
        raise signature_error("malformed_signature", "need 1-8 v1 of 64 hex digits")
    t = int(ts[0])
    if now_s - t > tolerance_s:
        raise signature_error("stale_signature", "signature timestamp too old")
    if t - now_s > tolerance_s:
        raise signature_error("future_signature", "signature timestamp in the future")
    expected = _mac(secret, ts[0], body)
    matched = False
    for v in v1:
        matched |= hmac.compare_digest(expected, bytes.fromhex(v))
    if not matched:
        raise signature_error("bad_signature", "no v1 signature matches")
    return t
