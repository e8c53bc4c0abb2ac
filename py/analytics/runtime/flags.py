"""Feature flags: defaults from settings, overrides applied at run time.

Every worker keeps a local copy (`pipeline/flag_sync.py` reloads it from the `feature_flags`
table when `analytics flags set` notifies, and periodically as a safety net). Reads are plain
dictionary lookups on the loop: no I/O on the request path. `changed` is set (and replaced)
whenever the effective values change, so jobs that pause on a flag wake up at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anyio

from analytics.settings import FLAG_NAMES

log = logging.getLogger(__name__)


class Flags:
    def __init__(self, defaults: Mapping[str, bool]) -> None:
        unknown = set(defaults) - set(FLAG_NAMES)
        if unknown:
            raise ValueError(f"unknown flags {sorted(unknown)}")
        self._defaults = {name: bool(defaults.get(name, True)) for name in FLAG_NAMES}
        self._overrides: dict[str, bool] = {}
        self.changed = anyio.Event()

    def enabled(self, name: str) -> bool:
        return self._overrides.get(name, self._defaults[name])

    def snapshot(self) -> dict[str, bool]:
        return {name: self.enabled(name) for name in FLAG_NAMES}

    def apply(self, overrides: Mapping[str, bool]) -> None:
        """Replace the overrides (unknown names are ignored: an older worker may run beside a
        newer one that knows more flags)."""
        before = self.snapshot()
        self._overrides = {k: v for k, v in overrides.items() if k in self._defaults}
        if self.snapshot() != before:
            log.info("feature flags now %s", self.snapshot())
            self.changed.set()
            self.changed = anyio.Event()
