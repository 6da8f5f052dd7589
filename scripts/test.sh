#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs everything, fastest first: lint, types and import rules
# (scripts/check.sh), the unit tier (in process, no TensorFlow, under a minute), then the integration tier
# (real Mosquitto and processes, and the browser test). Stops at the first tier that fails.
# With arguments, runs only pytest with them (e.g. tests/unit, -m unit, -k codec, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
tier() {  # tier NAME COMMAND...
  local name="$1" start=$SECONDS; shift
  echo "== $name"
  "$@"
  echo "== $name: passed in $((SECONDS - start)) s"
}
tier "checks (ruff, mypy, lint-imports)" bash scripts/check.sh
tier "unit tests" .venv/bin/python -m pytest -m unit tests/unit
tier "integration and browser tests" .venv/bin/python -m pytest -m "not unit" --durations=25 tests
