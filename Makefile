# p2pnode developer commands. `make test` and `make demo` work on a fresh Linux machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JS_DIR := tests/interop/js
JS_STAMP := $(JS_DIR)/node_modules/.installed
P2PD_STAMP := tests/interop/go/bin/.installed-hivemind-1.1.12

.PHONY: venv js-peer go-peer py-peer system-deps lint typecheck test test-fast demo demo-nat bench bench-setup bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fast]'
	touch $(STAMP)

venv: $(STAMP)

$(JS_STAMP): $(JS_DIR)/package.json
	cd $(JS_DIR) && npm install --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

js-peer: $(JS_STAMP)

# go-libp2p's p2pd daemon, unpacked from the hivemind 1.1.12 wheel.
$(P2PD_STAMP): tests/interop/go/install_p2pd.sh $(STAMP)
	PY=$(PY) sh tests/interop/go/install_p2pd.sh

go-peer: $(P2PD_STAMP)

# py-libp2p 0.8.1 (trio) for tests/interop/test_py.py: the benchmark's contender venv.
PY_PEER_STAMP := bench/.contenders/pylibp2p-venv/.installed

$(PY_PEER_STAMP): bench/contenders/install_pylibp2p.sh
	bash bench/contenders/install_pylibp2p.sh

py-peer: $(PY_PEER_STAMP)

lint: venv
	$(VENV)/bin/ruff check p2pnode tests bench
	$(VENV)/bin/ruff format --check p2pnode
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy

test: venv js-peer go-peer py-peer system-deps lint typecheck
	P2PNODE_REQUIRE_INTEROP=1 $(VENV)/bin/pytest -q

# nftables for the NAT and AutoNAT tests' namespaces (root; installed once if missing)
system-deps:
	@command -v nft >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables || echo "nftables not installed: the NAT tests will say why"

test-fast: venv
	$(VENV)/bin/pytest -q -x -m "not interop and not netns"

demo: venv
	$(PY) -m p2pnode.demo

# two agents behind two NATs: a relay, then a hole punch (namespaces + nftables; root)
demo-nat: venv system-deps
	$(PY) -m p2pnode.demo.nat

BENCH_STAMP := $(VENV)/.bench-installed
BENCH_JS_STAMP := bench/js/node_modules/.installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,fast,bench]'
	touch $(BENCH_STAMP)

$(BENCH_JS_STAMP): bench/js/package.json
	cd bench/js && npm install --no-audit --no-fund --loglevel=error
	touch $(BENCH_JS_STAMP)

# compileall: byte-compile p2pnode as pip does for a regular install (the editable one
# skips it); otherwise every process start measured would compile the sources again.
bench-setup: $(BENCH_STAMP) $(BENCH_JS_STAMP)
	bash bench/contenders/install_pylibp2p.sh
	$(PY) -m compileall -q p2pnode

bench: bench-setup
	$(PY) -m bench.run

bench-quick: bench-setup
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) $(JS_DIR)/node_modules tests/interop/go/bin .mypy_cache .ruff_cache .pytest_cache
