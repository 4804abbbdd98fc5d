"""Dead letters: bounded, identifiable, and marked like their source.

The dead letters of one message cost at most the message itself (its data and attributes) plus
``PER_RIDE_BOUND`` bytes per rejected ride (docs/design.md, "Dead letters"); each keeps the
ride's bytes, its index and its ``ride_id`` attribute. A message's ``deploy_verify`` attribute is
copied onto every prediction and dead letter it gives; ``dlq_source_subscription`` falls back to
``SOURCE_SUBSCRIPTION`` when the event has no subscription (a raw push request). The last tests
check the same through HTTP and the Pub/Sub emulator.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from functions_framework import create_app

import main
from devstack.pubsub_admin import PubSubAdmin, ReceivedMessage
from ride_predictor.loaders import LoadedModel
from ride_predictor.model_holder import ModelHolder
from ride_predictor.publisher import OutgoingMessage
from ride_predictor.settings import Settings
from tests.conftest import (
    PROJECT_ID,
    ModelFixture,
    RecordingPublisher,
    ServeFunction,
    deliver,
    pubsub_event_data,
    push_body,
)

OUTPUT_TOPIC = f"projects/{PROJECT_ID}/topics/ride-predictions"
DEAD_LETTER_TOPIC = f"projects/{PROJECT_ID}/topics/ride-dead-letter"
# The documented bound on the attributes of one rejected ride's dead letter (docs/design.md).
PER_RIDE_BOUND = 8 * 1024
SUBSCRIPTION = f"projects/{PROJECT_ID}/subscriptions/taxi-ride-streaming-push"


@pytest.fixture(scope="module")
def shared_loader(test_model: ModelFixture) -> ModelHolder:
    loader = ModelHolder(test_model.path, "ride_duration_prediction_model")
    loader.get()
    return loader


def service(
    loader: ModelHolder, publisher: RecordingPublisher, **settings: Any
) -> main.PredictionService:
    return main.PredictionService(
        Settings(
            model_uri=loader.model_uri,
            project_id=PROJECT_ID,
            dead_letter_stream="ride-dead-letter",
            **settings,
        ),
        loader,
        publisher,
    )


def bad_ride(ride_id: int) -> bytes:
    """A ride event with a valid ride_id and an invalid ride (zone 0), 100-odd bytes."""
    return json.dumps(
        {
            "ride": {"PULocationID": 0, "DOLocationID": 205, "trip_distance": 3.66},
            "ride_id": ride_id,
        }
    ).encode()


def good_ride(ride_id: int | str) -> bytes:
    return json.dumps(
        {
            "ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66},
            "ride_id": ride_id,
        }
    ).encode()


def large_attributes(count: int = 100) -> dict[str, str]:
    """``count`` attributes of about 1 KB each (Pub/Sub allows 100 values of 1,024 bytes)."""
    return {f"attribute-{i:02d}": chr(ord("a") + i % 26) * 1000 for i in range(count)}


def attribute_bytes(attributes: dict[str, str]) -> int:
    return sum(len(key.encode()) + len(value.encode()) for key, value in attributes.items())


def cost(messages: list[OutgoingMessage] | list[ReceivedMessage]) -> int:
    """What messages cost in bytes: data plus attribute names and values."""
    return sum(len(m.data) + attribute_bytes(dict(m.attributes)) for m in messages)


def test_the_dead_letters_of_1000_bad_rides_with_100_large_attributes_are_bounded(
    shared_loader: ModelHolder, recording_publisher: RecordingPublisher
) -> None:
    elements = [bad_ride(i) for i in range(1000)]
    data = b"[" + b",".join(elements) + b"]"
    attributes = large_attributes()
    message_cost = len(data) + attribute_bytes(attributes)

    service(shared_loader, recording_publisher).handle(
        pubsub_event_data(data, message_id="big", attributes=attributes)
    )

    dead_letters = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert len(dead_letters) == 1000
    # Before: every dead letter copied all 100 KB of attributes, 100 MB in all.
    assert cost(dead_letters) <= message_cost + 1000 * PER_RIDE_BOUND
    for index, dead_letter in enumerate(dead_letters):
        assert dead_letter.data == elements[index]  # the ride's own bytes
        assert dead_letter.attributes["dlq_ride_index"] == str(index)
        assert dead_letter.attributes["ride_id"] == str(index)
        assert dead_letter.attributes["dlq_source_message_id"] == "big"
        assert dead_letter.attributes["dlq_source_attributes_omitted"] == "100"
        assert (
            "Expected `int` >= 1 - at `$.ride.PULocationID`" in dead_letter.attributes["dlq_reason"]
        )


def test_a_batch_elements_dead_letter_keeps_small_source_attributes(
    shared_loader: ModelHolder, recording_publisher: RecordingPublisher
) -> None:
    data = b"[" + good_ride(1) + b"," + bad_ride(2) + b"]"
    attributes = {"origin": "meter-3", "ride_id": "batch-7"}

    service(shared_loader, recording_publisher).handle(
        pubsub_event_data(data, attributes=attributes)
    )

    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.attributes["origin"] == "meter-3"
    assert dead_letter.attributes["ride_id"] == "2"  # the rejected ride's own id
    assert "dlq_source_attributes_omitted" not in dead_letter.attributes


def test_a_whole_message_keeps_every_source_attribute_and_gains_its_ride_id(
    shared_loader: ModelHolder, recording_publisher: RecordingPublisher
) -> None:
    attributes = large_attributes(80)

    service(shared_loader, recording_publisher).handle(
        pubsub_event_data(bad_ride(42), attributes=attributes)
    )

    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.data == bad_ride(42)
    assert {key: dead_letter.attributes[key] for key in attributes} == attributes
    assert dead_letter.attributes["ride_id"] == "42"
    assert cost([dead_letter]) <= len(bad_ride(42)) + attribute_bytes(attributes) + PER_RIDE_BOUND


def test_a_source_ride_id_attribute_is_kept_when_the_ride_has_none(
    shared_loader: ModelHolder, recording_publisher: RecordingPublisher
) -> None:
    # What `deploy.sh verify` filters on: its ride_id attribute, whatever the data.
    service(shared_loader, recording_publisher).handle(
        pubsub_event_data(b"{not json", attributes={"ride_id": "deploy-verify-1"})
    )
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.attributes["ride_id"] == "deploy-verify-1"


def test_no_attribute_is_over_pubsubs_1024_bytes(recording_publisher: RecordingPublisher) -> None:
    # A version of 1,000 non-ASCII characters (2,000 bytes) used to fail every publish.
    version = "é" * 1000
    model = LoadedModel("m", version, "memory://fixed", "python_function", lambda rows: [1.0])
    loader = ModelHolder("memory://fixed", "m", load=lambda *_: model)
    ride_id = "é" * 256  # 512 bytes: a valid ride_id
    event = json.loads(bad_ride(0))
    event["ride_id"] = ride_id

    service(loader, recording_publisher).handle(
        pubsub_event_data(
            json.dumps([event, json.loads(good_ride(ride_id))]).encode(),
            attributes={"source": "s" * 1024},
        )
    )

    for _, message in recording_publisher.published:
        for key, value in message.attributes.items():
            assert len(value.encode()) <= 1024, key
    (prediction,) = recording_publisher.to(OUTPUT_TOPIC)
    assert prediction.attributes["model_version"] == "é" * 510 + "…"
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.attributes["ride_id"] == ride_id


@pytest.mark.parametrize("data", [good_ride(7), b"[" + good_ride(7) + b"," + bad_ride(8) + b"]"])
def test_deploy_verify_is_copied_onto_every_prediction_and_dead_letter(
    shared_loader: ModelHolder, recording_publisher: RecordingPublisher, data: bytes
) -> None:
    attributes = {"deploy_verify": "run-20240108-1", **large_attributes(99)}

    service(shared_loader, recording_publisher).handle(
        pubsub_event_data(data, attributes=attributes)
    )

    published = [message for _, message in recording_publisher.published]
    assert published
    assert {message.attributes["deploy_verify"] for message in published} == {"run-20240108-1"}


def test_no_deploy_verify_attribute_unless_the_source_has_one(
    shared_loader: ModelHolder, recording_publisher: RecordingPublisher
) -> None:
    service(shared_loader, recording_publisher).handle(
        pubsub_event_data(b"[" + good_ride(7) + b"," + bad_ride(8) + b"]")
    )
    assert all("deploy_verify" not in m.attributes for _, m in recording_publisher.published)


def test_the_event_subscription_wins_over_the_setting(
    shared_loader: ModelHolder, recording_publisher: RecordingPublisher
) -> None:
    event_data = pubsub_event_data(bad_ride(1))
    service(
        shared_loader,
        recording_publisher,
        source_subscription="projects/p/subscriptions/from-setting",
    ).handle(event_data)
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.attributes["dlq_source_subscription"] == event_data["subscription"]


def test_a_raw_push_dead_letter_names_the_source_subscription_setting(
    test_model: ModelFixture,
    recording_publisher: RecordingPublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(target="predict_duration", source=main.__file__, signature_type="cloudevent")
    served_main = __import__("sys").modules["main"]
    loader = ModelHolder(test_model.path, "m")
    monkeypatch.setattr(
        served_main,
        "_service",
        served_main.PredictionService(
            Settings(
                model_uri=test_model.path,
                project_id=PROJECT_ID,
                dead_letter_stream="ride-dead-letter",
                source_subscription=SUBSCRIPTION,
            ),
            loader,
            recording_publisher,
        ),
    )
    body = {
        "message": {"data": base64.b64encode(bad_ride(3)).decode(), "messageId": "raw-1"},
        "subscription": SUBSCRIPTION,  # functions-framework drops it
    }

    response = app.test_client().post(
        f"/projects/{PROJECT_ID}/topics/taxi-ride-streaming", json=body
    )

    assert response.status_code == 200
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.attributes["dlq_source_subscription"] == SUBSCRIPTION


@pytest.mark.emulator
def test_bounded_dead_letters_through_http_and_the_emulator(
    serve_function: ServeFunction,
    streams: dict[str, str],
    pubsub: PubSubAdmin,
    test_model: ModelFixture,
) -> None:
    server = serve_function(
        MODEL_URI=test_model.path,
        PUBLISH_STREAM=streams["output"],
        DEAD_LETTER_STREAM=streams["dead_letter"],
        SOURCE_SUBSCRIPTION=SUBSCRIPTION,
    )
    elements = [bad_ride(i) for i in range(1000)]
    data = b"[" + b",".join(elements) + b"]"
    attributes = {"deploy_verify": "run-42", **large_attributes(99)}
    message_cost = len(data) + attribute_bytes(attributes)

    assert deliver(server, push_body(data, "big-1", attributes)) == 200

    dead_letters = pubsub.pull(f"{streams['dead_letter']}-sub", expected=1000)
    dead_letters += pubsub.drain(f"{streams['dead_letter']}-sub", quiet_seconds=1)
    assert len(dead_letters) == 1000
    assert cost(dead_letters) <= message_cost + 1000 * PER_RIDE_BOUND
    by_index = {int(m.attributes["dlq_ride_index"]): m for m in dead_letters}
    assert sorted(by_index) == list(range(1000))
    for index, dead_letter in by_index.items():
        assert dead_letter.data == elements[index]
        assert dead_letter.attributes["ride_id"] == str(index)
        assert dead_letter.attributes["deploy_verify"] == "run-42"
        assert dead_letter.attributes["dlq_source_message_id"] == "big-1"
        assert dead_letter.attributes["dlq_source_subscription"] == SUBSCRIPTION


@pytest.mark.emulator
def test_deploy_verify_reaches_the_prediction_through_http_and_the_emulator(
    serve_function: ServeFunction,
    streams: dict[str, str],
    pubsub: PubSubAdmin,
    test_model: ModelFixture,
) -> None:
    server = serve_function(MODEL_URI=test_model.path, PUBLISH_STREAM=streams["output"])

    body = push_body(
        good_ride("verify-1"), "v-1", {"deploy_verify": "run-7", "ride_id": "verify-1"}
    )
    assert deliver(server, body) == 200

    (prediction,) = pubsub.pull(f"{streams['output']}-sub", expected=1)
    assert prediction.attributes["deploy_verify"] == "run-7"
    assert prediction.attributes["ride_id"] == "verify-1"
