"""Settings: defaults, then config.yml, then CLICKSTREAM_* variables; bad values named clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clickstream.config import SETTINGS, Settings, load_settings
from clickstream.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_local_config(tmp_path, monkeypatch):
    """Run each test in an empty folder, so a ./config.yml of the checkout is not read."""
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_apply_without_a_file_or_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    settings = load_settings(env={})
    assert settings.source == "defaults"
    assert settings.kafka_bootstrap_servers is None and settings.embedded_kafka
    assert settings.database_url is None and settings.embedded_database
    assert settings.topics == ("product-views", "orders")
    assert settings.kafka_partitions == 4
    assert settings.ingest_batch_size == 20000
    assert settings.api_access_log is True
    assert settings.realtime_window_seconds == 300
    assert settings.data_dir == tmp_path / "xdg" / "clickstream"
    assert settings.reports_dir == Path("reports")


def test_every_setting_has_one_env_variable_and_one_attribute():
    names = [s.env for s in SETTINGS]
    assert len(names) == len(set(names))
    for setting in SETTINGS:
        section_and_name = setting.key.replace(".", "_").upper()
        assert setting.env == f"CLICKSTREAM_{section_and_name}"
        assert setting.attr in Settings.__dataclass_fields__
        assert setting.help
    assert "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS" in names
    assert "CLICKSTREAM_DATABASE_URL" in names
    assert "CLICKSTREAM_DATA_DIR" in names
    assert "CLICKSTREAM_REPORTS_DIR" in names


def test_config_yml_sets_values_in_sections(tmp_path):
    path = write(
        tmp_path / "settings.yml",
        """
data_dir: /srv/clickstream
reports_dir: /srv/reports
kafka:
  bootstrap_servers: kafka-1:9092,kafka-2:9092
  views_topic: pv
  partitions: 12
database:
  url: postgresql://app@db/clicks
ingest:
  retry_max_seconds: 2.5
api:
  access_log: false
""",
    )
    settings = load_settings(path, env={})
    assert settings.source == str(path)
    assert settings.data_dir == Path("/srv/clickstream")
    assert settings.reports_dir == Path("/srv/reports")
    assert settings.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert not settings.embedded_kafka
    assert settings.topics == ("pv", "orders")
    assert settings.kafka_partitions == 12
    assert settings.database_url == "postgresql://app@db/clicks"
    assert settings.ingest_retry_max_seconds == 2.5
    assert settings.api_access_log is False


def test_environment_overrides_the_file_which_overrides_the_defaults(tmp_path):
    path = write(tmp_path / "c.yml", "kafka:\n  partitions: 8\n  views_topic: from-file\n")
    env = {"CLICKSTREAM_KAFKA_PARTITIONS": "16"}
    settings = load_settings(path, env=env)
    assert settings.kafka_partitions == 16  # environment beats the file
    assert settings.kafka_views_topic == "from-file"  # the file beats the default
    assert settings.kafka_orders_topic == "orders"  # the default where nobody says otherwise


def test_every_setting_can_be_set_from_the_environment():
    samples = {
        "data_dir": "/d",
        "reports_dir": "/r",
        "kafka.bootstrap_servers": "k:9092",
        "database.url": "postgresql://x@y/z",
        "api.host": "0.0.0.0",
        "api.key": "secret",
        "kafka.views_topic": "v",
        "kafka.orders_topic": "o",
        "kafka.consumer_group": "g",
        "api.access_log": "no",
        "api.metrics": "off",
        "ingest.metrics_host": "0.0.0.0",
        "ingest.metrics_port": "9101",
        "database.auto_migrate": "off",
        "ingest.max_event_bytes": "1000",
        "ingest.max_rejected_share": "0.05",
        "kafka.session_timeout_ms": "7000",
        "spark.master": "yarn",
        "spark.checkpoint_dir": "hdfs:///clickstream/checkpoints",
        "spark.source": "kafka",
        "spark.sink": "tasks",
        "spark.commit_offsets": "no",
        "kafka.security_protocol": "sasl_ssl",
        "kafka.sasl_mechanism": "scram-sha-512",
        "kafka.options": "client.id=clicks,socket.keepalive.enable=true",
    }
    # settings that only make sense with others
    sasl = {
        "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": "k:9093",
        "CLICKSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CLICKSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "CLICKSTREAM_KAFKA_SASL_USERNAME": "u",
        "CLICKSTREAM_KAFKA_SASL_PASSWORD": "p",
    }
    companions = {
        "kafka.security_protocol": sasl,
        "kafka.sasl_mechanism": sasl,
        "kafka.ssl_cert_file": {"CLICKSTREAM_KAFKA_SSL_KEY_FILE": "/key.pem"},
        "kafka.ssl_key_file": {"CLICKSTREAM_KAFKA_SSL_CERT_FILE": "/cert.pem"},
    }
    for setting in SETTINGS:
        value = samples.get(setting.key, "7")
        settings = load_settings(env={**companions.get(setting.key, {}), setting.env: value})
        parsed = getattr(settings, setting.attr)
        expected = setting.parse(value)
        if setting.key in ("data_dir", "reports_dir"):
            expected = Path(expected)
        assert parsed == expected, setting.key
        assert parsed != setting.default or setting.default is None, setting.key


def test_config_file_is_found_by_variable_by_option_and_in_the_working_folder(tmp_path):
    by_variable = write(tmp_path / "by-variable.yml", "kafka:\n  views_topic: by-variable\n")
    by_option = write(tmp_path / "by-option.yml", "kafka:\n  views_topic: by-option\n")
    write(tmp_path / "config.yml", "kafka:\n  views_topic: local\n")
    assert load_settings(env={}).kafka_views_topic == "local"
    env = {"CLICKSTREAM_CONFIG": str(by_variable)}
    assert load_settings(env=env).kafka_views_topic == "by-variable"
    assert load_settings(by_option, env=env).kafka_views_topic == "by-option"


def test_an_empty_file_means_all_defaults(tmp_path):
    for text in ["", "# nothing\n", "kafka:\n"]:
        path = write(tmp_path / "empty.yml", text)
        assert load_settings(path, env={}).kafka_partitions == 4


def test_an_empty_variable_for_an_address_means_embedded(tmp_path):
    path = write(tmp_path / "c.yml", "database:\n  url: postgresql://db/x\n")
    settings = load_settings(path, env={"CLICKSTREAM_DATABASE_URL": "  "})
    assert settings.database_url is None and settings.embedded_database


def test_values_are_trimmed_and_paths_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    env = {"CLICKSTREAM_DATA_DIR": "~/clicks", "CLICKSTREAM_INGEST_BATCH_SIZE": " 500 "}
    settings = load_settings(env=env)
    assert settings.data_dir == tmp_path / "clicks"
    assert settings.ingest_batch_size == 500


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CLICKSTREAM_KAFKA_PARTITIONS", "four", "expected a whole number"),
        ("CLICKSTREAM_KAFKA_PARTITIONS", "0", "at least 1 and at most 1024"),
        ("CLICKSTREAM_KAFKA_PARTITIONS", "1025", "at least 1 and at most 1024"),
        ("CLICKSTREAM_KAFKA_PARTITIONS", "2.5", "expected a whole number"),
        ("CLICKSTREAM_INGEST_BATCH_SIZE", "-1", "at least 1"),
        ("CLICKSTREAM_INGEST_MAX_EVENT_BYTES", "10", "at least 64"),
        ("CLICKSTREAM_INGEST_RETRY_MAX_SECONDS", "0", "greater than 0"),
        ("CLICKSTREAM_INGEST_RETRY_MAX_SECONDS", "soon", "expected a number"),
        ("CLICKSTREAM_INGEST_RETRY_MAX_SECONDS", "nan", "greater than 0"),
        ("CLICKSTREAM_INGEST_MAX_REJECTED_SHARE", "1.5", "a share from 0 to 1"),
        ("CLICKSTREAM_INGEST_MAX_REJECTED_SHARE", "nan", "a share from 0 to 1"),
        ("CLICKSTREAM_INGEST_MAX_REJECTED_SHARE", "lots", "expected a number"),
        ("CLICKSTREAM_API_PORT", "65536", "at most 65535"),
        ("CLICKSTREAM_API_ACCESS_LOG", "maybe", "expected true or false"),
        ("CLICKSTREAM_DEMO_DURATION", "-5", "greater than 0"),
        ("CLICKSTREAM_DEMO_DURATION", "inf", "finite number"),
    ],
)
def test_a_bad_variable_names_itself_its_value_and_what_was_expected(variable, value, expected):
    with pytest.raises(ConfigError) as caught:
        load_settings(env={variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}={value!r}: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("yaml_text", "key", "expected"),
    [
        ("kafka:\n  partitions: many\n", "kafka.partitions", "expected a whole number"),
        ("kafka:\n  partitions: true\n", "kafka.partitions", "expected a whole number"),
        ("ingest:\n  batch_size: 0\n", "ingest.batch_size", "at least 1"),
        ("reports_dir: [a, b]\n", "reports_dir", "expected text"),
        ("kafka:\n  views_topic: {a: 1}\n", "kafka.views_topic", "expected text"),
        ("api:\n  access_log: sometimes\n", "api.access_log", "expected true or false"),
    ],
)
def test_a_bad_value_in_the_file_names_the_file_and_the_setting(tmp_path, yaml_text, key, expected):
    path = write(tmp_path / "bad.yml", yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}=")
    assert expected in message


def test_a_good_variable_overrides_a_bad_value_in_the_file(tmp_path):
    path = write(tmp_path / "c.yml", "kafka:\n  partitions: many\n")
    settings = load_settings(path, env={"CLICKSTREAM_KAFKA_PARTITIONS": "2"})
    assert settings.kafka_partitions == 2


@pytest.mark.parametrize(
    ("yaml_text", "unknown", "hint"),
    [
        (
            "kafka:\n  bootstrap_server: k:9092\n",
            "kafka.bootstrap_server",
            "; did you mean 'kafka.bootstrap_servers'?",
        ),
        ("kakfa:\n  partitions: 2\n", "kakfa", "; did you mean 'kafka'?"),
        ("batch_size: 10\n", "batch_size", "; did you mean 'ingest.batch_size'?"),
        ("colour: blue\n", "colour", " (the docs' settings reference lists all)"),
        (
            "ingest:\n  batch_size: 10\n  batchsize: 10\n",
            "ingest.batchsize",
            "; did you mean 'ingest.batch_size'?",
        ),
    ],
)
def test_unknown_keys_are_rejected_by_name_with_the_closest_known_one(
    tmp_path, yaml_text, unknown, hint
):
    path = write(tmp_path / "typo.yml", yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert str(caught.value) == f"{path}: unknown setting '{unknown}'{hint}"


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (
            "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVER",
            "unknown setting CLICKSTREAM_KAFKA_BOOTSTRAP_SERVER;"
            " did you mean CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS?",
        ),
        (
            "CLICKSTREAM_DATABASE_URI",
            "unknown setting CLICKSTREAM_DATABASE_URI; did you mean CLICKSTREAM_DATABASE_URL?",
        ),
        (
            "CLICKSTREAM_CONFIGG",
            "unknown setting CLICKSTREAM_CONFIGG; did you mean CLICKSTREAM_CONFIG?",
        ),
        (
            "CLICKSTREAM_FOO",
            "unknown setting CLICKSTREAM_FOO (the docs' settings reference lists all)",
        ),
    ],
)
def test_an_unknown_clickstream_variable_is_an_error_naming_the_closest_one(variable, message):
    with pytest.raises(ConfigError) as caught:
        load_settings(env={variable: "x", "CLICKSTREAM_KAFKA_PARTITIONS": "2"})
    assert str(caught.value) == message


def test_the_config_variable_is_a_known_one(tmp_path):
    path = write(tmp_path / "c.yml", "kafka:\n  partitions: 3\n")
    assert load_settings(env={"CLICKSTREAM_CONFIG": str(path)}).kafka_partitions == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("kafka:9092", "kafka:9092"),
        (" kafka-1:9092 , kafka-2.example.com:9093 ", "kafka-1:9092,kafka-2.example.com:9093"),
        ("10.0.0.7:9092,[::1]:9092", "10.0.0.7:9092,[::1]:9092"),
        ("PLAINTEXT://broker_1:29092", "PLAINTEXT://broker_1:29092"),
    ],
)
def test_bootstrap_servers_take_host_port_lists(value, expected):
    settings = load_settings(env={"CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": value})
    assert settings.kafka_bootstrap_servers == expected


@pytest.mark.parametrize(
    ("value", "entry"),
    [
        ("not a host:port:", "not a host:port:"),
        ("kafka", "kafka"),
        ("kafka:", "kafka:"),
        ("kafka:0", "kafka:0"),
        ("kafka:9092,kafka:70000", "kafka:70000"),
        ("kafka:9092,", ""),
        (":9092", ":9092"),
        ("kafka:port", "kafka:port"),
    ],
)
def test_bad_bootstrap_servers_are_rejected_when_settings_load(value, entry):
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": value})
    assert str(caught.value) == (
        f"CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS={value!r}:"
        f" expected host:port[,host:port...]; {entry!r} is not host:port"
    )


def test_a_section_that_is_not_a_mapping_is_rejected(tmp_path):
    path = write(tmp_path / "c.yml", "kafka: localhost:9092\n")
    with pytest.raises(ConfigError, match="'kafka' must be a section of settings"):
        load_settings(path, env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kafka: [\n", "is not valid YAML"),
        ("- a\n- b\n", "must hold a mapping of settings"),
        ("just text\n", "must hold a mapping of settings"),
    ],
)
def test_a_file_that_is_not_a_mapping_of_settings_is_rejected(tmp_path, text, expected):
    path = write(tmp_path / "c.yml", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert str(path) in str(caught.value) and expected in str(caught.value)


def test_a_missing_config_file_is_an_error_naming_where_it_was_asked_for(tmp_path):
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError, match=f"config file {missing} does not exist"):
        load_settings(missing, env={})
    with pytest.raises(ConfigError, match=f"CLICKSTREAM_CONFIG={missing} does not exist"):
        load_settings(env={"CLICKSTREAM_CONFIG": str(missing)})


def test_unrelated_environment_variables_are_ignored():
    settings = load_settings(env={"CLICKSTREAM": "x", "KAFKA_PARTITIONS": "0", "HOME": "/"})
    assert settings.kafka_partitions == 4


@pytest.mark.parametrize("kind", ["events", "user_product_hours"])
def test_a_retention_shorter_than_the_late_event_limit_is_refused(kind, tmp_path):
    """A late event of a pruned day would be stored again and counted twice: refused, in
    one line, exit 2; as long as the limit, it is accepted."""
    env = {f"CLICKSTREAM_RETENTION_{kind.upper()}_DAYS": "3"}
    expected = (
        f"retention.{kind}_days=3 keeps less than events.max_behind_seconds=604800 (7 days):"
        " a late event would come back to a pruned day and be counted twice; keep at least"
        " 7 days, or lower events.max_behind_seconds"
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(env=env)
    assert str(exc.value) == expected
    shorter = env | {"CLICKSTREAM_EVENTS_MAX_BEHIND_SECONDS": str(3 * 86_400)}
    assert getattr(load_settings(env=shorter), f"retention_{kind}_days") == 3
    result = subprocess.run(
        [sys.executable, "-m", "clickstream", "prune", "--dry-run"],
        env=os.environ | env | {"CLICKSTREAM_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"clickstream: error: {expected}"]


# -- secrets and Kafka security ------------------------------------------------------------

SASL = {
    "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9093",
    "CLICKSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "CLICKSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "CLICKSTREAM_KAFKA_SASL_USERNAME": "clicks",
}


def test_a_secret_is_read_from_the_file_its_FILE_variable_names(tmp_path):
    password = write(tmp_path / "password", "s3cr3t-pass\n")
    url = write(tmp_path / "url", "postgresql://app:pw-in-file@db/clicks\n")
    settings = load_settings(
        env={
            **SASL,
            "CLICKSTREAM_KAFKA_SASL_PASSWORD_FILE": str(password),
            "CLICKSTREAM_DATABASE_URL_FILE": str(url),
            "CLICKSTREAM_KAFKA_OPTIONS_FILE": str(write(tmp_path / "o", '{"client.id": "c"}')),
        }
    )
    assert settings.kafka_sasl_password == "s3cr3t-pass"  # the file's newline is not part of it
    assert settings.database_url == "postgresql://app:pw-in-file@db/clicks"
    assert settings.kafka_options == {"client.id": "c"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CLICKSTREAM_API_KEY": "k", "CLICKSTREAM_API_KEY_FILE": "/run/secrets/api-key"},
            "set CLICKSTREAM_API_KEY or CLICKSTREAM_API_KEY_FILE, not both",
        ),
        (
            {"CLICKSTREAM_API_KEY_FILE": "/no/such/file"},
            "CLICKSTREAM_API_KEY_FILE=/no/such/file: cannot read it: No such file or directory",
        ),
        (  # only secrets are read from files
            {"CLICKSTREAM_KAFKA_VIEWS_TOPIC_FILE": "/x"},
            "unknown setting CLICKSTREAM_KAFKA_VIEWS_TOPIC_FILE; did you mean"
            " CLICKSTREAM_KAFKA_VIEWS_TOPIC?",
        ),
    ],
)
def test_a_secret_file_that_cannot_be_used_is_one_line(env, message):
    with pytest.raises(ConfigError) as error:
        load_settings(env=env)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "sasl.oauthbearer.client.secret",
            "CLICKSTREAM_KAFKA_OPTIONS: expected name=value[,name=value...] or a JSON object",
        ),
        ('{"ssl.key.password": ', "CLICKSTREAM_KAFKA_OPTIONS: not a valid JSON object"),
        (
            "sasl.password=hunter22",
            "CLICKSTREAM_KAFKA_OPTIONS: sasl.password is set by kafka.sasl_password, not here",
        ),
        (
            "group.id=other",
            "CLICKSTREAM_KAFKA_OPTIONS: group.id is set by kafka.consumer_group, not here",
        ),
        (
            "Not A Name=hunter22",
            "CLICKSTREAM_KAFKA_OPTIONS: 'Not A Name' is not a librdkafka property name",
        ),
    ],
)
def test_a_bad_kafka_option_is_named_but_its_value_never_quoted(value, message):
    with pytest.raises(ConfigError) as error:
        load_settings(env={"CLICKSTREAM_KAFKA_OPTIONS": value})
    assert str(error.value).startswith(message)
    assert "hunter22" not in str(error.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("client.id=clicks, socket.keepalive.enable=true", None),
        ('{"client.id": "clicks", "socket.keepalive.enable": true}', None),
        ("", {}),
    ],
)
def test_kafka_options_come_as_pairs_or_json(value, expected):
    settings = load_settings(env={"CLICKSTREAM_KAFKA_OPTIONS": value})
    assert settings.kafka_options == (
        expected
        if expected is not None
        else {"client.id": "clicks", "socket.keepalive.enable": "true"}
    )


def test_kafka_options_left_empty_in_the_file_are_none(tmp_path):
    path = write(tmp_path / "c.yml", "kafka:\n  options:\n")
    assert load_settings(path, env={}).kafka_options == {}


def test_kafka_options_in_the_file_are_a_map(tmp_path):
    path = write(
        tmp_path / "c.yml",
        "kafka:\n  options:\n    client.id: clicks\n    ssl.endpoint.identification.algorithm: none"
        "\n    fetch.max.bytes: 1048576\n",
    )
    assert load_settings(path, env={}).kafka_options == {
        "client.id": "clicks",
        "ssl.endpoint.identification.algorithm": "none",
        "fetch.max.bytes": "1048576",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CLICKSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL"},
            "kafka.security_protocol=SSL needs kafka.bootstrap_servers (the embedded broker only"
            " speaks PLAINTEXT)",
        ),
        (
            {**SASL, "CLICKSTREAM_KAFKA_SASL_MECHANISM": ""},
            "kafka.security_protocol=SASL_SSL needs kafka.sasl_mechanism",
        ),
        (SASL, "kafka.sasl_mechanism=SCRAM-SHA-512 needs kafka.sasl_password"),
        (
            {"CLICKSTREAM_KAFKA_SASL_MECHANISM": "PLAIN"},
            "kafka.sasl_mechanism is set but kafka.security_protocol is PLAINTEXT: use SASL_SSL"
            " (or SASL_PLAINTEXT)",
        ),
        (
            {"CLICKSTREAM_KAFKA_SSL_CERT_FILE": "/c.pem"},
            "kafka.ssl_cert_file and kafka.ssl_key_file go together: set both",
        ),
        (
            {"CLICKSTREAM_KAFKA_SASL_MECHANISM": "GSSAPI"},
            "CLICKSTREAM_KAFKA_SASL_MECHANISM='GSSAPI': expected one of PLAIN, SCRAM-SHA-256,"
            " SCRAM-SHA-512, OAUTHBEARER",
        ),
    ],
)
def test_kafka_security_settings_that_do_not_go_together_are_one_line(env, message):
    with pytest.raises(ConfigError) as error:
        load_settings(env=env)
    assert str(error.value) == message


def test_what_reaches_librdkafka_for_sasl_over_tls(tmp_path):
    from clickstream.kafka.security import brokers

    ca = write(tmp_path / "ca.pem", "-----BEGIN CERTIFICATE-----\n")
    settings = load_settings(
        env={
            **SASL,
            "CLICKSTREAM_KAFKA_SSL_CA_FILE": str(ca),
            "CLICKSTREAM_KAFKA_SASL_PASSWORD": "pw-123456",
            "CLICKSTREAM_KAFKA_OPTIONS": (
                "client.id=clicks,ssl.endpoint.identification.algorithm=none"
            ),
        }
    )
    address = brokers(settings)
    assert address.properties == {
        "security.protocol": "SASL_SSL",
        "ssl.endpoint.identification.algorithm": "none",  # the option wins
        "ssl.ca.location": str(ca),
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "clicks",
        "sasl.password": "pw-123456",
        "client.id": "clicks",
    }
    assert "pw-123456" not in repr(address) and str(address) == "kafka-1:9093"
    assert (
        brokers(load_settings(env=SASL | {"CLICKSTREAM_KAFKA_SASL_PASSWORD": "p"})).properties[
            "ssl.endpoint.identification.algorithm"
        ]
        == "https"
    )  # hostname verification is on by default


def test_a_missing_certificate_file_is_named_when_a_client_is_made(tmp_path):
    from clickstream.kafka.security import brokers

    settings = load_settings(
        env={
            "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9093",
            "CLICKSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
            "CLICKSTREAM_KAFKA_SSL_CA_FILE": str(tmp_path / "no-ca.pem"),
        }
    )
    with pytest.raises(ConfigError) as error:
        brokers(settings)
    assert str(error.value) == f"kafka.ssl_ca_file={tmp_path / 'no-ca.pem'}: no such readable file"


def test_spark_own_kafka_source_gets_the_java_names_of_the_same_security(tmp_path):
    from clickstream.kafka.security import java_client_options

    ca = write(tmp_path / "ca.pem", "-----BEGIN CERTIFICATE-----\n")
    env = {**SASL, "CLICKSTREAM_KAFKA_SSL_CA_FILE": str(ca)}
    settings = load_settings(env=env | {"CLICKSTREAM_KAFKA_SASL_PASSWORD": 'p"w\\d'})
    assert java_client_options(settings) == {
        "security.protocol": "SASL_SSL",
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca),
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required"
        ' username="clicks" password="p\\"w\\\\d";',
    }
    mutual = load_settings(
        env=env
        | {
            "CLICKSTREAM_KAFKA_SASL_PASSWORD": "p",
            "CLICKSTREAM_KAFKA_SSL_CERT_FILE": str(ca),
            "CLICKSTREAM_KAFKA_SSL_KEY_FILE": str(ca),
        }
    )
    with pytest.raises(ConfigError) as error:
        java_client_options(mutual)
    assert str(error.value) == (
        "spark.source=kafka cannot use kafka.ssl_cert_file: use spark.source=python"
    )
