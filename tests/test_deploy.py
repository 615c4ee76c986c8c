"""deploy/: the Dockerfile passes hadolint, the compose file passes `docker-compose config`,
Prometheus's configuration and alerts pass promtool, and the Grafana dashboard and the alerts
only ask for metrics the code exposes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import missing_dependency

from clickstream.config import load_settings
from clickstream.metrics import exposed_names

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "clickstream.json"
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "CLICKSTREAM_API_KEY": "api-secret"}
SECRETS["GRAFANA_ADMIN_PASSWORD"] = "grafana-secret"
# A metric name in PromQL, and the suffixes the text format adds to a family's name.
METRIC = re.compile(r"\bclickstream_[a-z_]+\b")
SUFFIX = re.compile(r"_(total|bucket|sum|count|created)$")


def tool(name: str) -> str:
    """The path of a command-line tool (.ci/run or the `test` extra installs each)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        missing_dependency(f"{name} is not installed (.ci/run installs it)")
    return found


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def referenced_metrics(promql: str) -> set[str]:
    return {SUFFIX.sub("", name) for name in METRIC.findall(promql)}


# -- Dockerfile -------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint():
    result = run(
        tool("hadolint"), "--config", str(DEPLOY / "hadolint.yaml"), str(DEPLOY / "Dockerfile")
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_production_image_runs_as_a_user_without_the_embedded_services():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    runtime = next(s for s in stages if s.split("\n")[0].endswith("AS runtime"))
    assert stages[-1] is runtime, "runtime must be the default (last) stage"
    assert re.search(r"^USER 10001", runtime, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["clickstream"\]', text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/healthz" in text
    # The image installs the project without its `embedded` extra.
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and not any("embedded" in line or "[" in line for line in installs)
    pyproject = (ROOT / "pyproject.toml").read_text()
    dependencies = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "pgserver" not in dependencies and "calfkit" not in dependencies


# -- docker-compose.yml -----------------------------------------------------------------------


def compose_config(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    return run(tool("docker-compose"), "-f", str(COMPOSE), *args, "config", env=env | SECRETS)


def test_docker_compose_config_accepts_the_file_and_the_spark_profile():
    plain = compose_config()
    assert plain.returncode == 0, plain.stderr
    services = yaml.safe_load(plain.stdout)["services"]
    assert services["consumer-spark"]["profiles"] == ["spark"]
    assert all("profiles" not in s for n, s in services.items() if n != "consumer-spark")
    spark = compose_config("--profile", "spark")
    assert spark.returncode == 0, spark.stderr
    command = yaml.safe_load(spark.stdout)["services"]["consumer-spark"]["command"]
    assert command[:3] == ["consume", "--engine", "spark"]


def test_docker_compose_refuses_to_start_without_its_secrets():
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    result = run(tool("docker-compose"), "-f", str(COMPOSE), "config", env=env)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_compose_starts_every_role_after_the_schema_and_the_topics():
    result = compose_config()
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    consumers = [
        n for n, s in services.items() if n.startswith("consumer-") and "profiles" not in s
    ]
    assert len(consumers) == 2
    for name in [*consumers, "api", "reports"]:
        after = services[name]["depends_on"]
        assert after["migrate"]["condition"] == "service_completed_successfully", name
        assert after["topics"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["command"] == ["migrate"]
    assert services["reports"]["command"] == ["report", "--every-hour"]
    assert "kafka-topics.sh" in " ".join(services["topics"]["command"])
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in ("kafka", "postgres", "api", "prometheus", "grafana", *consumers):
        assert "test" in services[name]["healthcheck"], name
    assert {"kafka-data", "postgres-data", "prometheus-data", "grafana-data"} <= set(
        config["volumes"]
    )
    # Secrets come from the environment only: the values given to docker-compose, nowhere else.
    text = COMPOSE.read_text()
    for value in SECRETS.values():
        assert value not in text
    assert SECRETS["POSTGRES_PASSWORD"] in result.stdout
    # Published ports listen on loopback only.
    for service in services.values():
        for port in service.get("ports", []):
            host = port.split(":")[0] if isinstance(port, str) else port.get("host_ip")
            assert host == "127.0.0.1", port


def test_the_secure_kafka_overlay_gives_every_kafka_client_tls_sasl_and_secret_files():
    overlay = DEPLOY / "docker-compose.secure-kafka.yml"
    result = compose_config("-f", str(overlay), "--profile", "spark")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    clients = ["consumer-1", "consumer-2", "api", "consumer-spark"]
    for name in clients:
        env = services[name]["environment"]
        assert env["CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9094", name
        assert env["CLICKSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert env["CLICKSTREAM_KAFKA_SASL_PASSWORD_FILE"] == "/run/secrets/kafka_password"
        assert "CLICKSTREAM_KAFKA_SASL_PASSWORD" not in env, name
        assert {s["source"] for s in services[name]["secrets"]} == {"kafka_ca", "kafka_password"}
        assert "kafka-user" in services[name]["depends_on"], name
    # The settings a role gets load as they are (the files exist only in a real deployment).
    env = services["consumer-1"]["environment"]
    variables = {k: v for k, v in env.items() if k.startswith("CLICKSTREAM_") and "_FILE" not in k}
    settings = load_settings(env=variables | {"CLICKSTREAM_KAFKA_SASL_PASSWORD": "p"})
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    # Outside the broker's own network namespace, only the SASL_SSL listener answers.
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_LISTENERS"].startswith("PLAINTEXT://127.0.0.1:9092,")
    assert "CLIENTS:SASL_SSL" in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    for name in ("topics", "kafka-user"):
        assert services[name]["network_mode"] == "service:kafka", name
    assert set(config["secrets"]) == {"kafka_ca", "kafka_broker", "kafka_password"}
    assert all("/kafka-secrets/" in secret["file"] for secret in config["secrets"].values())


# -- Prometheus and Grafana -------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_configuration_and_alerts(tmp_path):
    promtool = tool("promtool")
    key = tmp_path / "api-key"
    key.write_text("key")
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(config.replace("/prometheus/api-key", str(key)))
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    result = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 rules found" in result.stdout


def test_the_alerts_ask_only_for_metrics_the_code_exposes():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expressions = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    used = set().union(*(referenced_metrics(e) for e in expressions))
    assert used - exposed_names() == set()
    assert {"clickstream_consumer_lag", "clickstream_ingest_retries"} <= used


def test_the_dashboard_is_valid_and_asks_only_for_metrics_the_code_exposes():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = {p["title"] for p in panels}
    assert {
        "Ingest rate",
        "Consumer lag",
        "Dead letters by reason",
        "Batch write latency",
        "API latency p50 / p99",
        "API requests and errors",
        "Live view",
    } <= titles
    used = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = referenced_metrics(target["expr"])
            assert names, f"{panel['title']}: {target['expr']}"
            used |= names
    assert used - exposed_names() == set()
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert provisioned["datasources"][0]["uid"] == "prometheus"


def test_the_names_of_the_contract_exist():
    """DESIGN.md's "Metrics" section, as written."""
    assert {
        "clickstream_ingest_events",
        "clickstream_dead_letters",
        "clickstream_ingest_batch_seconds",
        "clickstream_ingest_retries",
        "clickstream_consumer_lag",
        "clickstream_event_time_lag_seconds",
        "clickstream_http_requests",
        "clickstream_http_request_duration_seconds",
        "clickstream_realtime_window_events",
    } <= exposed_names()
