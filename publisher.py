"""Publish messages to Pub/Sub and wait, within a bound, until the server has them.

A thin adapter around ``google.cloud.pubsub_v1.PublisherClient``: the client is created on
first use and shared by every thread of the process (it is thread-safe), and every publish
either returns the server's message ids or raises ``PublishError`` within its timeout.
``PUBSUB_EMULATOR_HOST`` is honoured by the client itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Publishing does not wait for a batch to fill: every request publishes and waits at once.
DEFAULT_MAX_LATENCY_SECONDS = 0.0


class PublishError(RuntimeError):
    """A publish did not reach the server in time (a transient failure: retry the input)."""


@dataclass(frozen=True)
class OutgoingMessage:
    """One Pub/Sub message: its bytes and string attributes."""

    data: bytes
    attributes: Mapping[str, str] = field(default_factory=dict)


class MessagePublisher(Protocol):
    """What the function needs from a publisher; tests inject an in-memory one."""

    def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publish ``messages`` to ``topic`` and return their ids, or raise ``PublishError``."""
        ...


def topic_path(project_id: str, topic: str) -> str:
    """The full resource name of a topic (what the client calls a topic path)."""
    return f"projects/{project_id}/topics/{topic}"


def _default_client() -> Any:
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_latency=DEFAULT_MAX_LATENCY_SECONDS)
    )


class PubSubPublisher:
    """Publishes to any topic through one lazily created, process-wide ``PublisherClient``."""

    def __init__(
        self,
        timeout_seconds: float = 10.0,
        client_factory: Callable[[], Any] = _default_client,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self._client_factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._client_factory()
                client = self._client
        return client

    def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publish ``messages`` to the topic path ``topic``; return their server message ids.

        Raises ``PublishError`` if any message is refused, fails, or is not acknowledged by the
        server within ``timeout_seconds`` (retries of retryable errors count against that bound).
        """
        from google.api_core import exceptions, retry

        client = self._get_client()
        bounded_retry = retry.Retry(
            initial=0.1,
            maximum=1.0,
            multiplier=2.0,
            timeout=self.timeout_seconds,
            predicate=retry.if_exception_type(
                exceptions.ServiceUnavailable,
                exceptions.DeadlineExceeded,
                exceptions.InternalServerError,
                exceptions.Aborted,
                exceptions.ResourceExhausted,
                exceptions.Unknown,
            ),
        )
        try:
            futures = [
                client.publish(
                    topic,
                    message.data,
                    retry=bounded_retry,
                    timeout=self.timeout_seconds,
                    **message.attributes,
                )
                for message in messages
            ]
            # One deadline for the whole call, however many messages it carries.
            deadline = time.monotonic() + self.timeout_seconds
            return [
                future.result(timeout=max(0.0, deadline - time.monotonic())) for future in futures
            ]
        except Exception as error:
            raise PublishError(f"publish to {topic} failed: {error!r}") from error
