"""The configuration: one strict declaration of the environment variables, read once.

``CoreSettings`` declares what the Cloud Function (``main.py``) and the AWS Lambda
(``aws/lambda_settings.py``) share; ``Settings`` adds the Cloud Function's own variables. Each
field is an environment variable of the same name in upper case (``max_message_bytes`` is
``MAX_MESSAGE_BYTES``), and its type says what it accepts, with ``msgspec.Meta`` bounds.
``read_settings`` converts the environment with ``msgspec.convert`` (text to numbers), then
checks what the bounds cannot say: a number must be finite (``"inf"`` passes ``gt=0``).

An empty value means unset, for every variable. Log levels are case-insensitive. A value that
is set but invalid, or a required one that is missing, raises ``InvalidSettingError`` naming
the variable and what it accepts (see docs/design.md, "Configuration").

Nothing here imports more than msgspec, so the Lambda ships this module as it is.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

DEFAULT_MODEL_NAME = "ride_duration_prediction_model"
DEFAULT_PUBLISH_STREAM = "ride-predictions"
# The decoded message data may hold a JSON array of up to MAX_BATCH_RIDES rides (about 100 bytes
# each), so 1 MiB leaves room for a full batch while staying far below Pub/Sub's 10 MB.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
# A dead letter holds up to MAX_MESSAGE_BYTES of the source's data plus its attributes (at most
# 100 of up to 1,280 bytes each) and must fit in one Publish request (10 MB).
MAX_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_BATCH_RIDES = 1000
# Bounds on the waits of a request: the model load, then at most two publish calls (dead letters,
# predictions): 20 + 2 x 10 = 40 s, inside the 60 s function timeout (see docs/failures.md).
DEFAULT_PUBLISH_TIMEOUT_SECONDS = 10.0
DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS = 20.0
# How often a warm instance re-resolves a models:/<name>@<alias> (or /latest) MODEL_URI.
DEFAULT_MODEL_REFRESH_SECONDS = 60.0
# Publish RPCs in flight per topic at most: with one, a call arriving during an RPC waits for
# it, then for its own, about two round trips; with a few, it usually finds a free slot.
# docs/speed.md has the measurement behind the value.
DEFAULT_MAX_RPCS_IN_FLIGHT = 4
# How often an instance on Cloud Run writes its own metrics (telemetry, docs/operations.md).
DEFAULT_METRICS_EXPORT_SECONDS = 60.0

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class InvalidSettingError(RuntimeError):
    """An environment variable is invalid, or a required one is missing."""


# The name before issue 18, when the error was only raised for a missing variable.
MissingSettingError = InvalidSettingError

Text = Annotated[str, Meta(min_length=1, description="any text")]
Count = Annotated[int, Meta(ge=1, description="a whole number >= 1")]
MessageBytes = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_MAX_MESSAGE_BYTES,
        description=f"a whole number of bytes from 1 to {MAX_MAX_MESSAGE_BYTES}",
    ),
]
Seconds = Annotated[float, Meta(gt=0, description="a finite number of seconds > 0")]
SecondsOrOff = Annotated[
    float, Meta(ge=0, description="a finite number of seconds >= 0 (0 turns it off)")
]
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"],
    Meta(description="DEBUG, INFO, WARNING or ERROR (any case)"),
]
SubscriptionPath = Annotated[
    str,
    Meta(
        pattern=r"^projects/[^/]+/subscriptions/[^/]+$",
        description="a subscription's full name, projects/<project>/subscriptions/<name>",
    ),
]


class CoreSettings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    """What both clouds read, with the defaults of docs/design.md."""

    model_uri: Annotated[str, Meta(min_length=1, description="an MLflow model URI")]
    model_name: Text = DEFAULT_MODEL_NAME
    model_version: Text | None = None
    max_message_bytes: MessageBytes = DEFAULT_MAX_MESSAGE_BYTES
    model_load_timeout_seconds: Seconds = DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS
    model_refresh_seconds: SecondsOrOff = DEFAULT_MODEL_REFRESH_SECONDS
    log_level: LogLevel = "INFO"
    message_log_level: LogLevel = "INFO"


class Settings(CoreSettings, frozen=True, kw_only=True, rename="upper"):
    """The Cloud Function's configuration: the shared fields and its Pub/Sub ones."""

    project_id: Annotated[str, Meta(min_length=1, description="a GCP project id")]
    publish_stream: Text = DEFAULT_PUBLISH_STREAM
    dead_letter_stream: Text | None = None
    # The push subscription that feeds the function, for the dead letters: functions-framework
    # drops the subscription of a raw push request when it makes the CloudEvent.
    source_subscription: SubscriptionPath | None = None
    max_batch_rides: Count = DEFAULT_MAX_BATCH_RIDES
    publish_timeout_seconds: Seconds = DEFAULT_PUBLISH_TIMEOUT_SECONDS
    publish_max_rpcs_in_flight: Count = DEFAULT_MAX_RPCS_IN_FLIGHT
    metrics_export_seconds: SecondsOrOff = DEFAULT_METRICS_EXPORT_SECONDS

    @property
    def output_topic_path(self) -> str:
        """Stream B's full topic name."""
        return topic_path(self.project_id, self.publish_stream)

    @property
    def dead_letter_topic_path(self) -> str | None:
        """The dead-letter topic's full name, or None when dead-lettering is off."""
        if not self.dead_letter_stream:
            return None
        return topic_path(self.project_id, self.dead_letter_stream)


def topic_path(project_id: str, topic: str) -> str:
    """The full resource name of a topic (what the Pub/Sub client calls a topic path)."""
    return f"projects/{project_id}/topics/{topic}"


# Variables read in place of an unset one: the Cloud Functions runtime sets GOOGLE_CLOUD_PROJECT.
FALLBACKS: dict[str, tuple[str, ...]] = {"PROJECT_ID": ("GOOGLE_CLOUD_PROJECT",)}

SettingsT = TypeVar("SettingsT", bound=CoreSettings)
_INVALID = object()


def read_settings(declaration: type[SettingsT], environ: Mapping[str, str]) -> SettingsT:
    """The ``declaration`` (a ``CoreSettings`` subclass) read from ``environ``.

    Raises ``InvalidSettingError`` for the first variable that is invalid or required and unset.
    """
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(declaration):
        name, annotation = field.encode_name, field.type
        candidates = (name, *FALLBACKS.get(name, ()))
        raw = next((environ[n] for n in candidates if environ.get(n)), None)
        if raw is None:
            if field.required:
                raise InvalidSettingError(
                    f"{' or '.join(candidates)} is not set; accepted: {_accepted(annotation)}"
                )
            continue
        try:
            value = msgspec.convert(
                raw.upper() if annotation == LogLevel else raw, annotation, strict=False
            )
        except msgspec.ValidationError:
            value = _INVALID
        # msgspec's bounds let "inf" through (gt=0): a number must also be finite.
        if value is _INVALID or (isinstance(value, float) and not math.isfinite(value)):
            raise InvalidSettingError(
                f"{name}={raw!r} is invalid; accepted: {_accepted(annotation)}"
            )
        values[field.name] = value
    return declaration(**values)


def settings_from_env(environ: Mapping[str, str] = os.environ) -> Settings:
    """The Cloud Function's ``Settings`` from environment variables (see ``read_settings``)."""
    return read_settings(Settings, environ)


def _accepted(annotation: Any) -> str:
    """What a field's type accepts, in words: the ``description`` of its ``Meta``."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(arguments) < len(typing.get_args(annotation))
        annotation = arguments[0]
    descriptions = [
        meta.description
        for meta in getattr(annotation, "__metadata__", ())
        if isinstance(meta, Meta) and meta.description
    ]
    accepted = descriptions[0] if descriptions else "see docs/design.md"
    return accepted + (", or empty for unset" if optional else "")
