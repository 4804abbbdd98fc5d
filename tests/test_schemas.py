"""schemas/: the published JSON Schemas are generated, committed, and agree with the function."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ride_predictor.errors import InvalidRideError
from ride_predictor.messages import (
    MAX_RIDE_DURATION,
    MIN_RIDE_DURATION,
    RideBatch,
    build_prediction_message,
    decode_message,
    encode_message,
)
from schemas.generate import SCHEMA_DIR, schema_files
from tests.conftest import load_json
from tests.test_features import INVALID_RIDE_EVENTS, VALID

REPO_ROOT = Path(__file__).resolve().parent.parent
RIDE_EVENT = json.loads((SCHEMA_DIR / "ride_event.schema.json").read_text())
PREDICTION = json.loads((SCHEMA_DIR / "prediction.schema.json").read_text())
ride_event_validator = jsonschema.Draft202012Validator(RIDE_EVENT)
prediction_validator = jsonschema.Draft202012Validator(PREDICTION)


@pytest.mark.parametrize("name", sorted(schema_files()))
def test_the_committed_schema_is_what_the_declarations_generate(name: str) -> None:
    committed = (SCHEMA_DIR / name).read_text(encoding="utf-8")
    assert committed == schema_files()[name], f"schemas/{name} is stale: run `make schemas`"


@pytest.mark.parametrize("schema", [RIDE_EVENT, PREDICTION], ids=["ride_event", "prediction"])
def test_the_schemas_are_valid_draft_2020_12(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _function_accepts(data: bytes) -> bool:
    """Whether the function would predict the message (every element of a batch)."""
    try:
        decoded = decode_message(data, 1 << 20)
    except InvalidRideError:
        return False
    if isinstance(decoded, RideBatch):
        return not any(isinstance(event, InvalidRideError) for event in decoded.events)
    return True


def _integral_float_in_an_integer_field(value: Any) -> bool:
    """130.0 where an integer goes: JSON Schema's "integer" accepts it, the function does not."""
    events = value if isinstance(value, list) else [value]
    for event in events:
        if not isinstance(event, dict):
            continue
        ride = event.get("ride")
        candidates = [event.get("ride_id")]
        if isinstance(ride, dict):
            candidates += [ride.get("PULocationID"), ride.get("DOLocationID")]
        if any(isinstance(v, float) and v.is_integer() for v in candidates):
            return True
    return False


def _assert_agree(value: Any) -> None:
    data = json.dumps(value, allow_nan=False).encode()
    schema_accepts = ride_event_validator.is_valid(json.loads(data))
    if _integral_float_in_an_integer_field(value):
        # The one difference a JSON value can show, stated in the schema's descriptions: the
        # schema may accept it, the function never does.
        assert not _function_accepts(data), value
    else:
        assert schema_accepts == _function_accepts(data), value


@pytest.mark.parametrize(
    "ride_event",
    [event for _, event, _ in INVALID_RIDE_EVENTS],
    ids=[name for name, _, _ in INVALID_RIDE_EVENTS],
)
def test_the_schema_rejects_what_the_function_rejects(ride_event: Any) -> None:
    _assert_agree(ride_event)
    _assert_agree([VALID, ride_event])


def test_the_schema_accepts_the_tutorial_ride_and_batches() -> None:
    for value in (load_json("sample_ride.json"), VALID, [VALID] * 3, {**VALID, "x": [[1]]}):
        assert ride_event_validator.is_valid(value)
        _assert_agree(value)


def _random_event(rng: random.Random) -> Any:
    """Ride events near the edges of every rule, valid and invalid."""
    values = [0, 1, -1, 265, 2**31 - 1, 2**31, True, False, 1.0, 130.0, 2.5, "7", None, 2**63]
    distances = [0, 0.0, -0.0, 3.66, -1.5, 10**400, 2**1023, 2**1024, 1e308, 5e-324]
    distances += [True, "3.1", None, [], 7]
    ride_ids: list[Any] = [123, "r-1", "", "x" * 256, "x" * 257, True, 1.5, 7.0, None, 2**63 - 1]
    ride_ids += [2**63, -(2**63), -(2**63) - 1, [], {}, "é😀"]
    ride: dict[str, Any] = {}
    for field, choices in (
        ("PULocationID", values),
        ("DOLocationID", values),
        ("trip_distance", distances),
    ):
        if rng.random() > 0.05:
            ride[field] = rng.choice(choices)
    if rng.random() < 0.1:
        ride["extra"] = rng.choice([None, [1, {"a": []}], "x"])
    event: dict[str, Any] = {}
    if rng.random() > 0.05:
        event["ride_id"] = rng.choice(ride_ids)
    if rng.random() > 0.05:
        event["ride"] = ride if rng.random() > 0.05 else rng.choice([None, [], "ride"])
    return event if rng.random() > 0.02 else rng.choice([None, [], "event", 5])


def test_the_schema_and_the_function_agree_on_random_events() -> None:
    rng = random.Random(12)
    accepted = 0
    for _ in range(5000):
        event = _random_event(rng)
        _assert_agree(event)
        accepted += ride_event_validator.is_valid(event)
    assert accepted > 100  # the corpus holds valid events too


@pytest.mark.parametrize(
    ("ride_id", "prediction"),
    [
        (123, 17.6),
        ("é😀" * 64, -3.2),
        (-(2**63), MAX_RIDE_DURATION),
        (2**63 - 1, MIN_RIDE_DURATION),
    ],
)
def test_every_output_message_matches_the_prediction_schema(
    ride_id: Any, prediction: float
) -> None:
    data = encode_message(build_prediction_message("m", "v" * 40, ride_id, prediction))
    prediction_validator.validate(json.loads(data))


def test_the_prediction_schema_rejects_a_message_without_its_fields() -> None:
    assert not prediction_validator.is_valid({"model": "m", "version": "v"})
    message = {"model": "m", "version": "v", "prediction": {"ride_duration": 1.5, "ride_id": 1}}
    assert not prediction_validator.is_valid(message)


@pytest.mark.parametrize("duration", [2**31, -(2**31) - 1, int("9" * 301)])
def test_the_prediction_schema_states_the_bound_of_ride_duration(duration: int) -> None:
    # The function never publishes these (tests/test_model_output.py): the schema says so.
    message = {
        "model": "m",
        "version": "v",
        "prediction": {"ride_duration": duration, "ride_id": 1},
    }
    assert not prediction_validator.is_valid(message)


def test_the_schema_says_where_the_function_is_stricter() -> None:
    description = RIDE_EVENT["description"]
    for rule in ("130.0", "UTF-8", "NaN", "surrogate", "nested deeper than 32", "MAX_BATCH_RIDES"):
        assert rule in description
    pickup = RIDE_EVENT["$defs"]["Ride"]["properties"]["PULocationID"]
    assert "130.0" in pickup["description"]


def test_the_producer_example_in_the_docs_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    design = (REPO_ROOT / "docs" / "design.md").read_text()
    (snippet,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", design, re.DOTALL)
        if "jsonschema" in block
    ]
    monkeypatch.chdir(REPO_ROOT)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/design.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert json.loads(namespace["data"]) == namespace["message"]
    message = namespace["message"]
    with pytest.raises(jsonschema.ValidationError, match="less than the minimum of 1"):
        namespace["validator"].validate({**message, "ride": {**message["ride"], "PULocationID": 0}})
