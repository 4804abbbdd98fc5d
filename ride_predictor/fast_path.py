"""The exact linear fast path: the course's pipeline predicted in pure Python, same floats.

The course's model is ``DictVectorizer`` (sparse) followed by ``LinearRegression``. Calling the
pipeline costs about 180 µs per call (input validation, a sparse matrix, a matrix product)
where a dictionary lookup per feature costs about 1 µs; ``sklearn_predictor`` uses the fast path
only when ``linear_predictor`` applies to the model and gives the pipeline's very floats on a
sample of rows at load. docs/speed.md says what it saves under each billing mode;
tests/test_fast_path.py pins it to the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("ride_predictor.model_loader")

# A model's predict: feature dicts in, one prediction per row out.
Predictor = Callable[[Sequence[dict[str, Any]]], Any]
# Rows compared between the linear fast path and the pipeline before the fast path is trusted.
_FAST_PATH_CHECK_ROWS = 512


def linear_predictor(model: Any) -> Predictor | None:
    """A pure-Python ``predict`` for the course's pipeline, or None for any other model.

    The course's model is ``DictVectorizer`` (sparse) followed by ``LinearRegression``: a
    prediction is the intercept plus, for every known feature of the row, value times weight.
    Calling the pipeline costs about 250 µs per call (input validation, a sparse matrix, a
    matrix product) where a dictionary lookup per feature costs about 1 µs (see
    docs/speed.md). The arithmetic is done exactly as SciPy's sparse product does it (terms in
    column order, summed from 0.0, then the intercept added), so the results are the same
    floats; ``load_model`` still checks that on this platform before using it.
    Rows with values other than text or numbers go to the pipeline.
    """
    import numpy as np
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    if type(model) is not Pipeline or len(model.steps) != 2:
        return None
    (_, vectorizer), (_, regression) = model.steps
    if type(vectorizer) is not DictVectorizer or type(regression) is not LinearRegression:
        return None
    coefficients = getattr(regression, "coef_", None)
    intercept = getattr(regression, "intercept_", None)
    if (
        not vectorizer.sparse
        or np.dtype(vectorizer.dtype) != np.float64
        or coefficients is None
        or coefficients.ndim != 1
        or coefficients.dtype.kind != "f"
        or intercept is None
        or getattr(intercept, "ndim", 0) != 0
    ):
        return None
    # The vectorizer's own feature -> column dict and the weights as Python floats (the same
    # floats as indexing the array one by one). Nothing per feature is built: 60,000 new
    # tuples would cost ~90 ms of the cold start, mostly in garbage collections.
    columns = vectorizer.vocabulary_
    weights = coefficients.tolist()
    separator = vectorizer.separator
    bias = float(intercept)
    fallback: Predictor = model.predict

    def predict(rows: Sequence[dict[str, Any]]) -> Sequence[float]:
        predictions = []
        lookup = columns.get
        for row in rows:
            # (column, contribution) of the row's known features; the column orders the terms
            # as the sparse product adds them.
            first: tuple[int, float] | None = None
            more: list[tuple[int, float]] | None = None
            for key, value in row.items():
                if isinstance(value, str):
                    column = lookup(f"{key}{separator}{value}")
                    if column is None:
                        continue
                    term = (column, weights[column])  # one-hot: 1.0 times the weight
                elif isinstance(value, int | float):
                    column = lookup(key)
                    if column is None:
                        continue
                    term = (column, float(value) * weights[column])
                else:
                    pipeline_output: Sequence[float] = fallback(rows)
                    return pipeline_output
                if first is None:
                    first = term
                elif more is None:
                    more = [first, term]
                else:
                    more.append(term)
            total = 0.0
            if more is not None:
                for _column, contribution in sorted(more):
                    total += contribution
            elif first is not None:
                total += first[1]
            predictions.append(total + bias)
        return predictions

    return predict


def _check_rows(model: Any) -> list[dict[str, Any]]:
    """Rows over the model's own vocabulary, to compare the fast path with the pipeline."""
    vectorizer = model.steps[0][1]
    names = list(vectorizer.vocabulary_)  # a fixed order; sorting 60,000 names costs 15 ms
    step = max(1, len(names) // _FAST_PATH_CHECK_ROWS)
    numeric = [name for name in names if vectorizer.separator not in name]
    rows = []
    for index, name in enumerate(names[::step]):
        key, separator, value = name.partition(vectorizer.separator)
        row: dict[str, Any] = {key: value} if separator else {}
        for offset, numeric_name in enumerate(numeric):
            row[numeric_name] = ((index * 7919 + offset * 104729) % 100_003) / 997.0
        rows.append(row)
    rows.append({})  # no known feature: the intercept alone
    return rows


def sklearn_predictor(model: Any) -> Predictor:
    """The fastest exact way to call a scikit-learn model: the linear fast path when it
    applies and gives the pipeline's very floats on this platform, else ``model.predict``."""
    pipeline: Predictor = model.predict
    fast = linear_predictor(model)
    if fast is None:
        return pipeline
    try:
        rows = _check_rows(model)
        agrees = list(fast(rows)) == [float(value) for value in pipeline(rows)]
    except Exception as error:  # the check must never stop a model from loading
        logger.warning("linear fast path not checked (%r); not using it", error)
        return pipeline
    if not agrees:
        logger.warning("linear fast path disagrees with the pipeline here; not using it")
        return pipeline
    return fast
