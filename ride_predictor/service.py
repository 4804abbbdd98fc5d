"""One Pub/Sub message handled: decode, validate, predict, publish (docs/design.md).

Failures map to the contract:

* permanent (the message, or one ride of a batch, can never succeed): one ERROR log line with
  its ``reason_class``, a dead letter on ``DEAD_LETTER_STREAM`` when it is set, and the call
  returns normally so Pub/Sub acks the message;
* transient (model not loadable yet, publish failed): the call raises, Pub/Sub redelivers.

After each message, the service starts the background work that is due (a model refresh, a
metrics export) without waiting for it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from ride_predictor.dead_letters import dead_letter_message
from ride_predictor.envelope import (
    DEPLOY_VERIFY_ATTRIBUTE,
    PUBSUB_EVENT_TYPE,
    PubSubMessage,
    carried_message,
    check_event_type,
    decode_data,
    pubsub_message,
)
from ride_predictor.errors import InvalidRideError
from ride_predictor.inference import predict_rides
from ride_predictor.loaders import LoadedModel
from ride_predictor.messages import (
    PredictionMessage,
    RideBatch,
    RideEvent,
    decode_message,
    encode_message,
)
from ride_predictor.model_holder import ModelHolder
from ride_predictor.publisher import MessagePublisher, OutgoingMessage, attribute_value
from ride_predictor.settings import Settings
from ride_predictor.telemetry import PredictionTelemetry

logger = logging.getLogger("ride_predictor")


class PredictionService:
    """Handles one Pub/Sub message: decode, validate, predict, publish (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        model_holder: ModelHolder,
        publisher: MessagePublisher,
        telemetry: PredictionTelemetry | None = None,
    ) -> None:
        self.settings = settings
        self.model_holder = model_holder
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
        try:
            return self._handle(event_data, event_id, event_type)
        finally:
            self.start_due_work()

    def start_due_work(self) -> None:
        """Start the background work that is due (the model refresh, the metrics export) in
        threads of its own; never waits for it, never raises."""
        self.model_holder.refresh_work.start_if_due()
        self.telemetry.export_work.start_if_due()

    def _handle(
        self, event_data: Any, event_id: str, event_type: str
    ) -> dict[str, Any] | list[Any] | None:
        started = time.perf_counter()
        message: PubSubMessage | None = None
        raw = b""
        try:
            if event_type != PUBSUB_EVENT_TYPE:
                message, raw = carried_message(event_data, event_id)
                check_event_type(event_type)
            message = pubsub_message(event_data, event_id)
            # Pub/Sub caps messages at 10 MB, so decoding before the size check is cheap.
            raw = decode_data(message.data)
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
        model = self.model_holder.get()
        try:
            (result,) = predict_rides(model, [event])
        except InvalidRideError as error:  # not one prediction for the ride
            error.ride_id = event.ride_id
            result = error
        if isinstance(result, InvalidRideError):
            self._reject(message, raw, result, started)
            return None
        self.publisher.publish(
            self.settings.output_topic_path,
            [self._outgoing(result, attribute_value(model.version), message)],
        )
        self.telemetry.record_predictions(model.version, [result.prediction.ride_duration])
        self._log_handled(
            message,
            started,
            model,
            ride_id=event.ride_id,
            ride_duration=result.prediction.ride_duration,
        )
        builtins: dict[str, Any] = msgspec.to_builtins(result)
        return builtins

    def _handle_batch(
        self, message: PubSubMessage, batch: RideBatch, started: float
    ) -> list[dict[str, Any]]:
        events = batch.events
        if len(events) > self.settings.max_batch_rides:
            raise InvalidRideError(
                f"message holds {len(events)} rides, over the limit of "
                f"{self.settings.max_batch_rides}",
                reason_class="batch_too_large",
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
            model = self.model_holder.get()
            # One prediction per ride, or the whole message fails (InvalidRideError), before
            # anything is published.
            results = predict_rides(model, [event for _, event in valid])
            model_version = attribute_value(model.version)
            for (index, _), result in zip(valid, results, strict=True):
                if isinstance(result, InvalidRideError):
                    rejected.append((index, result))
                    continue
                prediction_messages.append(result)
                outgoing.append(self._outgoing(result, model_version, message, index))

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
        builtins: list[dict[str, Any]] = msgspec.to_builtins(prediction_messages)
        return builtins

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
            "reason_class": error.reason_class,
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
