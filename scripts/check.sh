#!/usr/bin/env bash
# The fast checks, before any test: lint (ruff), types (mypy) and the import rules (lint-imports), all configured
# in pyproject.toml. Fails on the first error. Under 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
BIN="$(dirname "$PY")"
step() {  # step NAME COMMAND...: run it and say how long it took
  local name="$1" start=$SECONDS; shift
  echo "== $name"
  "$@"
  echo "== $name: ok in $((SECONDS - start)) s"
}
step "ruff (lint)" "$BIN/ruff" check .
step "mypy (types)" "$BIN/mypy"
step "lint-imports (import rules)" "$BIN/lint-imports"
