"""Topics, subscriptions and pulls on a Pub/Sub emulator, for the stack and the tests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from devstack.push_subscription import PushSettings


@dataclass(frozen=True)
class ReceivedMessage:
    """A message pulled from a subscription."""

    data: bytes
    attributes: dict[str, str]
    message_id: str
    publish_time: Any = field(default=None, compare=False)


class PubSubAdmin:
    """Administers the emulator at ``host`` (``127.0.0.1:PORT``); the environment is untouched."""

    def __init__(self, host: str, project_id: str) -> None:
        self.host = host
        self.project_id = project_id
        self.publisher = pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host))
        )
        self.subscriber = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(host))
        )

    def topic_path(self, topic: str) -> str:
        """``projects/<project>/topics/<topic>``."""
        return f"projects/{self.project_id}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        """``projects/<project>/subscriptions/<subscription>``."""
        return f"projects/{self.project_id}/subscriptions/{subscription}"

    def create_topic(self, topic: str) -> str:
        """Create ``topic`` unless it exists; return its path."""
        path = self.topic_path(topic)
        try:
            self.publisher.create_topic(name=path)
        except exceptions.AlreadyExists:
            pass
        return path

    def delete_topic(self, topic: str) -> None:
        """Delete ``topic`` if it exists."""
        try:
            self.publisher.delete_topic(topic=self.topic_path(topic))
        except exceptions.NotFound:
            pass

    def create_subscription(
        self,
        subscription: str,
        topic: str,
        push_endpoint: str | None = None,
        ack_deadline_seconds: int = 60,
    ) -> str:
        """Create a pull subscription (or a push one to ``push_endpoint``) unless it exists."""
        path = self.subscription_path(subscription)
        request: dict[str, Any] = {
            "name": path,
            "topic": self.topic_path(topic),
            "ack_deadline_seconds": ack_deadline_seconds,
        }
        if push_endpoint:
            request["push_config"] = {"push_endpoint": push_endpoint}
        try:
            self.subscriber.create_subscription(request=request)
        except exceptions.AlreadyExists:
            pass
        return path

    def create_push_subscription(
        self,
        subscription: str,
        topic: str,
        push_endpoint: str,
        settings: PushSettings,
        dead_letter_topic: str,
    ) -> str:
        """Create a push subscription as deploy.sh makes Stream A's (never expires, backoff,
        dead-letter policy), unless it exists; return its path."""
        path = self.subscription_path(subscription)
        request = {
            "name": path,
            "topic": self.topic_path(topic),
            "push_config": {"push_endpoint": push_endpoint},
            "ack_deadline_seconds": settings.ack_deadline_seconds,
            "retry_policy": {
                "minimum_backoff": {"seconds": settings.min_retry_delay_seconds},
                "maximum_backoff": {"seconds": settings.max_retry_delay_seconds},
            },
            "dead_letter_policy": {
                "dead_letter_topic": self.topic_path(dead_letter_topic),
                "max_delivery_attempts": settings.max_delivery_attempts,
            },
            "expiration_policy": {},  # never
        }
        try:
            self.subscriber.create_subscription(request=request)
        except exceptions.AlreadyExists:
            pass
        return path

    def delete_subscription(self, subscription: str) -> None:
        """Delete ``subscription`` if it exists."""
        try:
            self.subscriber.delete_subscription(subscription=self.subscription_path(subscription))
        except exceptions.NotFound:
            pass

    def publish(self, topic: str, data: bytes, **attributes: str) -> str:
        """Publish one message and return its id once the emulator has it."""
        return self.publisher.publish(self.topic_path(topic), data, **attributes).result(timeout=30)

    def pull(
        self, subscription: str, expected: int, timeout_seconds: float = 30.0
    ) -> list[ReceivedMessage]:
        """Pull and ack until ``expected`` messages arrived or the time is up; return them all."""
        path = self.subscription_path(subscription)
        received: list[ReceivedMessage] = []
        deadline = time.monotonic() + timeout_seconds
        while len(received) < expected and time.monotonic() < deadline:
            try:
                response = self.subscriber.pull(
                    subscription=path,
                    max_messages=min(1000, max(1, expected - len(received))),
                    timeout=max(0.5, min(5.0, deadline - time.monotonic())),
                )
            except exceptions.DeadlineExceeded:
                continue
            if not response.received_messages:
                continue
            self.subscriber.acknowledge(
                subscription=path, ack_ids=[item.ack_id for item in response.received_messages]
            )
            received.extend(
                ReceivedMessage(
                    data=item.message.data,
                    attributes=dict(item.message.attributes),
                    message_id=item.message.message_id,
                    publish_time=item.message.publish_time,
                )
                for item in response.received_messages
            )
        return received

    def drain(self, subscription: str, quiet_seconds: float = 1.0) -> list[ReceivedMessage]:
        """Pull everything that arrives until the subscription stays empty for ``quiet_seconds``."""
        drained: list[ReceivedMessage] = []
        while batch := self.pull(subscription, expected=1000, timeout_seconds=quiet_seconds):
            drained.extend(batch)
        return drained

    def close(self) -> None:
        """Close the gRPC channels."""
        self.publisher.transport.close()
        self.subscriber.close()
