#!/usr/bin/env bash
# Sets up pcattn (scripts/setup.sh) and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
set +e
python -m pytest -q "$@"
status=$?
set -e
# pytest exits 5 when it collected no test: that is a failure for us, not a pass.
exit $status
