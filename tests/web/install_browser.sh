#!/usr/bin/env bash
# Installs what tests/web needs: Debian's Chromium and Playwright for Python.
# Playwright only drives the system Chromium; never run `playwright install`,
# which downloads a browser build of its own.
#
# Usage: tests/web/install_browser.sh [path/to/python]   (default: .venv/bin/python)
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
python="${1:-$here/.venv/bin/python}"

if ! command -v chromium >/dev/null 2>&1; then
    sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y chromium
fi

if ! "$python" -c "import playwright.async_api" >/dev/null 2>&1; then
    "$python" -m pip install --quiet playwright
fi

chromium --version
"$python" -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"
