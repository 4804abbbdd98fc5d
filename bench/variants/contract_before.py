"""Bench only, not deployed: the function's decode, validation and encoding before issue 12.

A frozen copy of ``features.py`` and ``main.PredictionService`` as of commit 7ff6050, before the
message contract became msgspec declarations: a hand-written depth check and ``json.loads``,
validation by a shortcut and the full checks, output JSON from a per-model prefix. Everything
else (settings, the Pub/Sub message, base64, the dead-letter format, the model loader, the
publisher, the logs) is today's, imported from ``main``, so a before/after pair of measurements
in one ``make bench`` run differs in what issue 12 changed. ``bench.levers`` times its
``PredictionService`` next to ``main``'s; functions-framework serves ``predict_duration``.
Delete this file once nobody needs the comparison.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import functions_framework

import main
from features import InvalidRideError
from main import (
    PubSubMessage,
    Settings,
    _decode_base64,
    _pubsub_message,
    _truncate,
    build_service,
    dead_letter_message,
    logger,
    settings_from_env,
)
from model_loader import LoadedModel, ModelLoader
from publisher import MessagePublisher, OutgoingMessage

# JSON nesting deeper than this is rejected before it can exhaust the interpreter's stack.
MAX_JSON_DEPTH = 32
MAX_RIDE_ID_CHARS = 256
RIDE_ID_INT_RANGE = range(-(2**63), 2**63)
MAX_LOCATION_ID = 2**31 - 1
_MAX_FLOAT = sys.float_info.max


class RideRequest(NamedTuple):
    """A validated ride event: the event as received, its id to echo back, the model's features.

    A named tuple rather than a frozen dataclass: a third of the cost to build, 1,000 times per
    1,000-ride message.
    """

    ride_event: dict[str, Any]
    ride_id: int | str
    features: dict[str, Any]


def prepare_features(ride: Mapping[str, Any]) -> dict[str, Any]:
    """Build the course model's features from a ride, exactly as the tutorial does."""
    return {
        "PU_DO": "%s_%s" % (ride["PULocationID"], ride["DOLocationID"]),  # noqa: UP031
        "trip_distance": ride["trip_distance"],
    }


def build_prediction_message(
    model_name: str, model_version: str, ride_id: int | str, prediction: Any
) -> dict[str, Any]:
    """The output message of ``docs/design.md`` for one ride, the same on every trigger.

    The duration is the model's prediction rounded to whole minutes. A prediction that is not a
    finite number can never become a valid message, so it is an ``InvalidRideError``.
    """
    duration = float(prediction)
    if not math.isfinite(duration):
        raise InvalidRideError(f"the model predicted {duration} for this ride")
    return {
        "model": model_name,
        "version": model_version,
        "prediction": {"ride_duration": round(duration), "ride_id": ride_id},
    }


def _reject_constant(token: str) -> Any:
    raise InvalidRideError(f"invalid JSON: {token} is not a JSON number")


# Keeps only what decides the nesting depth: brackets (as parentheses), quotes, backslashes.
# Other ASCII characters are deleted; non-ASCII ones are kept (and send the text to the scan).
_NESTING_ONLY = {code: None for code in range(128)} | {
    ord("["): "(",
    ord("{"): "(",
    ord("]"): ")",
    ord("}"): ")",
    ord('"'): '"',
    ord("\\"): "\\",
}


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """Tell whether brackets outside strings nest deeper than ``limit``.

    The exact answer of ``_scan_depth_exceeds`` in C-speed steps (that character loop costs
    about 8 ms for a 1,000-ride message, this about 0.2 ms): keep brackets and quotes only,
    drop what lies between quote pairs (the strings), then remove innermost ``()`` pairs, one
    nesting level per pass. What this cannot settle (escapes or non-ASCII text, an odd number
    of quotes, unbalanced or too deep brackets) goes to the character scan.
    """
    reduced = text.translate(_NESTING_ONLY)
    quotes = reduced.count('"')
    if quotes % 2 == 0 and reduced.count("(") + reduced.count(")") + quotes == len(reduced):
        nesting = "".join(reduced.split('"')[::2])
        for _ in range(limit):
            if not nesting:
                return False
            shallower = nesting.replace("()", "")
            if shallower == nesting:
                break  # unbalanced
            nesting = shallower
        if not nesting:
            return False
    return _scan_depth_exceeds(text, limit)


def _scan_depth_exceeds(text: str, limit: int) -> bool:
    """Tell whether brackets outside strings nest deeper than ``limit`` (a linear scan)."""
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def parse_payload(data: bytes, max_bytes: int) -> Any:
    """Decode message bytes as strict UTF-8 JSON.

    Rejects payloads over ``max_bytes``, invalid UTF-8, invalid JSON, the non-standard
    ``NaN``/``Infinity`` tokens and nesting deeper than ``MAX_JSON_DEPTH``.
    """
    if len(data) > max_bytes:
        raise InvalidRideError(f"message is {len(data)} bytes, over the limit of {max_bytes}")
    if not data.strip():
        raise InvalidRideError("message data is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRideError(f"message data is not valid UTF-8: {error}") from None
    if ("[" in text or "{" in text) and _json_depth_exceeds(text, MAX_JSON_DEPTH):
        raise InvalidRideError(f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InvalidRideError(f"message data is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidRideError("JSON nests too deeply") from None
    except ValueError as error:  # e.g. an integer literal over Python's 4300-digit limit
        raise InvalidRideError(f"message data is not usable JSON: {error}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_location(ride: Mapping[str, Any], field: str) -> None:
    if field not in ride:
        raise InvalidRideError(f"ride.{field} is missing")
    value = ride[field]
    if not _is_int(value):
        raise InvalidRideError(f"ride.{field} must be an integer, got {type(value).__name__}")
    if not 0 < value <= MAX_LOCATION_ID:
        raise InvalidRideError(f"ride.{field} must be between 1 and {MAX_LOCATION_ID}")


def _check_distance(ride: Mapping[str, Any]) -> None:
    if "trip_distance" not in ride:
        raise InvalidRideError("ride.trip_distance is missing")
    value = ride["trip_distance"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRideError(f"ride.trip_distance must be a number, got {type(value).__name__}")
    # A huge JSON integer overflows float conversion; treat it as out of range.
    try:
        as_float = float(value)
    except OverflowError:
        raise InvalidRideError("ride.trip_distance is too large") from None
    if not math.isfinite(as_float):
        raise InvalidRideError("ride.trip_distance must be finite")
    if as_float < 0:
        raise InvalidRideError(f"ride.trip_distance must be >= 0, got {value}")


# Integers up to this convert to a finite float; larger ones are left to the full check.
_FLOAT_SAFE_INT = 2**1023


def _common_valid_event(ride_event: Any) -> RideRequest | None:
    """The request for an event of the usual, valid shape; None for anything else.

    Plain types only (``type(x) is int`` also leaves out booleans), each test one the full
    checks make too, so an event accepted here is one they accept; everything else, invalid
    events included, goes through them. It halves validation in a 1,000-ride message.
    """
    if type(ride_event) is not dict:
        return None
    ride_id = ride_event.get("ride_id")
    ride = ride_event.get("ride")
    if type(ride) is not dict:
        return None
    if type(ride_id) is int:
        if ride_id not in RIDE_ID_INT_RANGE:
            return None
    elif type(ride_id) is not str or not 0 < len(ride_id) <= MAX_RIDE_ID_CHARS:
        return None
    pickup, dropoff = ride.get("PULocationID"), ride.get("DOLocationID")
    if not (
        type(pickup) is int
        and type(dropoff) is int
        and 0 < pickup <= MAX_LOCATION_ID
        and 0 < dropoff <= MAX_LOCATION_ID
    ):
        return None
    distance = ride.get("trip_distance")
    if type(distance) is float:
        if not 0.0 <= distance <= _MAX_FLOAT:  # also false for NaN
            return None
    elif type(distance) is not int or not 0 <= distance <= _FLOAT_SAFE_INT:
        return None
    return RideRequest(ride_event, ride_id, prepare_features(ride))


def validate_ride_event(ride_event: Any) -> RideRequest:
    """Validate one ride event as ``docs/design.md`` defines it and build its features.

    Raises ``InvalidRideError`` with the first problem found. Extra fields are ignored.
    """
    request = _common_valid_event(ride_event)
    return request if request is not None else _checked_event(ride_event)


def _checked_event(ride_event: Any) -> RideRequest:
    """Every check of ``docs/design.md``'s input rules, in order; raises with the first problem."""
    if not isinstance(ride_event, dict):
        raise InvalidRideError(f"ride event must be a JSON object, got {_json_type(ride_event)}")
    if "ride_id" not in ride_event:
        raise InvalidRideError("ride_id is missing")
    ride_id = ride_event["ride_id"]
    if isinstance(ride_id, str):
        if not ride_id:
            raise InvalidRideError("ride_id must not be empty")
        if len(ride_id) > MAX_RIDE_ID_CHARS:
            raise InvalidRideError(f"ride_id is longer than {MAX_RIDE_ID_CHARS} characters")
    elif _is_int(ride_id):
        if ride_id not in RIDE_ID_INT_RANGE:
            raise InvalidRideError("ride_id is outside the 64-bit integer range")
    else:
        raise InvalidRideError(f"ride_id must be an integer or a string, got {_json_type(ride_id)}")
    if "ride" not in ride_event:
        raise InvalidRideError("ride is missing")
    ride = ride_event["ride"]
    if not isinstance(ride, dict):
        raise InvalidRideError(f"ride must be a JSON object, got {_json_type(ride)}")
    _check_location(ride, "PULocationID")
    _check_location(ride, "DOLocationID")
    _check_distance(ride)
    return RideRequest(ride_event=ride_event, ride_id=ride_id, features=prepare_features(ride))


def _json_type(value: Any) -> str:
    """Name a decoded JSON value by its JSON type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _ride_id_of(ride_event: Any) -> int | str | None:
    """The ride_id of an event that may be invalid, for logging; None if there is no usable one."""
    ride_id = ride_event.get("ride_id") if isinstance(ride_event, dict) else None
    if isinstance(ride_id, int | str) and not isinstance(ride_id, bool):
        return ride_id if len(str(ride_id)) <= 256 else None
    return None


@dataclass(frozen=True)
class ModelConstants:
    """What every output message of one model shares, computed once per loaded model."""

    json_head: str  # the output JSON up to the duration's digits
    attribute_version: str


def model_constants(model: LoadedModel) -> ModelConstants:
    """The parts of every output message that depend only on the model."""
    head = json.dumps({"model": model.name, "version": model.version, "prediction": {}})
    return ModelConstants(
        json_head=head[: -len("{}}")] + '{"ride_duration": ',
        attribute_version=_truncate(model.version),
    )


def encode_prediction(constants: ModelConstants, ride_duration: int, ride_id: int | str) -> bytes:
    """The output message's bytes: exactly ``json.dumps`` of the ``docs/design.md`` message.

    Built from a per-model prefix because ``json.dumps`` of the whole message costs about
    2.5 µs, a quarter of the time a ride in a 1,000-ride message may take (see docs/speed.md).
    """
    encoded_id = json.dumps(ride_id) if isinstance(ride_id, str) else int.__repr__(ride_id)
    return f'{constants.json_head}{ride_duration}, "ride_id": {encoded_id}}}}}'.encode()


class PredictionService(main.PredictionService):
    """``main.PredictionService`` with the decoding, validation and encoding before issue 12.

    Publishing dead letters and the per-message log line are inherited, unchanged.
    """

    def __init__(
        self, settings: Settings, model_loader: ModelLoader, publisher: MessagePublisher
    ) -> None:
        super().__init__(settings, model_loader, publisher)
        # The model the constants were computed for, and them; one tuple, so that concurrent
        # requests read a consistent pair without a lock.
        self._model_constants: tuple[LoadedModel, ModelConstants] | None = None

    def _constants_for(self, model: LoadedModel) -> ModelConstants:
        """``model_constants(model)``, computed once per loaded model, not once per message."""
        cached = self._model_constants
        if cached is None or cached[0] is not model:
            cached = (model, model_constants(model))
            self._model_constants = cached
        return cached[1]

    def handle(self, event_data: Any, event_id: str = "") -> dict[str, Any] | list[Any] | None:
        """Handle a CloudEvent's data; return the prediction message(s), or None if rejected.

        Raises on transient failures only (``ModelLoadError``, ``PublishError``).
        """
        started = time.perf_counter()
        message: PubSubMessage | None = None
        raw = b""
        payload: Any = None
        try:
            message = _pubsub_message(event_data, event_id)
            # Pub/Sub caps messages at 10 MB, so decoding before the size check is cheap.
            raw = _decode_base64(message.data)
            payload = parse_payload(raw, self.settings.max_message_bytes)
            if isinstance(payload, list):
                return self._handle_batch(message, payload, started)
            if not isinstance(payload, dict):
                raise InvalidRideError("message data must be a JSON object or array")
            request = validate_ride_event(payload)
        except InvalidRideError as error:
            self._reject(message, raw, error, started, _ride_id_of(payload))
            return None
        return self._handle_single(message, raw, request, started)

    def _handle_single(
        self, message: PubSubMessage, raw: bytes, request: RideRequest, started: float
    ) -> dict[str, Any] | None:
        model = self.model_loader.get()
        (prediction,) = model.predict([request.features])
        try:
            prediction_message = build_prediction_message(
                model.name, model.version, request.ride_id, prediction
            )
        except InvalidRideError as error:
            self._reject(message, raw, error, started, request.ride_id)
            return None
        self.publisher.publish(
            self.settings.output_topic_path,
            [self._outgoing(prediction_message, self._constants_for(model), message)],
        )
        self._log_handled(
            message,
            started,
            model,
            ride_id=request.ride_id,
            ride_duration=prediction_message["prediction"]["ride_duration"],
        )
        return prediction_message

    def _handle_batch(
        self, message: PubSubMessage, ride_events: list[Any], started: float
    ) -> list[dict[str, Any]]:
        if not ride_events:
            raise InvalidRideError("message data is an empty array of rides")
        if len(ride_events) > self.settings.max_batch_rides:
            raise InvalidRideError(
                f"message holds {len(ride_events)} rides, over the limit of "
                f"{self.settings.max_batch_rides}"
            )
        valid: list[tuple[int, RideRequest]] = []
        rejected: list[tuple[int, Any, InvalidRideError]] = []
        for index, ride_event in enumerate(ride_events):
            try:
                valid.append((index, validate_ride_event(ride_event)))
            except InvalidRideError as error:
                rejected.append((index, ride_event, error))

        outgoing: list[OutgoingMessage] = []
        prediction_messages: list[dict[str, Any]] = []
        model: LoadedModel | None = None
        if valid:
            model = self.model_loader.get()
            predictions = model.predict([request.features for _, request in valid])
            constants = self._constants_for(model)
            for (index, request), prediction in zip(valid, predictions, strict=True):
                try:
                    prediction_message = build_prediction_message(
                        model.name, model.version, request.ride_id, prediction
                    )
                except InvalidRideError as error:
                    rejected.append((index, request.ride_event, error))
                    continue
                prediction_messages.append(prediction_message)
                outgoing.append(self._outgoing(prediction_message, constants, message, index))

        dead_letters = []
        for index, ride_event, error in sorted(rejected, key=lambda item: item[0]):
            error.ride_index = index
            self._log_rejection(message, error, started, _ride_id_of(ride_event))
            dead_letters.append(
                dead_letter_message(
                    message, json.dumps(ride_event).encode(), error, self.settings.max_message_bytes
                )
            )
        self._dead_letter(dead_letters)
        if outgoing:
            self.publisher.publish(self.settings.output_topic_path, outgoing)
        self._log_handled(
            message, started, model, ride_count=len(ride_events), rejected_count=len(rejected)
        )
        return prediction_messages

    @staticmethod
    def _outgoing(
        prediction_message: dict[str, Any],
        constants: ModelConstants,
        source: PubSubMessage,
        ride_index: int | None = None,
    ) -> OutgoingMessage:
        ride_id = prediction_message["prediction"]["ride_id"]
        attributes = {
            "ride_id": str(ride_id),
            "model_version": constants.attribute_version,
            "source_message_id": source.message_id,
        }
        if ride_index is not None:
            attributes["ride_index"] = str(ride_index)
        data = encode_prediction(
            constants, prediction_message["prediction"]["ride_duration"], ride_id
        )
        return OutgoingMessage(data, attributes)

    def _reject(
        self,
        message: PubSubMessage | None,
        raw: bytes,
        error: InvalidRideError,
        started: float,
        ride_id: Any = None,
    ) -> None:
        """Log a permanent failure and park the message on the dead-letter topic if set."""
        self._log_rejection(message, error, started, ride_id)
        self._dead_letter(
            [dead_letter_message(message, raw, error, self.settings.max_message_bytes)]
        )

    @staticmethod
    def _log_rejection(
        message: PubSubMessage | None, error: InvalidRideError, started: float, ride_id: Any
    ) -> None:
        fields: dict[str, Any] = {
            "reason": error.reason,
            "message_id": message.message_id if message else "",
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        if ride_id is not None:
            fields["ride_id"] = ride_id
        if error.ride_index is not None:
            fields["ride_index"] = error.ride_index
        logger.error("rejected message: %s", error.reason, extra={"fields": fields})


_service: PredictionService | None = None
_service_lock = threading.Lock()


def get_service() -> PredictionService:
    """The process-wide service: ``main``'s model loader and publisher, this handler."""
    global _service
    if _service is None:
        with _service_lock:
            if _service is None:
                wired = build_service(settings_from_env())
                _service = PredictionService(wired.settings, wired.model_loader, wired.publisher)
    return _service


@functions_framework.cloud_event
def predict_duration(cloud_event: Any) -> dict[str, Any] | list[Any] | None:
    """Entry point, as ``main.predict_duration``."""
    if isinstance(cloud_event, Mapping):
        event_data, event_id = cloud_event.get("data"), cloud_event.get("id", "")
    else:
        event_data, event_id = cloud_event.data, cloud_event["id"]
    return get_service().handle(event_data, str(event_id or ""))
