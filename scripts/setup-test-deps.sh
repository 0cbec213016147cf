#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Linux host, and does nothing where it is present:
# a Rust toolchain with rustfmt and clippy, nats-server, a Python virtualenv with the test
# clients, and the official socket.io-client.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root to run: $*" >&2; exit 1; fi
}

apt_install() {
  command -v apt-get >/dev/null || { echo "setup: please install: $*" >&2; exit 1; }
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# Rust: rustup when cargo is missing.
if ! command -v cargo >/dev/null; then
  command -v curl >/dev/null || apt_install curl ca-certificates
# nats-server: tests/cluster_restart.rs runs a NATS of its own, to restart it under load.
command -v nats-server >/dev/null || apt_install nats-server
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
command -v cc >/dev/null || apt_install build-essential
# libFuzzer (the fuzz targets, scripts/fuzz.sh) is C++.
command -v c++ >/dev/null || apt_install g++
# curl runs the README's quick start in tests/quick_start.rs.
command -v curl >/dev/null || apt_install curl ca-certificates

# Python clients for tests/py.
command -v python3 >/dev/null || apt_install python3
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || { apt_install python3-venv; rm -rf .venv; python3 -m venv .venv; }
fi
if ! .venv/bin/python -c 'import websockets' 2>/dev/null \
   || ! cmp -s tests/py/requirements.txt .venv/.requirements 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r tests/py/requirements.txt
  cp tests/py/requirements.txt .venv/.requirements
fi
# Node and the official socket.io-client for tests/js.
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
if ! cmp -s tests/js/package-lock.json tests/js/node_modules/.imks-lock 2>/dev/null; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.imks-lock)
fi
echo "setup: test dependencies ready"
