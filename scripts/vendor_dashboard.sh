#!/usr/bin/env bash
# Re-vendors the dashboard's JavaScript libraries (coordinator/dashboard/static/vendor/) from npm:
# mqtt (MQTT.js, MIT) and @msgpack/msgpack (ISC), their browser bundles and licenses. Needs node and npm.
# The page never loads anything from a CDN: devices and test machines are offline.
# Usage: bash scripts/vendor_dashboard.sh [MQTT_VERSION] [MSGPACK_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
MQTT_VERSION="${1:-5.16.0}"
MSGPACK_VERSION="${2:-3.1.3}"
DEST=coordinator/dashboard/static/vendor
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --no-audit --no-fund --silent \
  "mqtt@$MQTT_VERSION" "@msgpack/msgpack@$MSGPACK_VERSION")
mkdir -p "$DEST"
cp "$work/node_modules/mqtt/dist/mqtt.min.js" "$DEST/mqtt.min.js"
cp "$work/node_modules/mqtt/LICENSE.md" "$DEST/LICENSE.mqtt.md"
cp "$work/node_modules/@msgpack/msgpack/dist.umd/msgpack.min.js" "$DEST/msgpack.min.js"
cp "$work/node_modules/@msgpack/msgpack/LICENSE" "$DEST/LICENSE.msgpack"
{
  echo "# Vendored JavaScript libraries of the dashboard page"
  echo
  echo "Made by \`bash scripts/vendor_dashboard.sh $MQTT_VERSION $MSGPACK_VERSION\` (npm registry); do not edit by hand."
  echo "The files are the packages' own builds, byte for byte (their source maps are not shipped)."
  echo
  echo "| file | package | version | license | sha256 |"
  echo "|---|---|---|---|---|"
  echo "| mqtt.min.js | [mqtt](https://github.com/mqttjs/MQTT.js) (dist/mqtt.min.js, global \`mqtt\`) | $MQTT_VERSION | MIT (LICENSE.mqtt.md; bundled dependencies keep their MIT/ISC notices inside the file) | $(sha256sum "$DEST/mqtt.min.js" | cut -c1-64) |"
  echo "| msgpack.min.js | [@msgpack/msgpack](https://github.com/msgpack/msgpack-javascript) (dist.umd/msgpack.min.js, global \`MessagePack\`) | $MSGPACK_VERSION | ISC (LICENSE.msgpack) | $(sha256sum "$DEST/msgpack.min.js" | cut -c1-64) |"
} > "$DEST/README.md"
ls -l "$DEST"
