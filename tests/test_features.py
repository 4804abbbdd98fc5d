"""features.py: the contract's declarations, every invalid input docs/design.md names, features."""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ride_predictor import messages
from ride_predictor.errors import InvalidRideError
from ride_predictor.messages import (
    MAX_JSON_DEPTH,
    PredictionMessage,
    RideBatch,
    RideEvent,
    build_prediction_message,
    decode_message,
    encode_message,
    prepare_features,
    ride_features,
)
from tests.conftest import load_json

VALID = {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 123}


def decode(payload: Any, max_bytes: int = 1 << 20) -> RideEvent | RideBatch:
    """``decode_message`` of ``payload``: bytes as they are, anything else as JSON."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decode_message(data, max_bytes)


def rejection(payload: Any, max_bytes: int = 1 << 20) -> InvalidRideError:
    with pytest.raises(InvalidRideError) as raised:
        decode(payload, max_bytes)
    assert str(raised.value) == raised.value.reason
    return raised.value


def test_tutorial_sample_gives_the_tutorial_features() -> None:
    sample = load_json("sample_ride.json")

    assert prepare_features(sample["ride"]) == {"PU_DO": "130_205", "trip_distance": 3.66}
    event = decode(sample)
    assert isinstance(event, RideEvent)
    assert event.ride_id == 123
    assert ride_features(event.ride) == {"PU_DO": "130_205", "trip_distance": 3.66}


@pytest.mark.parametrize(
    "ride_id", [123, "abc-123", 0, -5, 2**63 - 1, -(2**63), "x" * 256, "é😀"], ids=repr
)
def test_ride_ids_are_echoed_unchanged(ride_id: Any) -> None:
    event = decode({**VALID, "ride_id": ride_id})
    assert isinstance(event, RideEvent)
    assert event.ride_id == ride_id
    assert type(event.ride_id) is type(ride_id)


def test_extra_fields_are_ignored_and_an_integer_distance_is_a_float() -> None:
    event = decode(
        {
            "ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 4, "fare": [9.5]},
            "ride_id": 7,
            "source": {"meter": None},
        }
    )
    assert isinstance(event, RideEvent)
    features_ = ride_features(event.ride)
    assert features_ == {"PU_DO": "1_2", "trip_distance": 4.0}
    assert type(features_["trip_distance"]) is float


def _ride(**ride_changes: Any) -> dict[str, Any]:
    ride: dict[str, Any] = dict(VALID["ride"])
    for key, value in ride_changes.items():
        if value is _MISSING:
            del ride[key]
        else:
            ride[key] = value
    return {"ride": ride, "ride_id": 123}


_MISSING = object()

# (name, event, a part of the reason): every rule of docs/design.md's input.
INVALID_RIDE_EVENTS: list[tuple[str, Any, str]] = [
    ("number instead of object", 5, "Expected `object | array`, got `int`"),
    ("string instead of object", "ride", "Expected `object | array`, got `str`"),
    ("null event", None, "Expected `object | array`, got `null`"),
    ("missing ride_id", {"ride": _ride()["ride"]}, "missing required field `ride_id`"),
    ("null ride_id", {**_ride(), "ride_id": None}, "Expected `int | str`, got `null`"),
    ("boolean ride_id", {**_ride(), "ride_id": True}, "Expected `int | str`, got `bool`"),
    ("float ride_id", {**_ride(), "ride_id": 1.5}, "Expected `int | str`, got `float`"),
    ("integral float ride_id", {**_ride(), "ride_id": 1.0}, "got `float` - at `$.ride_id`"),
    ("empty ride_id", {**_ride(), "ride_id": ""}, "Expected `str` of length >= 1"),
    ("object ride_id", {**_ride(), "ride_id": {"id": 1}}, "got `object` - at `$.ride_id`"),
    ("overlong ride_id", {**_ride(), "ride_id": "x" * 257}, "of length <= 256"),
    ("ride_id over 64 bits", {**_ride(), "ride_id": 2**63}, "<= 9223372036854775807"),
    ("ride_id under 64 bits", {**_ride(), "ride_id": -(2**63) - 1}, ">= -9223372036854775808"),
    ("missing ride", {"ride_id": 1}, "missing required field `ride`"),
    ("ride is a list", {"ride": [], "ride_id": 1}, "Expected `object`, got `array` - at `$.ride`"),
    ("missing PULocationID", _ride(PULocationID=_MISSING), "field `PULocationID` - at `$.ride`"),
    ("missing DOLocationID", _ride(DOLocationID=_MISSING), "field `DOLocationID` - at `$.ride`"),
    ("missing trip_distance", _ride(trip_distance=_MISSING), "field `trip_distance` - at `$.ride`"),
    ("string location", _ride(PULocationID="130"), "got `str` - at `$.ride.PULocationID`"),
    ("float location", _ride(DOLocationID=205.0), "got `float` - at `$.ride.DOLocationID`"),
    ("boolean location", _ride(PULocationID=True), "got `bool` - at `$.ride.PULocationID`"),
    ("null location", _ride(DOLocationID=None), "got `null` - at `$.ride.DOLocationID`"),
    ("zero location", _ride(PULocationID=0), "Expected `int` >= 1 - at `$.ride.PULocationID`"),
    ("negative location", _ride(DOLocationID=-4), "Expected `int` >= 1"),
    ("huge location", _ride(PULocationID=2**40), "Expected `int` <= 2147483647"),
    ("string distance", _ride(trip_distance="3.66"), "got `str` - at `$.ride.trip_distance`"),
    ("boolean distance", _ride(trip_distance=False), "got `bool` - at `$.ride.trip_distance`"),
    ("null distance", _ride(trip_distance=None), "got `null` - at `$.ride.trip_distance`"),
    ("negative distance", _ride(trip_distance=-0.5), "Expected `float` >= 0.0"),
    ("distance too large for a float", _ride(trip_distance=10**400), "Number out of range"),
    ("empty batch", [], "Expected `array` of length >= 1"),
]


@pytest.mark.parametrize(
    ("ride_event", "reason"),
    [(event, reason) for _, event, reason in INVALID_RIDE_EVENTS],
    ids=[name for name, _, _ in INVALID_RIDE_EVENTS],
)
def test_invalid_ride_events_are_rejected_with_a_reason(ride_event: Any, reason: str) -> None:
    assert reason in rejection(ride_event).reason


@pytest.mark.parametrize(
    ("ride_event", "reason"),
    [(event, reason) for _, event, reason in INVALID_RIDE_EVENTS if isinstance(event, dict)],
    ids=[name for name, event, _ in INVALID_RIDE_EVENTS if isinstance(event, dict)],
)
def test_a_batch_rejects_an_invalid_element_alone_with_the_same_reason(
    ride_event: Any, reason: str
) -> None:
    # Spaced as no JSON encoder would space them, so the bytes are the element's own.
    elements = [json.dumps(VALID).encode(), json.dumps(ride_event, indent=1).encode()]
    batch = decode(b"[" + b" , ".join(elements) + b"]")

    assert isinstance(batch, RideBatch)
    first, second = batch.events
    assert isinstance(first, RideEvent)
    assert isinstance(second, InvalidRideError)
    assert reason in second.reason
    assert second.ride_index == 1
    assert batch.element_bytes(1) == elements[1]  # for its dead letter, as it arrived
    assert batch.element_bytes(0) == elements[0]


def test_a_rejected_event_keeps_its_ride_id_when_that_one_is_valid() -> None:
    assert rejection(_ride(PULocationID=0)).ride_id == 123
    assert rejection({**_ride(PULocationID=0), "ride_id": "r-9"}).ride_id == "r-9"
    assert rejection({**_ride(PULocationID=0), "ride_id": True}).ride_id is None
    assert rejection(b"[]").ride_id is None


def test_a_valid_batch_decodes_every_element_and_keeps_their_bytes() -> None:
    elements = [json.dumps({**VALID, "ride_id": i}) for i in range(5)]
    batch = decode(("[" + ",\n ".join(elements) + "]").encode())

    assert isinstance(batch, RideBatch)
    assert [event.ride_id for event in batch.events] == list(range(5))  # type: ignore[union-attr]
    assert [batch.element_bytes(i).decode() for i in range(5)] == elements


INVALID_PAYLOADS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "message data is empty"),
    ("whitespace", b"  \n", "message data is empty"),
    ("invalid UTF-8", b'{"ride_id": "\xff"}', "not valid UTF-8"),
    ("truncated JSON", b'{"ride": {', "not valid JSON: Input data was truncated"),
    ("not JSON at all", b"Hello World", "not valid JSON: JSON is malformed"),
    ("trailing text", json.dumps(VALID).encode() + b" x", "not valid JSON"),
    ("UTF-8 byte-order mark", json.dumps(VALID).encode("utf-8-sig"), "not valid JSON"),
    ("NaN token", b'{"ride": {"trip_distance": NaN}}', "NaN is not a JSON number"),
    ("Infinity token", b'{"ride": {"trip_distance": Infinity}}', "Infinity is not a JSON number"),
    ("-Infinity token", b'[{"ride_id": -Infinity}]', "-Infinity is not a JSON number"),
    ("deep nesting", b"[" * 500 + b"]" * 500, f"JSON nests deeper than {MAX_JSON_DEPTH} levels"),
    ("integer over the digit limit", b'{"ride_id": ' + b"9" * 5000 + b"}", "out of range"),
    ("oversized", b'{"pad": "' + b"x" * 9000 + b'"}', "9011 bytes, over the limit of 8192"),
]


@pytest.mark.parametrize(
    ("data", "reason"),
    [(data, reason) for _, data, reason in INVALID_PAYLOADS],
    ids=[name for name, _, _ in INVALID_PAYLOADS],
)
def test_invalid_payloads_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    assert reason in rejection(data, max_bytes=8192).reason


def test_payload_at_exactly_the_limit_is_accepted() -> None:
    data = json.dumps({**VALID, "pad": "x" * 100}).encode()
    assert isinstance(decode_message(data, max_bytes=len(data)), RideEvent)
    assert "over the limit" in rejection(data, max_bytes=len(data) - 1).reason


def _with_field(event: dict[str, Any], text: str) -> bytes:
    """``event`` as JSON with one more field whose value is the JSON ``text``, as it is."""
    return json.dumps(event).encode()[:-1] + b', "extra": ' + text.encode() + b"}"


# Where msgspec alone would differ from the contract (issue 12): each rule is kept around it.


def test_invalid_utf8_is_rejected_even_in_a_field_the_contract_ignores() -> None:
    data = json.dumps(VALID).encode()[:-1] + b', "note": "caf\xe9"}'
    assert "not valid UTF-8" in rejection(data).reason


def test_a_utf8_error_inside_msgspec_is_a_permanent_error_too() -> None:
    # Out of reach through decode_message (the whole message is checked first), so the mapping
    # of msgspec's UnicodeDecodeError is exercised directly.
    with pytest.raises(InvalidRideError, match="not valid UTF-8") as raised:
        messages._decode(messages._EVENT, b'{"ride_id": "\xff", "ride": {}}', ride_index=4)
    assert raised.value.ride_index == 4


@pytest.mark.parametrize(
    ("string", "accepted"),
    [
        (r'"\ud800"', False),  # a high surrogate at the end of a string
        (r'"\ud800x"', False),
        (r'"\udc00"', False),  # a low surrogate alone
        (r'"\ud800\u0041"', False),
        (r'"\ud83d\ude00"', True),  # a pair: 😀
        (r'"a\\ud800"', True),  # an escaped backslash, then text
    ],
)
@pytest.mark.parametrize("where", ["ride_id", "ignored field"])
def test_a_lone_surrogate_escape_is_rejected_with_a_clear_reason(
    string: str, accepted: bool, where: str
) -> None:
    data = (
        json.dumps(VALID).encode().replace(b"123", string.encode())
        if where == "ride_id"
        else _with_field(VALID, string)
    )
    if accepted:
        event = decode(data)
        assert isinstance(event, RideEvent)
        if where == "ride_id":
            assert event.ride_id == json.loads(string)
            encode_message(build_prediction_message("m", "v", event.ride_id, 1.0))  # encodable
    else:
        reason = rejection(data).reason
        assert "lone UTF-16 surrogate escape" in reason
        assert reason.startswith("message data is not valid JSON")


@pytest.mark.parametrize("levels", [30, 31, MAX_JSON_DEPTH, 33, 100, 10_000])
def test_nesting_is_limited_to_a_fixed_depth_wherever_it_is(levels: int) -> None:
    nested = "[" * levels + "]" * levels
    depth_of_event = 1 + levels  # the event object, then the field's arrays
    event_with_field = _with_field(VALID, nested)
    ride_with_field = (
        json.dumps(VALID).encode().replace(b"3.66", b"3.66, " + b'"x": ' + nested.encode())
    )
    cases = {
        event_with_field: depth_of_event,
        ride_with_field: 1 + depth_of_event,
        b"[" + event_with_field + b"]": 1 + depth_of_event,
        # Where the bound of _too_deep is tight: nested in a ride, in a batch.
        b"[" + ride_with_field + b", " + json.dumps(VALID).encode() + b"]": 2 + depth_of_event,
        nested.encode(): levels,
    }
    for data, depth in cases.items():
        if depth > MAX_JSON_DEPTH:
            assert rejection(data).reason == f"JSON nests deeper than {MAX_JSON_DEPTH} levels"
        else:
            decode(data)  # whatever it is judged, not too deep


def test_the_depth_limit_does_not_depend_on_the_interpreters_recursion_limit() -> None:
    data = _with_field(VALID, "[" * 5000 + "]" * 5000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # msgspec would now decode it (on Python 3.11)
    try:
        reason = rejection(data).reason
    finally:
        sys.setrecursionlimit(limit)
    assert reason == f"JSON nests deeper than {MAX_JSON_DEPTH} levels"


def test_brackets_in_strings_do_not_count_as_nesting() -> None:
    event = decode({**VALID, "ride_id": "[" * 256, "note": "{[" * 400})
    assert isinstance(event, RideEvent)
    assert event.ride_id == "[" * 256
    batch = decode([{**VALID, "ride_id": "[" * 40}] * 3)
    assert isinstance(batch, RideBatch)
    assert all(isinstance(event, RideEvent) for event in batch.events)


def _depth(value: Any) -> int:
    """The nesting depth of a decoded JSON value (the oracle for the depth check)."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _random_json(rng: random.Random, depth: int) -> Any:
    """A JSON value with strings full of brackets, quotes and escapes, nested up to ``depth``."""
    kind = rng.random()
    if depth == 0 or kind < 0.3:
        return rng.choice([1, -2.5, None, True, "[{", '"]}\\', "é\u2028[", "\\u005b", ""])
    children = [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if kind < 0.65:
        return children
    return {rng.choice(["[", "a", '"{', "b]"]) + str(i): child for i, child in enumerate(children)}


def _random_values(count: int) -> Iterator[Any]:
    rng = random.Random(20240108)
    for _ in range(count):
        yield _random_json(rng, rng.randint(0, 40))


def test_the_depth_check_agrees_with_the_depth_of_the_decoded_value() -> None:
    seen_deeper = seen_within = 0
    for value in _random_values(3000):
        data = json.dumps(value, ensure_ascii=bool(len(str(value)) % 2)).encode()
        for limit in (0, 1, 5, MAX_JSON_DEPTH):
            deeper = _depth(value) > limit
            assert messages._nests_deeper(data, limit) == deeper, (data, limit)
            if limit == MAX_JSON_DEPTH:
                seen_deeper += deeper
                seen_within += not deeper
    assert seen_deeper > 50
    assert seen_within > 50


def test_decode_message_applies_the_depth_limit_exactly_in_events_and_batches() -> None:
    for index, value in enumerate(_random_values(600)):
        event = {**VALID, "ride_id": index, "extra": value}
        if index % 2:
            event["ride"] = {**VALID["ride"], "extra": value}
        batch = [VALID, event] if index % 3 else [event]
        for message in (event, batch):
            reason = None
            try:
                decode(message)
            except InvalidRideError as error:
                reason = error.reason
            too_deep = f"JSON nests deeper than {MAX_JSON_DEPTH} levels"
            assert (reason == too_deep) == (_depth(message) > MAX_JSON_DEPTH), message


def test_the_usual_batch_needs_no_exact_depth_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_expected(data: bytes, limit: int) -> bool:
        raise AssertionError("the bound should have settled it")

    monkeypatch.setattr(messages, "_nests_deeper", not_expected)
    assert isinstance(decode([VALID] * 1000), RideBatch)
    assert isinstance(decode(VALID), RideEvent)


def test_a_large_integer_in_an_ignored_field_is_ignored_like_the_field() -> None:
    assert isinstance(decode(_with_field(VALID, "9" * 5000)), RideEvent)
    assert isinstance(decode(_with_field(VALID, "1e400")), RideEvent)


def test_prediction_message_rounds_to_whole_minutes_and_echoes_the_ride_id() -> None:
    message = build_prediction_message("m", "v1", "ride-7", 17.6)
    assert message == PredictionMessage("m", "v1", messages.Prediction(18, "ride-7"))
    assert encode_message(message) == (
        b'{"model":"m","version":"v1","prediction":{"ride_duration":18,"ride_id":"ride-7"}}'
    )


@pytest.mark.parametrize("prediction", [math.nan, math.inf, -math.inf])
def test_a_prediction_that_is_not_finite_is_a_permanent_error(prediction: float) -> None:
    with pytest.raises(InvalidRideError, match="the model predicted") as raised:
        build_prediction_message("m", "v1", 123, prediction)
    assert raised.value.ride_id == 123
