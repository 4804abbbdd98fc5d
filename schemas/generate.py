"""``python -m schemas.generate`` (``make schemas``): write the contract's JSON Schemas.

Both files are generated from the declarations in ``ride_predictor/messages.py``, the ones the
function decodes and encodes with, so they cannot drift from it: ``tests/test_schemas.py`` fails
when a committed file differs from what this module writes, and checks the schemas against the
decoder.

The prediction log's BigQuery table schema (``monitoring/prediction-log.bigquery.json``) comes
from the same declaration of the output message; ``tests/test_monitoring_files.py`` checks it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from ride_predictor import messages

SCHEMA_DIR = Path(__file__).resolve().parent
MONITORING_DIR = SCHEMA_DIR.parent / "monitoring"
PREDICTION_LOG_SCHEMA = "prediction-log.bigquery.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"

RIDE_EVENT_DESCRIPTION = (
    "The data of a message on the function's input topic (Stream A): one ride event, or a "
    "batch (a non-empty JSON array of ride events). Generated from ride_predictor/messages.py; "
    "docs/design.md is the contract. Fields not named here are ignored. The function also "
    "rejects what this schema cannot express: data over MAX_MESSAGE_BYTES (1 MiB by default) "
    "or a batch of more than MAX_BATCH_RIDES rides (1000 by default); bytes that are not "
    "UTF-8 anywhere in the message; NaN and Infinity tokens; a lone surrogate escape (\\ud800 "
    "to \\udfff) in any "
    f"string; arrays and objects nested deeper than {messages.MAX_JSON_DEPTH} levels; and an "
    "integer field written with a fraction or an exponent (130.0, 1.3e2), which JSON Schema's "
    "integer type accepts: a producer that writes integers as integers never meets that one."
)
PREDICTION_DESCRIPTION = (
    "The data of a message on the function's output topic (Stream B): one per ride, as compact "
    "UTF-8 JSON with the fields in this order. Generated from ride_predictor/messages.py; "
    "docs/design.md is the contract."
)


def ride_event_schema() -> dict[str, Any]:
    """The JSON Schema of an input message: one ride event or a batch of them.

    msgspec writes the union as ``anyOf``; as ``if``/``then``/``else`` on the JSON type, a
    validator reports what is wrong inside the event (``0 is less than the minimum of 1``)
    rather than that neither alternative matched.
    """
    generated = msgspec.json.schema(messages.RideEvent | messages.RideEvents)
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
    generated = msgspec.json.schema(messages.PredictionMessage)
    return {
        "$schema": DIALECT,
        "title": "Prediction message",
        "description": PREDICTION_DESCRIPTION,
        **generated,
    }


# What Pub/Sub's BigQuery subscription writes with --write-metadata, beside the message's own
# fields (https://cloud.google.com/pubsub/docs/bigquery, "Write metadata"): attributes as JSON.
PREDICTION_LOG_METADATA: tuple[dict[str, str], ...] = (
    {
        "name": "subscription_name",
        "type": "STRING",
        "mode": "NULLABLE",
        "description": "The BigQuery subscription that wrote the row (Pub/Sub metadata).",
    },
    {
        "name": "message_id",
        "type": "STRING",
        "mode": "NULLABLE",
        "description": "The prediction message's Pub/Sub id (metadata).",
    },
    {
        "name": "publish_time",
        "type": "TIMESTAMP",
        "mode": "NULLABLE",
        "description": "When the function published the prediction (metadata); the "
        "partitioning column.",
    },
    {
        "name": "attributes",
        "type": "JSON",
        "mode": "NULLABLE",
        "description": "The message's attributes (metadata): ride_id (always a string), "
        "model_version, source_message_id, and ride_index for a batch element.",
    },
)
# Message fields with no single BigQuery type: a ride_id is a JSON number or a string, and the
# table-schema mode maps numbers to numeric columns only. --drop-unknown-fields leaves it out;
# the ride_id attribute carries it, always as a string.
PREDICTION_LOG_OMITTED = ("prediction.ride_id",)
_BIGQUERY_TYPES = {
    msgspec.inspect.StrType: "STRING",
    msgspec.inspect.IntType: "INTEGER",
    msgspec.inspect.FloatType: "FLOAT",
    msgspec.inspect.BoolType: "BOOLEAN",
}


def _bigquery_fields(struct: msgspec.inspect.StructType, prefix: str = "") -> list[dict[str, Any]]:
    """The columns of a msgspec Struct: one per field, a RECORD per nested Struct; a field of
    no single BigQuery type must be listed in PREDICTION_LOG_OMITTED."""
    columns: list[dict[str, Any]] = []
    for field in struct.fields:
        path = prefix + field.encode_name
        info, description = field.type, None
        if isinstance(info, msgspec.inspect.Metadata):
            description = (info.extra_json_schema or {}).get("description")
            info = info.type
        mode = "REQUIRED" if field.required else "NULLABLE"
        if isinstance(info, msgspec.inspect.StructType):
            column: dict[str, Any] = {"name": field.encode_name, "type": "RECORD", "mode": mode}
            column["fields"] = _bigquery_fields(info, path + ".")
            description = description or (info.cls.__doc__ or "").strip()
        elif type(info) in _BIGQUERY_TYPES:
            column = {"name": field.encode_name, "type": _BIGQUERY_TYPES[type(info)], "mode": mode}
        elif path in PREDICTION_LOG_OMITTED:
            continue
        else:
            raise TypeError(f"{path}: {info} has no BigQuery type; map it or omit it")
        if description:
            column["description"] = description
        columns.append(column)
    return columns


def prediction_log_schema() -> list[dict[str, Any]]:
    """The prediction log table's columns: Pub/Sub's metadata, then the output message's fields
    (what --use-table-schema --write-metadata --drop-unknown-fields writes)."""
    body = _bigquery_fields(msgspec.inspect.type_info(messages.PredictionMessage))
    return [*PREDICTION_LOG_METADATA, *body]


def monitoring_files() -> dict[str, str]:
    """Each generated file's name in ``monitoring/`` and its text, as committed."""
    return {
        PREDICTION_LOG_SCHEMA: json.dumps(prediction_log_schema(), indent=2, ensure_ascii=False)
        + "\n"
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
    """Write every schema file into ``schemas/``, and the prediction log's into ``monitoring/``."""
    for name, text in schema_files().items():
        (SCHEMA_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote schemas/{name}", file=sys.stderr)
    for name, text in monitoring_files().items():
        (MONITORING_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote monitoring/{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
