"""Stress scenarios: pytest rewrites the asserts of their shared modules too."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite(
    "tests.stress.scenarios", "tests.stress.fuzz", "tests.stress.peers", "tests.stress.leaks"
)
