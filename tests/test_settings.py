"""Settings: where each comes from (`sources`), `from_env`, and `analytics settings`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from analytics.commands.runner import mask_dsn
from analytics.settings import Settings, env_name, sources


def settings_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ANALYTICS_") and k not in ("DATABASE_URL", "BILLING_URL")
    }
    return subprocess.run(
        [sys.executable, "-m", "analytics.cli", "settings", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_setting_is_read_from_its_variable() -> None:
    env = {env_name(f.name): "" for f in fields(Settings)}
    assert env_name("database_url") == "DATABASE_URL"
    assert env_name("billing_url") == "BILLING_URL"
    assert env_name("retention_days") == "ANALYTICS_RETENTION_DAYS"
    assert set(sources(env).values()) == set(env.keys())
    assert set(sources({}).values()) == {"default"}


def test_from_env_types_and_overrides(monkeypatch) -> None:
    monkeypatch.setenv("ANALYTICS_RETENTION_DAYS", "90")
    monkeypatch.setenv("ANALYTICS_DATA_DIR", "/srv/analytics")
    monkeypatch.setenv("ANALYTICS_DIMENSIONS", "path, country")
    monkeypatch.setenv("ANALYTICS_WATCHDOG_ENABLED", "off")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/x")
    monkeypatch.setenv("ANALYTICS_DATABASE_URL", "ignored: DATABASE_URL is the name")
    s = Settings.from_env(port=9000)
    assert (s.retention_days, s.data_dir, s.dimensions) == (90, Path("/srv/analytics"),
                                                            ("path", "country"))  # fmt: skip
    assert (s.watchdog_enabled, s.database_url, s.port) == (False, "postgresql://db/x", 9000)
    assert Settings().retention_days == 0  # keep events forever by default


def test_mask_dsn() -> None:
    assert mask_dsn("postgresql://app:pw@db:5432/x?sslmode=require") == (
        "postgresql://app:***@db:5432/x?sslmode=require"
    )
    assert mask_dsn("postgresql://db/x?user=app&password=pw") == (
        "postgresql://db/x?user=app&password=***"
    )
    assert mask_dsn("postgresql://postgres:@/postgres?host=/tmp/x") == (
        "postgresql://postgres:@/postgres?host=/tmp/x"
    )
    assert mask_dsn("host=db password=pw") == "***"
    assert mask_dsn("") == ""


def test_settings_command_shows_values_sources_and_docs() -> None:
    result = settings_cli(
        "--json",
        DATABASE_URL="postgresql://app:hunter2@db:5432/analytics",
        ANALYTICS_RETENTION_DAYS="30",
        ANALYTICS_DIMENSIONS="path,country",
    )
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert list(rows) == [f.name for f in fields(Settings)]  # every setting, in order
    assert rows["database_url"]["value"] == "postgresql://app:***@db:5432/analytics"
    assert rows["database_url"]["source"] == "DATABASE_URL"
    assert (rows["retention_days"]["value"], rows["retention_days"]["source"]) == (
        "30",
        "ANALYTICS_RETENTION_DAYS",
    )
    assert rows["dimensions"]["value"] == "path,country"
    assert (rows["port"]["value"], rows["port"]["source"]) == ("8000", "default")
    assert rows["port"]["env"] == "ANALYTICS_PORT"
    undocumented = [name for name, r in rows.items() if not r["doc"]]
    assert undocumented == []  # each field has its `#:` comment in settings.py
    assert "0: forever" in rows["retention_days"]["doc"]


def test_settings_command_table() -> None:
    result = settings_cli(ANALYTICS_PORT="9001")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:-1]}
    assert lines["port"] == ["9001", "ANALYTICS_PORT"]
    assert lines["database_url"] == ["''", "default"]
    assert len(lines) == len(fields(Settings))


def test_settings_command_reports_a_variable_that_does_not_parse() -> None:
    result = settings_cli(ANALYTICS_PORT="eighty")
    assert result.returncode == 1
    assert "invalid setting" in result.stderr
