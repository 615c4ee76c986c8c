"""The reference pages, generated from the code at every build so that they cannot drift.

A page of the site asks for a generated part with a marker line, e.g.
`<!-- reference:commands -->` (and, for readers of the Markdown source, a one-line note and
`<!-- /reference -->`); this MkDocs hook replaces it with what the code declares: every
command and option (from `clickstream.cli.build_parser`), every setting
(`clickstream.config.SETTINGS`, with the operators' notes of `setting_notes.yml`), every
metric (`clickstream.metrics`), every alert (`deploy/prometheus/alerts.yml`) and the HTTP
API (the FastAPI app's OpenAPI schema). The suite imports this module too
(tests/test_docs.py) to check the pages against the code.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTES = Path(__file__).with_name("setting_notes.yml")
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# `<!-- reference:NAME -->`, optionally followed by one line for readers of the Markdown source
# (on GitHub, say) and `<!-- /reference -->`.
MARKER = re.compile(
    r"^<!-- reference:([a-z-]+) -->$(?:\n[^\n]*\n<!-- /reference -->$)?", re.MULTILINE
)


# -- commands ---------------------------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command of the parser, depth first: ((), the top), (("up",), its parser), ..."""
    if parser is None:
        from clickstream.cli import build_parser

        parser = build_parser()
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, (*path, name))
    return found


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.option_strings:
            metavar = action.metavar or (action.dest.upper() if action.nargs != 0 else "")
            if action.choices and not action.metavar:
                metavar = "{" + ",".join(map(str, action.choices)) + "}"
            names = ", ".join(f"`{option}`" for option in action.option_strings)
            shown = f"{names} `{metavar}`" if metavar and action.nargs != 0 else names
        else:
            shown = f"`{action.metavar or action.dest}`"
        help_text = action.help if action.help != argparse.SUPPRESS else ""
        if help_text and "%(default)" in help_text:
            help_text = help_text % {"default": action.default, "prog": parser.prog}
        rows.append(f"| {shown} | {_cell(help_text)} |")
    return rows


def commands_markdown() -> str:
    parts = []
    for path, parser in commands():
        if not path:
            continue
        title = " ".join(("clickstream", *path))
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        usage = parser.format_usage().removeprefix("usage: ").strip()
        usage = re.sub(r"\s+", " ", usage)
        parts.append(f"## `{title}` {{#{'-'.join(path)}}}\n")
        if parser.description:
            parts.append(f"{parser.description}\n")
        parts.append(f"```text\n{usage}\n```\n")
        if subcommands:
            names = ", ".join(
                f"[`{name}`](#{'-'.join((*path, name))})" for a in subcommands for name in a.choices
            )
            parts.append(f"Subcommands: {names}.\n")
        rows = _option_rows(parser)
        if rows:
            parts.append("| argument | meaning |\n| --- | --- |\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def global_options_markdown() -> str:
    _, top = commands()[0]
    return "| argument | meaning |\n| --- | --- |\n" + "\n".join(_option_rows(top)) + "\n"


# -- settings ---------------------------------------------------------------------------------


def setting_notes() -> dict[str, str]:
    """The operators' notes of each setting (what to decide with it), by key."""
    return yaml.safe_load(NOTES.read_text()) or {}


def _default(value) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def settings_markdown() -> str:
    from clickstream.config import SETTINGS

    notes = setting_notes()
    parts = []
    section = None
    for setting in SETTINGS:
        current = setting.key.split(".")[0] if "." in setting.key else "top level"
        if current != section:
            section = current
            title = f"`{section}:`" if section != "top level" else "Top level"
            parts.append(f"\n## {title}\n\n| setting | default | meaning |\n| --- | --- | --- |")
        meaning = setting.help.rstrip(".")
        if note := notes.get(setting.key):
            meaning = f"{meaning}. {note.strip()}"
        if setting.secret:
            meaning = (
                f"{meaning.rstrip('.')}. A secret: also read from the file named by"
                f" `{setting.file_env}`, never printed."
            )
        parts.append(
            f"| `{setting.key}`<br>`{setting.env}` | {_default(setting.default)} "
            f"| {_cell(meaning)} |"
        )
    return "\n".join(parts).strip() + "\n"


# -- metrics and alerts -----------------------------------------------------------------------


def metrics() -> list[tuple[str, str, tuple[str, ...], str]]:
    """(name as scraped, type, labels, help) of every metric the code can expose."""
    from clickstream.metrics import exposed_registry

    registry = exposed_registry()
    declared_labels = {
        getattr(collector, "_name", None): tuple(getattr(collector, "_labelnames", ()))
        for collector in list(registry._collector_to_names)
    }
    found = []
    for family in registry.collect():
        labels = declared_labels.get(family.name) or tuple(
            dict.fromkeys(key for sample in family.samples for key in sample.labels if key != "le")
        )
        name = f"{family.name}_total" if family.type == "counter" else family.name
        found.append((name, family.type, labels, family.documentation))
    return sorted(found)


def metrics_markdown() -> str:
    rows = [
        f"| `{name}` | {kind} | {', '.join(f'`{label}`' for label in labels)} | {_cell(text)} |"
        for name, kind, labels, text in metrics()
    ]
    return (
        "| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )


def alerts() -> list[dict]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def alerts_markdown() -> str:
    parts = []
    for rule in alerts():
        severity = rule.get("labels", {}).get("severity", "")
        summary = rule.get("annotations", {}).get("summary", "")
        parts.append(
            f"### `{rule['alert']}`\n\n"
            f"Severity `{severity}`, fires after `{rule.get('for', '0s')}`: {_cell(summary)}\n\n"
            f"```promql\n{rule['expr'].strip()}\n```\n"
        )
    return "\n".join(parts)


# -- the HTTP API -----------------------------------------------------------------------------


def openapi() -> dict:
    """The OpenAPI schema of `clickstream serve`'s app, built without starting it."""
    from clickstream.api.app import create_app
    from clickstream.config import load_settings

    empty = ROOT / "tests" / "empty-config.yml"
    settings = load_settings(empty, env={"CLICKSTREAM_DATA_DIR": "/nonexistent"})
    return create_app(settings).openapi()


def _parameter_rows(operation: dict) -> list[str]:
    rows = []
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        bounds = [
            f"{word} {schema[key]}"
            for key, word in (
                ("minimum", "min"),
                ("maximum", "max"),
                ("minLength", "min length"),
                ("maxLength", "max length"),
                ("default", "default"),
            )
            if key in schema
        ]
        rows.append(
            f"| `{parameter['name']}` | {parameter['in']} | {schema.get('type', '')} "
            f"| {'yes' if parameter.get('required') else 'no'} | {_cell(', '.join(bounds))} "
            f"| {_cell(parameter.get('description', ''))} |"
        )
    return rows


def _shape(schema: dict, schemas: dict, depth: int = 0) -> str:
    """A JSON schema as a compact sketch of the document: `{"user_id": string, ...}`."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
    if schema.get("type") == "array":
        return f"[{_shape(schema.get('items', {}), schemas, depth + 1)}, ...]"
    if "properties" in schema and depth < 4:
        fields = ", ".join(
            f'"{name}": {_shape(value, schemas, depth + 1)}'
            for name, value in schema["properties"].items()
        )
        return "{" + fields + "}"
    if "anyOf" in schema:
        return " or ".join(_shape(option, schemas, depth + 1) for option in schema["anyOf"])
    return schema.get("type", "object")


def _answers(operation: dict, schemas: dict) -> str:
    """A table of the answers: status, meaning and the shape of the JSON body."""
    rows = []
    for status, answer in operation.get("responses", {}).items():
        content = answer.get("content", {})
        body = ", ".join(
            f"`{_shape(c['schema'], schemas)}`" if "schema" in c else media
            for media, c in content.items()
        )
        rows.append(f"| `{status}` | {_cell(answer.get('description', ''))} | {_cell(body)} |")
    return "| answer | meaning | body |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n"


def http_api_markdown() -> str:
    schema = openapi()
    parts = []
    for route, methods in schema["paths"].items():
        for method, operation in methods.items():
            parts.append(f"## `{method.upper()} {route}`\n")
            if summary := operation.get("summary"):
                parts.append(f"**{summary}.**\n")
            if description := operation.get("description"):
                parts.append(f"{description.strip()}\n")
            if rows := _parameter_rows(operation):
                parts.append(
                    "| parameter | in | type | required | bounds | meaning |\n"
                    "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
                )
            parts.append(_answers(operation, schema.get("components", {}).get("schemas", {})))
    return "\n".join(parts)


GENERATORS = {
    "commands": commands_markdown,
    "global-options": global_options_markdown,
    "settings": settings_markdown,
    "metrics": metrics_markdown,
    "alerts": alerts_markdown,
    "http-api": http_api_markdown,
}


# -- the MkDocs hooks -------------------------------------------------------------------------


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each `<!-- reference:NAME -->` marker (and its note) with what the code
    declares."""

    def generated(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_uri}: no generator for reference:{name}")
        return GENERATORS[name]()

    return MARKER.sub(generated, markdown)


def on_files(files, config):
    """Publish the OpenAPI document beside the HTTP API page."""
    from mkdocs.structure.files import File

    files.append(
        File.generated(config, "reference/openapi.json", content=json.dumps(openapi(), indent=2))
    )
    return files
