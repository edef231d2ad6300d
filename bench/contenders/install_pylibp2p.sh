#!/usr/bin/env bash
# Installs the py-libp2p contender (PyPI package `libp2p`, pinned) into a git-ignored venv,
# bench/.contenders/pylibp2p-venv, for bench/contenders/pylibp2p_bench.py.
# Idempotent: a stamp in the venv records the pins it was installed with; a second run with the
# same pins (and a venv that still imports them) does nothing.
# Usage, from anywhere: bash bench/contenders/install_pylibp2p.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=bench/.contenders/pylibp2p-venv
# libp2p pulls trio and multiaddr; they are pinned too because the contender imports them.
PINS="libp2p==0.8.1 trio==0.35.0 multiaddr==0.2.0"
PIP_PIN="pip==26.3"
STAMP="$VENV/.installed"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS" ] \
  && "$VENV/bin/python" -c "import libp2p, multiaddr, trio" 2>/dev/null; then
  echo "py-libp2p contender already installed ($PINS)" >&2
  exit 0
fi

echo "installing the py-libp2p contender ($PINS) into $VENV" >&2
mkdir -p "$(dirname "$VENV")"
if ! python3 -m venv "$VENV"; then
  echo "error: 'python3 -m venv $VENV' failed (is the venv module installed?)" >&2
  exit 1
fi
rm -f "$STAMP"
# a recent pip finds wheels for every dependency; an older one still works, so this may fail
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$PIP_PIN"; then
  echo "warning: could not install $PIP_PIN; going on with the venv's own pip" >&2
fi
# shellcheck disable=SC2086  # PINS is a list of requirement specifiers
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check $PINS; then
  echo "error: pip could not install $PINS into $VENV;" \
    "the benchmark will report py-libp2p as not installed" >&2
  exit 1
fi
if ! "$VENV/bin/python" -c "import libp2p, multiaddr, trio"; then
  echo "error: $PINS installed into $VENV but do not import" >&2
  exit 1
fi
echo "$PINS" >"$STAMP"
echo "py-libp2p contender installed ($PINS)" >&2
