"""Timestamps (``ts``, ``sent_at``): RFC 3339 strings and epoch milliseconds to µs since the
Unix epoch, within [1970, 9999]."""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

MAX_TS_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z
_UNIX_ORDINAL = date(1970, 1, 1).toordinal()
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def _rfc3339_us(text: str) -> int | None:
    """µs since the Unix epoch of ``YYYY-MM-DD(T|t| )HH:MM:SS(.F{1,9})?(Z|z|±HH:MM)``, or None."""
    # Reading: the string is not trimmed; "-00:00" is a zero offset; year 0000 (which datetime
    # cannot represent) is invalid, as it lies before 1970 whatever the offset.
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = m.groups()
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _UNIX_ORDINAL
    except ValueError:
        return None
    if int(hour) > 23 or int(minute) > 59 or int(second) > 59:
        return None
    offset = 0
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset = (int(off_h) * 3600 + int(off_m) * 60) * (1 if sign == "+" else -1)
    seconds = days * 86400 + int(hour) * 3600 + int(minute) * 60 + int(second) - offset
    return seconds * 1_000_000 + int((fraction or "")[:6].ljust(6, "0"))


def timestamp_us(value: Any) -> int | None:
    """A ts/sent_at value (RFC 3339 string or epoch-ms number) as µs in the valid range, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        us = value * 1000
    elif isinstance(value, float):
        scaled = value * 1000.0
        if not math.isfinite(scaled):
            return None
        us = math.floor(scaled)
    elif isinstance(value, str):
        parsed = _rfc3339_us(value)
        if parsed is None:
            return None
        us = parsed
    else:
        return None
    return us if 0 <= us <= MAX_TS_US else None
