#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the whole test suite: unit tests and real-process integration tests.
# Extra arguments go to pytest (e.g. tests/unit, -k codec, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
