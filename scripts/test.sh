#!/usr/bin/env bash
# Sets up pcattn (scripts/setup.sh) and runs the test suite in two processes. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
set +e
# Two pytest workers (pytest-xdist): the tests are small and single-threaded, so two of them keep two
# cores busy; the suite takes 6-8 minutes on a 2-core machine. --durations lists the slowest tests.
python -m pytest -q -n 2 --durations=15 "$@"
status=$?
set -e
# pytest exits 5 when it collected no test: that is a failure for us, not a pass.
exit $status
