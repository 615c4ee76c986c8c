"""The README and config.yml keep up with the code: every setting, command and option."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from clickstream.cli import build_parser
from clickstream.config import SETTINGS

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
CONFIG_YML = (ROOT / "config.yml").read_text()


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(build_parser())


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_is_in_the_readme(setting):
    assert f"`{setting.key}`" in README
    assert f"`{setting.env}`" in README


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_is_in_config_yml_with_its_default(setting):
    section, _, name = setting.key.rpartition(".")
    lines = [line.strip("# ").rstrip() for line in CONFIG_YML.splitlines()]
    if section:
        assert f"{section}:" in lines
    assert any(line.startswith(f"{name}:") for line in lines), name


def test_config_yml_uncommented_is_the_defaults(tmp_path):
    """Uncommenting every line of config.yml must give a valid file of the defaults."""
    from clickstream.config import load_settings

    key_line = re.compile(r"^# ( *[a-z_]+:.*)$")
    text = "\n".join(
        match.group(1) for line in CONFIG_YML.splitlines() if (match := key_line.match(line))
    )
    values = yaml.safe_load(text)
    assert set(values) == {s.key.split(".")[0] for s in SETTINGS}
    path = tmp_path / "config.yml"
    path.write_text(text)
    defaults = load_settings(ROOT / "tests" / "empty-config.yml", env={})
    uncommented = load_settings(path, env={})
    for setting in SETTINGS:
        if setting.key != "data_dir":  # the YAML spells the home directory with ~
            assert getattr(uncommented, setting.attr) == getattr(defaults, setting.attr)


@pytest.mark.parametrize(
    "path,parser",
    [pytest.param(path, parser, id=" ".join(path)) for path, parser in COMMANDS if path],
)
def test_every_command_and_option_is_in_the_readme(path, parser):
    command = f"clickstream {' '.join(path)}"
    assert command in README or f"`{path[-1]}`" in README, f"{command} is not in the README"
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert option in README, f"{' '.join(path)} {option}"
