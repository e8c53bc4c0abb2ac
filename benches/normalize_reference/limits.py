"""The README's limits, with its defaults (declared here again on purpose: they are part of
the contract the reference checks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """The README's limits, with its defaults."""

    max_body_bytes: int = 5 * 1024 * 1024
    max_ratio: int = 100
    max_events: int = 5000
    max_event_bytes: int = 32768
    max_name_chars: int = 200
    max_event_id_chars: int = 128
    max_user_id_chars: int = 256
    max_property_depth: int = 4
    max_properties: int = 256
    max_key_chars: int = 256
    max_string_bytes: int = 8192
    max_future_us: int = 3_600_000_000
