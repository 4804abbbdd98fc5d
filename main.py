"""Cloud Run function ``predict_duration``: the entry point, wired to ``ride_predictor``.

Only wiring lives here: functions-framework calls ``predict_duration`` with a CloudEvent; the
process-wide ``PredictionService`` (``ride_predictor.service``), built from the environment by
the first request, handles it. What the function promises is docs/design.md; which module does
what, README's layout and docs/design.md's "The package".
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import functions_framework

from ride_predictor.envelope import read_event
from ride_predictor.json_logging import CloudLoggingFormatter, install_json_handler
from ride_predictor.model_holder import ModelHolder
from ride_predictor.publisher import PubSubPublisher
from ride_predictor.registry import bound_mlflow_http_requests
from ride_predictor.service import PredictionService
from ride_predictor.settings import InvalidSettingError, Settings, settings_from_env
from ride_predictor.telemetry import telemetry_from_env

logger = logging.getLogger("ride_predictor")
# At import, so that even an invalid configuration is logged as JSON lines; once per process
# (functions-framework may execute this module again): the level is then build_service's.
if install_json_handler(logger, CloudLoggingFormatter()):
    logger.setLevel(logging.INFO)

_service: PredictionService | None = None
_service_lock = threading.Lock()


def build_service(settings: Settings) -> PredictionService:
    """Wire the real model holder, publisher and telemetry for ``settings`` (nothing is loaded
    yet)."""
    logger.setLevel(settings.log_level)
    bound_mlflow_http_requests(os.environ)
    return PredictionService(
        settings,
        ModelHolder.from_settings(settings),
        PubSubPublisher(
            timeout_seconds=settings.publish_timeout_seconds,
            max_rpcs_in_flight=settings.publish_max_rpcs_in_flight,
        ),
        telemetry_from_env(settings.project_id, settings.metrics_export_seconds, os.environ),
    )


def get_service() -> PredictionService:
    """The process-wide service, built from the environment on first use.

    The settings are read once, by the first request. Invalid settings fail every request
    (HTTP 500: Pub/Sub keeps the messages) with one ERROR line naming the variable, until the
    deployment is fixed.
    """
    global _service
    service = _service
    if service is None:
        with _service_lock:
            if _service is None:
                try:
                    settings = settings_from_env()
                except InvalidSettingError as error:
                    logger.error(
                        "invalid configuration: %s", error, extra={"fields": {"reason": str(error)}}
                    )
                    raise
                _service = build_service(settings)
            service = _service
    return service


# Typed Any: functions-framework ignores what it returns (its decorator's type says None); the
# tutorial's test.py and direct callers read it.
@functions_framework.cloud_event
def predict_duration(cloud_event: Any) -> Any:
    """Entry point: a Pub/Sub CloudEvent (or a plain dict of the same shape) in.

    Only ``google.cloud.pubsub.topic.v1.messagePublished`` events are handled (functions-framework
    turns a raw Pub/Sub push request into one); any other type is a permanent failure.
    Returns the prediction message (a list of them for a batch message), or None when the
    message was rejected as permanently invalid (``PredictionService.handle``).
    """
    event = read_event(cloud_event)
    return get_service().handle(event.data, event.event_id, event.event_type)
