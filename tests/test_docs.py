"""The documentation keeps up with the code: the generated reference covers every command,
option and setting, config.yml lists every setting with its default, and no page names a
command, option or setting that does not exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from clickstream.config import SETTINGS

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
CONFIG_YML = (ROOT / "config.yml").read_text()
_spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "hooks" / "reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

COMMANDS = reference.commands()
PAGES = {
    path.relative_to(ROOT).as_posix(): path.read_text()
    for path in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
}
KEYS = {s.key for s in SETTINGS}
# Names the pages give that are other systems' settings, not ours.
OTHER_SETTINGS = {"retention.ms", "spark.archives", "spark.jars", "spark.pyspark", "spark.executor"}
# The misspelt variable the settings page shows being refused.
OTHER_VARIABLES = {
    "CLICKSTREAM_CONFIG",
    "CLICKSTREAM_SCREENSHOTS",
    "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVER",
}


@pytest.fixture(scope="module")
def commands_page() -> str:
    return reference.commands_markdown() + reference.global_options_markdown()


@pytest.fixture(scope="module")
def settings_page() -> str:
    return reference.settings_markdown()


@pytest.mark.parametrize(
    "path,parser",
    [pytest.param(path, parser, id=" ".join(path)) for path, parser in COMMANDS if path],
)
def test_every_command_and_option_is_in_the_command_reference(path, parser, commands_page):
    assert f"## `clickstream {' '.join(path)}`" in commands_page
    for action in parser._actions:
        for option in action.option_strings:
            if option != "--help" and option != "-h":
                assert f"`{option}`" in commands_page, f"{' '.join(path)} {option}"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_is_in_the_settings_reference(setting, settings_page):
    assert f"`{setting.key}`<br>`{setting.env}`" in settings_page
    assert setting.help.rstrip(".") in settings_page


def test_every_setting_note_is_of_a_setting():
    assert set(reference.setting_notes()) - KEYS == set()


COMMAND_LINE = re.compile(r"\bclickstream((?: -v)?(?: [a-z][a-z-]*)+(?: (?!clickstream\b)\S+)*)")


def _named_commands(text: str) -> list[tuple[str, ...]]:
    """Every `clickstream WORD [WORD] [--option ...]` a page shows, as the words typed."""
    found = []
    for line in text.splitlines():
        for match in re.finditer(
            r"\bclickstream((?: -v)?(?: [a-z][a-z-]*)+(?: (?!clickstream\b)\S+)*)", line
        ):
            found.append(tuple(match.group(1).split()))
    return found


def _resolve(words: tuple[str, ...]):
    """The parser the words reach, and the options typed to it; None if the first word is
    no command (prose such as "clickstream pipeline")."""
    known = {path: parser for path, parser in COMMANDS}
    path: tuple[str, ...] = ()
    rest = [w for w in words if w not in ("-v", "--verbose")]
    while rest and (*path, rest[0]) in known:
        path = (*path, rest.pop(0))
    if not path:
        return None
    options = [w.split("=")[0].rstrip("`),.;:") for w in rest if w.startswith("--")]
    return path, known[path], options


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_command_and_option_a_page_shows_exists(page):
    top_level = {path[0] for path, _ in COMMANDS if path}
    for words in _named_commands(PAGES[page]):
        if words[0] in top_level:
            resolved = _resolve(words)
            assert resolved, f"{page}: clickstream {' '.join(words)}"
            path, parser, options = resolved
            accepted = {o for action in parser._actions for o in action.option_strings}
            for option in options:
                if option.strip("`[]|") and re.fullmatch(r"--[a-z-]+", option):
                    assert option in accepted, f"{page}: clickstream {' '.join(path)} {option}"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_setting_a_page_names_exists(page):
    text = PAGES[page]
    sections = {key.split(".")[0] for key in KEYS if "." in key}
    named = {
        token
        for token in re.findall(r"`([a-z_]+\.[a-z_]+)`", text)
        if token.split(".")[0] in sections and token.split(".")[1] not in {"py", "yml", "md"}
    }
    assert named - KEYS - OTHER_SETTINGS == set(), page
    variables = set(re.findall(r"\bCLICKSTREAM_[A-Z0-9_]+\b", text))
    files = {s.file_env for s in SETTINGS if s.secret}
    assert variables - {s.env for s in SETTINGS} - files - OTHER_VARIABLES == set(), page


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


def test_the_readme_stays_short_and_points_at_the_docs():
    readme = PAGES["README.md"]
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme and "make docs" in readme
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        assert (ROOT / image).is_file(), image
