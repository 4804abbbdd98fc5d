"""The Lambda's configuration: environment variables read once, into a frozen dataclass.

Names differ from the Cloud Function's where AWS says "stream name" (``PREDICTIONS_STREAM_NAME``,
``DEAD_LETTER_STREAM_NAME``); everything the two share (``MODEL_URI``, ``MODEL_NAME``,
``MODEL_VERSION``, ``MODEL_LOAD_TIMEOUT_SECONDS``, ``MODEL_REFRESH_SECONDS``, ``LOG_LEVEL``,
``MESSAGE_LOG_LEVEL``) has the
same meaning and default as in ``docs/design.md``. The parsing helpers are small copies of
``main.py``'s private ones: importing ``main`` would pull functions-framework and the Pub/Sub
client into the Lambda.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MODEL_NAME = "ride_duration_prediction_model"
DEFAULT_PREDICTIONS_STREAM_NAME = "ride_predictions"
# Kinesis caps one record's data at 1 MiB, so no valid input is ever larger than this.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
# Leaves room in a Lambda timeout of a minute or more for the writes after a cold load.
DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS = 30.0
DEFAULT_MODEL_REFRESH_SECONDS = 60.0
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class MissingSettingError(RuntimeError):
    """A required environment variable is unset, or a variable holds an unusable value."""


@dataclass(frozen=True)
class LambdaSettings:
    """What the Lambda handler needs to know, built by ``settings_from_env``."""

    model_uri: str
    predictions_stream_name: str = DEFAULT_PREDICTIONS_STREAM_NAME
    dead_letter_stream_name: str | None = None
    model_name: str = DEFAULT_MODEL_NAME
    model_version: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    model_load_timeout_seconds: float = DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS
    model_refresh_seconds: float = DEFAULT_MODEL_REFRESH_SECONDS
    log_level: str = "INFO"
    message_log_level: str = "INFO"


def _number(
    environ: Mapping[str, str], name: str, default: float, zero_allowed: bool = False
) -> float:
    """A number > 0 (or >= 0 when ``zero_allowed``) from ``environ[name]``."""
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise MissingSettingError(f"{name} must be a number, got {raw!r}") from None
    if not (value >= 0 if zero_allowed else value > 0):
        raise MissingSettingError(
            f"{name} must be {'0 or more' if zero_allowed else 'positive'}, got {raw!r}"
        )
    return value


def _log_level(environ: Mapping[str, str], name: str) -> str:
    level = (environ.get(name) or "INFO").upper()
    if level not in _LOG_LEVELS:
        raise MissingSettingError(f"{name} must be one of {', '.join(_LOG_LEVELS)}, got {level!r}")
    return level


def settings_from_env(environ: Mapping[str, str] = os.environ) -> LambdaSettings:
    """Read ``LambdaSettings`` from environment variables; ``MODEL_URI`` is required.

    Raises ``MissingSettingError`` naming the variable at fault. An empty value counts as unset.
    """
    model_uri = environ.get("MODEL_URI")
    if not model_uri:
        raise MissingSettingError("set MODEL_URI (an MLflow model URI such as s3://bucket/…/model)")
    return LambdaSettings(
        model_uri=model_uri,
        predictions_stream_name=(
            environ.get("PREDICTIONS_STREAM_NAME") or DEFAULT_PREDICTIONS_STREAM_NAME
        ),
        dead_letter_stream_name=environ.get("DEAD_LETTER_STREAM_NAME") or None,
        model_name=environ.get("MODEL_NAME") or DEFAULT_MODEL_NAME,
        model_version=environ.get("MODEL_VERSION") or None,
        model_load_timeout_seconds=_number(
            environ, "MODEL_LOAD_TIMEOUT_SECONDS", DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS
        ),
        model_refresh_seconds=_number(
            environ, "MODEL_REFRESH_SECONDS", DEFAULT_MODEL_REFRESH_SECONDS, zero_allowed=True
        ),
        log_level=_log_level(environ, "LOG_LEVEL"),
        message_log_level=_log_level(environ, "MESSAGE_LOG_LEVEL"),
    )
