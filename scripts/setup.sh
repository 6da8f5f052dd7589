#!/usr/bin/env bash
# Installs what fedmq needs on Debian/Ubuntu: Mosquitto, Fashion-MNIST, and a Python virtual environment.
# Usage: bash scripts/setup.sh [requirements file]   (idempotent; re-running is quick)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUIREMENTS="${1:-requirements.txt}"

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  # chromium and a font: the dashboard's browser test (tests/integration/test_dashboard.py), driven by Playwright.
  APT_PACKAGES="mosquitto mosquitto-clients dataset-fashion-mnist python3-venv chromium fonts-dejavu-core"
  missing=""
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "== apt-get install$missing"
    $SUDO apt-get update -qq
    # python3-venv may not exist when Python is not Debian's; install the rest anyway.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing \
      || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients dataset-fashion-mnist \
         chromium fonts-dejavu-core
  fi
  # Debian starts a system Mosquitto on port 1883; fedmq runs its own broker, so don't keep that one.
  if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
    echo "note: the system mosquitto service is running on port 1883; 'python -m broker' needs that port"
    echo "      (stop it with: sudo systemctl disable --now mosquitto), or use --port"
  fi
else
  echo "apt-get not found: install Mosquitto yourself (brew install mosquitto); without it the demo uses an"
  echo "embedded MQTT 3.1.1 broker. Fashion-MNIST is then downloaded by Keras on first use."
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(cat "$REQUIREMENTS" requirements/*.txt | sha256sum | cut -c1-16)"  # includes -r files
if [ ! -f "$stamp" ]; then
  echo "== pip install -r $REQUIREMENTS"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r "$REQUIREMENTS"
  touch "$stamp"
fi
echo "== set-up done"
