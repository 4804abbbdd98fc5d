"""aws/lambda_function.py with fake Kinesis events, the real model and an in-memory writer."""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from msgspec.structs import replace

import lambda_function
import main
from kinesis_event import InvalidEventError
from lambda_settings import LambdaSettings, MissingSettingError, settings_from_env
from ride_predictor.json_logging import JsonLineFormatter
from ride_predictor.loaders import LoadedModel
from ride_predictor.model_holder import ModelHolder
from tests.aws_events import (
    SAMPLE_RIDE,
    InMemoryWriter,
    failures,
    kinesis_entry,
    kinesis_event,
    ride,
    sequence_number,
)
from tests.conftest import (
    PROJECT_ID,
    SAMPLE_FEATURES,
    ModelFixture,
    RecordingPublisher,
    pubsub_event_data,
    ride_features,
)

PREDICTIONS = "ride_predictions"
DEAD_LETTER = "ride_dead_letter"


@pytest.fixture(scope="module")
def shared_loader(test_model: ModelFixture) -> ModelHolder:
    """One loaded model for the module's tests (loading is tested in test_model_loader)."""
    loader = ModelHolder(test_model.path, "ride_duration_prediction_model")
    loader.get()
    return loader


@pytest.fixture
def writer() -> InMemoryWriter:
    return InMemoryWriter()


def make_service(
    loader: ModelHolder, writer: InMemoryWriter, **settings: Any
) -> lambda_function.KinesisPredictionService:
    return lambda_function.KinesisPredictionService(
        LambdaSettings(model_uri=loader.model_uri, **settings), loader, writer
    )


@pytest.fixture
def service(
    shared_loader: ModelHolder, writer: InMemoryWriter, monkeypatch: pytest.MonkeyPatch
) -> lambda_function.KinesisPredictionService:
    """The Lambda's service with dead-lettering on, injected into lambda_function."""
    injected = make_service(shared_loader, writer, dead_letter_stream_name=DEAD_LETTER)
    monkeypatch.setattr(lambda_function, "_service", injected)
    return injected


@pytest.fixture
def lambda_logs() -> Iterator[list[dict[str, Any]]]:
    """Every log line of the Lambda, as the JSON objects its formatter writes."""
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    handler = Collect()
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger("ride_predictor")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def fixed_model_holder(*predictions: float) -> ModelHolder:
    """A loader whose model returns ``predictions`` (for cases the real model cannot produce)."""
    model = LoadedModel(
        name="ride_duration_prediction_model",
        version="v-test",
        source_uri="memory://fixed",
        flavor="python_function",
        predict=lambda rows: list(predictions)[: len(rows)],
    )
    return ModelHolder("memory://fixed", model.name, load=lambda *_: model)


def test_batch_of_rides_gives_one_record_each_partitioned_by_ride_id(
    service: lambda_function.KinesisPredictionService,
    writer: InMemoryWriter,
    test_model: ModelFixture,
) -> None:
    rides = [SAMPLE_RIDE, ride("abc-7", 1, 2, 0.0), ride(9, 5, 6, 12.5)]

    response = lambda_function.lambda_handler(kinesis_event(*rides), None)

    assert response == {"batchItemFailures": []}
    assert writer.json_to(PREDICTIONS) == [
        test_model.expected_message(event["ride_id"], ride_features(event["ride"]))
        for event in rides
    ]
    assert writer.keys_to(PREDICTIONS) == ["123", "abc-7", "9"]
    assert writer.calls == [(PREDICTIONS, 3)]  # one batched put for the whole event
    assert DEAD_LETTER not in writer.written


def test_output_is_byte_for_byte_the_cloud_functions_message(
    service: lambda_function.KinesisPredictionService,
    writer: InMemoryWriter,
    shared_loader: ModelHolder,
    recording_publisher: RecordingPublisher,
) -> None:
    gcp = main.PredictionService(
        main.Settings(model_uri=shared_loader.model_uri, project_id=PROJECT_ID),
        shared_loader,
        recording_publisher,
    )
    gcp.handle(pubsub_event_data(SAMPLE_RIDE))

    lambda_function.lambda_handler(kinesis_event(SAMPLE_RIDE), None)

    (published,) = recording_publisher.published
    (record,) = writer.written[PREDICTIONS]
    assert record.data == published[1].data


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("not base64!", "not valid base64"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        ([SAMPLE_RIDE], "JSON array"),
        ({"ride_id": 1}, "missing required field `ride`"),
        (ride(True), "Expected `int | str`, got `bool` - at `$.ride_id`"),
        (ride(1, pu=0), "Expected `int` >= 1 - at `$.ride.PULocationID`"),
        (b"NaN", "not a JSON number"),
    ],
    ids=["base64", "json", "utf8", "array", "no-ride", "bool-id", "zero-location", "nan"],
)
def test_invalid_record_goes_to_dead_letter_and_is_not_retried(
    service: lambda_function.KinesisPredictionService,
    writer: InMemoryWriter,
    lambda_logs: list[dict[str, Any]],
    payload: Any,
    reason: str,
) -> None:
    event = kinesis_event(payload)

    response = lambda_function.lambda_handler(event, None)

    assert response == {"batchItemFailures": []}
    assert PREDICTIONS not in writer.written
    (dead_letter,) = writer.json_to(DEAD_LETTER)
    assert reason in dead_letter["dlq_reason"]
    source = event["Records"][0]
    assert dead_letter == {
        "data": source["kinesis"]["data"],  # exactly what arrived
        "dlq_reason": dead_letter["dlq_reason"],
        "dlq_source_sequence_number": sequence_number(0),
        "dlq_source_partition_key": "pk-0",
        "dlq_source_event_source_arn": source["eventSourceARN"],
        "dlq_source_arrival_timestamp": source["kinesis"]["approximateArrivalTimestamp"],
        "dlq_data_truncated": False,
    }
    assert writer.keys_to(DEAD_LETTER) == ["pk-0"]
    (error_line,) = [line for line in lambda_logs if line["severity"] == "ERROR"]
    assert reason in error_line["message"]
    assert error_line["sequence_number"] == sequence_number(0)


def test_dead_letter_data_decodes_back_to_the_original_bytes(
    service: lambda_function.KinesisPredictionService, writer: InMemoryWriter
) -> None:
    lambda_function.lambda_handler(kinesis_event(b'{"ride_id": "x", "ride": []}'), None)

    (dead_letter,) = writer.json_to(DEAD_LETTER)
    assert base64.b64decode(dead_letter["data"]) == b'{"ride_id": "x", "ride": []}'


def test_without_dead_letter_stream_invalid_records_are_only_logged(
    shared_loader: ModelHolder, writer: InMemoryWriter, lambda_logs: list[dict[str, Any]]
) -> None:
    service = make_service(shared_loader, writer)

    response = service.handle(kinesis_event(b"{bad", SAMPLE_RIDE))

    assert response == {"batchItemFailures": []}
    assert list(writer.written) == [PREDICTIONS]
    assert [line["sequence_number"] for line in lambda_logs if line["severity"] == "ERROR"] == [
        sequence_number(0)
    ]


def test_mixed_batch_predicts_the_valid_and_dead_letters_the_rest(
    service: lambda_function.KinesisPredictionService, writer: InMemoryWriter
) -> None:
    response = service.handle(kinesis_event(ride(1), b"oops", ride(2), {"ride_id": 3}, ride(4)))

    assert response == {"batchItemFailures": []}
    assert writer.keys_to(PREDICTIONS) == ["1", "2", "4"]
    assert [item["dlq_source_sequence_number"] for item in writer.json_to(DEAD_LETTER)] == [
        sequence_number(1),
        sequence_number(3),
    ]


def test_model_load_failure_reports_every_valid_record_and_keeps_invalid_ones_out(
    writer: InMemoryWriter, lambda_logs: list[dict[str, Any]]
) -> None:
    def broken_load(*_: Any) -> LoadedModel:
        raise OSError("s3 is down")

    loader = ModelHolder("s3://models/ride", "m", load=broken_load)
    service = make_service(loader, writer, dead_letter_stream_name=DEAD_LETTER)

    response = service.handle(kinesis_event(ride(1), b"oops", ride(2)))

    assert response == failures(0, 2)
    assert PREDICTIONS not in writer.written
    assert len(writer.json_to(DEAD_LETTER)) == 1  # the invalid record is final either way
    assert loader.loaded is None  # the failed load is not cached
    warning = next(line for line in lambda_logs if line["severity"] == "WARNING")
    assert "s3 is down" in warning["reason"]


def test_model_loads_on_a_later_invocation_after_a_failure(
    test_model: ModelFixture, writer: InMemoryWriter
) -> None:
    attempts: list[str] = []

    def flaky_load(uri: str, name: str, version: str | None) -> LoadedModel:
        attempts.append(uri)
        if len(attempts) == 1:
            raise OSError("not yet")
        from ride_predictor.loaders import load_model

        return load_model(uri, name, version)

    loader = ModelHolder(test_model.path, "ride_duration_prediction_model", load=flaky_load)
    service = make_service(loader, writer)

    assert service.handle(kinesis_event(SAMPLE_RIDE)) == failures(0)
    assert service.handle(kinesis_event(SAMPLE_RIDE)) == {"batchItemFailures": []}
    assert writer.json_to(PREDICTIONS)[0]["prediction"] == {
        "ride_duration": test_model.expected_duration(SAMPLE_FEATURES),
        "ride_id": 123,
    }


def test_only_the_records_whose_prediction_was_not_written_are_reported(
    service: lambda_function.KinesisPredictionService,
    writer: InMemoryWriter,
    lambda_logs: list[dict[str, Any]],
) -> None:
    writer.failing_keys.add((PREDICTIONS, "2"))

    response = service.handle(kinesis_event(ride(1), ride(2), ride(3)))

    assert response == failures(1)
    assert writer.keys_to(PREDICTIONS) == ["1", "3"]
    warning = next(line for line in lambda_logs if line["severity"] == "WARNING")
    assert warning["sequence_number"] == sequence_number(1)
    assert warning["ride_id"] == 2


def test_failed_dead_letter_write_reports_the_record(
    service: lambda_function.KinesisPredictionService, writer: InMemoryWriter
) -> None:
    writer.failing_streams.add(DEAD_LETTER)

    response = service.handle(kinesis_event(ride(1), b"oops"))

    assert response == failures(1)
    assert writer.keys_to(PREDICTIONS) == ["1"]


def test_non_finite_prediction_is_dead_lettered_not_retried(writer: InMemoryWriter) -> None:
    service = make_service(
        fixed_model_holder(math.nan, 7.4), writer, dead_letter_stream_name=DEAD_LETTER
    )

    response = service.handle(kinesis_event(ride(1), ride(2)))

    assert response == {"batchItemFailures": []}
    assert writer.json_to(PREDICTIONS) == [
        {
            "model": "ride_duration_prediction_model",
            "version": "v-test",
            "prediction": {"ride_duration": 7, "ride_id": 2},
        }
    ]
    (dead_letter,) = writer.json_to(DEAD_LETTER)
    assert "predicted nan" in dead_letter["dlq_reason"]


def test_model_that_raises_fails_the_invocation_before_anything_is_written(
    writer: InMemoryWriter,
) -> None:
    def explode(rows: Any) -> Any:
        raise RuntimeError("bad model")

    model = LoadedModel("m", "1", "memory://x", "python_function", explode)
    loader = ModelHolder("memory://x", "m", load=lambda *_: model)
    service = make_service(loader, writer, dead_letter_stream_name=DEAD_LETTER)

    with pytest.raises(RuntimeError, match="bad model"):
        service.handle(kinesis_event(ride(1), b"oops"))
    assert writer.written == {}


def test_empty_event_answers_without_loading_the_model(writer: InMemoryWriter) -> None:
    loader = ModelHolder("memory://never", "m", load=lambda *_: pytest.fail("loaded"))
    service = make_service(loader, writer)

    assert service.handle({"Records": []}) == {"batchItemFailures": []}
    assert writer.calls == []


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"Records": "x"},
        [],
        {"Records": [{"kinesis": {"data": "e30="}}]},
        {"Records": [{"kinesis": {"data": "e30=", "sequenceNumber": ""}}]},
        {"Records": [{"body": "an SQS message"}]},
    ],
    ids=["no-records", "records-not-list", "not-a-mapping", "no-seq", "empty-seq", "sqs"],
)
def test_event_that_is_not_from_kinesis_raises(
    service: lambda_function.KinesisPredictionService, event: Any
) -> None:
    with pytest.raises(InvalidEventError):
        service.handle(event)


def test_logs_carry_ids_version_and_latency(
    service: lambda_function.KinesisPredictionService,
    lambda_logs: list[dict[str, Any]],
    test_model: ModelFixture,
) -> None:
    context = SimpleNamespace(aws_request_id="req-42")

    lambda_function.lambda_handler(kinesis_event(SAMPLE_RIDE), context)

    written = next(line for line in lambda_logs if line["message"] == "prediction written")
    assert written["severity"] == "INFO"
    assert written["sequence_number"] == sequence_number(0)
    assert written["ride_id"] == 123
    assert written["model_version"] == test_model.logged.run_id
    assert written["ride_duration"] == test_model.expected_duration(SAMPLE_FEATURES)
    assert written["latency_ms"] >= 0
    summary = next(line for line in lambda_logs if line["message"] == "batch handled")
    assert summary["aws_request_id"] == "req-42"
    assert summary["records"] == 1
    assert summary["predictions_written"] == 1
    assert summary["failed"] == 0
    assert summary["model_version"] == test_model.logged.run_id


def test_message_log_level_debug_keeps_per_ride_lines_out_of_info_logs(
    shared_loader: ModelHolder, writer: InMemoryWriter, lambda_logs: list[dict[str, Any]]
) -> None:
    service = make_service(shared_loader, writer, message_log_level="DEBUG")

    service.handle(kinesis_event(ride(1), ride(2)))

    assert [line["message"] for line in lambda_logs] == ["batch handled"]


def test_oversized_dead_letter_data_is_truncated_and_flagged() -> None:
    entry = kinesis_entry("A" * (lambda_function.MAX_DEAD_LETTER_DATA_CHARS + 10))
    (record,) = lambda_function.kinesis_records({"Records": [entry]})
    error = lambda_function.InvalidRideError("too big")

    output = lambda_function.dead_letter_record(record, error)

    envelope = json.loads(output.data)
    assert envelope["dlq_data_truncated"] is True
    assert len(envelope["data"]) == lambda_function.MAX_DEAD_LETTER_DATA_CHARS
    assert output.size < 1024 * 1024


def test_dead_letter_envelope_is_compact_json_like_the_predictions() -> None:
    entry = kinesis_entry(b'{"ride_id": "caf\xc3\xa9"}', position=2)
    (record,) = lambda_function.kinesis_records({"Records": [entry]})
    error = lambda_function.InvalidRideError("Expected `int` >= 1 - at `$.ride.PULocationID`")

    output = lambda_function.dead_letter_record(record, error)

    envelope = json.loads(output.data)
    assert list(envelope) == [
        "data",
        "dlq_reason",
        "dlq_source_sequence_number",
        "dlq_source_partition_key",
        "dlq_source_event_source_arn",
        "dlq_source_arrival_timestamp",
        "dlq_data_truncated",
    ]
    assert output.data == json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


def test_dead_letter_partition_key_falls_back_to_the_sequence_number() -> None:
    entry = kinesis_entry(b"x", position=3, partition_key="")
    (record,) = lambda_function.kinesis_records({"Records": [entry]})

    output = lambda_function.dead_letter_record(record, lambda_function.InvalidRideError("bad"))

    assert output.partition_key == sequence_number(3)


def test_handler_builds_its_service_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, test_model: ModelFixture
) -> None:
    monkeypatch.setattr(lambda_function, "_service", None)
    monkeypatch.setenv("MODEL_URI", test_model.path)
    monkeypatch.setenv("PREDICTIONS_STREAM_NAME", "out")
    for name in ("DEAD_LETTER_STREAM_NAME", "LOG_LEVEL", "MESSAGE_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)

    service = lambda_function.get_service()

    assert service is lambda_function.get_service()  # kept for the warm environment
    assert service.settings.predictions_stream_name == "out"
    assert service.model_holder.loaded is None  # lazy: nothing loaded until a ride arrives


def test_handler_without_model_uri_fails_with_a_named_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lambda_function, "_service", None)
    monkeypatch.delenv("MODEL_URI", raising=False)

    with pytest.raises(MissingSettingError, match="MODEL_URI"):
        lambda_function.lambda_handler(kinesis_event(SAMPLE_RIDE), None)


def test_settings_defaults_follow_the_design() -> None:
    settings = settings_from_env({"MODEL_URI": "s3://bucket/1/run/artifacts/model"})

    assert settings == LambdaSettings(model_uri="s3://bucket/1/run/artifacts/model")
    assert settings.predictions_stream_name == "ride_predictions"
    assert settings.dead_letter_stream_name is None
    assert settings.model_name == "ride_duration_prediction_model"
    assert settings.model_version is None


def test_settings_read_every_variable() -> None:
    settings = settings_from_env(
        {
            "MODEL_URI": "models:/ride/3",
            "PREDICTIONS_STREAM_NAME": "preds",
            "DEAD_LETTER_STREAM_NAME": "dlq",
            "MODEL_NAME": "custom",
            "MODEL_VERSION": "v9",
            "MODEL_LOAD_TIMEOUT_SECONDS": "12.5",
            "LOG_LEVEL": "warning",
            "MESSAGE_LOG_LEVEL": "DEBUG",
        }
    )

    assert settings == replace(
        LambdaSettings(model_uri="models:/ride/3"),
        predictions_stream_name="preds",
        dead_letter_stream_name="dlq",
        model_name="custom",
        model_version="v9",
        model_load_timeout_seconds=12.5,
        log_level="WARNING",
        message_log_level="DEBUG",
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "MODEL_URI"),
        ({"MODEL_URI": ""}, "MODEL_URI"),
        ({"MODEL_URI": "m", "MODEL_LOAD_TIMEOUT_SECONDS": "soon"}, "SECONDS=.soon. is invalid"),
        ({"MODEL_URI": "m", "MODEL_LOAD_TIMEOUT_SECONDS": "0"}, "SECONDS=.0. is invalid"),
        ({"MODEL_URI": "m", "LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ],
    ids=["unset", "empty", "not-number", "zero", "bad-level"],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(MissingSettingError, match=message):
        settings_from_env(environ)


def test_empty_optional_variables_count_as_unset() -> None:
    settings = settings_from_env(
        {"MODEL_URI": "m", "PREDICTIONS_STREAM_NAME": "", "DEAD_LETTER_STREAM_NAME": ""}
    )

    assert settings.predictions_stream_name == "ride_predictions"
    assert settings.dead_letter_stream_name is None


def test_oversized_record_data_is_rejected_before_decoding(
    writer: InMemoryWriter, lambda_logs: list[dict[str, Any]]
) -> None:
    service = make_service(fixed_model_holder(1.0), writer, max_message_bytes=64)

    assert service.handle(kinesis_event(ride("x" * 100))) == {"batchItemFailures": []}

    assert PREDICTIONS not in writer.written
    (error_line,) = [line for line in lambda_logs if line["severity"] == "ERROR"]
    assert "over the limit of 64 bytes" in error_line["reason"]


def padded_ride(ride_id: int, size: int) -> bytes:
    """A valid ride event of exactly ``size`` bytes of JSON (an ignored field pads it)."""
    unpadded = json.dumps({**ride(ride_id), "pad": ""}).encode()
    padded = json.dumps({**ride(ride_id), "pad": "x" * (size - len(unpadded))}).encode()
    assert len(padded) == size
    return padded


@pytest.mark.parametrize(
    "max_bytes",
    [
        pytest.param(1024 * 1024, id="default-1MiB"),
        pytest.param(600_000, id="multiple-of-3"),
        pytest.param(600_001, id="multiple-of-3-plus-1"),
        pytest.param(600_002, id="multiple-of-3-plus-2"),
    ],
)
def test_records_up_to_max_message_bytes_decoded_are_accepted_whatever_their_base64_length(
    shared_loader: ModelHolder,
    writer: InMemoryWriter,
    lambda_logs: list[dict[str, Any]],
    test_model: ModelFixture,
    max_bytes: int,
) -> None:
    # The limit is on the decoded data (docs/design.md, MAX_MESSAGE_BYTES); the base64 Lambda
    # delivers is a third longer, so a record at the limit arrives as ~1.33 x max_bytes chars.
    service = make_service(
        shared_loader, writer, dead_letter_stream_name=DEAD_LETTER, max_message_bytes=max_bytes
    )
    at_limit, over_limit = padded_ride(1, max_bytes), padded_ride(2, max_bytes + 1)

    response = service.handle(kinesis_event(at_limit, over_limit))

    assert response == {"batchItemFailures": []}
    assert writer.json_to(PREDICTIONS) == [
        test_model.expected_message(1, ride_features(ride(1)["ride"]))
    ]
    (dead_letter,) = writer.json_to(DEAD_LETTER)
    assert dead_letter["dlq_source_sequence_number"] == sequence_number(1)
    assert f"over the limit of {max_bytes}" in dead_letter["dlq_reason"]
    (error_line,) = [line for line in lambda_logs if line["severity"] == "ERROR"]
    assert error_line["sequence_number"] == sequence_number(1)
