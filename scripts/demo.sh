#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the demo: a broker, a coordinator and 2 edge clients on this machine.
# Extra arguments go to `python -m demo` (try --quick, --clients 3, --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m demo "$@"
