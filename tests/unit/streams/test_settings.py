"""The settings object: environment variables, and each client's config from one place."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from privacy_pipeline.streams.settings import ENV_BOOTSTRAP, ENV_PREFIX, ClientTuning, Settings


def test_from_env_reads_the_readme_variables_and_given_values_win() -> None:
    env = {ENV_BOOTSTRAP: "kafka:9092", ENV_PREFIX: "dev."}
    assert Settings.from_env(env) == Settings(bootstrap="kafka:9092", prefix="dev.")
    assert Settings.from_env(env, prefix="qa.", bootstrap=None).prefix == "qa."
    assert Settings.from_env({}).bootstrap is None


def test_broker_is_required_when_asked_for() -> None:
    with pytest.raises(ValueError, match=ENV_BOOTSTRAP):
        _ = Settings().broker
    assert Settings().with_broker("127.0.0.1:9").broker == "127.0.0.1:9"


def test_unknown_setting_is_an_error_naming_it() -> None:
    with pytest.raises(ValidationError, match="linger"):
        ClientTuning(linger=5)  # type: ignore[call-arg]


def test_every_producer_places_keys_with_murmur2() -> None:
    # The subject log is partitioned with murmur2 (as faust and Java): any other
    # partitioner would put a person's events on another worker than their state.
    t = ClientTuning()
    for config in (
        t.producer("b:1"),
        t.output_producer("b:1"),
        t.subject_log_producer("b:1"),
        t.traffic_producer("b:1"),
    ):
        assert config["partitioner"] == "murmur2_random"
        assert config["bootstrap.servers"] == "b:1"


def test_client_configs_take_their_tuning() -> None:
    t = ClientTuning(ingest_fetch_wait_ms=12, output_linger_ms=3, session_timeout_ms=7000)
    assert t.ingest_consumer("b:1", "g")["fetch.wait.max.ms"] == 12
    assert t.ingest_consumer("b:1", "g")["enable.auto.commit"] is False
    assert t.output_producer("b:1")["linger.ms"] == 3
    assert t.subject_log_producer("b:1")["batch.num.messages"] == 1
    assert t.reader_consumer("b:1", "g", from_beginning=False)["auto.offset.reset"] == "latest"
    assert t.faust_app()["broker_session_timeout"] == 7.0
