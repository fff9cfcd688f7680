#!/usr/bin/env bash
# The product without the dev extras: build the wheel, install it with [cpu] only into a
# fresh venv, and run the commands a new operator runs first. Fails on any missing
# runtime dependency (an optional import at module level shows up here, not in make test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip wheel -q --no-deps -w "$work/dist" . 2>&1 | grep -v '^WARNING: Location' || true
wheel=$(ls "$work"/dist/aipg_node-*.whl)
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel[cpu]" 2>&1 | grep -v '^WARNING: Location' || true
bin="$work/venv/bin"
for dev in pytest hypothesis openai; do
  if "$bin/python" -c "import $dev" 2>/dev/null; then
    echo "check_install: $dev is installed without the dev extras" >&2; exit 1
  fi
done
export AIPG_DATA_DIR="$work/data"
"$bin/aipg-node" --version
"$bin/aipg-node" --help > /dev/null
"$bin/aipg-node" init
"$bin/aipg-node" models build-demo "$work/models" > /dev/null
"$bin/aipg-node" status --help > /dev/null
"$bin/aipg-node" devnet --help > /dev/null
echo "check_install: the wheel runs with [cpu] only"
