"""The Lambda handler against a real Kinesis and S3 API: moto's standalone server.

The input event is read back from a real stream and shaped as the Kinesis event source mapping
shapes it; predictions and dead letters are read back from their streams with ``get_records``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

import lambda_function
from devstack.aws_admin import create_stream, read_as_lambda_event, read_stream, upload_directory
from devstack.moto_server import MotoServer
from devstack.processes import group_alive, http_status
from tests.aws_events import SAMPLE_RIDE, kinesis_event, ride
from tests.conftest import SAMPLE_FEATURES, ModelFixture, ride_features, unique


@pytest.fixture
def kinesis(aws_env: MotoServer) -> Any:
    """A boto3 Kinesis client on the moto server (found through AWS_ENDPOINT_URL_KINESIS)."""
    return boto3.client("kinesis")


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch, aws_env: MotoServer) -> pytest.MonkeyPatch:
    """A cold Lambda: the handler builds its service from the environment on first call."""
    monkeypatch.setattr(lambda_function, "_service", None)
    for name in (
        "MODEL_NAME",
        "MODEL_VERSION",
        "DEAD_LETTER_STREAM_NAME",
        "MODEL_LOAD_TIMEOUT_SECONDS",
        "LOG_LEVEL",
        "MESSAGE_LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def put_rides(kinesis: Any, stream: str, payloads: list[Any]) -> None:
    """Produce to the input stream as the tutorial's producer would: JSON, keyed by ride_id."""
    response = kinesis.put_records(
        StreamName=stream,
        Records=[
            {
                "Data": payload if isinstance(payload, bytes) else json.dumps(payload).encode(),
                "PartitionKey": str(position),
            }
            for position, payload in enumerate(payloads)
        ],
    )
    assert response["FailedRecordCount"] == 0


def test_rides_from_a_kinesis_stream_become_predictions_and_dead_letters(
    kinesis: Any, lambda_env: pytest.MonkeyPatch, test_model: ModelFixture
) -> None:
    source, predictions, dead_letter = unique("rides"), unique("preds"), unique("dlq")
    for stream in (source, predictions, dead_letter):
        create_stream(kinesis, stream)
    rides = [SAMPLE_RIDE, ride("trip-2", 7, 8, 1.5), ride(3, 40, 41, 20.0)]
    put_rides(kinesis, source, [rides[0], b"{oops", rides[1], rides[2]])
    event = read_as_lambda_event(kinesis, source)
    lambda_env.setenv("MODEL_URI", test_model.path)
    lambda_env.setenv("PREDICTIONS_STREAM_NAME", predictions)
    lambda_env.setenv("DEAD_LETTER_STREAM_NAME", dead_letter)

    response = lambda_function.lambda_handler(event, None)

    assert response == {"batchItemFailures": []}
    written = read_stream(kinesis, predictions)
    assert [json.loads(record["Data"]) for record in written] == [
        test_model.expected_message(r["ride_id"], ride_features(r["ride"])) for r in rides
    ]
    assert [record["PartitionKey"] for record in written] == ["123", "trip-2", "3"]
    (parked,) = read_stream(kinesis, dead_letter)
    envelope = json.loads(parked["Data"])
    bad = event["Records"][1]
    assert base64.b64decode(envelope["data"]) == b"{oops"
    assert envelope["dlq_source_sequence_number"] == bad["kinesis"]["sequenceNumber"]
    assert envelope["dlq_source_event_source_arn"] == bad["eventSourceARN"]
    assert "not valid JSON" in envelope["dlq_reason"]
    assert parked["PartitionKey"] == "1"  # the source record's key


def test_missing_output_stream_reports_only_the_valid_records(
    kinesis: Any, lambda_env: pytest.MonkeyPatch, test_model: ModelFixture
) -> None:
    dead_letter = unique("dlq")
    create_stream(kinesis, dead_letter)
    lambda_env.setenv("MODEL_URI", test_model.path)
    lambda_env.setenv("PREDICTIONS_STREAM_NAME", unique("never-created"))
    lambda_env.setenv("DEAD_LETTER_STREAM_NAME", dead_letter)
    event = kinesis_event(ride(1), b"oops", ride(2))

    response = lambda_function.lambda_handler(event, None)

    assert response == {
        "batchItemFailures": [
            {"itemIdentifier": event["Records"][0]["kinesis"]["sequenceNumber"]},
            {"itemIdentifier": event["Records"][2]["kinesis"]["sequenceNumber"]},
        ]
    }
    assert len(read_stream(kinesis, dead_letter)) == 1


def test_more_rides_than_one_put_records_call_takes_all_arrive(
    kinesis: Any, lambda_env: pytest.MonkeyPatch, test_model: ModelFixture
) -> None:
    predictions = unique("preds")
    create_stream(kinesis, predictions, shard_count=2)
    lambda_env.setenv("MODEL_URI", test_model.path)
    lambda_env.setenv("PREDICTIONS_STREAM_NAME", predictions)
    rides = [
        ride(ride_id, 1 + ride_id % 20, 1 + ride_id % 7, ride_id / 100) for ride_id in range(520)
    ]

    response = lambda_function.lambda_handler(kinesis_event(*rides), None)

    assert response == {"batchItemFailures": []}
    written = read_stream(kinesis, predictions)
    assert sorted(
        json.loads(record["Data"])["prediction"]["ride_id"] for record in written
    ) == list(range(520))
    assert all(
        record["PartitionKey"] == str(json.loads(record["Data"])["prediction"]["ride_id"])
        for record in written
    )


def test_model_uri_on_s3_is_loaded_through_mlflow(
    kinesis: Any, lambda_env: pytest.MonkeyPatch, test_model: ModelFixture
) -> None:
    run_id = test_model.logged.run_id
    model_uri = upload_directory(
        boto3.client("s3"),
        Path(test_model.path),
        f"s3://{unique('models')}/1/{run_id}/artifacts/model",
    )
    predictions = unique("preds")
    create_stream(kinesis, predictions)
    lambda_env.setenv("MODEL_URI", model_uri)
    lambda_env.setenv("PREDICTIONS_STREAM_NAME", predictions)

    response = lambda_function.lambda_handler(kinesis_event(SAMPLE_RIDE), None)

    assert response == {"batchItemFailures": []}
    assert lambda_function.get_service().model_holder.loaded.source_uri == model_uri
    (record,) = read_stream(kinesis, predictions)
    assert json.loads(record["Data"]) == test_model.expected_message(123, SAMPLE_FEATURES)


def test_moto_server_stops_without_leaving_a_process(tmp_path: Path) -> None:
    server = MotoServer(tmp_path).start()
    process = server.process
    assert process is not None
    assert http_status(f"{server.url}/moto-api/data.json") == 200

    server.stop()

    assert not group_alive(process.pid)
    assert http_status(f"{server.url}/moto-api/data.json") is None
