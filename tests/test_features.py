"""features.py: the tutorial's features, and every invalid ride docs/design.md names."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from features import (
    MAX_JSON_DEPTH,
    InvalidRideError,
    _checked_event,
    _common_valid_event,
    _json_depth_exceeds,
    _scan_depth_exceeds,
    build_prediction_message,
    parse_payload,
    prepare_features,
    validate_ride_event,
)
from tests.conftest import load_json


def test_tutorial_sample_gives_the_tutorial_features() -> None:
    ride_event = load_json("sample_ride.json")

    assert prepare_features(ride_event["ride"]) == {"PU_DO": "130_205", "trip_distance": 3.66}
    request = validate_ride_event(ride_event)
    assert request.ride_id == 123
    assert request.features == {"PU_DO": "130_205", "trip_distance": 3.66}
    assert request.ride_event is ride_event


@pytest.mark.parametrize("ride_id", [123, "abc-123", 0, -5, 2**63 - 1, "x" * 256], ids=repr)
def test_ride_ids_are_echoed_unchanged(ride_id: Any) -> None:
    event = {"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 0}, "ride_id": ride_id}
    assert validate_ride_event(event).ride_id == ride_id


def test_extra_fields_are_ignored_and_integer_distance_is_a_number() -> None:
    event = {
        "ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 4, "fare": 9.5},
        "ride_id": 7,
        "source": "meter",
    }
    assert validate_ride_event(event).features == {"PU_DO": "1_2", "trip_distance": 4}


def _ride(**ride_changes: Any) -> dict[str, Any]:
    ride: dict[str, Any] = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}
    for key, value in ride_changes.items():
        if value is _MISSING:
            del ride[key]
        else:
            ride[key] = value
    return {"ride": ride, "ride_id": 123}


_MISSING = object()

INVALID_RIDE_EVENTS: list[tuple[str, Any, str]] = [
    ("array instead of object", [1, 2], "must be a JSON object"),
    ("string instead of object", "ride", "must be a JSON object"),
    ("null event", None, "must be a JSON object"),
    ("missing ride_id", {"ride": _ride()["ride"]}, "ride_id is missing"),
    ("null ride_id", {**_ride(), "ride_id": None}, "ride_id must be"),
    ("boolean ride_id", {**_ride(), "ride_id": True}, "ride_id must be"),
    ("float ride_id", {**_ride(), "ride_id": 1.5}, "ride_id must be"),
    ("empty ride_id", {**_ride(), "ride_id": ""}, "must not be empty"),
    ("object ride_id", {**_ride(), "ride_id": {"id": 1}}, "ride_id must be"),
    ("overlong ride_id", {**_ride(), "ride_id": "x" * 257}, "longer than"),
    ("ride_id over 64 bits", {**_ride(), "ride_id": 2**63}, "64-bit"),
    ("missing ride", {"ride_id": 1}, "ride is missing"),
    ("ride is a list", {"ride": [], "ride_id": 1}, "ride must be a JSON object"),
    ("missing PULocationID", _ride(PULocationID=_MISSING), "PULocationID is missing"),
    ("missing DOLocationID", _ride(DOLocationID=_MISSING), "DOLocationID is missing"),
    ("missing trip_distance", _ride(trip_distance=_MISSING), "trip_distance is missing"),
    ("string location", _ride(PULocationID="130"), "must be an integer"),
    ("float location", _ride(DOLocationID=205.0), "must be an integer"),
    ("boolean location", _ride(PULocationID=True), "must be an integer"),
    ("null location", _ride(DOLocationID=None), "must be an integer"),
    ("zero location", _ride(PULocationID=0), "between 1 and"),
    ("negative location", _ride(DOLocationID=-4), "between 1 and"),
    ("huge location", _ride(PULocationID=2**40), "between 1 and"),
    ("string distance", _ride(trip_distance="3.66"), "must be a number"),
    ("boolean distance", _ride(trip_distance=False), "must be a number"),
    ("null distance", _ride(trip_distance=None), "must be a number"),
    ("negative distance", _ride(trip_distance=-0.5), ">= 0"),
    ("NaN distance", _ride(trip_distance=float("nan")), "finite"),
    ("infinite distance", _ride(trip_distance=float("inf")), "finite"),
    ("distance too large for a float", _ride(trip_distance=10**400), "too large"),
]


@pytest.mark.parametrize(
    ("ride_event", "reason"),
    [(event, reason) for _, event, reason in INVALID_RIDE_EVENTS],
    ids=[name for name, _, _ in INVALID_RIDE_EVENTS],
)
def test_invalid_ride_events_are_rejected_with_a_reason(ride_event: Any, reason: str) -> None:
    with pytest.raises(InvalidRideError) as raised:
        validate_ride_event(ride_event)
    assert reason in raised.value.reason
    assert str(raised.value) == raised.value.reason


INVALID_PAYLOADS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty"),
    ("whitespace", b"  \n", "empty"),
    ("invalid UTF-8", b'{"ride_id": "\xff"}', "UTF-8"),
    ("truncated JSON", b'{"ride": {', "not valid JSON"),
    ("not JSON at all", b"Hello World", "not valid JSON"),
    ("NaN token", b'{"ride": {"trip_distance": NaN}}', "NaN"),
    ("Infinity token", b'{"ride": {"trip_distance": Infinity}}', "Infinity"),
    ("-Infinity token", b'{"ride": {"trip_distance": -Infinity}}', "-Infinity"),
    ("deep nesting", b"[" * 500 + b"]" * 500, "deeper than"),
    ("integer over the digit limit", b'{"ride_id": ' + b"9" * 5000 + b"}", "not usable JSON"),
    ("oversized", b'{"pad": "' + b"x" * 9000 + b'"}', "over the limit"),
]


@pytest.mark.parametrize(
    ("data", "reason"),
    [(data, reason) for _, data, reason in INVALID_PAYLOADS],
    ids=[name for name, _, _ in INVALID_PAYLOADS],
)
def test_invalid_payloads_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidRideError) as raised:
        parse_payload(data, max_bytes=8192)
    assert reason in raised.value.reason


def test_nesting_up_to_the_limit_parses_and_brackets_in_strings_do_not_count() -> None:
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_payload(nested.encode(), max_bytes=1024) is not None
    text = json.dumps({"ride_id": "[" * 500, "ride": {}})
    assert parse_payload(text.encode(), max_bytes=4096)["ride_id"] == "[" * 500


def test_payload_at_exactly_the_limit_is_accepted() -> None:
    data = json.dumps({"ride_id": "x" * 100}).encode()
    assert parse_payload(data, max_bytes=len(data)) == {"ride_id": "x" * 100}


def _random_json_like(rng: random.Random) -> str:
    """Bracket soup: strings, escapes, non-ASCII text, unterminated strings, unbalanced brackets."""
    pieces = [
        "[",
        "]",
        "{",
        "}",
        '"',
        "\\",
        '\\"',
        "\\\\",
        "a",
        ",",
        ":",
        " ",
        '"[{"',
        "1",
        "é",
        "\u2028",
    ]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))


def test_the_fast_depth_check_agrees_with_the_character_scan() -> None:
    rng = random.Random(20240108)
    texts = [_random_json_like(rng) for _ in range(20_000)]
    texts += [
        "[" * depth + "]" * depth for depth in (0, 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 100)
    ]
    texts += ["[" * MAX_JSON_DEPTH + '"]]]' + "]" * MAX_JSON_DEPTH, '"' + "[" * 40, "]][[" * 20]
    texts.append(
        json.dumps([{"ride": {"a": [1, 2, {"b": "[[[["}]}, "ride_id": i} for i in range(50)])
    )
    for limit in (1, 2, 3, MAX_JSON_DEPTH):
        for text in texts:
            assert _json_depth_exceeds(text, limit) == _scan_depth_exceeds(text, limit), (
                text,
                limit,
            )


def _event_variants(rng: random.Random) -> dict[str, Any] | Any:
    """Ride events near the edges of every rule, valid and invalid."""
    values = [0, 1, -1, 265, 2**31 - 1, 2**31, True, False, 1.0, "7", None, 2**63, -(2**63)]
    distances = [0, 0.0, -0.0, 3.66, -1.5, float("nan"), float("inf"), 10**400, 2**1023, 2**1024]
    distances += [True, "3.1", None, 1e308, 5e-324]
    ride_ids: list[Any] = [123, "r-1", "", "x" * 256, "x" * 257, True, 1.5, None, 2**63 - 1]
    ride_ids += [2**63, -(2**63), -(2**63) - 1, []]
    ride: dict[str, Any] = {}
    for field, choices in (
        ("PULocationID", values),
        ("DOLocationID", values),
        ("trip_distance", distances),
    ):
        if rng.random() > 0.05:
            ride[field] = rng.choice(choices)
    event: dict[str, Any] = {}
    if rng.random() > 0.05:
        event["ride_id"] = rng.choice(ride_ids)
    if rng.random() > 0.05:
        event["ride"] = ride if rng.random() > 0.05 else rng.choice([None, [], "ride"])
    return event if rng.random() > 0.02 else rng.choice([None, [], "event", 5])


def test_the_common_shape_shortcut_accepts_only_what_the_full_checks_accept() -> None:
    rng = random.Random(8)
    accepted = 0
    for _ in range(30_000):
        event = _event_variants(rng)
        shortcut = _common_valid_event(event)
        try:
            checked = _checked_event(event)
        except InvalidRideError:
            assert shortcut is None, event
            continue
        if shortcut is not None:
            accepted += 1
            assert shortcut == checked, event
    assert accepted > 100  # the shortcut does serve the usual events


def test_prediction_message_rounds_to_whole_minutes_and_echoes_the_ride_id() -> None:
    assert build_prediction_message("m", "v1", "ride-7", 17.6) == {
        "model": "m",
        "version": "v1",
        "prediction": {"ride_duration": 18, "ride_id": "ride-7"},
    }


@pytest.mark.parametrize("prediction", [math.nan, math.inf, -math.inf])
def test_a_prediction_that_is_not_finite_is_a_permanent_error(prediction: float) -> None:
    with pytest.raises(InvalidRideError, match="the model predicted"):
        build_prediction_message("m", "v1", 123, prediction)
