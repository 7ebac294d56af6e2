"""Fixtures of the ops tests: the Prometheus server binary (Debian package `prometheus`)."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def prometheus() -> str:
    """The path of the Prometheus server; skips on a developer machine without it, fails
    in CI (where .ci/run installs the package), as the `promtool` fixture does."""
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is missing in CI: .ci/run installs the prometheus package")
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    return found
