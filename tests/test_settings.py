"""settings.py: one strict declaration of the configuration, for both clouds.

Each bad value is refused with an error naming the variable and what it accepts; an empty value
means unset everywhere; the Lambda reads the same declaration. The last tests check the same
through the function's public surface: its environment and HTTP, on the emulators.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

import lambda_function
import lambda_settings
from devstack.pubsub_admin import PubSubAdmin
from lambda_settings import LambdaSettings
from lambda_settings import settings_from_env as lambda_settings_from_env
from ride_predictor import settings
from ride_predictor.settings import CoreSettings, InvalidSettingError, Settings, settings_from_env
from tests.aws_events import SAMPLE_RIDE, kinesis_event
from tests.conftest import ModelFixture, ServeFunction, deliver, function_log, push_body

REQUIRED = {"MODEL_URI": "gs://bucket/1/run/artifacts/model", "PROJECT_ID": "p"}

# (variable, value, words of the accepted values that the error must show)
BAD_SHARED: list[tuple[str, str, str]] = [
    ("MAX_MESSAGE_BYTES", "0.5", "whole number of bytes from 1 to 8388608"),
    ("MAX_MESSAGE_BYTES", "0", "whole number of bytes from 1 to 8388608"),
    ("MAX_MESSAGE_BYTES", "-1", "whole number of bytes"),
    ("MAX_MESSAGE_BYTES", "inf", "whole number of bytes"),
    ("MAX_MESSAGE_BYTES", "10485760", "from 1 to 8388608"),
    ("MAX_MESSAGE_BYTES", "1 MiB", "whole number of bytes"),
    ("MODEL_LOAD_TIMEOUT_SECONDS", "0", "finite number of seconds > 0"),
    ("MODEL_LOAD_TIMEOUT_SECONDS", "inf", "finite number of seconds > 0"),
    ("MODEL_LOAD_TIMEOUT_SECONDS", "Infinity", "finite number of seconds > 0"),
    ("MODEL_LOAD_TIMEOUT_SECONDS", "nan", "finite number of seconds > 0"),
    ("MODEL_LOAD_TIMEOUT_SECONDS", "soon", "finite number of seconds > 0"),
    ("MODEL_REFRESH_SECONDS", "-1", "finite number of seconds >= 0"),
    ("MODEL_REFRESH_SECONDS", "inf", "finite number of seconds >= 0"),
    ("LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING or ERROR (any case)"),
    ("LOG_LEVEL", "CRITICAL", "DEBUG, INFO, WARNING or ERROR"),
    ("MESSAGE_LOG_LEVEL", "verbose", "DEBUG, INFO, WARNING or ERROR"),
]
BAD_CLOUD_FUNCTION: list[tuple[str, str, str]] = [
    ("MAX_BATCH_RIDES", "0.9", "whole number >= 1"),
    ("MAX_BATCH_RIDES", "0", "whole number >= 1"),
    ("MAX_BATCH_RIDES", "nan", "whole number >= 1"),
    ("PUBLISH_TIMEOUT_SECONDS", "inf", "finite number of seconds > 0"),
    ("PUBLISH_TIMEOUT_SECONDS", "-inf", "finite number of seconds > 0"),
    ("PUBLISH_TIMEOUT_SECONDS", "0", "finite number of seconds > 0"),
    ("PUBLISH_MAX_RPCS_IN_FLIGHT", "1.5", "whole number >= 1"),
    ("PUBLISH_MAX_RPCS_IN_FLIGHT", "0", "whole number >= 1"),
    ("SOURCE_SUBSCRIPTION", "taxi-ride-sub", "projects/<project>/subscriptions/<name>"),
    ("SOURCE_SUBSCRIPTION", "projects/p/topics/t", "projects/<project>/subscriptions/<name>"),
]


@pytest.mark.parametrize(
    ("name", "raw", "accepted"),
    BAD_SHARED + BAD_CLOUD_FUNCTION,
    ids=[f"{name}={raw}" for name, raw, _ in BAD_SHARED + BAD_CLOUD_FUNCTION],
)
def test_a_bad_value_names_the_variable_and_the_accepted_values(
    name: str, raw: str, accepted: str
) -> None:
    with pytest.raises(InvalidSettingError) as raised:
        settings_from_env(REQUIRED | {name: raw})

    assert str(raised.value).startswith(f"{name}={raw!r} is invalid; accepted: ")
    assert accepted in str(raised.value)


@pytest.mark.parametrize(
    ("name", "raw", "accepted"),
    BAD_SHARED,
    ids=[f"{name}={raw}" for name, raw, _ in BAD_SHARED],
)
def test_the_lambda_refuses_the_same_bad_values(name: str, raw: str, accepted: str) -> None:
    with pytest.raises(InvalidSettingError, match=rf"^{name}=") as raised:
        lambda_settings_from_env({"MODEL_URI": "m", name: raw})
    assert accepted in str(raised.value)


def test_a_missing_required_variable_is_named() -> None:
    with pytest.raises(InvalidSettingError, match=r"^MODEL_URI is not set; accepted: an MLflow"):
        settings_from_env({"PROJECT_ID": "p"})
    with pytest.raises(InvalidSettingError, match=r"^PROJECT_ID or GOOGLE_CLOUD_PROJECT is not"):
        settings_from_env({"MODEL_URI": "m"})
    with pytest.raises(InvalidSettingError, match=r"^MODEL_URI is not set"):
        lambda_settings_from_env({"MODEL_URI": ""})


def test_the_error_class_says_invalid_and_the_old_name_still_works() -> None:
    assert InvalidSettingError.__name__ == "InvalidSettingError"
    assert settings.MissingSettingError is InvalidSettingError
    assert lambda_settings.InvalidSettingError is InvalidSettingError


def _every_variable(declaration: type[CoreSettings]) -> list[str]:
    return [field.encode_name for field in msgspec.structs.fields(declaration)]


def test_an_empty_value_means_unset_for_every_variable() -> None:
    empty = dict.fromkeys(_every_variable(Settings), "") | {"GOOGLE_CLOUD_PROJECT": ""}
    assert settings_from_env(empty | REQUIRED) == Settings(
        **{"model_uri": REQUIRED["MODEL_URI"], "project_id": "p"}
    )
    lambda_empty = dict.fromkeys(_every_variable(LambdaSettings), "")
    assert lambda_settings_from_env(lambda_empty | {"MODEL_URI": "m"}) == LambdaSettings(
        model_uri="m"
    )


def test_every_variable_is_read_with_its_type() -> None:
    read = settings_from_env(
        {
            "MODEL_URI": "models:/ride@champion",
            "GOOGLE_CLOUD_PROJECT": "fallback",
            "PUBLISH_STREAM": "out",
            "DEAD_LETTER_STREAM": "dlq",
            "SOURCE_SUBSCRIPTION": "projects/fallback/subscriptions/push",
            "MODEL_NAME": "name",
            "MODEL_VERSION": "7",
            "MAX_MESSAGE_BYTES": "2048",
            "MAX_BATCH_RIDES": "10",
            "PUBLISH_TIMEOUT_SECONDS": "2.5",
            "PUBLISH_MAX_RPCS_IN_FLIGHT": "2",
            "MODEL_LOAD_TIMEOUT_SECONDS": "3",
            "MODEL_REFRESH_SECONDS": "0",
            "LOG_LEVEL": "debug",
            "MESSAGE_LOG_LEVEL": "Warning",
            "METRICS_EXPORT_SECONDS": "30",
        }
    )

    assert msgspec.structs.asdict(read) == {
        "model_uri": "models:/ride@champion",
        "model_name": "name",
        "model_version": "7",
        "max_message_bytes": 2048,
        "model_load_timeout_seconds": 3.0,
        "model_refresh_seconds": 0.0,
        "log_level": "DEBUG",
        "message_log_level": "WARNING",
        "project_id": "fallback",
        "publish_stream": "out",
        "dead_letter_stream": "dlq",
        "source_subscription": "projects/fallback/subscriptions/push",
        "max_batch_rides": 10,
        "publish_timeout_seconds": 2.5,
        "publish_max_rpcs_in_flight": 2,
        "metrics_export_seconds": 30.0,
    }
    assert read.dead_letter_topic_path == "projects/fallback/topics/dlq"


def test_the_lambda_reads_the_shared_declaration() -> None:
    assert issubclass(LambdaSettings, CoreSettings)
    shared = set(_every_variable(CoreSettings))
    assert shared <= set(_every_variable(LambdaSettings))
    assert set(_every_variable(LambdaSettings)) - shared == {
        "PREDICTIONS_STREAM_NAME",
        "DEAD_LETTER_STREAM_NAME",
    }
    read = lambda_settings_from_env({"MODEL_URI": "m", "MAX_MESSAGE_BYTES": "2048"})
    assert read.max_message_bytes == 2048
    assert read.model_load_timeout_seconds == 30.0  # the Lambda's own default


RIDE = json.dumps(
    {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 1}
).encode()


@pytest.mark.emulator
def test_a_fraction_where_a_count_is_meant_stops_the_function(
    serve_function: ServeFunction,
    streams: dict[str, str],
    pubsub: PubSubAdmin,
    test_model: ModelFixture,
) -> None:
    # Before: int(0.5) = 0, so every valid ride was acked and dead-lettered ("over the limit
    # of 0").
    server = serve_function(
        MODEL_URI=test_model.path,
        PUBLISH_STREAM=streams["output"],
        DEAD_LETTER_STREAM=streams["dead_letter"],
        MAX_MESSAGE_BYTES="0.5",
    )

    statuses = [deliver(server, push_body(RIDE, f"s-{i}")) for i in range(2)]

    assert statuses == [500, 500]  # not acked: Pub/Sub keeps the ride until the fix
    errors = [line for line in function_log(server) if line["severity"] == "ERROR"]
    assert len(errors) == 2
    for line in errors:
        assert line["message"].startswith("invalid configuration: MAX_MESSAGE_BYTES='0.5'")
        assert "accepted: a whole number of bytes" in line["reason"]
    assert pubsub.drain(f"{streams['dead_letter']}-sub", quiet_seconds=1) == []
    assert pubsub.drain(f"{streams['output']}-sub", quiet_seconds=0.2) == []


def test_the_lambda_handler_stops_on_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, test_model: ModelFixture
) -> None:
    monkeypatch.setattr(lambda_function, "_service", None)
    monkeypatch.setenv("MODEL_URI", test_model.path)
    monkeypatch.setenv("MAX_MESSAGE_BYTES", "0.5")

    with pytest.raises(InvalidSettingError, match=r"MAX_MESSAGE_BYTES='0\.5'"):
        lambda_function.lambda_handler(kinesis_event(SAMPLE_RIDE), None)


def _documented_defaults(doc: str) -> dict[str, str]:
    """Each variable of a configuration table (first column, last column the default)."""
    text = (Path(__file__).resolve().parent.parent / doc).read_text()
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`[A-Z_]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[-1]
    return rows


@pytest.mark.parametrize("doc", ["README.md", "docs/design.md"])
def test_every_default_the_docs_state_is_the_one_the_function_reads(doc: str) -> None:
    documented = _documented_defaults(doc)
    read = msgspec.structs.asdict(settings_from_env(REQUIRED))
    for field in msgspec.structs.fields(Settings):
        name, value = field.encode_name, read[field.name]
        assert name in documented, f"{doc} has no row for {name}"
        stated = documented[name]
        if name == "MODEL_URI":
            assert stated == "required"
        elif name == "PROJECT_ID":
            assert stated == "`GOOGLE_CLOUD_PROJECT`"
        elif value is None:
            assert stated.startswith("unset"), (name, stated)
        else:
            quoted = re.match(r"`([^`]+)`", stated)
            assert quoted, (name, stated)
            if isinstance(value, str):
                assert quoted.group(1) == value, (name, stated, value)
            else:
                assert float(quoted.group(1)) == value, (name, stated, value)
