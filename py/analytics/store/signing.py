"""Signing secrets and browser origins of API keys: their formats and validation.

A signing secret is printed as `ansk_` + 43 urlsafe characters (256 random bits) and that
text, as UTF-8, is the HMAC-SHA256 key: `hmac.new(secret.encode(), ...)`, `openssl dgst
-sha256 -hmac "$SECRET"`, the way webhook secrets (`whsec_...`) are used. `api_keys` stores
the HMAC key's bytes with a format:

- `text`: the printed secret's UTF-8 bytes (every key created since migration 0005);
- `hex`: 32 raw bytes of a key created before, whose secret was printed hex-encoded. Both
  ways producers may use that hex text are accepted: the raw bytes (`bytes.fromhex(secret)`,
  what worked before) and the hex text itself (`secret.encode()`, what integrators try).

Nothing is migrated in place: the hex text of a legacy key cannot become an `ansk_` secret
without breaking the producers that sign with it; `keys rotate-signing` moves such a key to
a new-style secret with an overlap instead.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

#: The prefix of every signing secret printed since migration 0005.
SECRET_PREFIX = "ansk_"

# An origin as browsers send it: scheme, host, optional port; no path, no trailing slash.
_ORIGIN = re.compile(r"https?://([a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")
#: Most origins one publishable key may list.
MAX_ORIGINS = 50


def new_signing_secret() -> str:
    """A fresh signing secret as printed (and as used as the HMAC key)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hmac_keys(stored: bytes | None, fmt: str | None) -> tuple[bytes, ...]:
    """The HMAC keys a signature may be made with, for a secret stored as `stored` in format
    `fmt` (empty when there is none)."""
    if stored is None:
        return ()
    if fmt == "hex":
        return (stored, stored.hex().encode())
    return (stored,)


def validate_origin(origin: str) -> str:
    """`origin` as browsers send it in `Origin` (scheme and host lowercased); ValueError when
    it is not `http(s)://host[:port]`."""
    lowered = origin.strip().lower()
    if not _ORIGIN.fullmatch(lowered):
        raise ValueError(
            f"{origin!r} is not an origin: scheme://host[:port], e.g. https://app.example.com"
            " (no path, no trailing slash, no wildcard)"
        )
    return lowered


def validate_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """Each of `origins` validated, duplicates dropped, in order; ValueError past MAX_ORIGINS."""
    result = tuple(dict.fromkeys(validate_origin(o) for o in origins))
    if len(result) > MAX_ORIGINS:
        raise ValueError(f"a publishable key lists at most {MAX_ORIGINS} origins")
    return result
