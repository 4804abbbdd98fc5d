"""ride_predictor.fast_path: in use for the course model, and the pipeline's very floats.

Two separate questions, so that neither answer hides the other: does a loaded course model
really predict through ``linear_predictor`` (the load-time check falls back to the pipeline
when the fast path disagrees, which would otherwise pass every comparison), and does
``linear_predictor`` itself give exactly ``pipeline.predict``'s floats.
"""

from __future__ import annotations

import inspect
import random
from typing import Any

import pytest

from ride_predictor.fast_path import linear_predictor, sklearn_predictor
from ride_predictor.loaders import LoadedModel, load_model
from tests.conftest import ModelFixture


def _random_features(count: int, seed: int) -> list[dict[str, Any]]:
    """Feature dicts over known and unknown zone pairs, float and integer distances."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        distance = rng.choice(
            [rng.random() * 40, rng.randint(0, 200), 0.0, 1e-300, 98765.4321, 2**53 + 1]
        )
        rows.append(
            {"PU_DO": f"{rng.randint(1, 270)}_{rng.randint(1, 270)}", "trip_distance": distance}
        )
    rows += [{"trip_distance": 2.5, "PU_DO": "1_2"}, {}, {"PU_DO": "1_2"}, {"trip_distance": 3}]
    return rows


def _pipeline_floats(pipeline: Any, rows: list[dict[str, Any]]) -> list[float]:
    return [float(value) for value in pipeline.predict(rows)]


def _assert_uses_the_fast_path(loaded: LoadedModel, pipeline: Any) -> None:
    """``loaded.predict`` is the closure ``linear_predictor`` builds, not a pipeline's method.

    (Comparing it with ``pipeline.predict`` proves nothing: the loaded model is an unpickled
    copy, so its bound ``predict`` is never equal to the fixture's.)
    """
    fast = linear_predictor(pipeline)
    assert fast is not None
    assert not inspect.ismethod(loaded.predict), f"a bound method: {loaded.predict!r}"
    assert getattr(loaded.predict, "__code__", None) is fast.__code__, loaded.predict


@pytest.mark.parametrize("load_path", ["direct", "mlflow"])
def test_the_loaded_course_model_predicts_through_the_fast_path_without_a_warning(
    test_model: ModelFixture, json_logs: list[dict[str, Any]], load_path: str
) -> None:
    # A local path is read without MLflow; a runs:/ URI goes through MLflow's sklearn flavour.
    uri = test_model.path if load_path == "direct" else f"runs:/{test_model.logged.run_id}/model"

    loaded = load_model(uri, "m", None)

    _assert_uses_the_fast_path(loaded, test_model.pipeline)
    assert [line for line in json_logs if line["severity"] != "INFO"] == []
    rows = _random_features(50_000, seed=11)
    # Bit for bit, not approximately: the fast path is only allowed if it is exact.
    assert loaded.predict(rows) == _pipeline_floats(test_model.pipeline, rows)


def test_a_skops_model_predicts_through_the_fast_path(skops_model: ModelFixture) -> None:
    _assert_uses_the_fast_path(load_model(skops_model.path, "m", None), skops_model.pipeline)


def test_linear_predictor_gives_the_pipelines_very_floats(trained: Any) -> None:
    # No load and no load-time check: the fast path itself against the fitted pipeline.
    fast = linear_predictor(trained.pipeline)
    assert fast is not None
    rows = _random_features(50_000, seed=13)

    assert list(fast(rows)) == _pipeline_floats(trained.pipeline, rows)


def test_linear_predictor_adds_many_terms_in_the_pipelines_order() -> None:
    # Three or more terms: float addition is not associative, so the order of the sum shows.
    # Keys are given in another order than the vectorizer's (sorted) columns.
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    rng = random.Random(14)

    def row() -> dict[str, Any]:
        return {
            "zone": f"z{rng.randint(1, 40)}",
            "distance": rng.random() * 30,
            "b_hour": rng.randint(0, 23),
            "a_weight": rng.random() * 1e6,
            "kind": rng.choice(["cash", "card", "app"]),
        }

    train = [row() for _ in range(2000)]
    pipeline = make_pipeline(DictVectorizer(), LinearRegression()).fit(
        train, [rng.random() * 60 for _ in train]
    )
    fast = linear_predictor(pipeline)
    assert fast is not None
    rows = [row() for _ in range(20_000)]

    assert list(fast(rows)) == _pipeline_floats(pipeline, rows)


def test_models_other_than_the_course_pipeline_are_called_as_they_are(
    trained: Any,
) -> None:
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    rows = _random_features(500, seed=12)
    ridge = make_pipeline(DictVectorizer(), Ridge()).fit(rows, [1.0] * len(rows))
    dense = make_pipeline(DictVectorizer(sparse=False), trained.pipeline[-1])
    assert linear_predictor(ridge) is None
    assert linear_predictor(dense) is None
    assert sklearn_predictor(ridge) == ridge.predict
    # Values the fast path does not handle go to the pipeline, which decides (here: refuses).
    fast = sklearn_predictor(trained.pipeline)
    with pytest.raises(ValueError, match="NaN"):
        fast([{"PU_DO": "1_2", "trip_distance": None}])
