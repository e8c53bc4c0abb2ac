"""`analytics db status|start|stop` and `migrate`, run as subprocesses: an embedded PostgreSQL
in a temporary data dir of its own (started and stopped here), and an external database
through DATABASE_URL (the session's test server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from analytics.store.embedded import shared_buffers_mb, start_embedded, stop_embedded
from analytics.store.migrations import load_migrations

#: The schema version a migrated database reports: its last migration's label.
LATEST = load_migrations()[-1].label


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "analytics.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir of this test alone (short: the socket lives in it); its server, if the test
    left one running, is stopped."""
    root = Path(tempfile.mkdtemp(prefix="adb"))
    try:
        yield root
    finally:
        stop_embedded(root)
        shutil.rmtree(root, ignore_errors=True)


def test_embedded_lifecycle(data_dir: Path) -> None:
    env = {"ANALYTICS_DATA_DIR": str(data_dir)}
    before = run("db", "status", "--json", **env)
    assert before.returncode == 0, before.stderr
    status = json.loads(before.stdout)
    assert status["kind"] == "embedded"
    assert status["data_dir"] == str(data_dir.resolve() / "pg")
    assert (status["initialized"], status["running"], status["dsn"]) == (False, False, None)
    assert not (data_dir / "pg").exists()  # status starts nothing
    assert "not created yet" in run("db", "status", **env).stdout

    started = run("db", "start", **env)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("started: postgresql://")
    dsn = started.stdout.split(": ", 1)[1].strip()
    again = run("db", "start", **env)
    assert again.stdout == f"already running: {dsn}\n"

    assert run("migrate", **env).returncode == 0
    key = run("keys", "create", "--customer", "acme", "--scopes", "write", **env)
    assert key.returncode == 0, key.stderr
    running = json.loads(run("db", "status", "--json", **env).stdout)
    assert (running["running"], running["reachable"], running["dsn"]) == (True, True, dsn)
    assert running["pid"] > 0 and running["size_on_disk_bytes"] > 1_000_000
    assert running["schema"] == LATEST
    assert (running["customers"], running["events"], running["events_exact"]) == (1, 0, True)
    human = run("db", "status", **env).stdout
    assert f"dsn: {dsn}" in human and "customers: 1, events: 0" in human
    assert f"running, pid {running['pid']}" in human

    stopped = run("db", "stop", **env)
    assert (stopped.returncode, stopped.stdout) == (0, "stopped\n")
    assert run("db", "stop", **env).stdout == "not running\n"
    after = json.loads(run("db", "status", "--json", **env).stdout)
    assert (after["initialized"], after["running"], after["dsn"]) == (True, False, None)
    assert after["size_on_disk_bytes"] > 1_000_000
    assert "not running: `analytics db start` starts it" in run("db", "status", **env).stdout

    restarted = run("db", "start", **env)  # the data is still there
    assert restarted.returncode == 0, restarted.stderr
    assert json.loads(run("db", "status", "--json", **env).stdout)["customers"] == 1


def test_with_database_url_status_reports_that_database(fresh_dsn: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": fresh_dsn, "ANALYTICS_DATA_DIR": str(tmp_path)}
    status = run("db", "status", "--json", **env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["kind"] == "external"
    assert report["dsn"] == fresh_dsn  # no password to mask
    assert report["reachable"] is True
    assert f"/{report['database']}?" in fresh_dsn
    assert (report["customers"], report["events"], report["schema"][:5]) == (0, 0, LATEST[:5])
    assert "external PostgreSQL (DATABASE_URL)" in run("db", "status", **env).stdout
    for action in ("start", "stop"):
        refused = run("db", action, **env)
        assert refused.returncode == 1
        assert f"`analytics db {action}` manages only the embedded PostgreSQL" in refused.stderr
    assert not any(tmp_path.iterdir())  # nothing embedded was created


def test_status_of_an_unreachable_database_masks_its_password(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://app:s3cret@127.0.0.1:1/analytics"}
    status = run("db", "status", **env)
    assert status.returncode == 1
    assert "dsn: postgresql://app:***@127.0.0.1:1/analytics" in status.stdout
    assert "unreachable" in status.stdout
    assert "s3cret" not in status.stdout + status.stderr


def test_the_embedded_server_runs_with_an_eighth_of_memory_as_shared_buffers(
    data_dir: Path,
) -> None:
    """128 MB (PostgreSQL's default) at least, 1 GB at most; set on the first start (a
    restart), kept on the next."""
    assert [shared_buffers_mb(gb * 2**30) for gb in (0.5, 4, 64)] == [128, 512, 1024]
    dsn = start_embedded(data_dir)

    async def setting() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(
                "SELECT setting::bigint * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'"
            )
        finally:
            await conn.close()

    assert anyio.run(setting) == shared_buffers_mb()
    stop_embedded(data_dir)
    restarted = run("db", "start", ANALYTICS_DATA_DIR=str(data_dir))  # another process
    assert restarted.returncode == 0, restarted.stderr
    dsn = restarted.stdout.split(": ", 1)[1].strip()
    assert anyio.run(setting) == shared_buffers_mb()
