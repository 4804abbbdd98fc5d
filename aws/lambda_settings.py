"""The Lambda's configuration: the shared declaration (``ride_predictor.settings.CoreSettings``)
plus its own fields.

Everything the two clouds share (``MODEL_URI``, ``MODEL_NAME``, ``MODEL_VERSION``,
``MAX_MESSAGE_BYTES``, ``MODEL_LOAD_TIMEOUT_SECONDS``, ``MODEL_REFRESH_SECONDS``, ``LOG_LEVEL``,
``MESSAGE_LOG_LEVEL``) is read and checked exactly as for the Cloud Function (docs/design.md);
only the output streams, named as AWS names them, and one default are the Lambda's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ride_predictor.settings import CoreSettings, Seconds, Text, read_settings
from ride_predictor.settings import InvalidSettingError as InvalidSettingError  # raised here
from ride_predictor.settings import MissingSettingError as MissingSettingError  # its old name

DEFAULT_PREDICTIONS_STREAM_NAME = "ride_predictions"
# Leaves room in a Lambda timeout of a minute or more for the writes after a cold load.
DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS = 30.0


class LambdaSettings(CoreSettings, frozen=True, kw_only=True, rename="upper"):
    """What the Lambda handler needs to know, built by ``settings_from_env``."""

    predictions_stream_name: Text = DEFAULT_PREDICTIONS_STREAM_NAME
    dead_letter_stream_name: Text | None = None
    model_load_timeout_seconds: Seconds = DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS


def settings_from_env(environ: Mapping[str, str] = os.environ) -> LambdaSettings:
    """``LambdaSettings`` from environment variables (``read_settings``: raises
    ``InvalidSettingError`` naming the variable at fault; an empty value counts as unset)."""
    return read_settings(LambdaSettings, environ)
