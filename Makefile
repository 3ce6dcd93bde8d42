# Two commands: `make run` and `make test`. Everything else is installed by `make install`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install run test bench sysdeps clean interop web chromium nettools

sysdeps:
	@command -v cc >/dev/null 2>&1 || { echo "A C compiler is needed to build fastecdsa (libp2p): apt-get install -y build-essential" >&2; exit 1; }
	@{ test -e /usr/include/gmp.h || test -e /usr/include/x86_64-linux-gnu/gmp.h || test -e /usr/include/aarch64-linux-gnu/gmp.h; } || { echo "libgmp-dev is missing (fastecdsa, pulled in by libp2p, builds against it): apt-get install -y libgmp-dev" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is needed ($(PYTHON) is older)" >&2; exit 1; }

# Re-runs only when pyproject.toml changes. torch goes first and pinned, so pip takes the CPU
# wheel here instead of resolving an unpinned torch with gigabytes of CUDA packages.
$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory sysdeps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The js-libp2p peer of tests/interop (js-libp2p 3; Node 22 itself comes from npm, pinned in
# package.json). Best effort: without npm or a registry the interop tests skip and say why.
INTEROP := tests/interop
$(INTEROP)/node_modules/.installed: $(INTEROP)/package.json
	@if command -v npm >/dev/null 2>&1; then \
	  (cd $(INTEROP) && npm ci --no-audit --no-fund --loglevel=error) && touch $@ \
	  || echo "npm install in $(INTEROP) failed; the interop tests will skip" >&2; \
	else echo "npm not found; the interop tests (js-libp2p peer) will skip" >&2; fi

interop: $(INTEROP)/node_modules/.installed

# The network page's browser test (tests/web): Debian's chromium, driven by playwright-core from
# npm (which downloads no browser). Best effort: without them that test skips and says why.
WEB := tests/web
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM) missing: apt-get install -y chromium (for tests/web)" >&2; \
	  apt-get install -y chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; } \
	  || echo "installing chromium failed (it needs root and a Debian mirror; see above); the network page's browser test will skip" >&2; }

$(WEB)/node_modules/.installed: $(WEB)/package.json $(WEB)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  (cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error) && touch $@ \
	  || echo "npm ci in $(WEB) failed; the network page's browser test will skip" >&2; \
	else echo "npm not found; the network page's browser test will skip" >&2; fi

web: chromium $(WEB)/node_modules/.installed

# The NAT test (tests/network/test_nat.py) masquerades with iptables inside a network namespace.
# Best effort: without it (or without root) that test skips and says why.
nettools:
	@command -v iptables >/dev/null 2>&1 || { echo "iptables missing: apt-get install -y iptables (for the NAT test)" >&2; \
	  apt-get install -y -qq iptables >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq iptables >/dev/null 2>&1; } \
	  || echo "installing iptables failed (it needs root and a Debian mirror); the NAT test will skip" >&2; }

# A full peer: MCP over streamable HTTP on 127.0.0.1:$(PORT), libp2p on all interfaces, mDNS on.
# Private: the first start creates <data dir>/swarm.key; `ipfs-accelerate p2p invite` prints the
# line another machine joins with (`make run ARGS="--join INVITE"`, or `p2p start --join INVITE`).
PORT ?= 8000
ARGS ?=
run: install
	HF_HUB_OFFLINE=1 $(BIN)/ipfs-accelerate mcp serve --transport http --host 127.0.0.1 --port $(PORT) $(ARGS)

test: install interop web nettools
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -ra --durations=40 $(PYTEST_ARGS)

bench: install interop
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis $(INTEROP)/node_modules $(WEB)/node_modules $(WEB)/artifacts
