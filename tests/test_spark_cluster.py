"""The Spark engine on a real Spark standalone cluster, not `local[*]`.

A master and one worker run from pyspark's own `bin/spark-class` in JVMs of their own on
127.0.0.1 (small: 2 cores, 1 GB); `clickstream consume --engine spark --master spark://...`
runs as a user would, its driver a process of its own and its tasks in the executor the
worker starts, so the task sink (`spark.sink: auto` on a cluster) writes from there.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil
import psycopg
import pytest
from conftest import Pipeline, fresh_database
from test_ingest import assert_stored_exactly_once, fast, make_stream, stored_reported, wait_for
from test_spark_engine import (
    assert_a_driver_crash_loses_and_duplicates_nothing,
    need_spark_extra,
    table_contents,
)

from clickstream.services import embedded

EXECUTOR = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


@dataclass
class Cluster:
    url: str
    worker: psutil.Process
    conf_dir: Path

    def env(self) -> dict[str, str]:
        """What a driver on this machine needs: a reachable address, the executors' size."""
        return {"SPARK_LOCAL_IP": "127.0.0.1", "SPARK_CONF_DIR": str(self.conf_dir)}

    def replaced(self, executor: psutil.Process) -> bool:
        """The worker started another executor in place of this one."""
        return any(e.pid != executor.pid for e in self.executors())

    def executors(self) -> list[psutil.Process]:
        """The executor JVMs the worker runs now."""
        found = []
        for child in self.worker.children(recursive=True):
            try:
                if EXECUTOR in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A Spark standalone master and worker, up for this module's tests."""
    need_spark_extra()
    import pyspark

    from clickstream.spark.session import java_home

    base = tmp_path_factory.mktemp("spark-cluster")
    conf_dir = base / "conf"
    conf_dir.mkdir()
    # Read by the drivers' spark-submit: one small executor on the worker's two cores.
    (conf_dir / "spark-defaults.conf").write_text(
        "spark.executor.memory 512m\nspark.executor.cores 2\nspark.cores.max 2\n"
    )
    home = Path(pyspark.__file__).parent
    env = os.environ | {
        "SPARK_HOME": str(home),
        "JAVA_HOME": java_home(),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_DAEMON_MEMORY": "256m",
        "SPARK_CONF_DIR": str(conf_dir),
        "SPARK_NO_DAEMONIZE": "1",
        # Its REST submission server would take port 6066, which another cluster may hold.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    spark_class = str(home / "bin" / "spark-class")
    master_log, worker_log = base / "master.log", base / "worker.log"
    processes: list[subprocess.Popen] = []

    def start(log: Path, *args: str) -> subprocess.Popen:
        with open(log, "w") as handle:
            process = subprocess.Popen(
                [spark_class, *args], env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        processes.append(process)
        return process

    try:
        start(
            master_log,
            "org.apache.spark.deploy.master.Master",
            *("--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port())),
        )
        wait_for(lambda: "I have been elected leader" in master_log.read_text(), 120, "master")
        worker = start(
            worker_log,
            "org.apache.spark.deploy.worker.Worker",
            *("--host", "127.0.0.1", "--cores", "2", "--memory", "1g"),
            *("--webui-port", str(free_port()), "--work-dir", str(base / "work"), url),
        )
        wait_for(
            lambda: "Successfully registered with master" in worker_log.read_text(), 120, "worker"
        )
        yield Cluster(url, psutil.Process(worker.pid), conf_dir)
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def consume_on(cluster: Cluster, p: Pipeline, log: Path, *args: str) -> subprocess.Popen:
    """`clickstream consume --engine spark --master <the cluster>` in a process of its own."""
    with open(log, "w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "clickstream", "consume", "--engine", "spark"]
            + ["--master", cluster.url, *args],
            env=p.env() | cluster.env(),
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
        )


def finished(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    """The summary of a run that ends by itself (`--until-idle`), which must end well."""
    try:
        summary, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert process.returncode == 0, text
    assert "Traceback" not in text
    return summary


# A task's commit that waits: the first transaction that stores a view sleeps at COMMIT (a
# deferred trigger), so the test can SIGKILL the executor while that commit is under way.
# The commit still completes in the server; Spark never hears of it and runs the task again.
PAUSE_FIRST_VIEWS_COMMIT = (
    "CREATE SEQUENCE test_pauses",
    """
    CREATE FUNCTION test_pause_once() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF nextval('test_pauses') = 1 THEN
            PERFORM pg_sleep(6);
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE CONSTRAINT TRIGGER test_pause_once AFTER INSERT ON view_messageids"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_pause_once()",
)


def test_on_the_cluster_an_executor_killed_mid_batch_changes_no_row_and_no_count(
    pipeline, services, cluster, tmp_path
):
    """The cluster run, an executor SIGKILLed while a task commits, gives the default engine's
    tables; the retried task's share is counted once, as its first attempt stored it."""
    stream = make_stream(views=2500, orders=250, seed=42, bad_every=150)
    p = fast(pipeline, spark_max_batch_events=1500)  # two micro-batches
    p.produce_views(stream.views)
    p.produce_orders(stream.orders)
    p.consume()
    for url in fresh_database(embedded.database_url(services)):
        on_cluster = fast(
            p, database_url=url, kafka_consumer_group=p.settings.kafka_consumer_group + "-spark"
        )
        with psycopg.connect(url, autocommit=True) as admin:
            for statement in PAUSE_FIRST_VIEWS_COMMIT:
                admin.execute(statement)
            log = tmp_path / "consume.log"
            consumer = consume_on(cluster, on_cluster, log, "--until-idle", "5")
            try:
                wait_for(lambda: pausing(admin), 240, "a task's commit under way")
                (executor,) = cluster.executors()
                executor.send_signal(signal.SIGKILL)
                wait_for(partial(cluster.replaced, executor), 120, "a new executor")
            except BaseException:
                consumer.kill()
                raise
            summary = finished(consumer, log)
            ((paused,),) = admin.execute("SELECT last_value FROM test_pauses").fetchall()
        python_tables = table_contents(p.settings.database_url)
        spark_tables = table_contents(url)
        assert_stored_exactly_once(on_cluster, stream)
        assert on_cluster.query("SELECT count(*) FROM spark_task_shares") == [(0,)]
    assert paused >= 1
    text = log.read_text()
    assert f"on Spark {cluster.url}" in text
    assert "writes in tasks" in text
    assert re.search(r"Lost executor \d+ on 127\.0\.0\.1", text), text
    assert stored_reported(summary) == len(stream.view_ids) + len(stream.order_lines), summary
    assert sum(map(len, python_tables.values())) > len(stream.view_ids)
    for table, rows in python_tables.items():
        assert spark_tables[table] == rows, f"{table} differs between the engines"


def pausing(admin: psycopg.Connection) -> bool:
    rows = admin.execute(
        "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        " AND application_name = 'clickstream consume' AND datname = current_database()"
    ).fetchall()
    return bool(rows)


def test_a_driver_killed_on_the_cluster_restarts_from_its_checkpoint(pipeline, cluster, tmp_path):
    p = fast(pipeline, spark_max_batch_events=1000, spark_master=cluster.url)
    assert_a_driver_crash_loses_and_duplicates_nothing(p, tmp_path, seed=43, env=cluster.env())
    # The worker is ready for the next application: the dead driver's executor is gone.
    wait_for(lambda: not cluster.executors(), 60, "the dead application's executor to end")
