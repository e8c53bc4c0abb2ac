"""`analytics serve` that cannot start says why in one line and exits non-zero, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess

from analytics.serve import KEYS_HINT
from serverproc import SERVE, free_port, running_server


def serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], status: int, words: str):
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_a_taken_port(blank_dsn):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--port", str(port), DATABASE_URL=blank_dsn)
    assert_one_clear_line(result, 1, f"cannot listen on 127.0.0.1:{port}")
    assert "--port" in result.stderr


def test_the_trio_worker_without_trio_installed_says_how_to_get_it(blank_dsn, tmp_path):
    # A `trio` package that fails to import stands for an install without the extra.
    (tmp_path / "trio").mkdir()
    (tmp_path / "trio" / "__init__.py").write_text("raise ImportError('No module named trio')")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    result = serve(
        "--worker-class",
        "trio",
        "--port",
        str(free_port()),
        DATABASE_URL=blank_dsn,
        PYTHONPATH=path,
    )
    assert_one_clear_line(result, 2, "pip install 'analytics[trio]'")


def test_a_bad_setting():
    result = serve(ANALYTICS_WRITER_INBOX="lots", DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    assert_one_clear_line(result, 2, "ANALYTICS_WRITER_INBOX='lots' is not an integer")


def test_an_unreachable_database():
    dsn = f"postgresql://app:s3cret@127.0.0.1:{free_port()}/analytics"  # nobody listens there
    result = serve("--port", str(free_port()), DATABASE_URL=dsn, ANALYTICS_CONNECT_TIMEOUT_S="2")
    assert_one_clear_line(result, 1, "cannot reach the database (postgresql://app:***@127.0.0.1")
    assert "s3cret" not in result.stderr + result.stdout


def test_a_later_start_says_how_to_get_keys(blank_dsn):
    with running_server(blank_dsn) as first:
        assert set(first.keys) == {"write", "read"}
    with running_server(blank_dsn) as second:
        assert not second.keys
        assert any(KEYS_HINT in line for line in second.output)
