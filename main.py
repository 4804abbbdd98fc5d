"""Cloud Function (2nd gen) ``predict_duration``: Pub/Sub ride events in, predictions out.

Only wiring lives here: decode the Pub/Sub message, validate it (``features``), predict with
the lazily loaded MLflow model (``model_loader``) and publish (``publisher``). Failures map to
the contract in ``docs/design.md``:

* permanent (the message can never succeed): one ERROR log line, the message goes to
  ``DEAD_LETTER_STREAM`` when it is set, and the function returns normally so Pub/Sub acks it;
* transient (model not loadable yet, publish failed): the function raises, Pub/Sub redelivers.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import functions_framework
import msgspec

from features import (
    InvalidRideError,
    PredictionMessage,
    RideBatch,
    RideEvent,
    build_prediction_message,
    decode_message,
    encode_message,
    predictions_for,
    ride_features,
)
from model_loader import (
    LoadedModel,
    ModelLoader,
    bound_mlflow_http_requests,
    redact_credentials,
)
from publisher import MessagePublisher, OutgoingMessage, PubSubPublisher
from settings import InvalidSettingError, Settings, settings_from_env
from telemetry import PredictionTelemetry, reason_class, telemetry_from_env

# Pub/Sub attribute values are limited to 1024 bytes, and a message to 100 attributes.
_MAX_ATTRIBUTE_BYTES = 1024
_MAX_COPIED_ATTRIBUTES = 90  # leaves room for the dlq_* attributes and ride_id
# Source attributes that every prediction and dead letter of the message repeats, whatever their
# size: what consumers and `deploy.sh verify` filter on (docs/design.md).
DEPLOY_VERIFY_ATTRIBUTE = "deploy_verify"
_KEPT_ATTRIBUTES = ("ride_id", DEPLOY_VERIFY_ATTRIBUTE)
# A batch element's dead letter copies the source's other attributes only when they total at
# most this many bytes (names and values): 1,000 rejected rides must not repeat 100 KB each.
MAX_COPIED_ATTRIBUTE_BYTES = 1024

# The only CloudEvent type the function handles (Eventarc's Pub/Sub trigger).
PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"

logger = logging.getLogger("ride_predictor")


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line with the field names Cloud Logging's structured logging reads.

    ``severity`` and ``message`` become the entry's severity and summary; other fields, passed
    as ``extra={"fields": {...}}``, land in ``jsonPayload``; ids also go to the entry's labels
    (``logging.googleapis.com/labels``) so an operator can filter one ride or one message.
    """

    _LABEL_FIELDS = ("ride_id", "message_id", "model_version")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None) or {}
        entry.update(fields)
        # An id is a label whatever its value (ride_id 0 too); an unknown one (None, "") is not.
        labels = {
            key: str(fields[key])
            for key in self._LABEL_FIELDS
            if fields.get(key) is not None and fields[key] != ""
        }
        if labels:
            entry["logging.googleapis.com/labels"] = labels
        if record.exc_info:
            # A stack trace in the message is what Error Reporting picks up.
            entry["message"] += "\n" + self.formatException(record.exc_info)
        # A net under the redaction at the source: no line carries a URI's credentials.
        return redact_credentials(json.dumps(entry, default=str))


_LOG_HANDLER_NAME = "ride_predictor_stdout_json"


def _install_log_handler() -> None:
    """Send this package's logs to stdout as JSON lines (what Cloud Logging parses).

    Idempotent: functions-framework may execute this module more than once in a process.
    """
    if any(handler.name == _LOG_HANDLER_NAME for handler in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_LOG_HANDLER_NAME)
    handler.setFormatter(CloudLoggingFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


_install_log_handler()


@dataclass(frozen=True)
class PubSubMessage:
    """The parts of a Pub/Sub message the function uses, taken from a CloudEvent's data."""

    data: Any
    message_id: str
    publish_time: str
    attributes: Mapping[str, str]
    subscription: str


def _pubsub_message(event_data: Any, event_id: str) -> PubSubMessage:
    message = event_data.get("message") if isinstance(event_data, Mapping) else None
    if not isinstance(message, Mapping):
        raise InvalidRideError("event data holds no Pub/Sub message")
    attributes = message.get("attributes") or {}
    return PubSubMessage(
        data=message.get("data"),
        message_id=str(message.get("messageId") or message.get("message_id") or event_id),
        publish_time=str(message.get("publishTime") or message.get("publish_time") or ""),
        attributes=attributes if isinstance(attributes, Mapping) else {},
        subscription=str(event_data.get("subscription") or ""),
    )


def _for_the_dead_letter(event_data: Any, event_id: str) -> tuple[PubSubMessage | None, bytes]:
    """The Pub/Sub message and decoded data an event of another type carries, if it carries one,
    so that its dead letter keeps them."""
    try:
        message = _pubsub_message(event_data, event_id)
    except InvalidRideError:
        return None, b""
    try:
        return message, _decode_base64(message.data)
    except InvalidRideError:
        return message, b""


def _decode_base64(data: Any) -> bytes:
    if not isinstance(data, str | bytes) or not data:
        raise InvalidRideError("Pub/Sub message has no data")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidRideError(f"message data is not valid base64: {error}") from None


def _truncate(text: str, limit: int = _MAX_ATTRIBUTE_BYTES) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (an attribute value's limit), whole
    characters only, with an ellipsis when cut."""
    if len(text) * 4 <= limit:  # cheap: no character takes more than 4 bytes
        return text
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "…"


class PredictionService:
    """Handles one Pub/Sub message: decode, validate, predict, publish (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        model_loader: ModelLoader,
        publisher: MessagePublisher,
        telemetry: PredictionTelemetry | None = None,
    ) -> None:
        self.settings = settings
        self.model_loader = model_loader
        self.publisher = publisher
        self.telemetry = telemetry or PredictionTelemetry()
        self._message_log_level = logging.getLevelName(settings.message_log_level)

    def handle(
        self, event_data: Any, event_id: str = "", event_type: str = PUBSUB_EVENT_TYPE
    ) -> dict[str, Any] | list[Any] | None:
        """Handle a CloudEvent's data; return the prediction message(s), or None if rejected.

        An event whose type is not ``PUBSUB_EVENT_TYPE`` is rejected (permanent), whatever it
        carries. Raises on transient failures only (``ModelLoadError``, ``PublishError``).
        """
        started = time.perf_counter()
        message: PubSubMessage | None = None
        raw = b""
        try:
            if event_type != PUBSUB_EVENT_TYPE:
                message, raw = _for_the_dead_letter(event_data, event_id)
                raise InvalidRideError(
                    f"the event's type is {event_type!r}, not {PUBSUB_EVENT_TYPE}"
                )
            message = _pubsub_message(event_data, event_id)
            # Pub/Sub caps messages at 10 MB, so decoding before the size check is cheap.
            raw = _decode_base64(message.data)
            decoded = decode_message(raw, self.settings.max_message_bytes)
            if isinstance(decoded, RideBatch):
                return self._handle_batch(message, decoded, started)
        except InvalidRideError as error:
            self._reject(message, raw, error, started)
            return None
        return self._handle_single(message, raw, decoded, started)

    def _handle_single(
        self, message: PubSubMessage, raw: bytes, event: RideEvent, started: float
    ) -> dict[str, Any] | None:
        model = self.model_loader.get()
        try:
            (prediction,) = predictions_for(model.predict([ride_features(event.ride)]), 1)
            prediction_message = build_prediction_message(
                model.name, model.version, event.ride_id, prediction
            )
        except InvalidRideError as error:
            error.ride_id = event.ride_id
            self._reject(message, raw, error, started)
            return None
        self.publisher.publish(
            self.settings.output_topic_path,
            [self._outgoing(prediction_message, _truncate(model.version), message)],
        )
        self.telemetry.record_predictions(
            model.version, [prediction_message.prediction.ride_duration]
        )
        self._log_handled(
            message,
            started,
            model,
            ride_id=event.ride_id,
            ride_duration=prediction_message.prediction.ride_duration,
        )
        return msgspec.to_builtins(prediction_message)

    def _handle_batch(
        self, message: PubSubMessage, batch: RideBatch, started: float
    ) -> list[dict[str, Any]]:
        events = batch.events
        if len(events) > self.settings.max_batch_rides:
            raise InvalidRideError(
                f"message holds {len(events)} rides, over the limit of "
                f"{self.settings.max_batch_rides}"
            )
        valid: list[tuple[int, RideEvent]] = []
        rejected: list[tuple[int, InvalidRideError]] = []
        for index, event in enumerate(events):
            if isinstance(event, RideEvent):
                valid.append((index, event))
            else:
                rejected.append((index, event))

        outgoing: list[OutgoingMessage] = []
        prediction_messages: list[PredictionMessage] = []
        model: LoadedModel | None = None
        if valid:
            model = self.model_loader.get()
            # One prediction per ride, or the whole message fails (InvalidRideError), before
            # anything is published.
            predictions = predictions_for(
                model.predict([ride_features(event.ride) for _, event in valid]), len(valid)
            )
            model_version = _truncate(model.version)
            for (index, event), prediction in zip(valid, predictions, strict=True):
                try:
                    prediction_message = build_prediction_message(
                        model.name, model.version, event.ride_id, prediction
                    )
                except InvalidRideError as error:
                    rejected.append((index, error))
                    continue
                prediction_messages.append(prediction_message)
                outgoing.append(self._outgoing(prediction_message, model_version, message, index))

        dead_letters = []
        for index, error in sorted(rejected, key=lambda item: item[0]):
            error.ride_index = index
            self._log_rejection(message, error, started)
            dead_letters.append(
                dead_letter_message(
                    message,
                    batch.element_bytes(index),
                    error,
                    self.settings.max_message_bytes,
                    self.settings.source_subscription,
                )
            )
        self._dead_letter(dead_letters)
        if outgoing:
            self.publisher.publish(self.settings.output_topic_path, outgoing)
        if model is not None:
            self.telemetry.record_predictions(
                model.version, [p.prediction.ride_duration for p in prediction_messages]
            )
        self._log_handled(
            message, started, model, ride_count=len(events), rejected_count=len(rejected)
        )
        return msgspec.to_builtins(prediction_messages)

    @staticmethod
    def _outgoing(
        prediction_message: PredictionMessage,
        model_version: str,
        source: PubSubMessage,
        ride_index: int | None = None,
    ) -> OutgoingMessage:
        """The Pub/Sub message of one prediction; ``model_version`` cut to an attribute's size."""
        attributes = {
            "ride_id": str(prediction_message.prediction.ride_id),
            "model_version": model_version,
            "source_message_id": source.message_id,
        }
        if ride_index is not None:
            attributes["ride_index"] = str(ride_index)
        deploy_verify = source.attributes.get(DEPLOY_VERIFY_ATTRIBUTE)
        if deploy_verify is not None:
            attributes[DEPLOY_VERIFY_ATTRIBUTE] = str(deploy_verify)
        return OutgoingMessage(encode_message(prediction_message), attributes)

    def _reject(
        self,
        message: PubSubMessage | None,
        raw: bytes,
        error: InvalidRideError,
        started: float,
    ) -> None:
        """Log a permanent failure and park the message on the dead-letter topic if set."""
        self._log_rejection(message, error, started)
        self._dead_letter(
            [
                dead_letter_message(
                    message,
                    raw,
                    error,
                    self.settings.max_message_bytes,
                    self.settings.source_subscription,
                )
            ]
        )

    def _dead_letter(self, dead_letters: list[OutgoingMessage]) -> None:
        """Publish to the dead-letter topic, when there is one, in one bounded call.

        A failed dead-letter publish raises ``PublishError``: the message is then redelivered
        instead of vanishing.
        """
        dead_letter_topic = self.settings.dead_letter_topic_path
        if dead_letter_topic is not None and dead_letters:
            self.publisher.publish(dead_letter_topic, dead_letters)

    @staticmethod
    def _log_rejection(
        message: PubSubMessage | None, error: InvalidRideError, started: float
    ) -> None:
        fields: dict[str, Any] = {
            "reason": error.reason,
            "reason_class": reason_class(error.reason),
            "message_id": message.message_id if message else "",
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        if error.ride_id is not None:
            fields["ride_id"] = error.ride_id
        if error.ride_index is not None:
            fields["ride_index"] = error.ride_index
        logger.error("rejected message: %s", error.reason, extra={"fields": fields})

    def _log_handled(
        self,
        message: PubSubMessage,
        started: float,
        model: LoadedModel | None,
        **fields: Any,
    ) -> None:
        if not logger.isEnabledFor(self._message_log_level):
            return
        fields.update(
            message_id=message.message_id,
            model_version=model.version if model else None,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        logger.log(self._message_log_level, "prediction published", extra={"fields": fields})


def dead_letter_message(
    message: PubSubMessage | None,
    raw: bytes,
    error: InvalidRideError,
    max_bytes: int,
    source_subscription: str | None = None,
) -> OutgoingMessage:
    """The dead-letter format of docs/design.md ("Dead letters"): the original bytes, the
    source's attributes and ``dlq_*`` attributes saying why and where from.

    Data over ``max_bytes`` is cut to that size (``dlq_truncated_from_bytes`` says so) so that
    the dead-letter message itself always fits in a Pub/Sub publish. A batch element's dead
    letter (``error.ride_index`` set) repeats the source's attributes only when they are small
    (``MAX_COPIED_ATTRIBUTE_BYTES``), besides ``ride_id`` and ``deploy_verify``: the dead letters
    of a message cost at most the message plus a constant per rejected ride.
    ``source_subscription`` (``SOURCE_SUBSCRIPTION``) names the subscription when the event
    does not (functions-framework drops it from a raw push request).
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
        attributes["ride_id"] = _truncate(str(error.ride_id))
    attributes.update(
        dlq_reason=_truncate(error.reason),
        dlq_source_message_id=_truncate(message.message_id) if message else "",
        dlq_source_publish_time=_truncate(message.publish_time) if message else "",
        dlq_source_subscription=_truncate(
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
    at most ``MAX_COPIED_ATTRIBUTE_BYTES``; ``dlq_source_attributes_omitted`` counts the rest."""
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


_service: PredictionService | None = None
_service_lock = threading.Lock()


def build_service(settings: Settings) -> PredictionService:
    """Wire the real model loader and publisher for ``settings`` (nothing is loaded yet)."""
    logger.setLevel(settings.log_level)
    bound_mlflow_http_requests(os.environ)
    return PredictionService(
        settings,
        ModelLoader(
            settings.model_uri,
            settings.model_name,
            settings.model_version,
            load_timeout_seconds=settings.model_load_timeout_seconds,
            refresh_seconds=settings.model_refresh_seconds,
        ),
        PubSubPublisher(
            timeout_seconds=settings.publish_timeout_seconds,
            max_rpcs_in_flight=settings.publish_max_rpcs_in_flight,
        ),
        telemetry_from_env(settings.project_id, settings.metrics_export_seconds, os.environ),
    )


def get_service() -> PredictionService:
    """The process-wide service, built from the environment on first use.

    The settings are read once, by the first request. Invalid settings fail every request
    (HTTP 500: Pub/Sub keeps the messages) with one ERROR line naming the variable, until the
    deployment is fixed.
    """
    global _service
    service = _service
    if service is None:
        with _service_lock:
            if _service is None:
                try:
                    settings = settings_from_env()
                except InvalidSettingError as error:
                    logger.error(
                        "invalid configuration: %s", error, extra={"fields": {"reason": str(error)}}
                    )
                    raise
                _service = build_service(settings)
            service = _service
    return service


@functions_framework.cloud_event
def predict_duration(cloud_event: Any) -> dict[str, Any] | list[Any] | None:
    """Entry point: a Pub/Sub CloudEvent (or a plain dict of the same shape) in.

    Only ``google.cloud.pubsub.topic.v1.messagePublished`` events are handled (functions-framework
    turns a raw Pub/Sub push request into one); any other type is a permanent failure.
    Returns the prediction message (a list of them for a batch message), or None when the
    message was rejected as permanently invalid.
    """
    if isinstance(cloud_event, Mapping):
        # The tutorial's dict: a type, when it has one, must be Pub/Sub's too.
        event_data, event_id = cloud_event.get("data"), cloud_event.get("id", "")
        event_type = cloud_event.get("type", PUBSUB_EVENT_TYPE)
    else:
        event_data, event_id = cloud_event.data, cloud_event["id"]
        event_type = cloud_event["type"]
    return get_service().handle(event_data, str(event_id or ""), str(event_type))
