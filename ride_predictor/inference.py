"""The model called on a batch of rides: their features in, one checked prediction message each out.

One model call per batch, on both clouds. The output must be one prediction per ride
(``messages.predictions_for``) or every ride of the call is rejected with the same
``InvalidRideError``; each prediction must then be a finite number within ``ride_duration``'s
bound (``messages.build_prediction_message``) or that ride alone is rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

from ride_predictor.errors import InvalidRideError
from ride_predictor.loaders import LoadedModel
from ride_predictor.messages import (
    PredictionMessage,
    RideEvent,
    build_prediction_message,
    predictions_for,
    ride_features,
)


def predict_rides(
    model: LoadedModel, events: Sequence[RideEvent]
) -> list[PredictionMessage | InvalidRideError]:
    """For each event, in order, its prediction message or the ``InvalidRideError`` that
    rejects it (its ``ride_id`` set).

    Raises ``InvalidRideError`` when the model's output is not one prediction per ride: no ride
    of the call can then be matched to its prediction. Any other exception of the model
    propagates (a bug, or a model that raises: the input is retried).
    """
    output = model.predict([ride_features(event.ride) for event in events])
    predictions = predictions_for(output, len(events))
    results: list[PredictionMessage | InvalidRideError] = []
    for event, prediction in zip(events, predictions, strict=True):
        try:
            results.append(
                build_prediction_message(model.name, model.version, event.ride_id, prediction)
            )
        except InvalidRideError as error:
            results.append(error)
    return results
