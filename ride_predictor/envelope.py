"""The Pub/Sub envelope: what a CloudEvent (or the tutorial's plain dict) carries, read.

functions-framework turns a raw Pub/Sub push request and a legacy Pub/Sub background event into
a CloudEvent of type ``google.cloud.pubsub.topic.v1.messagePublished`` whose ``data`` is the push
body: ``{"message": {"data": <base64>, "messageId": ..., "publishTime": ..., "attributes": {...}},
"subscription": ...}``. Only that type is handled (``check_event_type``); the message's data is
strict base64 (``decode_data``). Every way the envelope can be unusable is an
``InvalidRideError`` (permanent) with its reason class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ride_predictor.errors import InvalidRideError
from ride_predictor.messages import decode_base64

# The only CloudEvent type the function handles (Pub/Sub's, as Eventarc and functions-framework
# name it).
PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
# A source attribute that every prediction and dead letter of the message repeats: what
# consumers and `deploy.sh verify` filter on (docs/design.md, "deploy_verify").
DEPLOY_VERIFY_ATTRIBUTE = "deploy_verify"


class Event(NamedTuple):
    """A delivered event: its data (the push body), id and type."""

    data: Any
    event_id: str
    event_type: str


@dataclass(frozen=True)
class PubSubMessage:
    """The parts of a Pub/Sub message the function uses, taken from a CloudEvent's data."""

    data: Any
    message_id: str
    publish_time: str
    attributes: Mapping[str, str]
    subscription: str


def read_event(cloud_event: Any) -> Event:
    """The data, id and type of a CloudEvent, or of the tutorial's plain dict of the same shape
    (``{"data": {"message": ...}}``), which counts as a Pub/Sub event unless it names a type."""
    if isinstance(cloud_event, Mapping):
        return Event(
            cloud_event.get("data"),
            str(cloud_event.get("id", "") or ""),
            str(cloud_event.get("type", PUBSUB_EVENT_TYPE)),
        )
    return Event(cloud_event.data, str(cloud_event["id"] or ""), str(cloud_event["type"]))


def check_event_type(event_type: str) -> None:
    """Raise ``InvalidRideError`` unless ``event_type`` is Pub/Sub's."""
    if event_type != PUBSUB_EVENT_TYPE:
        raise InvalidRideError(
            f"the event's type is {event_type!r}, not {PUBSUB_EVENT_TYPE}",
            reason_class="event_type",
        )


def pubsub_message(event_data: Any, event_id: str) -> PubSubMessage:
    """The Pub/Sub message in an event's data; ``InvalidRideError`` when it holds none."""
    message = event_data.get("message") if isinstance(event_data, Mapping) else None
    if not isinstance(message, Mapping):
        raise InvalidRideError("event data holds no Pub/Sub message", reason_class="envelope")
    attributes = message.get("attributes") or {}
    return PubSubMessage(
        data=message.get("data"),
        message_id=str(message.get("messageId") or message.get("message_id") or event_id),
        publish_time=str(message.get("publishTime") or message.get("publish_time") or ""),
        attributes=attributes if isinstance(attributes, Mapping) else {},
        subscription=str(event_data.get("subscription") or ""),
    )


def decode_data(data: Any) -> bytes:
    """A Pub/Sub message's data, from strict base64; ``InvalidRideError`` if missing or bad."""
    if not isinstance(data, str | bytes) or not data:
        raise InvalidRideError("Pub/Sub message has no data", reason_class="envelope")
    return decode_base64(data, "message data")


def carried_message(event_data: Any, event_id: str) -> tuple[PubSubMessage | None, bytes]:
    """The Pub/Sub message and decoded data an event of another type carries, if it carries
    one, so that its dead letter keeps them; (None, b"") or (message, b"") otherwise."""
    try:
        message = pubsub_message(event_data, event_id)
    except InvalidRideError:
        return None, b""
    try:
        return message, decode_data(message.data)
    except InvalidRideError:
        return message, b""
