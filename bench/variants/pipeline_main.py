"""The project with the pipeline's own ``predict`` instead of the linear fast path (bench only).

``main`` as deployed, except that the loader hands out ``pipeline.predict`` for a scikit-learn
model: what the function costs without ``ride_predictor.fast_path`` (``bench.fast_path``).
"""

from typing import Any

from ride_predictor import loaders


def _pipeline_predict(model: Any) -> Any:
    return model.predict


loaders.sklearn_predictor = _pipeline_predict

from main import predict_duration  # noqa: E402

__all__ = ["predict_duration"]
