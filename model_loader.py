"""Load an MLflow model lazily, once per process, say which version it is, and follow an alias.

``ModelLoader.get()`` is what the function calls on every request: the first call starts the
download and load in a background thread, concurrent callers wait for that same load (one load,
however many requests arrive cold), and every caller waits at most ``load_timeout_seconds`` so a
slow or unreachable model store can never hold a request past the function's timeout. A failed
load is forgotten, so the next request tries again.

When ``MODEL_URI`` names a model that moves (``models:/<name>@<alias>``, ``models:/<name>/latest``
or a stage), a warm loader re-resolves it every ``refresh_seconds``: the first ``get()`` after
the period starts the check in a background thread and returns the current model at once. A
new version is loaded beside the current one and swapped in with one assignment, so each call
of ``get()`` hands out exactly one model; a failed refresh logs one ERROR and leaves the current
model serving until the next period (see docs/models.md, "Rolling out a new model").
"""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, MutableMapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("ride_predictor.model_loader")

# models:/<name>/<version or stage or "latest">[/sub/path] and models:/<name>@<alias>[/sub/path]
_REGISTERED_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))")

Predictor = Callable[[Sequence[dict[str, Any]]], Sequence[float]]


class ModelLoadError(RuntimeError):
    """The model could not be loaded yet (a transient failure: the caller should retry)."""


# The user-info of a URI (``scheme://user:password@``: everything up to the authority's last
# ``@``) and a query parameter (``?name=value`` or ``&name=value``, also in a URL's path-only
# form, as urllib3 quotes it). A backslash ends a value so that an escaped quote in JSON text
# stays escaped.
_USER_INFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s'\"<>\\]*@")
_QUERY_PARAMETER = re.compile(r"(?P<head>[?&](?P<name>[^=&#?\s'\"<>\\]+)=)[^&#\s'\"<>\\]+")
# Parameter names that hold a credential, as a whole name or as one of its parts (split at
# ``-``, ``_`` and ``.``): access_token, X-Amz-Signature, X-Goog-Credential, sig, api_key, ...
_CREDENTIAL_WORDS = frozenset(
    [
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "pass",
        "sig",
        "signature",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "key",
        "apikey",
        "code",
        "sas",
        "session",
        "jwt",
        "assertion",
    ]
)
_CREDENTIAL_SUFFIXES = ("token", "key", "secret", "password")
REDACTED = "***"


def _holds_a_credential(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(_CREDENTIAL_SUFFIXES) or any(
        part in _CREDENTIAL_WORDS for part in re.split(r"[-_.]", lowered)
    )


def redact_credentials(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***``: user-info
    (``http://user:secret@host`` becomes ``http://***@host``) and the values of query
    parameters named like a credential (``?access_token=***``, ``X-Amz-Signature=***``).

    Applied to every URI and every error text that may quote one before it is logged or raised
    (a tracking server's failing request quotes its URL). Cheap on text without one.
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USER_INFO.sub(rf"\g<scheme>{REDACTED}@", text)
    return _QUERY_PARAMETER.sub(
        lambda match: (
            f"{match['head']}{REDACTED}" if _holds_a_credential(match["name"]) else match[0]
        ),
        text,
    )


@dataclass(frozen=True)
class LoadedModel:
    """A model in memory, with the identity that goes into every prediction message."""

    name: str
    version: str
    source_uri: str
    flavor: str
    predict: Predictor


def is_movable(model_uri: str) -> bool:
    """Whether ``model_uri`` is a registry URI whose version can change under it: an alias,
    ``latest`` or a stage (``models:/<name>/<number>`` and every other URI name a fixed model)."""
    match = _REGISTERED_URI.match(model_uri)
    if match is None:
        return False
    return match["alias"] is not None or not match["ref"].isdigit()


def pinned_uri(model_uri: str, version: str) -> str:
    """``models:/<name>@<alias>[/sub]`` (or ``/latest``, a stage) as ``models:/<name>/<N>[/sub]``.

    Loading the pinned URI makes the version that labels the model the one that was downloaded:
    the alias is read once, not once by MLflow's download and again for the label.
    """
    match = _REGISTERED_URI.match(model_uri)
    if match is None:
        raise ValueError(f"{model_uri} is not a models:/ registry URI")
    return f"models:/{match['name']}/{version}{model_uri[match.end() :]}"


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


def resolve_once(
    model_uri: str, resolve: Callable[[str], str | None] = registered_model_version
) -> tuple[str, str | None]:
    """(the URI to load now, its registry version): a moving registry URI is resolved once, to
    the version it names now, and pinned to it; any other URI is returned as it is, with None."""
    if not is_movable(model_uri):
        return model_uri, None
    version = resolve(model_uri)
    if version is None:
        raise ModelLoadError(f"{model_uri} names no registered model version")
    return pinned_uri(model_uri, version), version


def derive_version(
    model_uri: str, run_id: str | None, model_uuid: str | None, override: str | None
) -> str:
    """Pick the output's ``version`` by ``docs/design.md``'s order of precedence."""
    for candidate in (override, registered_model_version(model_uri), run_id, model_uuid):
        if candidate:
            return str(candidate)
    raise ModelLoadError(f"{model_uri} has no registry version, run_id or model_uuid")


# Serialisation formats of MLflow's sklearn flavour that ``load_model`` reads without MLflow.
_PICKLE_FORMATS = ("cloudpickle", "pickle")
# MLflow's switch on every loader that unpickles a model
# (``mlflow.environment_variables.MLFLOW_ALLOW_PICKLE_DESERIALIZATION``; unset, MLflow allows it).
# Named here rather than imported: importing MLflow to read it would cost the direct path the
# second it exists to save (tests/test_pickle_switch.py pins the name and the default to MLflow's).
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
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
    fallback = model.predict

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
                    return fallback(rows)
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
    fast = linear_predictor(model)
    if fast is None:
        return model.predict
    try:
        rows = _check_rows(model)
        agrees = list(fast(rows)) == [float(value) for value in model.predict(rows)]
    except Exception as error:  # the check must never stop a model from loading
        logger.warning("linear fast path not checked (%r); not using it", error)
        return model.predict
    if not agrees:
        logger.warning("linear fast path disagrees with the pipeline here; not using it")
        return model.predict
    return fast


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
        return client.bucket(bucket).blob(blob_name).download_as_bytes()
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

    Only while ``PICKLE_SWITCH`` is unset, where MLflow's default allows unpickling: set to any
    value, MLflow loads the model and applies its own check to it (its parsing of the value,
    its refusal), so a refusal here is exactly MLflow's.
    """
    if PICKLE_SWITCH in os.environ:
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


# Longest a refresh waits, after a swap, for the requests still using the old model to finish
# before the collection that frees it: more than a request may take (the function's timeout).
_RELEASE_WAIT_SECONDS = 120.0
# What MLflow's HTTP client does by default on a failed call to the tracking server: 7 retries
# with exponential backoff (factor 2, so sleeps of up to a minute each) and 120 s per request,
# minutes in all. A refresh stuck that long would also delay the one after the server comes back,
# so these bounds apply unless the deployment sets MLflow's own variables (docs/models.md).
MLFLOW_HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def bound_mlflow_http_requests(environ: MutableMapping[str, str]) -> None:
    """Set ``MLFLOW_HTTP_BOUNDS`` in ``environ`` (the process's environment, where MLflow reads
    them on every request) for each variable the deployment left unset."""
    for name, value in MLFLOW_HTTP_BOUNDS.items():
        environ.setdefault(name, value)


def _refreeze_after_swap() -> None:
    """Free what the swapped-out model leaves behind, then freeze again.

    ``gc.freeze()`` hides every object from the cyclic collector, so a swapped-out model with
    reference cycles would never be freed. Unfreezing puts all frozen objects back in the
    oldest generation; one full collection frees the garbage among them, including an older
    model that a request still held at the previous swap; what survives is frozen again.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelLoader:
    """Holds one model per process: loaded on first use, shared by all threads, and replaced
    in the background when a moving ``models:/`` URI names a new version."""

    def __init__(
        self,
        model_uri: str,
        model_name: str,
        version_override: str | None = None,
        load_timeout_seconds: float = 30.0,
        refresh_seconds: float = 0.0,
        load: Callable[[str, str, str | None], LoadedModel] = load_model,
        resolve: Callable[[str], str | None] = registered_model_version,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_uri = model_uri
        self.model_name = model_name
        self.version_override = version_override
        self.load_timeout_seconds = load_timeout_seconds
        # A fixed label on a model that changes would lie: MODEL_VERSION turns refresh off.
        self.refresh_seconds = (
            refresh_seconds if is_movable(model_uri) and version_override is None else 0.0
        )
        self._load = load
        self._resolve = resolve
        self._clock = clock
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._pending: Future[LoadedModel] | None = None
        # When the next refresh is due (clock time); None while there is no model, or no refresh.
        self._refresh_due: float | None = None
        self._refreshing = False

    @property
    def loaded(self) -> LoadedModel | None:
        """The model if it is in memory, without triggering a load."""
        return self._model

    @property
    def refreshing(self) -> bool:
        """Whether a background refresh is under way."""
        return self._refreshing

    @property
    def refreshes(self) -> bool:
        """Whether this loader follows its URI to new versions."""
        return self.refresh_seconds > 0

    def get(self) -> LoadedModel:
        """Return the model, loading it on first use; raise ``ModelLoadError`` if not ready.

        Once a refresh is due, the call starts it in the background and returns the current
        model without waiting: under Cloud Run's request-based billing the CPU is throttled
        between requests, so a request is what gets a refresh going on an idle instance.
        """
        model = self._model
        if model is not None:
            due = self._refresh_due
            if due is not None and self._clock() >= due:
                self._start_refresh()
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
                f"model {redact_credentials(self.model_uri)} is still loading after "
                f"{self.load_timeout_seconds}s"
            ) from None

    def _load_into(self, pending: Future[LoadedModel]) -> None:
        try:
            uri, _ = resolve_once(self.model_uri, self._resolve)
            model = self._load(uri, self.model_name, self.version_override)
        except Exception as error:  # any failure is transient here: retried on next request
            # The error may quote a URL with its credentials (a tracking server's request): only
            # its redacted text goes on, never the error itself (its traceback would be logged).
            uri, reason = redact_credentials(self.model_uri), redact_credentials(repr(error))
            logger.error(
                "model load failed", extra={"fields": {"model_uri": uri, "reason": reason}}
            )
            with self._lock:
                self._pending = None
            pending.set_exception(ModelLoadError(f"cannot load model {uri}: {reason}"))
            return
        # The model and the libraries just imported stay for the life of the instance: move
        # them out of the garbage collector's sight. Its full collections otherwise walk them
        # all (about 140,000 objects) and stall a request for tens of milliseconds (see
        # docs/speed.md). No gc.collect() first: it would cost ~90 ms of the cold start to free
        # a few objects.
        gc.freeze()
        with self._lock:
            self._model = model
            self._pending = None
            if self.refreshes:
                self._refresh_due = self._clock() + self.refresh_seconds
        pending.set_result(model)

    def _start_refresh(self) -> None:
        """Start one background refresh, unless one runs already or another caller won."""
        with self._lock:
            due = self._refresh_due
            if self._refreshing or due is None or self._clock() < due:
                return
            self._refreshing = True
        threading.Thread(target=self._refresh, name="model-refresh", daemon=True).start()

    def _refresh(self) -> None:
        """Resolve the URI; load and swap in the version it names if that is new.

        Never raises: a failure (tracking server down, artifacts missing, a model that does not
        load) is one ERROR line, and the current model keeps serving until the next period.
        """
        current = self._model
        assert current is not None
        current_version = current.version
        # Set once no request holds the current model any more (it is then free to go).
        released = threading.Event()
        current_ref = weakref.ref(current, lambda _: released.set())
        del current
        started = time.perf_counter()
        try:
            uri, version = resolve_once(self.model_uri, self._resolve)
            if version == current_version:
                return
            model = self._load(uri, self.model_name, None)
            if model.version != version:  # the label must name what was loaded
                raise ModelLoadError(f"{uri} loaded as version {model.version!r}")
            with self._lock:
                self._model = model
            del model
            logger.info(
                "model swapped",
                extra={
                    "fields": {
                        "model_uri": redact_credentials(self.model_uri),
                        "from_version": current_version,
                        "model_version": version,
                        "load_ms": round((time.perf_counter() - started) * 1000, 1),
                    }
                },
            )
            # Requests that took the old model just before the swap still use it: collect once
            # they are done (or after a bound; what survives is freed by the next swap's).
            released.wait(timeout=_RELEASE_WAIT_SECONDS)
            del current_ref
            _refreeze_after_swap()
        except Exception as error:  # never lets a bad rollout take serving down
            logger.error(
                "model refresh failed: still serving the current version",
                extra={
                    "fields": {
                        "model_uri": redact_credentials(self.model_uri),
                        "model_version": current_version,
                        "reason": redact_credentials(repr(error)),
                    }
                },
            )
        finally:
            with self._lock:
                self._refreshing = False
                # The next period starts now: a refresh slower than the period starts no other
                # at once behind it.
                self._refresh_due = self._clock() + self.refresh_seconds
