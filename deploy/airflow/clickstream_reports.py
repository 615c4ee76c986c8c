"""Airflow DAG: the hourly category-management reports, one run per UTC hour, with catch-up.

Each run reports its own data interval's hour (`--hour` from `data_interval_start`), so a
backfill or a catch-up after downtime writes exactly the hours it covers, and clearing a run
rewrites that hour's files byte for byte. A run waits 5 minutes after its hour closes (a
sensor that frees its worker slot while waiting), so events still in flight at the top of
the hour are stored first. The workers need the `clickstream` command on their PATH and the
pipeline's settings (`CLICKSTREAM_DATABASE_URL`, `CLICKSTREAM_REPORTS_DIR`, ...) in their
environment. Works with Airflow 2.7+ and 3.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
    from airflow.sdk import DAG, CronDataIntervalTimetable
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.operators.bash import BashOperator
    from airflow.sensors.time_delta import TimeDeltaSensor
    from airflow.timetables.interval import CronDataIntervalTimetable

REPORT_COMMAND = "clickstream report --hour {{ data_interval_start.strftime('%Y-%m-%dT%H') }}"
SETTLE = timedelta(minutes=5)

with DAG(
    dag_id="clickstream_reports",
    description="Hourly category-management reports: top viewed, top bought, conversion rates",
    # Every run covers the data interval [H, H+1h) and starts when it closes. Spelled out:
    # Airflow 3 turns "@hourly" or timedelta(hours=1) into zero-length intervals at run time.
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=True,
    max_active_runs=4,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=5)},
    tags=["clickstream", "reports"],
) as dag:
    settle = TimeDeltaSensor(task_id="wait_for_stragglers", delta=SETTLE, mode="reschedule")
    report = BashOperator(task_id="report", bash_command=REPORT_COMMAND)
    settle >> report
