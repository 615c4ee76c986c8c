"""docs/operations.md keeps up with the code: every setting is in it, everything it names as
a setting, variable, metric or alert exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from clickstream.config import SETTINGS
from clickstream.metrics import exposed_names

ROOT = Path(__file__).parent.parent
GUIDE = (ROOT / "docs" / "operations.md").read_text()
KEYS = {s.key for s in SETTINGS}
SECTIONS = {key.split(".")[0] for key in KEYS if "." in key}
# Variables that are not settings but that the guide may name.
OTHER_VARIABLES = {"CLICKSTREAM_CONFIG"}


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_is_in_the_guide(setting):
    assert f"`{setting.key}`" in GUIDE
    assert f"`{setting.env}`" in GUIDE


def test_every_setting_the_guide_names_exists():
    named = {
        token
        for token in re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", GUIDE)
        if token.split(".")[0] in SECTIONS and "." in token or token.endswith("_dir")
    }
    assert named, "the guide names no setting"
    assert named - KEYS == set()
    variables = set(re.findall(r"\bCLICKSTREAM_[A-Z0-9_]+\b", GUIDE))
    files = {s.file_env for s in SETTINGS if s.secret}
    assert variables - {s.env for s in SETTINGS} - files - OTHER_VARIABLES == set()


def test_every_metric_the_guide_names_exists_and_every_metric_is_explained():
    named = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for name in re.findall(r"\bclickstream_[a-z_]+\b", GUIDE)
    }
    assert named == exposed_names()


def test_every_alert_is_explained():
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {name for name in re.findall(r"`(Clickstream[A-Za-z]+)`", GUIDE)} == alerts
