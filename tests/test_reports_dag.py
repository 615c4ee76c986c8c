"""The Airflow DAG of the hourly reports: its shape, and that Airflow itself loads it.

Airflow is too heavy to share the project's environment, so `make test` builds it its own
virtualenv (`.airflow-venv`, or the interpreter named by AIRFLOW_PYTHON) and the
second test loads the DAG folder there with Airflow's own DagBag.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

from conftest import missing_dependency

ROOT = Path(__file__).resolve().parent.parent
DAG_FOLDER = ROOT / "deploy" / "airflow"
DAG_FILE = DAG_FOLDER / "clickstream_reports.py"
COMMAND = "clickstream report --hour {{ data_interval_start.strftime('%Y-%m-%dT%H') }}"


def _dag_call(tree: ast.Module) -> ast.Call:
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "DAG":
                    return call
    raise AssertionError("no `with DAG(...)` in the DAG file")


def test_the_dag_runs_the_report_command_hourly_with_catch_up():
    tree = ast.parse(DAG_FILE.read_text(), filename=str(DAG_FILE))
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert constants["REPORT_COMMAND"] == COMMAND
    kwargs = {k.arg: k.value for k in _dag_call(tree).keywords}
    assert ast.literal_eval(kwargs["catchup"]) is True
    assert ast.literal_eval(kwargs["dag_id"]) == "clickstream_reports"
    schedule = kwargs["schedule"]
    assert isinstance(schedule, ast.Call) and schedule.func.id == "CronDataIntervalTimetable"
    assert ast.literal_eval(schedule.args[0]) == "0 * * * *"
    assert {k.arg: ast.literal_eval(k.value) for k in schedule.keywords} == {"timezone": "UTC"}


_LOAD = """
import json, sys
import jinja2, pendulum
from airflow.models.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("clickstream_reports")
out = {"errors": {str(k): str(v) for k, v in bag.import_errors.items()}}
if dag is not None:
    try:
        from airflow.serialization.encoders import coerce_to_core_timetable
        timetable = coerce_to_core_timetable(dag.timetable)
    except ImportError:
        timetable = dag.timetable
    interval = timetable.infer_manual_data_interval(
        run_after=pendulum.datetime(2026, 11, 24, 14, 3, tz="UTC")
    )
    report = dag.get_task("report")
    out.update(
        catchup=dag.catchup,
        interval=[interval.start.isoformat(), interval.end.isoformat()],
        command=jinja2.Template(report.bash_command).render(data_interval_start=interval.start),
        upstream=sorted(report.upstream_task_ids),
    )
print(json.dumps(out))
"""


def _airflow_python() -> Path | None:
    named = os.environ.get("AIRFLOW_PYTHON")
    candidate = Path(named) if named else ROOT / ".airflow-venv" / "bin" / "python"
    return candidate if candidate.exists() else None


def test_airflow_loads_the_dag_and_reports_the_closed_hour(tmp_path):
    python = _airflow_python()
    if python is None:
        missing_dependency("no Airflow environment (.airflow-venv): `make test` builds it")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run(
        [str(python), "-c", _LOAD, str(DAG_FOLDER)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["errors"] == {}
    assert loaded["catchup"] is True
    assert loaded["interval"] == ["2026-11-24T13:00:00+00:00", "2026-11-24T14:00:00+00:00"]
    assert loaded["command"] == "clickstream report --hour 2026-11-24T13"
    assert loaded["upstream"] == ["wait_for_stragglers"]
