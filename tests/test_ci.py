"""The suite's own rule for missing dependencies: skipped on a laptop, failed in CI."""

from __future__ import annotations

import conftest
import pytest


def test_a_missing_dependency_skips_outside_ci(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="no browser here"):
        conftest.missing_dependency("no browser here")


def test_a_missing_dependency_fails_in_ci(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="no browser here, and CI=true"):
        conftest.missing_dependency("no browser here")
