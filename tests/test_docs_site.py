"""The documentation site builds in strict mode: a broken link, a missing page or a failing
reference generator fails the suite, as it would fail `make docs`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import missing_dependency

ROOT = Path(__file__).parent.parent


def test_the_site_builds_strictly_with_every_reference_page(tmp_path):
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError:
        missing_dependency("mkdocs or mkdocs-material is not installed (the `docs` extra)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    commands = (site / "reference" / "commands" / "index.html").read_text()
    assert "clickstream dead-letters replay" in commands
    assert (
        "clickstream_ingest_events_total"
        in (site / "reference" / "metrics" / "index.html").read_text()
    )
    assert (
        "/api/users/{user_id}/recently-viewed"
        in (site / "reference" / "http-api" / "index.html").read_text()
    )
    assert (site / "reference" / "openapi.json").is_file()
    for page in site.glob("reference/*/index.html"):  # every marker and its note replaced
        assert "reference:" not in page.read_text()
        assert "Generated when the site is built" not in page.read_text()
