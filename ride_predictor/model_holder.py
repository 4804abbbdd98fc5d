"""Hold one model per process: loaded on first use, shared by all threads, refreshed in the
background when its ``models:/`` URI moves.

``ModelHolder.get()`` is what a request calls: the first call starts the download and load in a
background thread, concurrent callers wait for that same load (one load, however many requests
arrive cold), and every caller waits at most ``load_timeout_seconds`` so a slow or unreachable
model store can never hold a request past the function's timeout. A failed load is forgotten,
so the next request tries again. ``get()`` only ever reads: it starts no refresh.

When ``MODEL_URI`` names a model that moves (``models:/<name>@<alias>``, ``models:/<name>/latest``
or a stage), the refresh (``refresh_work``, a ``PeriodicWork``) falls due every
``refresh_seconds`` after the load; the service starts it when due, after a message. It
re-resolves the URI, loads a new version beside the current one and swaps it in with one
assignment, so each call of ``get()`` hands out exactly one model; a failed refresh logs one
ERROR and leaves the current model serving until the next period (see docs/models.md,
"Rolling out a new model").
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError

from ride_predictor.background import PeriodicWork
from ride_predictor.errors import ModelLoadError
from ride_predictor.loaders import LoadedModel, LoadModel, load_model
from ride_predictor.redaction import redact_credentials
from ride_predictor.registry import is_movable, registered_model_version, resolve_once
from ride_predictor.settings import CoreSettings

logger = logging.getLogger("ride_predictor.model_loader")

# Longest a refresh waits, after a swap, for the requests still using the old model to finish
# before the collection that frees it: more than a request may take (the function's timeout).
_RELEASE_WAIT_SECONDS = 120.0


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


class ModelHolder:
    """Holds one model per process: loaded on first use, shared by all threads, and replaced
    in the background when a moving ``models:/`` URI names a new version."""

    def __init__(
        self,
        model_uri: str,
        model_name: str,
        version_override: str | None = None,
        load_timeout_seconds: float = 30.0,
        refresh_seconds: float = 0.0,
        load: LoadModel = load_model,
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
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._pending: Future[LoadedModel] | None = None
        # Due refresh_seconds after the first load, then after each refresh; never without one.
        self.refresh_work = PeriodicWork("model-refresh", self.refresh, self.refresh_seconds, clock)

    @classmethod
    def from_settings(cls, settings: CoreSettings) -> ModelHolder:
        """The holder both clouds deploy: ``MODEL_URI``, ``MODEL_NAME``, ``MODEL_VERSION``,
        ``MODEL_LOAD_TIMEOUT_SECONDS`` and ``MODEL_REFRESH_SECONDS`` (nothing is loaded yet)."""
        return cls(
            settings.model_uri,
            settings.model_name,
            settings.model_version,
            load_timeout_seconds=settings.model_load_timeout_seconds,
            refresh_seconds=settings.model_refresh_seconds,
        )

    @property
    def loaded(self) -> LoadedModel | None:
        """The model if it is in memory, without triggering a load."""
        return self._model

    @property
    def refreshing(self) -> bool:
        """Whether a background refresh is under way."""
        return self.refresh_work.running

    @property
    def refreshes(self) -> bool:
        """Whether this holder follows its URI to new versions."""
        return self.refresh_seconds > 0

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
            self.refresh_work.schedule()
        pending.set_result(model)

    def refresh(self) -> None:
        """Resolve the URI; load and swap in the version it names if that is new.

        Blocks for a whole load, so it belongs on a background thread: ``refresh_work`` runs it
        when due. Before the first load it does nothing (that load resolves the URI itself).
        Never raises: a failure (tracking server down, artifacts missing, a model that does not
        load) is one ERROR line, and the current model keeps serving until the next period.
        """
        current = self._model
        if current is None:
            return
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
