"""The dead-letter format of docs/design.md ("Dead letters"), and its bound.

A dead letter is the original bytes, the source's attributes and ``dlq_*`` attributes saying
why and where from. The dead letters of one message cost at most the message itself plus a
constant per rejected ride (8 KiB): a batch element's dead letter repeats the source's other
attributes only when they are small (``MAX_COPIED_ATTRIBUTE_BYTES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ride_predictor.envelope import DEPLOY_VERIFY_ATTRIBUTE, PubSubMessage
from ride_predictor.errors import InvalidRideError
from ride_predictor.publisher import OutgoingMessage, attribute_value

# A message holds at most 100 attributes: this leaves room for the dlq_* ones and ride_id.
_MAX_COPIED_ATTRIBUTES = 90
# Source attributes every dead letter of the message repeats, whatever their size.
_KEPT_ATTRIBUTES = ("ride_id", DEPLOY_VERIFY_ATTRIBUTE)
# A batch element's dead letter copies the source's other attributes only when they total at
# most this many bytes (names and values): 1,000 rejected rides must not repeat 100 KB each.
MAX_COPIED_ATTRIBUTE_BYTES = 1024


def dead_letter_message(
    message: PubSubMessage | None,
    raw: bytes,
    error: InvalidRideError,
    max_bytes: int,
    source_subscription: str | None = None,
) -> OutgoingMessage:
    """The dead letter of a rejected message, or of a rejected batch element
    (``error.ride_index`` set, ``raw`` its own bytes).

    Data over ``max_bytes`` is cut to that size (``dlq_truncated_from_bytes`` says so) so that
    the dead-letter message itself always fits in a Pub/Sub publish. ``source_subscription``
    (``SOURCE_SUBSCRIPTION``) names the subscription when the event does not
    (functions-framework drops it from a raw push request).
    """
    source_data = message.data if message else None
    if not raw and isinstance(source_data, str):
        raw = source_data.encode()  # undecodable base64: keep what arrived
    original_size = len(raw)
    raw = raw[:max_bytes]
    attributes: dict[str, str] = {}
    if message is not None:
        attributes = _copied_attributes(message.attributes, element=error.ride_index is not None)
    if error.ride_id is not None:  # the rejected ride's own id, as on its prediction
        attributes["ride_id"] = attribute_value(str(error.ride_id))
    attributes.update(
        dlq_reason=attribute_value(error.reason),
        dlq_source_message_id=attribute_value(message.message_id) if message else "",
        dlq_source_publish_time=attribute_value(message.publish_time) if message else "",
        dlq_source_subscription=attribute_value(
            (message.subscription if message else "") or source_subscription or ""
        ),
    )
    if error.ride_index is not None:
        attributes["dlq_ride_index"] = str(error.ride_index)
    if original_size > len(raw):
        attributes["dlq_truncated_from_bytes"] = str(original_size)
    return OutgoingMessage(raw, attributes)


def _copied_attributes(source: Mapping[str, Any], element: bool) -> dict[str, str]:
    """The source attributes a dead letter carries: ``_KEPT_ATTRIBUTES`` always; the others for
    a whole message (up to ``_MAX_COPIED_ATTRIBUTES``), or for a batch element when they total
    at most ``MAX_COPIED_ATTRIBUTE_BYTES``; ``dlq_source_attributes_omitted`` counts the rest.
    A replayed dead letter's ``dlq_*`` attributes describe another rejection: dropped."""
    attributes = {
        str(key): str(value) for key, value in source.items() if not str(key).startswith("dlq_")
    }
    copied = {key: attributes[key] for key in _KEPT_ATTRIBUTES if key in attributes}
    others = [(key, value) for key, value in attributes.items() if key not in copied]
    if not element or sum(len(k.encode()) + len(v.encode()) for k, v in others) <= (
        MAX_COPIED_ATTRIBUTE_BYTES
    ):
        copied.update(others[: _MAX_COPIED_ATTRIBUTES - len(copied)])
    if len(copied) < len(attributes):
        copied["dlq_source_attributes_omitted"] = str(len(attributes) - len(copied))
    return copied
