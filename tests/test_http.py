"""The function over HTTP, through functions-framework's own app and test client."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from functions_framework import create_app

import main
from devstack.pubsub_admin import PubSubAdmin
from devstack.storage import upload_directory
from model_loader import ModelLoader
from tests.conftest import (
    PROJECT_ID,
    SAMPLE_FEATURES,
    ModelFixture,
    RecordingPublisher,
    load_json,
    pubsub_cloud_event,
    unique,
)

MAIN_PY = str(Path(main.__file__))
SAMPLE_B64 = load_json("tutorial_event.json")["data"]["message"]["data"]


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
            settings, ModelLoader(settings.model_uri, settings.model_name), recording_publisher
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
