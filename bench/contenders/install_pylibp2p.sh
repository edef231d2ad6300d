#!/usr/bin/env bash
# Installs the py-libp2p contender (PyPI package `libp2p`, pinned) into a git-ignored venv.
# Idempotent: a stamp in the venv records the pins it was installed with.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=bench/.contenders/pylibp2p-venv
PINS="libp2p==0.8.1"
STAMP="$VENV/.installed"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS" ]; then
  exit 0
fi
echo "installing the py-libp2p contender ($PINS) into $VENV" >&2
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -m pip install -q $PINS; then
  echo "error: could not install $PINS; the benchmark will report py-libp2p as missing" >&2
  exit 1
fi
echo "$PINS" > "$STAMP"
