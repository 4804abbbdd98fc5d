"""``python -m schemas.generate`` (``make schemas``): write the contract's JSON Schemas.

Both files are generated from the declarations in ``features.py``, the ones the function decodes
and encodes with, so they cannot drift from it: ``tests/test_schemas.py`` fails when a committed
file differs from what this module writes, and checks the schemas against the decoder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

import features

SCHEMA_DIR = Path(__file__).resolve().parent
DIALECT = "https://json-schema.org/draft/2020-12/schema"

RIDE_EVENT_DESCRIPTION = (
    "The data of a message on the function's input topic (Stream A): one ride event, or a "
    "batch (a non-empty JSON array of ride events). Generated from features.py; docs/design.md "
    "is the contract. Fields not named here are ignored. The function also rejects what this "
    "schema cannot express: data over MAX_MESSAGE_BYTES (1 MiB by default) or a batch of more "
    "than MAX_BATCH_RIDES rides (1000 by default); bytes that are not UTF-8 anywhere in the "
    "message; NaN and Infinity tokens; a lone surrogate escape (\\ud800 to \\udfff) in any "
    f"string; arrays and objects nested deeper than {features.MAX_JSON_DEPTH} levels; and an "
    "integer field written with a fraction or an exponent (130.0, 1.3e2), which JSON Schema's "
    "integer type accepts: a producer that writes integers as integers never meets that one."
)
PREDICTION_DESCRIPTION = (
    "The data of a message on the function's output topic (Stream B): one per ride, as compact "
    "UTF-8 JSON with the fields in this order. Generated from features.py; docs/design.md is "
    "the contract."
)


def ride_event_schema() -> dict[str, Any]:
    """The JSON Schema of an input message: one ride event or a batch of them.

    msgspec writes the union as ``anyOf``; as ``if``/``then``/``else`` on the JSON type, a
    validator reports what is wrong inside the event (``0 is less than the minimum of 1``)
    rather than that neither alternative matched.
    """
    generated = msgspec.json.schema(features.RideEvent | features.RideEvents)
    (batch,) = [option for option in generated["anyOf"] if option.get("type") == "array"]
    (event,) = [option for option in generated["anyOf"] if option is not batch]
    return {
        "$schema": DIALECT,
        "title": "Ride event message",
        "description": RIDE_EVENT_DESCRIPTION,
        "if": {"type": "array"},
        "then": batch,
        "else": event,
        "$defs": generated["$defs"],
    }


def prediction_schema() -> dict[str, Any]:
    """The JSON Schema of an output message."""
    generated = msgspec.json.schema(features.PredictionMessage)
    return {
        "$schema": DIALECT,
        "title": "Prediction message",
        "description": PREDICTION_DESCRIPTION,
        **generated,
    }


def schema_files() -> dict[str, str]:
    """Each file's name in ``schemas/`` and its text, as committed."""
    schemas = {
        "ride_event.schema.json": ride_event_schema(),
        "prediction.schema.json": prediction_schema(),
    }
    return {
        name: json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
        for name, schema in schemas.items()
    }


def main() -> int:
    """Write every schema file into ``schemas/``."""
    for name, text in schema_files().items():
        (SCHEMA_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote schemas/{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
