"""Starting Spark for the engine: Java, the workers' interpreter, quiet logs.

`clickstream consume --engine spark` starts a Spark driver itself (local mode by default).
Under `spark-submit` the driver's JVM already runs and spark-submit's own `--master`, `--conf`
and log settings apply; only the application name and the streaming settings are added.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

from clickstream.errors import UsageError

__all__ = ["check_prerequisites", "java_home", "spark_session", "under_spark_submit"]

log = logging.getLogger("clickstream.spark")


def under_spark_submit() -> bool:
    """True when spark-submit launched this process (it hands pyspark a running gateway)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def java_home() -> str:
    """JAVA_HOME as set, else the installation of the `java` on PATH; UsageError if none."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return home
    java = shutil.which("java")
    if java is None:
        raise UsageError(
            "--engine spark needs Java 17 or newer and found none (no JAVA_HOME, no java on"
            " PATH): install a JRE, e.g. apt-get install openjdk-17-jre-headless"
        )
    return str(Path(java).resolve().parent.parent)


def check_prerequisites() -> None:
    """Say in one line what the Spark engine is missing, before anything starts."""
    try:
        import pyarrow  # noqa: F401
        import pyspark  # noqa: F401
    except ImportError:
        raise UsageError(
            "--engine spark needs pyspark and pyarrow: pip install 'clickstream[spark]'"
        ) from None
    if not under_spark_submit():
        java_home()


def spark_session(master: str):
    """The process's SparkSession, created on first use."""
    check_prerequisites()
    from pyspark.sql import SparkSession

    logging.getLogger("py4j").setLevel(logging.WARNING)
    log4j = resources.files("clickstream.spark") / "log4j2.properties"
    java_options = f"-Dlog4j2.configurationFile=file:{log4j}"
    builder = SparkSession.builder.appName("clickstream-consume")
    if not under_spark_submit():
        os.environ["JAVA_HOME"] = java_home()
        # Workers must run this interpreter: the project and its dependencies live there.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = (
            builder.master(master)
            .config("spark.driver.extraJavaOptions", java_options)
            .config("spark.executor.extraJavaOptions", java_options)
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
        )
        if master.startswith("local"):
            # Everything is on this machine: no need to look for a routable address.
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            builder = builder.config("spark.driver.host", "127.0.0.1")
    # A trigger without new data reports progress this often: `--until-idle` watches it.
    builder = builder.config("spark.sql.streaming.noDataProgressEventInterval", "1000ms")
    # Streaming queries run without adaptive execution anyway; say so once, here.
    builder = builder.config("spark.sql.adaptive.enabled", "false")
    started = time.monotonic()
    session = builder.getOrCreate()
    log.info(
        "Spark %s session on %s started in %.1fs",
        session.version,
        session.sparkContext.master,
        time.monotonic() - started,
    )
    return session
