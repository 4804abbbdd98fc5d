"""Load an MLflow model into memory and say which version it is: the loaders.

In the shape of Apache Beam's ``ModelHandler`` (``apache_beam/ml/inference/base.py``): a loader
(``LoadModel``, Beam's ``load_model``) takes a URI and returns a ``LoadedModel``, which predicts
a batch of rows (``predict``, Beam's ``run_inference``) and names its ``version``. The holder
(``model_holder``) keeps one and loads the next version's pinned URI when the alias moves
(Beam's ``update_model_path``).

``load_model`` reads a model in MLflow's sklearn flavour, pickled or cloudpickled, at a local
path or on ``gs://``, directly (``MLmodel`` and the pickle, into memory), and every other model
through MLflow. Bypassing ``mlflow.pyfunc`` saves the MLflow import (1.2 to 1.3 s of a cold
start) and about 50 MiB, and keeps the feature dicts as they are (pyfunc would turn them into a
DataFrame, which a ``DictVectorizer`` cannot read): docs/speed.md, item 2. MLflow's pickle
switch (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``) holds on every path (docs/models.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from ride_predictor.fast_path import Predictor, sklearn_predictor
from ride_predictor.redaction import redact_credentials
from ride_predictor.registry import derive_version, resolve_once

logger = logging.getLogger("ride_predictor.model_loader")


@dataclass(frozen=True)
class LoadedModel:
    """A model in memory, with the identity that goes into every prediction message.

    ``predict`` takes a batch of feature dicts and returns one prediction per row (checked by
    the caller: ``inference.predict_rides``).
    """

    name: str
    version: str
    source_uri: str
    flavor: str
    predict: Predictor


class LoadModel(Protocol):
    """A loader: ``model_uri`` in, the model in memory out, labelled ``model_name`` and its
    version (``version_override`` when set). Raises on any failure; the caller retries."""

    def __call__(
        self, model_uri: str, model_name: str, version_override: str | None
    ) -> LoadedModel: ...


# Serialisation formats of MLflow's sklearn flavour that ``load_model`` reads without MLflow.
_PICKLE_FORMATS = ("cloudpickle", "pickle")
# MLflow's switch on every loader that unpickles a model
# (``mlflow.environment_variables.MLFLOW_ALLOW_PICKLE_DESERIALIZATION``; unset, MLflow allows it).
# Named here rather than imported: importing MLflow to read it would cost the direct path the
# second it exists to save (tests/test_pickle_switch.py pins the name and the default to MLflow's).
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


def _mlflow_allows_unpickling(switch: str | None) -> bool:
    """Whether MLflow reads the switch's raw value as allowing (``_BooleanEnvironmentVariable``:
    unset is its default, true; ``true`` and ``1`` in any case are true; all else is not)."""
    return switch is None or switch.lower() in ("true", "1")


def _read_file(model_uri: str, name: str) -> bytes | None:
    """Bytes of ``name`` in the model directory, when the URI is a plain local path or
    ``gs://``; None for every other kind of URI (``runs:/``, ``models:/``, ``file:``, ``s3://``,
    ...: MLflow then does the work)."""
    scheme = urlsplit(model_uri).scheme
    if scheme == "gs":
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage

        bucket, _, prefix = model_uri.removeprefix("gs://").partition("/")
        try:
            client = storage.Client()
        except DefaultCredentialsError:  # as MLflow does: public buckets need no credentials
            client = storage.Client.create_anonymous_client()
        blob_name = f"{prefix.rstrip('/')}/{name}" if prefix.strip("/") else name
        data: bytes = client.bucket(bucket).blob(blob_name).download_as_bytes()
        return data
    if scheme:
        return None
    return (Path(model_uri) / name).read_bytes()


def _load_directly(model_uri: str) -> tuple[dict[str, Any], Any] | None:
    """(MLmodel, model) read without MLflow, or None when MLflow must load this model.

    Importing MLflow costs more than a second of a cold start and about 50 MiB (see
    docs/speed.md); a model in MLflow's sklearn flavour, pickled or cloudpickled, with no code
    paths, at a local path or on ``gs://``, needs none of it: read ``MLmodel`` (YAML), then
    unpickle the file it names, as ``mlflow.sklearn`` does. Only those two files are fetched,
    into memory: nothing is written to (in-memory) ``/tmp``.

    Only where MLflow would unpickle too: ``PICKLE_SWITCH`` unset (MLflow's default allows it) or
    ``true``/``1`` in any case (what MLflow reads as true). Any other value, ``false`` and ``0``
    or one MLflow does not know, leaves the model to MLflow, which applies its own check (its
    parsing of the value, its refusal), so a refusal here is exactly MLflow's.
    """
    if not _mlflow_allows_unpickling(os.environ.get(PICKLE_SWITCH)):
        return None
    mlmodel_bytes = _read_file(model_uri, "MLmodel")
    if mlmodel_bytes is None:
        return None
    import yaml

    mlmodel = yaml.safe_load(mlmodel_bytes)
    sklearn_conf = (mlmodel.get("flavors") or {}).get("sklearn") or {}
    if (
        sklearn_conf.get("serialization_format") not in _PICKLE_FORMATS
        or sklearn_conf.get("code")
        or not sklearn_conf.get("pickled_model")
    ):
        return None
    model_bytes = _read_file(model_uri, sklearn_conf["pickled_model"])
    assert model_bytes is not None
    if sklearn_conf["serialization_format"] == "cloudpickle":
        import cloudpickle

        return mlmodel, cloudpickle.loads(model_bytes)
    import pickle

    # The model store is trusted as MLflow trusts it: see docs/models.md, "Model format".
    return mlmodel, pickle.loads(model_bytes)  # noqa: S301


def _load_with_mlflow(model_uri: str) -> tuple[str | None, str | None, str, Predictor]:
    """Download with MLflow to a private temporary folder, load, then delete the folder.

    On Cloud Functions ``/tmp`` is in memory, so the downloaded copy would otherwise double the
    model's memory footprint for the life of the instance.
    """
    import mlflow.artifacts
    from mlflow.models import Model

    download_dir = tempfile.mkdtemp(prefix="model-")
    try:
        local_path = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=download_dir
        )
        mlmodel = Model.load(local_path)
        if "sklearn" in mlmodel.flavors:
            import mlflow.sklearn

            # The sklearn flavour takes the feature dicts as they are; pyfunc's input
            # conversion would turn them into a DataFrame, which a DictVectorizer cannot read.
            sklearn_model = mlflow.sklearn.load_model(local_path)
            flavor, predict = "sklearn", sklearn_predictor(sklearn_model)
        else:
            import mlflow.pyfunc

            flavor, predict = "python_function", mlflow.pyfunc.load_model(local_path).predict
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)
    return mlmodel.run_id, mlmodel.model_uuid, flavor, predict


def load_model(model_uri: str, model_name: str, version_override: str | None) -> LoadedModel:
    """Load ``model_uri``: directly when ``_load_directly`` can, else through MLflow.

    A URI that moves (an alias, ``latest``, a stage) is resolved once, to the version it names
    now, and that version is loaded: the label always names the model that was loaded.
    """
    started = time.perf_counter()
    model_uri, _ = resolve_once(model_uri)
    direct = _load_directly(model_uri)
    if direct is not None:
        mlmodel, sklearn_model = direct
        run_id, model_uuid = mlmodel.get("run_id"), mlmodel.get("model_uuid")
        flavor, predict = "sklearn", sklearn_predictor(sklearn_model)
    else:
        run_id, model_uuid, flavor, predict = _load_with_mlflow(model_uri)
    loaded = LoadedModel(
        name=model_name,
        version=derive_version(model_uri, run_id, model_uuid, version_override),
        source_uri=model_uri,
        flavor=flavor,
        predict=predict,
    )
    logger.info(
        "model loaded",
        extra={
            "fields": {
                "model_uri": redact_credentials(model_uri),
                "model_version": loaded.version,
                "flavor": flavor,
                "mlflow": direct is None,
                "load_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        },
    )
    return loaded
