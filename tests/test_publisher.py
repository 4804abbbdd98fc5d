"""publisher.py on the real Pub/Sub emulator; group commit and limits: test_publisher_limits."""

from __future__ import annotations

import json

import pytest

from devstack.pubsub_admin import PubSubAdmin
from ride_predictor.errors import PublishError
from ride_predictor.publisher import (
    MAX_BYTES_PER_REQUEST,
    OutgoingMessage,
    PubSubPublisher,
    message_size,
    request_chunks,
)
from ride_predictor.settings import topic_path
from tests.conftest import PROJECT_ID, unique


def test_bytes_and_attributes_arrive(pubsub: PubSubAdmin) -> None:
    topic, subscription = unique("predictions"), unique("predictions-sub")
    pubsub.create_topic(topic)
    pubsub.create_subscription(subscription, topic)
    body = json.dumps({"prediction": {"ride_duration": 18, "ride_id": 123}}).encode()
    attributes = {"ride_id": "123", "model_version": "abc", "source_message_id": "42"}

    message_ids = PubSubPublisher().publish(
        topic_path(PROJECT_ID, topic), [OutgoingMessage(body, attributes)]
    )

    (received,) = pubsub.pull(subscription, expected=1)
    assert received.data == body
    assert received.attributes == attributes
    assert message_ids == [received.message_id]


def test_many_messages_in_one_call_all_arrive_in_any_order(pubsub: PubSubAdmin) -> None:
    topic, subscription = unique("predictions"), unique("predictions-sub")
    pubsub.create_topic(topic)
    pubsub.create_subscription(subscription, topic)
    messages = [OutgoingMessage(str(i).encode(), {"ride_index": str(i)}) for i in range(250)]

    ids = PubSubPublisher().publish(topic_path(PROJECT_ID, topic), messages)

    received = pubsub.pull(subscription, expected=250)
    assert len(set(ids)) == 250
    assert sorted(int(m.data) for m in received) == list(range(250))


def test_a_missing_topic_raises_publish_error(pubsub: PubSubAdmin) -> None:
    with pytest.raises(PublishError, match=r"NotFound|not found"):
        PubSubPublisher(timeout_seconds=5).publish(
            topic_path(PROJECT_ID, unique("missing")), [OutgoingMessage(b"x")]
        )


def test_the_client_is_created_once_and_lazily(pubsub: PubSubAdmin) -> None:
    created: list[object] = []

    def factory() -> object:
        from ride_predictor.publisher import _default_client

        created.append(client := _default_client())
        return client

    topic = unique("predictions")
    pubsub.create_topic(topic)
    publisher = PubSubPublisher(client_factory=factory)
    assert created == []
    for _ in range(3):
        publisher.publish(topic_path(PROJECT_ID, topic), [OutgoingMessage(b"x")])
    assert len(created) == 1


def test_requests_stay_under_the_byte_limit() -> None:
    big = OutgoingMessage(b"x" * (MAX_BYTES_PER_REQUEST // 3))
    chunks = list(request_chunks([big] * 7))
    assert [len(chunk) for chunk in chunks] == [2, 2, 2, 1]
    assert all(sum(message_size(m) for m in chunk) <= MAX_BYTES_PER_REQUEST for chunk in chunks)
