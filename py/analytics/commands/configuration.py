"""`analytics settings`: every setting, its value, and where the value came from.

A setting comes from its environment variable when that is set (`ANALYTICS_<NAME>`, or
`DATABASE_URL` / `BILLING_URL`), else from its default in settings.py, where the `#:` comment
above each field documents it; `--json` carries that text too. Passwords in DSNs and URLs
are masked.
"""

from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import fields
from pathlib import Path

from analytics import settings as settings_module
from analytics.commands.runner import Subparsers, fail, mask_dsn, print_json, print_table
from analytics.settings import Settings, env_name, sources

#: Settings that may hold credentials (a password in a DSN or URL).
SECRET_URLS = ("database_url", "direct_database_url", "billing_url")

_FIELD = re.compile(r"^    (\w+): ")


def field_docs() -> dict[str, str]:
    """Each setting's `#:` comment in settings.py, by field name (joined into one line)."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(settings_module).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped.removeprefix("#:").strip())
        elif match := _FIELD.match(line):
            docs[match[1]] = " ".join(pending)
            pending = []
        else:
            pending = []
    return docs


def shown(name: str, value: object) -> str:
    """A setting's value as printed: DSNs masked, tuples comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, Path):
        return str(value)
    if name in SECRET_URLS and isinstance(value, str):
        return mask_dsn(value)
    return str(value)


def _settings(args: argparse.Namespace) -> int:
    try:
        current = Settings.from_env()
    except ValueError as e:  # a variable that does not parse as its setting's type
        return fail(f"the environment holds an invalid setting: {e}")
    origin, docs = sources(), field_docs()
    rows = [
        {
            "name": f.name,
            "value": shown(f.name, getattr(current, f.name)),
            "source": origin[f.name],
            "env": env_name(f.name),
            "doc": docs.get(f.name, ""),
        }
        for f in fields(Settings)
    ]
    if args.json:
        print_json(rows)
    else:
        print_table(
            ("SETTING", "VALUE", "FROM"),
            [(r["name"], r["value"] or "''", r["source"]) for r in rows],
        )
        print(f"(each setting is read from {env_name('<name>')}; see --json for what they do)")
    return 0


def add_configuration_commands(subparsers: Subparsers) -> None:
    """Registrar of `settings`."""
    p = subparsers.add_parser(
        "settings", help="every setting with its value and where it came from"
    )
    p.add_argument("--json", action="store_true", help="print as JSON, with each one's doc")
    p.set_defaults(handler=_settings)
