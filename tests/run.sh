#!/usr/bin/env bash
# Sets up a fresh Debian machine for the tests (Docker, rsyslog, the package) and runs them all.
# Extra arguments go to pytest, e.g. `bash tests/run.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
export SHIPPER_COMPILE=${SHIPPER_COMPILE:-1}  # the suite runs the compiled hot path (tests/unit/test_build.py checks)
bash deploy/setup.sh --test
python3 -m ruff check shipper tests benchmarks
python3 -m mypy
if [ $# = 0 ]; then  # the compiled modules' pure-Python fallback, through their own unit tests
  SHIPPER_PURE_PYTHON=1 python3 -m pytest -q -p no:cacheprovider tests/unit/test_build.py tests/unit/transforms \
    tests/fuzz/test_jsonfile.py tests/unit/sinks/syslog \
    tests/unit/sources tests/unit/buffer/test_sizing.py tests/unit/buffer/test_memory.py
fi
if [ $# != 0 ]; then
  exec python3 -m pytest -ra -p no:cacheprovider "$@"
fi
python3 -m pytest -ra -p no:cacheprovider tests
# Every test that runs the daemon, again with two workers per daemon ([pipeline] workers; a test that sets
# its own workers keeps them). The image test is left out: the image runs with the environment it is given.
SHIPPER_PIPELINE_WORKERS=2 exec python3 -m pytest -ra -p no:cacheprovider tests/integration tests/unit/test_cli_run.py \
  tests/unit/test_cli_reload.py tests/unit/test_app_shutdown.py --deselect tests/integration/test_image.py
