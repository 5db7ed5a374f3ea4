"""The JavaScript client (clients/js): its type declarations and its Node tests.

The Node tests (`node --test`) start a real server themselves
(`tests/js/serve_for_node.py`); this wrapper makes them part of the pytest
run, so CI fails when they fail. `scripts/test.sh` installs Node and the npm
packages (`npm ci`); without Node the tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.support.server import REPO

JS = REPO / "clients" / "js"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        NODE is None or NPM is None, reason="no node/npm (apt-get install nodejs npm)"
    ),
]


def run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NPC_TEST_PYTHON": sys.executable}
    return subprocess.run(
        command, cwd=JS, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def packages() -> None:
    """The locked npm packages, installed once if scripts/test.sh did not."""
    if not (JS / "node_modules" / "typescript").exists():
        done = run(["npm", "ci", "--no-audit", "--no-fund"], timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr


def test_type_declarations_check(packages: None) -> None:
    """`tsc --noEmit` accepts the hand-written .d.ts and the typed usage example."""
    done = run(["npx", "--no-install", "tsc", "--noEmit"], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(400)
def test_node_suite_passes_against_a_real_server(packages: None) -> None:
    """Every `node --test` test of the client passes against a real npc-server."""
    files = sorted(str(path.relative_to(JS)) for path in (JS / "test").glob("*.test.js"))
    assert files, "no Node test files"
    done = run(["node", "--test", "--test-reporter=tap", *files], timeout=360)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "# fail 0" in output and "# pass 0" not in output, output[-2000:]
