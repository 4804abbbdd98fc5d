"""The message contract, declared once, and the model's features.

The ride event (input) and the prediction message (output) of ``docs/design.md`` are
``msgspec.Struct`` declarations. The same declaration decodes and validates the message bytes (in
C, and the reason of a rejection names the JSON path), encodes the output, and generates the
published JSON Schemas (``schemas/``, ``make schemas``). What JSON decoding alone does not rule
out is checked around it, in ``decode_message``: the size limit, strict UTF-8 of the whole
message, and an explicit nesting-depth limit.

Nothing here does I/O or keeps state, so the Cloud Function's service (``service``), the
Lambda (``aws/lambda_function.py``), the schema generator and tests share it. A rejection is an
``InvalidRideError`` whose ``reason_class`` is set here, where it is raised.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from ride_predictor.errors import InvalidRideError

# JSON nesting deeper than this is rejected, whatever the interpreter's own recursion limit
# (which is what would otherwise stop msgspec, and differs between Python versions).
MAX_JSON_DEPTH = 32
# ride_id travels as a Pub/Sub attribute (values are limited to 1024 bytes), as a Kinesis
# partition key (256 characters) and to consumers that store it as a 64-bit integer.
MAX_RIDE_ID_CHARS = 256
# Location ids are taxi zone numbers; the bound only keeps absurd values out of the features.
MAX_LOCATION_ID = 2**31 - 1
# ride_duration is a signed 32-bit integer of minutes: over 4,000 years either way, so no real
# prediction is lost, and every consumer can hold it in a 32-bit integer (Avro and protobuf
# int32, Java int, PostgreSQL integer) or a JavaScript number, exactly. A model that predicts
# beyond it is broken or was given an absurd, if valid, ride (trip_distance=1e300).
MIN_RIDE_DURATION = -(2**31)
MAX_RIDE_DURATION = 2**31 - 1
# How much of a bad model output a rejection's reason quotes.
_MAX_SHOWN_CHARS = 80

_INTEGER_NOTE = (
    "written as a JSON integer: the function rejects a number with a fraction or an exponent "
    "(130.0, 1.3e2), which JSON Schema's integer type accepts"
)

LocationId = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_LOCATION_ID,
        description=f"A taxi zone id from 1 to {MAX_LOCATION_ID}, {_INTEGER_NOTE}.",
    ),
]
TripDistance = Annotated[
    float,
    Meta(
        ge=0,
        le=sys.float_info.max,
        description="The trip's distance: a number >= 0 that fits a 64-bit float (the model "
        "receives it as a float). Booleans, text, NaN and Infinity are invalid.",
    ),
]
RideId = (
    Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
    | Annotated[str, Meta(min_length=1, max_length=MAX_RIDE_ID_CHARS)]
)


class Ride(msgspec.Struct, gc=False):
    """The ride: what the model's features are built from. Other fields are ignored."""

    PULocationID: LocationId
    DOLocationID: LocationId
    trip_distance: TripDistance


class RideEvent(msgspec.Struct, gc=False):
    """One ride event: the ride and its id, echoed back unchanged. Other fields are ignored."""

    ride: Ride
    ride_id: Annotated[
        RideId,
        Meta(
            description="The ride's id, echoed back unchanged: a signed 64-bit integer "
            f"({_INTEGER_NOTE}) or a string of 1 to {MAX_RIDE_ID_CHARS} characters."
        ),
    ]


RideEvents = Annotated[
    list[RideEvent],
    Meta(
        min_length=1,
        description="A batch: ride events predicted one by one; an invalid element is "
        "dead-lettered alone. At most MAX_BATCH_RIDES elements (1000 by default).",
    ),
]


class Prediction(msgspec.Struct, gc=False):
    """The prediction for one ride."""

    ride_duration: Annotated[
        int,
        Meta(
            ge=MIN_RIDE_DURATION,
            le=MAX_RIDE_DURATION,
            description="Minutes: the model's output, rounded; a signed 32-bit integer (a "
            "prediction outside that range is rejected, not published).",
        ),
    ]
    ride_id: Annotated[RideId, Meta(description="The input event's ride_id, unchanged.")]


class PredictionMessage(msgspec.Struct, gc=False):
    """The output message: one per ride, on the output topic (or stream)."""

    model: Annotated[str, Meta(description="MODEL_NAME.")]
    version: Annotated[str, Meta(description="The version of the model that predicted.")]
    prediction: Prediction


class RideBatch:
    """A message holding a JSON array of ride events, each element validated on its own.

    ``events[i]`` is element i's ``RideEvent``, or the ``InvalidRideError`` that rejects that
    element alone (its ``ride_index`` is i). ``element_bytes(i)`` is element i exactly as it
    stands in the message, for its dead letter.
    """

    __slots__ = ("_data", "_elements", "events")

    def __init__(
        self,
        data: bytes,
        events: list[RideEvent | InvalidRideError],
        elements: list[msgspec.Raw] | None = None,
    ) -> None:
        self._data = data
        self._elements = elements
        self.events = events

    def element_bytes(self, index: int) -> bytes:
        """Element ``index``'s original bytes (the elements are split out on first use)."""
        if self._elements is None:
            self._elements = _ELEMENTS.decode(self._data)
        return bytes(self._elements[index])


def features_of(pickup: int, dropoff: int, trip_distance: float) -> dict[str, Any]:
    """The course model's features, exactly as the tutorial's ``prepare_features`` builds them."""
    return {"PU_DO": "%s_%s" % (pickup, dropoff), "trip_distance": trip_distance}  # noqa: UP031


def ride_features(ride: Ride) -> dict[str, Any]:
    """The model's features of a decoded ride."""
    return features_of(ride.PULocationID, ride.DOLocationID, ride.trip_distance)


def prepare_features(ride: Mapping[str, Any]) -> dict[str, Any]:
    """The tutorial's ``prepare_features``, for a ride given as a dict (e.g. training rows)."""
    return features_of(ride["PULocationID"], ride["DOLocationID"], ride["trip_distance"])


def build_prediction_message(
    model_name: str, model_version: str, ride_id: int | str, prediction: Any
) -> PredictionMessage:
    """The output message of ``docs/design.md`` for one ride, the same on every trigger.

    The duration is the model's prediction rounded to whole minutes. A prediction that is not a
    finite real number (text, None, a bool, an array, NaN, infinity: JSON has no NaN, msgspec
    would write ``null``) or whose rounded duration is outside ``MIN_RIDE_DURATION`` to
    ``MAX_RIDE_DURATION`` can never become a valid message, so it is an ``InvalidRideError``.
    """
    # float, and numpy's float64 (a float subclass), skip the slower abstract check.
    if not isinstance(prediction, float) and (
        isinstance(prediction, bool) or not isinstance(prediction, numbers.Real)
    ):
        raise InvalidRideError(
            f"the model predicted {_shown(prediction)} ({type(prediction).__name__}) for this "
            "ride: not a number",
            ride_id=ride_id,
            reason_class="prediction",
        )
    duration = float(prediction)
    if not math.isfinite(duration):
        raise InvalidRideError(
            f"the model predicted {duration} for this ride",
            ride_id=ride_id,
            reason_class="prediction",
        )
    minutes = round(duration)
    if not MIN_RIDE_DURATION <= minutes <= MAX_RIDE_DURATION:
        raise InvalidRideError(
            f"the model predicted {duration:.6g} minutes for this ride: outside "
            f"{MIN_RIDE_DURATION} to {MAX_RIDE_DURATION}, the bound of ride_duration",
            ride_id=ride_id,
            reason_class="prediction",
        )
    return PredictionMessage(model_name, model_version, Prediction(minutes, ride_id))


def predictions_for(output: Any, rides: int) -> Sequence[Any]:
    """The model's ``output`` for ``rides`` rides as one prediction per ride, in order.

    Anything else (None, text, a mapping, a single number, more or fewer predictions than
    rides) can never be matched to the rides, so it is an ``InvalidRideError`` for the whole
    message. Each prediction is checked on its own by ``build_prediction_message``.
    """
    predictions: Sequence[Any] | None = None
    if type(output) is list:
        predictions = output
    elif not isinstance(output, str | bytes | bytearray | Mapping):
        try:
            predictions = list(output)  # an array's rows, a tuple, a generator's items
        except TypeError:
            predictions = None
    if predictions is None:
        raise InvalidRideError(
            f"the model returned {_shown(output)} for {_count(rides, 'ride')}: not one "
            "prediction per ride",
            reason_class="prediction",
        )
    if len(predictions) != rides:
        raise InvalidRideError(
            f"the model returned {_count(len(predictions), 'prediction')} for "
            f"{_count(rides, 'ride')}: not one prediction per ride",
            reason_class="prediction",
        )
    return predictions


def _shown(value: Any) -> str:
    """``repr(value)``, cut to a length fit for a reason."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[: _MAX_SHOWN_CHARS - 1] + "…"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


# One encoder and one decoder per type for the process: their methods are thread-safe since
# msgspec 0.16 (msgspec/msgspec#402), and gen2 instances serve requests concurrently.
_ENCODER = msgspec.json.Encoder()


def encode_message(message: PredictionMessage) -> bytes:
    """The output message's bytes: compact JSON, UTF-8, fields in declaration order."""
    return _ENCODER.encode(message)


# A message is one event or a non-empty array of them; when that fails, the array is split into
# its elements' bytes so that each one is judged alone.
_MESSAGE = msgspec.json.Decoder(RideEvent | RideEvents)
_MESSAGE_OR_ELEMENTS = msgspec.json.Decoder(
    RideEvent | Annotated[list[msgspec.Raw], Meta(min_length=1)]
)
_EVENT = msgspec.json.Decoder(RideEvent)
_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])
_CHILDREN = msgspec.json.Decoder(list[msgspec.Raw] | dict[str, msgspec.Raw])


class _RideIdOnly(msgspec.Struct):
    """What a rejected event may still tell about itself: its id, when that one is valid."""

    ride_id: RideId | None = None


_RIDE_ID_ONLY = msgspec.json.Decoder(_RideIdOnly)
DecodedT = TypeVar("DecodedT")


def decode_base64(data: str | bytes, what: str) -> bytes:
    """The message bytes from the strict base64 both clouds deliver them in (Pub/Sub's message
    data, a Kinesis record's data); ``InvalidRideError`` naming ``what`` if it is not base64."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidRideError(
            f"{what} is not valid base64: {error}", reason_class="base64"
        ) from None


def decode_message(data: bytes, max_bytes: int) -> RideEvent | RideBatch:
    """Decode and validate message bytes: one ride event, or a batch (a JSON array of them).

    Raises ``InvalidRideError`` for a message that can never succeed: over ``max_bytes``, empty,
    not UTF-8 throughout, not JSON, nested deeper than ``MAX_JSON_DEPTH``, or not a ride event
    nor a non-empty array. In a batch, an invalid element does not fail the message: it is
    returned as its own ``InvalidRideError`` in ``RideBatch.events``.
    """
    if len(data) > max_bytes:
        raise InvalidRideError(
            f"message is {len(data)} bytes, over the limit of {max_bytes}", reason_class="too_large"
        )
    if not data or data.isspace():
        raise InvalidRideError("message data is empty", reason_class="empty")
    if not data.isascii():
        # msgspec checks UTF-8 only in the strings it decodes, not in fields it skips.
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidRideError(
                f"message data is not valid UTF-8: {error}", reason_class="utf8"
            ) from None
    try:
        message = _MESSAGE.decode(data)
    except msgspec.ValidationError:
        message = None  # which part is invalid is decided below, once the depth is known
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise _decode_failure(data, error) from None
    if _too_deep(data, message):
        raise _too_deep_error()
    if isinstance(message, RideEvent):
        return message
    if message is not None:
        return RideBatch(data, message)
    top = _decode(_MESSAGE_OR_ELEMENTS, data)  # raises for anything but an array of elements
    if isinstance(top, RideEvent):  # never: _MESSAGE has just rejected it
        return top
    return RideBatch(data, [_element(raw, index) for index, raw in enumerate(top)], top)


def _element(raw: msgspec.Raw, index: int) -> RideEvent | InvalidRideError:
    try:
        return _decode(_EVENT, raw, index)
    except InvalidRideError as error:
        return error


def _decode(
    decoder: msgspec.json.Decoder[DecodedT], data: Any, ride_index: int | None = None
) -> DecodedT:
    """``decoder.decode(data)``, every way it can fail turned into an ``InvalidRideError``."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as error:
        raise InvalidRideError(
            str(error), ride_index, _ride_id_of(data), reason_class="schema"
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        failure = _decode_failure(bytes(data), error)
        failure.ride_index = ride_index
        raise failure from None


def _decode_failure(data: bytes, error: Exception) -> InvalidRideError:
    """The permanent error for bytes that msgspec could not decode at all."""
    if isinstance(error, RecursionError):
        # msgspec's own limit is the interpreter's recursion limit, far deeper than ours.
        return _too_deep_error()
    if isinstance(error, UnicodeDecodeError):
        return InvalidRideError(f"message data is not valid UTF-8: {error}", reason_class="utf8")
    return InvalidRideError(
        f"message data is not valid JSON: {_malformed(data, error)}", reason_class="json"
    )


def _too_deep_error() -> InvalidRideError:
    return InvalidRideError(
        f"JSON nests deeper than {MAX_JSON_DEPTH} levels", reason_class="too_deep"
    )


class _NotAJsonNumberError(ValueError):
    """A ``NaN``, ``Infinity`` or ``-Infinity`` token, which Python's parser would accept."""


def _reject_constant(token: str) -> Any:
    raise _NotAJsonNumberError(token)


def _malformed(data: bytes, error: Exception) -> str:
    """msgspec's reason, or a clearer one for the two inputs where its reason misleads.

    msgspec calls a ``NaN``/``Infinity`` token an "invalid character", and a lone surrogate
    escape (``"\\ud800"``, not a Unicode character) "truncated" input or an "invalid utf-16
    surrogate pair". Python's own parser accepts both, so on this error path (never for a valid
    message) it tells which one it was.
    """
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except _NotAJsonNumberError as token:
        return f"{token} is not a JSON number"
    except (ValueError, RecursionError):
        return str(error)
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return (
            "a string holds a lone UTF-16 surrogate escape (\\ud800 to \\udfff), "
            "which is not a Unicode character"
        )
    return str(error)


def _ride_id_of(data: Any) -> int | str | None:
    """The ride_id of an event that failed validation, if it has a valid one; else None."""
    try:
        return _RIDE_ID_ONLY.decode(data).ride_id
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def _too_deep(data: bytes, message: RideEvent | list[RideEvent] | None) -> bool:
    """Whether the message nests deeper than ``MAX_JSON_DEPTH``; cheap for the usual ones.

    Every level of nesting opens with a ``[`` or ``{`` byte, so their count bounds the depth
    (brackets inside strings only raise the count). In a decoded batch each event brings two
    braces of its own (the event's and its ride's) that nest just three levels with the array;
    only the remaining brackets can nest further. Beyond that bound, the exact answer.
    """
    opens = data.count(b"[") + data.count(b"{")
    bound = opens - 2 * len(message) + 2 if isinstance(message, list) else opens
    return bound > MAX_JSON_DEPTH and _nests_deeper(data, MAX_JSON_DEPTH)


def _nests_deeper(data: bytes, limit: int) -> bool:
    """Whether the JSON value ``data`` has arrays or objects nested more than ``limit`` deep.

    Each level is split into its elements' bytes by msgspec, so strings, escapes and
    whitespace are msgspec's business. An object's repeated key keeps only its last value,
    as when the message is decoded, so only that one is looked into.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    try:
        children = _CHILDREN.decode(data)
    except RecursionError:
        return True  # deeper than the interpreter's recursion limit, so deeper than ours
    except msgspec.DecodeError:
        return False  # a string full of brackets, or malformed JSON that the decode reports
    if limit == 0:
        return True
    values = children.values() if isinstance(children, dict) else children
    return any(_nests_deeper(bytes(value), limit - 1) for value in values)
