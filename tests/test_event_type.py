"""Only Pub/Sub's ``messagePublished`` CloudEvents are handled, through functions-framework.

The raw Pub/Sub push body and a legacy Pub/Sub background event (both turned into that
CloudEvent by the framework) and the tutorial's plain dict keep working; a CloudEvent of any
other type, even carrying a valid ride, is a permanent failure with a reason: acked with 2xx,
one ERROR line, a dead letter, no prediction.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from functions_framework import create_app

import main
from ride_predictor.model_holder import ModelHolder
from ride_predictor.settings import Settings
from tests.conftest import (
    PROJECT_ID,
    ModelFixture,
    RecordingPublisher,
    load_json,
    pubsub_event_data,
)

MAIN_PY = str(Path(main.__file__))
OUTPUT_TOPIC = f"projects/{PROJECT_ID}/topics/ride-predictions"
DEAD_LETTER_TOPIC = f"projects/{PROJECT_ID}/topics/ride-dead-letter"
SAMPLE = load_json("sample_ride.json")
PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"


@pytest.fixture
def client(
    test_model: ModelFixture,
    recording_publisher: RecordingPublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """functions-framework's app for main.py, wired to the real model and a recorder."""
    app = create_app(target="predict_duration", source=MAIN_PY, signature_type="cloudevent")
    served_main = sys.modules["main"]
    settings = Settings(
        model_uri=test_model.path, project_id=PROJECT_ID, dead_letter_stream="ride-dead-letter"
    )
    monkeypatch.setattr(
        served_main,
        "_service",
        served_main.PredictionService(
            settings, ModelHolder(test_model.path, settings.model_name), recording_publisher
        ),
    )
    return app.test_client()


def event_of_type(event_type: str, event_id: str = "evt-1") -> CloudEvent:
    return CloudEvent(
        {
            "type": event_type,
            "source": f"//pubsub.googleapis.com/projects/{PROJECT_ID}",
            "id": event_id,
        },
        pubsub_event_data(SAMPLE, message_id=event_id),
    )


@pytest.mark.parametrize("encode", [to_binary, to_structured], ids=["binary", "structured"])
@pytest.mark.parametrize(
    "event_type",
    [
        "google.cloud.storage.object.v1.finalized",
        "google.cloud.pubsub.topic.v1.messagePublishedX",
        "com.example.ride",
    ],
)
def test_a_cloud_event_of_another_type_is_a_permanent_failure(
    client: Any,
    recording_publisher: RecordingPublisher,
    json_logs: list[dict[str, Any]],
    encode: Any,
    event_type: str,
) -> None:
    headers, body = encode(event_of_type(event_type, "other-1"))

    response = client.post("/", headers=headers, data=body)

    assert response.status_code == 200  # acked: never redelivered
    assert recording_publisher.to(OUTPUT_TOPIC) == []  # not predicted, although a valid ride
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    reason = f"the event's type is {event_type!r}, not {PUBLISHED}"
    assert dead_letter.attributes["dlq_reason"] == reason
    assert dead_letter.attributes["dlq_source_message_id"] == "other-1"
    assert dead_letter.data == base64.b64decode(pubsub_event_data(SAMPLE)["message"]["data"])
    (error,) = [line for line in json_logs if line["severity"] == "ERROR"]
    assert error["reason"] == reason


def test_a_message_published_cloud_event_is_predicted(
    client: Any, recording_publisher: RecordingPublisher
) -> None:
    headers, body = to_binary(event_of_type(PUBLISHED))
    assert client.post("/", headers=headers, data=body).status_code == 200
    assert len(recording_publisher.to(OUTPUT_TOPIC)) == 1


def test_a_legacy_pubsub_background_event_is_predicted(
    client: Any, recording_publisher: RecordingPublisher
) -> None:
    # functions-framework turns it into a messagePublished CloudEvent.
    body = {
        "context": {
            "eventId": "legacy-1",
            "timestamp": "2024-01-08T08:22:49.792Z",
            "eventType": "google.pubsub.topic.publish",
            "resource": {
                "service": "pubsub.googleapis.com",
                "name": f"projects/{PROJECT_ID}/topics/taxi-ride-streaming",
                "type": "type.googleapis.com/google.pubsub.v1.PubsubMessage",
            },
        },
        "data": {
            "@type": "type.googleapis.com/google.pubsub.v1.PubsubMessage",
            "data": pubsub_event_data(SAMPLE)["message"]["data"],
            "attributes": {},
        },
    }
    assert client.post("/", json=body).status_code == 200
    (published,) = recording_publisher.to(OUTPUT_TOPIC)
    assert published.attributes["source_message_id"] == "legacy-1"


def test_a_legacy_background_event_of_another_type_is_a_permanent_failure(
    client: Any, recording_publisher: RecordingPublisher
) -> None:
    body = {
        "context": {
            "eventId": "legacy-2",
            "timestamp": "2024-01-08T08:22:49.792Z",
            "eventType": "google.storage.object.finalize",
            "resource": {
                "service": "storage.googleapis.com",
                "name": "projects/_/buckets/b/objects/rides.json",
                "type": "storage#object",
            },
        },
        "data": {"bucket": "b", "name": "rides.json"},
    }
    assert client.post("/", json=body).status_code == 200
    assert recording_publisher.to(OUTPUT_TOPIC) == []
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert "google.cloud.storage.object.v1.finalized" in dead_letter.attributes["dlq_reason"]


def test_the_tutorials_plain_dict_still_works(
    client: Any, recording_publisher: RecordingPublisher
) -> None:
    served_main = sys.modules["main"]
    tutorial = load_json("tutorial_event.json")  # carries the messagePublished type
    assert served_main.predict_duration(tutorial)["prediction"]["ride_id"] == 123
    untyped = {key: value for key, value in tutorial.items() if key != "type"}
    assert served_main.predict_duration(untyped)["prediction"]["ride_id"] == 123
    assert len(recording_publisher.to(OUTPUT_TOPIC)) == 2


def test_a_plain_dict_of_another_type_is_a_permanent_failure(
    client: Any, recording_publisher: RecordingPublisher
) -> None:
    served_main = sys.modules["main"]
    event = {**load_json("tutorial_event.json"), "type": "com.example.ride"}
    assert served_main.predict_duration(event) is None
    assert recording_publisher.to(OUTPUT_TOPIC) == []
    assert len(recording_publisher.to(DEAD_LETTER_TOPIC)) == 1
