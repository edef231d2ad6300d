#!/bin/sh
# Install the go-libp2p daemon (p2pd, go-libp2p v0.32.1) used by tests/interop/test_go.py.
#
# The binary ships inside the hivemind 1.1.12 wheel; we download that wheel with pip
# (no dependencies, nothing installed) and unpack only the daemon and its control
# protocol's .proto into tests/interop/go/bin/. Idempotent: a stamp records the version.
set -eu

VERSION=1.1.12
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
BIN=$HERE/bin
STAMP=$BIN/.installed-hivemind-$VERSION

if [ -f "$STAMP" ] && [ -x "$BIN/p2pd" ] && [ -f "$BIN/p2pd.proto" ]; then
    echo "p2pd already installed in $BIN (hivemind $VERSION)"
    exit 0
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM

"$PY" -m pip download --quiet --no-deps "hivemind==$VERSION" -d "$TMP"
WHEEL=$(ls "$TMP"/hivemind-"$VERSION"-*.whl)
mkdir -p "$BIN"
rm -f "$BIN"/.installed-hivemind-*
# Python's zipfile rather than unzip(1), which a fresh machine may not have.
"$PY" - "$WHEEL" "$BIN" <<'PYEOF'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    for name in ("hivemind/hivemind_cli/p2pd", "hivemind/proto/p2pd.proto"):
        (dest / pathlib.PurePosixPath(name).name).write_bytes(zf.read(name))
PYEOF
chmod 0755 "$BIN/p2pd"
"$BIN/p2pd" -help >/dev/null 2>&1 || {
    echo "install_p2pd.sh: $BIN/p2pd does not run on this machine" >&2
    exit 1
}
touch "$STAMP"
echo "p2pd installed in $BIN (hivemind $VERSION)"
