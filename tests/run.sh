#!/usr/bin/env bash
# Sets up a fresh Debian machine for the tests (Docker, rsyslog, the package) and runs them all.
# Extra arguments go to pytest, e.g. `bash tests/run.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --test
python3 -m ruff check shipper tests benchmarks
python3 -m mypy
exec python3 -m pytest -ra -p no:cacheprovider "${@:-tests}"
