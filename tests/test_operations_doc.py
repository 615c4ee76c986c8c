"""The operators' pages keep up with the code: the monitoring guide explains every metric and
every alert and names no other, and the generated metrics reference lists exactly the
metrics the code exposes and the alerts Prometheus loads."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from clickstream.metrics import exposed_names

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
GUIDE = (DOCS / "how-to" / "monitor.md").read_text()
ALERT_NAMES = {
    rule["alert"]
    for group in yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())[
        "groups"
    ]
    for rule in group["rules"]
}
# Names the pages give that are not metrics: the database roles, the Airflow DAG's file and
# the table of the days a prune detached.
NOT_METRICS = {
    "clickstream_detached",
    "clickstream_owner",
    "clickstream_writer",
    "clickstream_reader",
    "clickstream_reports",
}
_spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "hooks" / "reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def _metric_names(text: str) -> set[str]:
    return {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for name in re.findall(r"\bclickstream_[a-z_]+\b(?!\.py)", text)
    }


def test_every_metric_the_guide_names_exists_and_every_metric_is_explained():
    assert _metric_names(GUIDE) == exposed_names()


def test_every_alert_is_explained_in_the_guide():
    assert set(re.findall(r"`(Clickstream[A-Za-z]+)`", GUIDE)) == ALERT_NAMES


def test_the_reference_lists_exactly_the_exposed_metrics_and_the_alerts():
    listed = reference.metrics_markdown()
    assert _metric_names(listed) == exposed_names()
    assert set(re.findall(r"### `(Clickstream[A-Za-z]+)`", reference.alerts_markdown())) == (
        ALERT_NAMES
    )


def test_no_page_names_a_metric_or_alert_that_is_gone():
    for path in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        text = path.read_text()
        assert _metric_names(text) - exposed_names() - NOT_METRICS == set(), path
        assert set(re.findall(r"\b(Clickstream[A-Z][A-Za-z]+)\b", text)) - ALERT_NAMES == set()
