"""The `clickstream` command as a user meets it: help, errors, exit codes, files it writes.

Errors are checked in a subprocess, as a user would see them: one line on stderr, the right
exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import settings_env

from clickstream.cli import build_parser, main
from clickstream.config import load_settings
from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.raw import Kind, RawEvent

EMPTY_CONFIG = Path(__file__).parent / "empty-config.yml"


def run_cli(settings, *args: str, env_update: dict[str, str] | None = None):
    """`clickstream ARGS` in a subprocess with these settings, plus a few variables."""
    return subprocess.run(
        [sys.executable, "-m", "clickstream", *args],
        env=settings_env(settings) | (env_update or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def fresh(tmp_path):
    """Settings on a fresh, empty data directory: no embedded service runs there."""
    return load_settings(EMPTY_CONFIG, env={"CLICKSTREAM_DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
def ndjson(tmp_path) -> Path:
    path = tmp_path / "views.json"
    path.write_bytes(
        b'{"event": "ProductView", "messageid": "m-1", "userid": "user-1",'
        b' "properties": {"productid": "product-1"}, "context": {"source": "ios"}}\n'
    )
    return path


@pytest.fixture
def catalog_csv(tmp_path) -> Path:
    path = tmp_path / "catalog.csv"
    path.write_text("productid,categoryid\nproduct-1,category-1\n")
    return path


def assert_one_line_error(result, code: int) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- help --------------------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every command path of the parser, nested ones included: ('catalog', 'load'), ..."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


COMMANDS = [path for path, _ in _commands(build_parser())]


def test_the_contract_commands_exist():
    for path in [
        ("up",),
        ("down",),
        ("status",),
        ("generate",),
        ("catalog", "load"),
        ("produce",),
        ("consume",),
        ("demo",),
        ("bench", "ingest"),
    ]:
        assert path in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_of_every_command_explains_it_and_every_option(path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: clickstream {' '.join(path)}")
    parser = dict(_commands(build_parser()))[path]
    assert parser.description and len(parser.description.split()) >= 3
    assert " ".join(parser.description.split()[:3]) in " ".join(out.split())
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help, f"{' '.join(path)} {action.option_strings} has no help"


def test_help_of_the_command_itself_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in ["up", "down", "status", "generate", "catalog", "produce", "consume", "demo"]:
        assert re.search(rf"^\s+{name}\s+\S", out, re.MULTILINE), name


def test_no_command_prints_the_help_and_exits_2(fresh):
    result = run_cli(fresh)
    assert result.returncode == 2
    assert "usage: clickstream" in result.stdout
    assert "Traceback" not in result.stderr


def test_help_works_in_a_subprocess(fresh):
    result = run_cli(fresh, "produce", "--help")
    assert result.returncode == 0 and "--max-speed" in result.stdout and result.stderr == ""


# -- bad arguments: one line, exit 2 -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["generate"], "--out"),
        (["generate", "--out", "x", "--views", "ten"], "expected a whole number, got 'ten'"),
        (["generate", "--out", "x", "--users", "0"], "at least 1"),
        (["generate", "--out", "x", "--orders", "-3"], "at least 0"),
        (["generate", "--out", "x", "--seed", "1.5"], "--seed"),
        (["produce", "{missing}", "--topic", "t"], "no such file"),
        (["produce", "{ndjson}"], "--topic"),
        (["produce", "{ndjson}", "--topic", "t", "--rate", "-5"], "greater than 0"),
        (["produce", "{ndjson}", "--topic", "t", "--rate", "0"], "greater than 0"),
        (["produce", "{ndjson}", "--topic", "t", "--rate", "nan"], "greater than 0"),
        (["produce", "{ndjson}", "--topic", "t", "--rate", "fast"], "expected a number"),
        (["produce", "{ndjson}", "--topic", "t", "--limit", "-1"], "at least 0"),
        (
            ["produce", "{ndjson}", "--topic", "t", "--rate", "5", "--max-speed"],
            "not allowed with argument",
        ),
        (["consume", "--until-idle", "soon"], "expected a number"),
        (["consume", "--until-idle", "-1"], "greater than 0"),
        (["consume", "extra"], "unrecognized arguments"),
        (["catalog"], "choose an action"),
        (["catalog", "load"], "FILE"),
        (["catalog", "load", "{missing}"], "no such file"),
        (["catalog", "unload", "{catalog_csv}"], "invalid choice"),
        (["bench"], "choose a benchmark"),
        (["bench", "ingest", "--events", "many"], "expected a whole number"),
        (["demo", "--duration", "0"], "greater than 0"),
        (["serve", "--port", "70000"], "from 0 to 65535"),
        (["status", "--bogus"], "unrecognized arguments"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_bad_argument_is_one_line_on_stderr_and_exit_2(
    fresh, tmp_path, ndjson, catalog_csv, args, expected
):
    paths = {
        "missing": str(tmp_path / "missing.json"),
        "ndjson": ndjson,
        "catalog_csv": catalog_csv,
    }
    result = run_cli(fresh, *[a.format(**paths) for a in args])
    line = assert_one_line_error(result, 2)
    assert line.startswith("clickstream")
    assert expected in line
    assert result.stdout == ""


def test_a_bad_setting_is_one_line_naming_it_and_exit_2(fresh):
    result = run_cli(fresh, "status", env_update={"CLICKSTREAM_KAFKA_PARTITIONS": "zero"})
    line = assert_one_line_error(result, 2)
    assert "CLICKSTREAM_KAFKA_PARTITIONS='zero'" in line


def test_a_missing_config_file_is_one_line_and_exit_2(fresh, tmp_path):
    result = run_cli(fresh, "--config", str(tmp_path / "nope.yml"), "status")
    line = assert_one_line_error(result, 2)
    assert "nope.yml does not exist" in line


def test_a_bad_key_in_the_config_file_is_one_line_and_exit_2(fresh, tmp_path):
    config = tmp_path / "typo.yml"
    config.write_text("api:\n  prot: 8080\n")
    result = run_cli(fresh, "--config", str(config), "status")
    line = assert_one_line_error(result, 2)
    assert line == (
        f"clickstream: error: {config}: unknown setting 'api.prot'; did you mean 'api.port'?"
    )


def test_a_misspelt_variable_is_one_line_naming_the_right_one_and_exit_2(fresh):
    result = run_cli(
        fresh, "consume", env_update={"CLICKSTREAM_KAFKA_BOOTSTRAP_SERVER": "kafka:9092"}
    )
    line = assert_one_line_error(result, 2)
    assert line == (
        "clickstream: error: unknown setting CLICKSTREAM_KAFKA_BOOTSTRAP_SERVER;"
        " did you mean CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS?"
    )


def test_a_bootstrap_that_is_not_host_port_is_one_line_and_exit_2(fresh):
    result = run_cli(
        fresh, "consume", env_update={"CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": "not a host:port:"}
    )
    line = assert_one_line_error(result, 2)
    assert "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS='not a host:port:'" in line
    assert "expected host:port[,host:port...]" in line


# -- services down -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["consume", "--until-idle", "1"],
        ["produce", "{ndjson}", "--topic", "t", "--max-speed"],
        ["catalog", "load", "{catalog_csv}"],
    ],
    ids=lambda v: v[0],
)
def test_a_command_needing_services_says_to_run_up_when_they_are_down(
    fresh, ndjson, catalog_csv, args
):
    result = run_cli(fresh, *[a.format(ndjson=ndjson, catalog_csv=catalog_csv) for a in args])
    line = assert_one_line_error(result, 1)
    assert "run `clickstream up`" in line


def test_consume_against_a_closed_port_is_one_line_and_exit_1(fresh):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli(
        fresh,
        "consume",
        env_update={
            "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "CLICKSTREAM_DATABASE_URL": f"postgresql://u@127.0.0.1:{port}/db",
        },
    )
    line = assert_one_line_error(result, 1)
    assert line == (
        f"clickstream: error: cannot reach the Kafka broker at 127.0.0.1:{port}:"
        f" Connect to ipv4#127.0.0.1:{port} failed: Connection refused"
    )


def test_status_exits_3_and_says_stopped_when_nothing_runs(fresh):
    result = run_cli(fresh, "status")
    assert result.returncode == 3, result.stderr
    assert re.search(r"^broker\s+stopped", result.stdout, re.MULTILINE)
    assert re.search(r"^database\s+stopped", result.stdout, re.MULTILINE)
    assert "Traceback" not in result.stderr


def test_down_with_nothing_running_says_so(fresh):
    result = run_cli(fresh, "down")
    assert result.returncode == 0 and "nothing was running" in result.stdout


def test_status_exits_0_and_shows_addresses_when_the_services_run(services):
    result = run_cli(services, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^broker\s+running\s+127\.0\.0\.1:\d+$", result.stdout, re.MULTILINE)
    assert re.search(r"^database\s+running\s+postgresql://", result.stdout, re.MULTILINE)
    assert "in memory" in result.stdout


def test_status_with_external_services_hides_the_password(fresh):
    result = run_cli(
        fresh,
        "status",
        env_update={
            "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092",
            "CLICKSTREAM_DATABASE_URL": "postgresql://app:s3cret@db.example:5432/clicks",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "external Kafka" in result.stdout and "kafka-1:9092" in result.stdout
    assert "postgresql://app:***@db.example:5432/clicks" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr


# -- generate ----------------------------------------------------------------------------------

SMALL = ["--users", "60", "--products", "80", "--categories", "6", "--views", "3000"]
FILES = ("product-views.json", "orders.json", "product-category-map.csv")


def _generate(settings, out: Path, seed: int, orders: int = 400) -> dict[str, bytes]:
    result = run_cli(
        settings,
        "generate",
        "--out",
        str(out),
        *SMALL,
        "--orders",
        str(orders),
        "--seed",
        str(seed),
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 3,000 views" in result.stdout
    return {name: (out / name).read_bytes() for name in FILES}


def test_generate_is_deterministic_for_a_seed_and_differs_across_seeds(fresh, tmp_path):
    first = _generate(fresh, tmp_path / "a", seed=5)
    again = _generate(fresh, tmp_path / "b", seed=5)
    other = _generate(fresh, tmp_path / "c", seed=6)
    for name in FILES:
        assert first[name] == again[name], name
    assert first["product-views.json"] != other["product-views.json"]
    assert first["orders.json"] != other["orders.json"]


VIEW_LINE = re.compile(
    r'\{"event": "ProductView", "messageid": "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-'
    r'[0-9a-f]{12}", "userid": "user-[1-9]\d*", "properties": \{"productid": "product-[1-9]\d*"\},'
    r' "context": \{"source": "[a-z-]+"\}\}'
)
ORDER_LINE = re.compile(
    r'\{"event": "OrderEvent", "messageid": "[0-9a-f-]{36}", "userid": "user-[1-9]\d*", '
    r'"lineitems": \[\{"productid": "product-[1-9]\d*", "quantity": [1-9]\d*\}'
    r'(, \{"productid": "product-[1-9]\d*", "quantity": [1-9]\d*\})*\], "orderid": \d+\}'
)


def test_generate_writes_exactly_the_source_formats(fresh, tmp_path):
    files = _generate(fresh, tmp_path / "out", seed=11)
    views = files["product-views.json"].decode().split("\n")
    orders = files["orders.json"].decode().split("\n")
    assert views[-1] == "" and orders[-1] == ""  # newline-terminated, one event a line
    views, orders = views[:-1], orders[:-1]
    assert len(views) == 3000 and len(orders) == 400
    for line in views:
        assert VIEW_LINE.fullmatch(line), line
    for line in orders:
        assert ORDER_LINE.fullmatch(line), line
    catalog = files["product-category-map.csv"].decode().split("\n")
    assert catalog[0] == "productid,categoryid" and catalog[-1] == ""
    assert {line for line in catalog[1:-1]} == {
        line for line in catalog[1:-1] if re.fullmatch(r"product-\d+,category-\d+", line)
    }
    assert len(catalog) - 2 == 80


def test_generated_events_are_all_valid_and_shaped_like_a_marketplace(fresh, tmp_path):
    files = _generate(fresh, tmp_path / "out", seed=12)
    view_lines = files["product-views.json"].splitlines()
    order_lines = files["orders.json"].splitlines()
    raw = [RawEvent(Kind.VIEW, "v", 0, i, line, None) for i, line in enumerate(view_lines)]
    raw += [RawEvent(Kind.ORDER, "o", 0, i, line, None) for i, line in enumerate(order_lines)]
    batch = clean_batch(raw)
    assert batch.rejects == []
    assert len({v.messageid for v in batch.views}) == 3000
    assert batch.orders == 400 and len({o.orderid for o in batch.order_lines}) == 400

    with open(tmp_path / "out" / "product-category-map.csv", newline="") as handle:
        catalog = dict(list(csv.reader(handle))[1:])
    assert {v.productid for v in batch.views} <= set(catalog)
    assert len(set(catalog.values())) == 6

    per_product: dict[str, int] = {}
    for view in batch.views:
        per_product[view.productid] = per_product.get(view.productid, 0) + 1
    top_tenth = sorted(per_product.values(), reverse=True)[:8]
    assert sum(top_tenth) > 0.3 * 3000, "product popularity should be skewed"
    assert len({v.source for v in batch.views}) >= 3

    viewed = {(v.userid, v.productid) for v in batch.views}
    of_viewed = sum((o.userid, o.productid) in viewed for o in batch.order_lines)
    assert of_viewed > 0.7 * len(batch.order_lines), "orders are mostly of viewed products"
    assert {orjson.loads(line)["event"] for line in order_lines} == {"OrderEvent"}


# -- catalog load ------------------------------------------------------------------------------


def _catalog(pipeline) -> dict[str, str]:
    return dict(pipeline.query("SELECT productid, categoryid FROM products"))


def test_catalog_load_upserts(pipeline, tmp_path):
    first = tmp_path / "first.csv"
    first.write_text("productid,categoryid\nproduct-1,category-1\nproduct-2,category-1\n")
    result = pipeline.cli("catalog", "load", str(first))
    assert result.returncode == 0, result.stderr
    assert "loaded 2 products" in result.stdout and "(2 new or changed)" in result.stdout

    second = tmp_path / "second.csv"
    second.write_text(
        "productid,categoryid\nproduct-2,category-9\nproduct-3,category-3\nproduct-1,category-1\n"
    )
    result = pipeline.cli("catalog", "load", str(second))
    assert result.returncode == 0, result.stderr
    assert "(2 new or changed)" in result.stdout
    assert _catalog(pipeline) == {
        "product-1": "category-1",
        "product-2": "category-9",
        "product-3": "category-3",
    }

    result = pipeline.cli("catalog", "load", str(second))
    assert result.returncode == 0 and "(0 new or changed)" in result.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"productid,categoryid\nproduct-5,category-5\nproduct-6,\n",
            "line 4: categoryid is empty",
        ),
        (b"productid,categoryid\nproduct-5,category-5,extra\n", "line 3: expected 2 fields"),
        (b"productid,categoryid\nproduct-5,cat\x01egory\n", "control characters"),
        (b"productid,categoryid\n" + b"p" * 129 + b",c\n", "longer than 128"),
        (b"product,category\nproduct-5,category-5\n", "header 'productid,categoryid'"),
        (b"", "header"),
        (b"productid,categoryid\nproduct-\xff,category-5\n", "not UTF-8"),
    ],
    ids=["empty-field", "three-fields", "control-char", "too-long", "bad-header", "empty", "utf8"],
)
def test_catalog_load_validates_the_whole_file_and_loads_nothing_if_a_line_is_bad(
    pipeline, tmp_path, content, expected
):
    good = tmp_path / "good.csv"
    good.write_text("productid,categoryid\nproduct-1,category-1\n")
    assert pipeline.cli("catalog", "load", str(good)).returncode == 0
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content.replace(b"\n", b"\nproduct-1,category-7\n", 1) if content else b"")
    result = pipeline.cli("catalog", "load", str(bad))
    line = assert_one_line_error(result, 2)
    assert expected in line
    assert _catalog(pipeline) == {"product-1": "category-1"}, "nothing may be loaded"


def test_catalog_load_lists_every_bad_line_count(pipeline, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("productid,categoryid\n" + "".join(f"p-{i},\n" for i in range(8)))
    line = assert_one_line_error(pipeline.cli("catalog", "load", str(bad)), 2)
    assert "8 bad lines" in line and "(and 3 more)" in line
