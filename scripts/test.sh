#!/usr/bin/env bash
# Set everything up on a fresh machine (Python 3.11) and run lint, types and tests.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,bench]' -e clients/python

# System packages the end-to-end tests use: Debian's chromium (browser tests) and
# redis-server (cluster tests start their own on a free port). Installed only when
# missing and possible.
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing ${need[*]} from Debian's packages"
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null || \
    echo "could not install ${need[*]}; the tests that need them will skip with a reason"
fi

# nginx and haproxy check the proxy recipes in deploy/ (tests/test_deploy.py).
proxies=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || proxies+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || proxies+=(haproxy)
if [ ${#proxies[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing ${proxies[*]} from Debian's packages"
  { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends \
      "${proxies[@]}" >/dev/null; } || \
    echo "could not install ${proxies[*]}; the tests that need them will skip with a reason"
fi

# The JavaScript client (clients/js): Node from Debian's packages when missing,
# then the locked npm packages. tests/js/test_js_client.py runs `tsc --noEmit`
# and `node --test` inside pytest, so a failing JS test fails this script.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing nodejs npm from Debian's packages"
    apt-get update -qq >/dev/null && apt-get install -y -qq nodejs npm >/dev/null || \
      echo "could not install nodejs npm; the JavaScript client tests will skip with a reason"
  fi
fi
if command -v npm >/dev/null 2>&1; then
  (cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict
ulimit -n 65536 2>/dev/null || true
.venv/bin/python -m pytest -q "$@"
