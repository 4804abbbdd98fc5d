"""Load an MLflow model lazily, once per process, and say which version it is.

``ModelLoader.get()`` is what the function calls on every request: the first call starts the
download and load in a background thread, concurrent callers wait for that same load (one load,
however many requests arrive cold), and every caller waits at most ``load_timeout_seconds`` so a
slow or unreachable model store can never hold a request past the function's timeout. A failed
load is forgotten, so the next request tries again.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("ride_predictor.model_loader")

# models:/<name>/<version or stage or "latest">[/sub/path] and models:/<name>@<alias>[/sub/path]
_REGISTERED_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))")

Predictor = Callable[[Sequence[dict[str, Any]]], Sequence[float]]


class ModelLoadError(RuntimeError):
    """The model could not be loaded yet (a transient failure: the caller should retry)."""


@dataclass(frozen=True)
class LoadedModel:
    """A model in memory, with the identity that goes into every prediction message."""

    name: str
    version: str
    source_uri: str
    flavor: str
    predict: Predictor


def registered_model_version(model_uri: str) -> str | None:
    """Resolve the registry version a ``models:/`` URI names, or None for any other URI.

    A numeric version is returned as written; an alias, ``latest`` or a stage is resolved
    through the MLflow registry at ``MLFLOW_TRACKING_URI``. MLflow 3 logged-model URIs
    (``models:/m-<id>``) are not registered versions and give None.
    """
    match = _REGISTERED_URI.match(model_uri)
    if match is None:
        return None
    name, alias, ref = match["name"], match["alias"], match["ref"]
    if ref is not None and ref.isdigit():
        return ref

    from mlflow import MlflowClient

    client = MlflowClient()
    if alias is not None:
        return str(client.get_model_version_by_alias(name, alias).version)
    if ref is None:
        return None
    if ref.lower() == "latest":
        versions = client.search_model_versions(f"name='{name}'")
        return str(max(int(version.version) for version in versions)) if versions else None
    staged = client.get_latest_versions(name, stages=[ref])
    return str(staged[0].version) if staged else None


def derive_version(
    model_uri: str, run_id: str | None, model_uuid: str | None, override: str | None
) -> str:
    """Pick the output's ``version`` by ``DESIGN.md``'s order of precedence."""
    for candidate in (override, registered_model_version(model_uri), run_id, model_uuid):
        if candidate:
            return str(candidate)
    raise ModelLoadError(f"{model_uri} has no registry version, run_id or model_uuid")


def _predictor_for(local_path: str, flavors: dict[str, Any]) -> tuple[str, Predictor]:
    """Load the model's own flavour when it is scikit-learn, else its generic pyfunc."""
    if "sklearn" in flavors:
        import mlflow.sklearn

        # The sklearn flavour takes the feature dicts as they are; pyfunc's input
        # conversion would turn them into a DataFrame, which a DictVectorizer cannot read.
        sklearn_model = mlflow.sklearn.load_model(local_path)
        return "sklearn", sklearn_model.predict
    import mlflow.pyfunc

    return "python_function", mlflow.pyfunc.load_model(local_path).predict


def load_model(model_uri: str, model_name: str, version_override: str | None) -> LoadedModel:
    """Download ``model_uri`` to a private temporary folder, load it, then delete the folder.

    On Cloud Functions ``/tmp`` is in memory, so the downloaded copy would otherwise double the
    model's memory footprint for the life of the instance.
    """
    import mlflow.artifacts
    from mlflow.models import Model

    started = time.perf_counter()
    download_dir = tempfile.mkdtemp(prefix="model-")
    try:
        local_path = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=download_dir
        )
        mlmodel = Model.load(local_path)
        flavor, predict = _predictor_for(local_path, mlmodel.flavors)
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)
    loaded = LoadedModel(
        name=model_name,
        version=derive_version(model_uri, mlmodel.run_id, mlmodel.model_uuid, version_override),
        source_uri=model_uri,
        flavor=flavor,
        predict=predict,
    )
    logger.info(
        "model loaded",
        extra={
            "fields": {
                "model_uri": model_uri,
                "model_version": loaded.version,
                "flavor": flavor,
                "load_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        },
    )
    return loaded


class ModelLoader:
    """Holds one model per process: loaded on first use, shared by all threads."""

    def __init__(
        self,
        model_uri: str,
        model_name: str,
        version_override: str | None = None,
        load_timeout_seconds: float = 30.0,
        load: Callable[[str, str, str | None], LoadedModel] = load_model,
    ) -> None:
        self.model_uri = model_uri
        self.model_name = model_name
        self.version_override = version_override
        self.load_timeout_seconds = load_timeout_seconds
        self._load = load
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._pending: Future[LoadedModel] | None = None

    @property
    def loaded(self) -> LoadedModel | None:
        """The model if it is in memory, without triggering a load."""
        return self._model

    def get(self) -> LoadedModel:
        """Return the model, loading it on first use; raise ``ModelLoadError`` if not ready."""
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is not None:
                return self._model
            if self._pending is None:
                self._pending = Future()
                threading.Thread(
                    target=self._load_into, args=(self._pending,), name="model-load", daemon=True
                ).start()
            pending = self._pending
        try:
            return pending.result(timeout=self.load_timeout_seconds)
        except FutureTimeoutError:
            raise ModelLoadError(
                f"model {self.model_uri} is still loading after {self.load_timeout_seconds}s"
            ) from None

    def _load_into(self, pending: Future[LoadedModel]) -> None:
        try:
            model = self._load(self.model_uri, self.model_name, self.version_override)
        except Exception as error:  # any failure is transient here: retried on next request
            logger.error(
                "model load failed",
                extra={"fields": {"model_uri": self.model_uri, "reason": repr(error)}},
            )
            with self._lock:
                self._pending = None
            failure = ModelLoadError(f"cannot load model {self.model_uri}: {error!r}")
            failure.__cause__ = error
            pending.set_exception(failure)
            return
        with self._lock:
            self._model = model
            self._pending = None
        pending.set_result(model)
