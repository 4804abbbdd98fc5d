"""The function over HTTP, through functions-framework's own app and test client."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from functions_framework import create_app

import main
from devstack.pubsub_admin import PubSubAdmin
from devstack.storage import upload_directory
from ride_predictor.model_holder import ModelHolder
from tests.conftest import (
    PROJECT_ID,
    SAMPLE_FEATURES,
    ModelFixture,
    RecordingPublisher,
    load_json,
    pubsub_cloud_event,
    pubsub_event_data,
    unique,
)
from tests.fake_pubsub_api import FakePublisherServer

MAIN_PY = str(Path(main.__file__))
SAMPLE_B64 = load_json("tutorial_event.json")["data"]["message"]["data"]
# Every variable of docs/design.md's configuration table: a test's function sees only its own.
FUNCTION_VARIABLES = (
    "MODEL_URI",
    "PROJECT_ID",
    "GOOGLE_CLOUD_PROJECT",
    "PUBLISH_STREAM",
    "DEAD_LETTER_STREAM",
    "MODEL_NAME",
    "MODEL_VERSION",
    "MODEL_REFRESH_SECONDS",
    "MAX_MESSAGE_BYTES",
    "MAX_BATCH_RIDES",
    "MODEL_LOAD_TIMEOUT_SECONDS",
    "PUBLISH_TIMEOUT_SECONDS",
    "PUBLISH_MAX_RPCS_IN_FLIGHT",
    "LOG_LEVEL",
    "MESSAGE_LOG_LEVEL",
)
VALID_RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}

FunctionFromEnv = Callable[..., Any]


@pytest.fixture
def function_from_env(monkeypatch: pytest.MonkeyPatch) -> FunctionFromEnv:
    """Makes the framework's app for main.py configured, as deployed, by environment variables
    only (``PROJECT_ID`` is the tests' unless given); returns its test client."""

    def make(**env: str) -> Any:
        for name in FUNCTION_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in {"PROJECT_ID": PROJECT_ID, **env}.items():
            monkeypatch.setenv(name, value)
        app = create_app(target="predict_duration", source=MAIN_PY, signature_type="cloudevent")
        monkeypatch.setattr(sys.modules["main"], "_service", None)  # built from the environment
        return app.test_client()

    return make


@pytest.fixture
def fake_pubsub_server() -> Iterator[FakePublisherServer]:
    """A fake Pub/Sub Publish API over gRPC that answers at once (see tests/fake_pubsub_api)."""
    server = FakePublisherServer().start()
    yield server
    server.stop()


def deliver(
    client: Any, payload: bytes, message_id: str, attributes: dict[str, str] | None = None
) -> int:
    """Post one Pub/Sub message to the function as a binary CloudEvent; the HTTP status."""
    event = CloudEvent(
        {
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": f"//pubsub.googleapis.com/projects/{PROJECT_ID}/topics/taxi-ride-streaming",
            "id": message_id,
        },
        pubsub_event_data(payload, message_id, attributes),
    )
    headers, body = to_binary(event)
    return client.post("/", headers=headers, data=body).status_code


def rejections(json_logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ERROR lines of rejected messages (not a background thread's line of another test)."""
    return [
        line
        for line in json_logs
        if line["severity"] == "ERROR" and line["message"].startswith("rejected message")
    ]


def ride_event(ride_id: Any, ride: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"ride": ride or VALID_RIDE, "ride_id": ride_id}).encode()


@pytest.fixture
def client_with_recorder(
    test_model: ModelFixture,
    recording_publisher: RecordingPublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """The framework's app for main.py, its service wired to a real model and a recorder."""
    app = create_app(target="predict_duration", source=MAIN_PY, signature_type="cloudevent")
    # create_app executes main.py afresh as the module "main": inject into that module.
    served_main = sys.modules["main"]
    settings = served_main.Settings(model_uri=test_model.path, project_id=PROJECT_ID)
    monkeypatch.setattr(
        served_main,
        "_service",
        served_main.PredictionService(
            settings, ModelHolder(settings.model_uri, settings.model_name), recording_publisher
        ),
    )
    return app.test_client()


def _assert_sample_predicted(
    recording_publisher: RecordingPublisher, test_model: ModelFixture
) -> None:
    (message,) = recording_publisher.json_to(f"projects/{PROJECT_ID}/topics/ride-predictions")
    assert message["prediction"] == {
        "ride_duration": test_model.expected_duration(SAMPLE_FEATURES),
        "ride_id": 123,
    }


def test_binary_cloud_event(
    client_with_recorder: Any, recording_publisher: RecordingPublisher, test_model: ModelFixture
) -> None:
    headers, body = to_binary(pubsub_cloud_event(SAMPLE_B64))
    response = client_with_recorder.post("/", headers=headers, data=body)
    assert response.status_code == 200
    _assert_sample_predicted(recording_publisher, test_model)


def test_structured_cloud_event(
    client_with_recorder: Any, recording_publisher: RecordingPublisher, test_model: ModelFixture
) -> None:
    headers, body = to_structured(pubsub_cloud_event(SAMPLE_B64))
    assert headers["content-type"] == "application/cloudevents+json"
    response = client_with_recorder.post("/", headers=headers, data=body)
    assert response.status_code == 200
    _assert_sample_predicted(recording_publisher, test_model)


def test_raw_pubsub_push_body(
    client_with_recorder: Any, recording_publisher: RecordingPublisher, test_model: ModelFixture
) -> None:
    push_body = {
        "message": {
            "data": SAMPLE_B64,
            "messageId": "10133540205021770",
            "publishTime": "2024-01-08T08:22:49.792Z",
            "attributes": {},
        },
        "subscription": f"projects/{PROJECT_ID}/subscriptions/taxi-ride-push",
    }
    response = client_with_recorder.post(
        f"/projects/{PROJECT_ID}/topics/taxi-ride-streaming", json=push_body
    )
    assert response.status_code == 200
    _assert_sample_predicted(recording_publisher, test_model)
    (published,) = recording_publisher.published
    assert published[1].attributes["source_message_id"] == "10133540205021770"


def test_invalid_push_body_is_acked_with_2xx(
    client_with_recorder: Any, recording_publisher: RecordingPublisher
) -> None:
    push_body = {
        "message": {"data": base64.b64encode(b"{not json").decode(), "messageId": "1"},
        "subscription": f"projects/{PROJECT_ID}/subscriptions/s",
    }
    response = client_with_recorder.post(f"/projects/{PROJECT_ID}/topics/t", json=push_body)
    assert response.status_code == 200
    assert recording_publisher.published == []


def test_gs_model_and_pubsub_emulator_give_exactly_the_contract_message(
    test_model: ModelFixture,
    gcs: Any,
    pubsub: PubSubAdmin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id = test_model.logged.run_id
    model_uri = upload_directory(
        gcs, Path(test_model.path), f"gs://{unique('models')}/1/{run_id}/artifacts/model"
    )
    output_topic, subscription = unique("ride-predictions"), unique("ride-predictions-sub")
    pubsub.create_topic(output_topic)
    pubsub.create_subscription(subscription, output_topic)
    monkeypatch.setenv("MODEL_URI", model_uri)
    monkeypatch.setenv("PROJECT_ID", PROJECT_ID)
    monkeypatch.setenv("PUBLISH_STREAM", output_topic)
    for name in ("MODEL_NAME", "MODEL_VERSION", "DEAD_LETTER_STREAM"):
        monkeypatch.delenv(name, raising=False)
    app = create_app(target="predict_duration", source=MAIN_PY, signature_type="cloudevent")
    monkeypatch.setattr(sys.modules["main"], "_service", None)  # built from the environment

    headers, body = to_binary(pubsub_cloud_event(SAMPLE_B64, message_id="4242"))
    response = app.test_client().post("/", headers=headers, data=body)

    assert response.status_code == 200
    (received,) = pubsub.pull(subscription, expected=1)
    assert json.loads(received.data) == test_model.expected_message(123, SAMPLE_FEATURES)
    assert received.attributes == {
        "ride_id": "123",
        "model_version": run_id,
        "source_message_id": "4242",
    }


def test_a_replayed_dead_letters_dlq_attributes_are_replaced_by_this_rejections(
    function_from_env: FunctionFromEnv,
    pubsub: PubSubAdmin,
    streams: dict[str, str],
    test_model: ModelFixture,
) -> None:
    client = function_from_env(
        MODEL_URI=test_model.path,
        PUBLISH_STREAM=streams["output"],
        DEAD_LETTER_STREAM=streams["dead_letter"],
    )
    # A dead letter of a batch's fourth element, once cut short, published back to Stream A
    # with the attributes it was pulled with, and still invalid.
    replayed_attributes = {
        "origin": "replay-tool",
        "dlq_reason": "an earlier reason",
        "dlq_source_message_id": "first-1",
        "dlq_source_publish_time": "2020-01-01T00:00:00Z",
        "dlq_source_subscription": "projects/p/subscriptions/first",
        "dlq_ride_index": "3",
        "dlq_truncated_from_bytes": "2000000",
    }

    assert deliver(client, b'{"ride_id": 7}', "replay-1", replayed_attributes) == 200

    (dead_letter,) = pubsub.pull(f"{streams['dead_letter']}-sub", expected=1)
    assert dead_letter.data == b'{"ride_id": 7}'
    attributes = dict(dead_letter.attributes)
    assert "`ride`" in attributes.pop("dlq_reason")
    # Its own attributes kept; every dlq_* one says why and where from *this* time, and none
    # that does not apply to this rejection (not a batch element, not cut) is left over; the
    # rejected ride's own ride_id is an attribute, as on every dead letter.
    assert attributes == {
        "origin": "replay-tool",
        "ride_id": "7",
        "dlq_source_message_id": "replay-1",
        "dlq_source_publish_time": "2024-01-08T08:22:49.792Z",
        "dlq_source_subscription": f"projects/{PROJECT_ID}/subscriptions/taxi-ride-sub",
    }


def test_the_first_ride_of_a_batch_is_index_0_in_its_prediction_dead_letter_and_log_line(
    function_from_env: FunctionFromEnv,
    pubsub: PubSubAdmin,
    streams: dict[str, str],
    test_model: ModelFixture,
    json_logs: list[dict[str, Any]],
) -> None:
    client = function_from_env(
        MODEL_URI=test_model.path,
        PUBLISH_STREAM=streams["output"],
        DEAD_LETTER_STREAM=streams["dead_letter"],
    )
    invalid = b'{"ride_id": 1}'
    first_invalid = b"[" + invalid + b", " + ride_event(2) + b"]"
    first_valid = b"[" + ride_event(3) + b", " + invalid + b"]"

    assert deliver(client, first_invalid, "batch-1") == 200
    assert deliver(client, first_valid, "batch-2") == 200

    dead_letters = pubsub.pull(f"{streams['dead_letter']}-sub", expected=2)
    assert sorted(
        (m.attributes["dlq_source_message_id"], m.attributes.get("dlq_ride_index"), m.data)
        for m in dead_letters
    ) == [("batch-1", "0", invalid), ("batch-2", "1", invalid)]
    predictions = pubsub.pull(f"{streams['output']}-sub", expected=2)
    assert sorted(
        (m.attributes["source_message_id"], m.attributes.get("ride_index"), m.attributes["ride_id"])
        for m in predictions
    ) == [("batch-1", "1", "2"), ("batch-2", "0", "3")]
    errors = rejections(json_logs)
    assert [(line["message_id"], line.get("ride_index")) for line in errors] == [
        ("batch-1", 0),
        ("batch-2", 1),
    ]


@pytest.mark.parametrize("ride_id", [0, 123, "abc-7"], ids=["id-0", "id-123", "id-text"])
def test_log_lines_label_the_ride_the_message_and_the_model_version(
    function_from_env: FunctionFromEnv,
    fake_pubsub_server: FakePublisherServer,
    test_model: ModelFixture,
    json_logs: list[dict[str, Any]],
    ride_id: Any,
) -> None:
    # Labels are what an operator filters one ride or one message by (docs/failures.md, Logs).
    client = function_from_env(
        MODEL_URI=test_model.path,
        DEAD_LETTER_STREAM="ride-dead-letter",
        PUBSUB_EMULATOR_HOST=fake_pubsub_server.host,
    )

    assert deliver(client, ride_event(ride_id), "ok-1") == 200
    assert deliver(client, ride_event(ride_id, {**VALID_RIDE, "PULocationID": 0}), "bad-1") == 200

    (published,) = [line for line in json_logs if line["message"] == "prediction published"]
    assert published["logging.googleapis.com/labels"] == {
        "ride_id": str(ride_id),
        "message_id": "ok-1",
        "model_version": test_model.logged.run_id,
    }
    (rejected,) = rejections(json_logs)
    assert rejected["logging.googleapis.com/labels"] == {
        "ride_id": str(ride_id),
        "message_id": "bad-1",
    }


def test_an_id_the_function_does_not_know_is_no_label(
    function_from_env: FunctionFromEnv,
    test_model: ModelFixture,
    json_logs: list[dict[str, Any]],
) -> None:
    client = function_from_env(MODEL_URI=test_model.path)
    # Event data with no Pub/Sub message in it: neither a message id nor a ride id to label.
    headers, body = to_binary(
        CloudEvent(
            {
                "type": "google.cloud.pubsub.topic.v1.messagePublished",
                "source": f"//pubsub.googleapis.com/projects/{PROJECT_ID}/topics/t",
                "id": "",
            },
            {"subscription": f"projects/{PROJECT_ID}/subscriptions/s"},
        )
    )

    assert client.post("/", headers=headers, data=body).status_code == 200

    (rejected,) = rejections(json_logs)
    assert "no Pub/Sub message" in rejected["reason"]
    assert "logging.googleapis.com/labels" not in rejected


@pytest.mark.parametrize(
    ("env", "timeout"),
    [
        pytest.param({}, 10.0, id="default-10s"),
        pytest.param({"PUBLISH_TIMEOUT_SECONDS": "4"}, 4.0, id="set-4s"),
    ],
)
def test_each_publish_is_bounded_by_publish_timeout_seconds(
    function_from_env: FunctionFromEnv,
    fake_pubsub_server: FakePublisherServer,
    test_model: ModelFixture,
    env: dict[str, str],
    timeout: float,
) -> None:
    # docs/failures.md, Bounded waits: the model load (20 s) and at most two publish calls of
    # PUBLISH_TIMEOUT_SECONDS (10 s by default) fit in the 60 s function timeout. The bound
    # reaches the server as each Publish RPC's deadline, which the fake server records.
    client = function_from_env(
        MODEL_URI=test_model.path,
        DEAD_LETTER_STREAM="ride-dead-letter",
        PUBSUB_EMULATOR_HOST=fake_pubsub_server.host,
        **env,
    )

    assert deliver(client, ride_event(1), "ok-1") == 200
    assert deliver(client, b"{not json", "bad-1") == 200

    rpcs = fake_pubsub_server.api.rpcs
    assert [rpc.topic.rsplit("/", 1)[1] for rpc in rpcs] == ["ride-predictions", "ride-dead-letter"]
    for rpc in rpcs:
        assert rpc.timeout is not None
        # At most the timeout (plus the little gRPC rounds a deadline up by as it sends it); at
        # least half of it (the rest went on connecting, at worst).
        assert timeout / 2 < rpc.timeout <= timeout + 0.5
