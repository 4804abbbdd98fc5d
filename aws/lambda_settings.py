"""The Lambda's configuration: the shared declaration (``settings.CoreSettings``) plus its own.

Everything the two clouds share (``MODEL_URI``, ``MODEL_NAME``, ``MODEL_VERSION``,
``MAX_MESSAGE_BYTES``, ``MODEL_LOAD_TIMEOUT_SECONDS``, ``MODEL_REFRESH_SECONDS``, ``LOG_LEVEL``,
``MESSAGE_LOG_LEVEL``) is read and checked exactly as for the Cloud Function (docs/design.md);
only the output streams, named as AWS names them, and one default are the Lambda's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from settings import (
    CoreSettings,
    InvalidSettingError,
    MissingSettingError,
    Seconds,
    Text,
    read_settings,
)

__all__ = ["InvalidSettingError", "LambdaSettings", "MissingSettingError", "settings_from_env"]

DEFAULT_PREDICTIONS_STREAM_NAME = "ride_predictions"
# Leaves room in a Lambda timeout of a minute or more for the writes after a cold load.
DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS = 30.0


class LambdaSettings(CoreSettings, frozen=True, kw_only=True, rename="upper"):
    """What the Lambda handler needs to know, built by ``settings_from_env``."""

    predictions_stream_name: Text = DEFAULT_PREDICTIONS_STREAM_NAME
    dead_letter_stream_name: Text | None = None
    model_load_timeout_seconds: Seconds = DEFAULT_MODEL_LOAD_TIMEOUT_SECONDS


def settings_from_env(environ: Mapping[str, str] = os.environ) -> LambdaSettings:
    """Read ``LambdaSettings`` from environment variables; ``MODEL_URI`` is required.

    Raises ``InvalidSettingError`` naming the variable at fault. An empty value counts as unset.
    """
    return read_settings(LambdaSettings, environ)
