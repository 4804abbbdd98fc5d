"""Refresh of a moving models:/ URI: background resolution, hot swap, rollback, bad rollouts.

Unit tests of ``model_holder.ModelHolder`` with an injected clock, resolver and loader (the
real registry and tracking server are in tests/test_rollout.py), and of ``main`` on top of it.
"""

from __future__ import annotations

import json
import threading
import tracemalloc
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import main
from devstack.processes import wait_until
from ride_predictor.errors import ModelLoadError
from ride_predictor.loaders import LoadedModel, load_model
from ride_predictor.model_holder import ModelHolder
from ride_predictor.registry import (
    MLFLOW_HTTP_BOUNDS,
    bound_mlflow_http_requests,
    is_movable,
    pinned_uri,
)
from ride_predictor.settings import InvalidSettingError
from tests.conftest import RecordingPublisher, pubsub_event_data

ALIAS_URI = "models:/ride-duration@champion"
SWAP_TIMEOUT_SECONDS = 30.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRegistry:
    """An alias that the test moves; every resolution is counted; it can be made to fail."""

    def __init__(self, version: str = "1") -> None:
        self.version = version
        self.failure: Exception | None = None
        self.resolutions: list[str] = []

    def resolve(self, uri: str) -> str | None:
        self.resolutions.append(uri)
        if self.failure is not None:
            raise self.failure
        return self.version


def constant_model(version: str, value: float | None = None) -> LoadedModel:
    """A model predicting ``value`` (default: its version as a number) for every ride."""
    prediction = float(version) if value is None else value
    return LoadedModel(
        name="m",
        version=version,
        source_uri=f"models:/ride-duration/{version}",
        flavor="test",
        predict=lambda rows: [prediction] * len(rows),
    )


class FakeStore:
    """Loads ``models:/<name>/<version>`` as ``constant_model(version)``; records each load."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.broken: set[str] = set()
        self.gate: threading.Event | None = None  # when set, loads wait for it

    def load(self, uri: str, name: str, version_override: str | None) -> LoadedModel:
        self.loads.append(uri)
        if self.gate is not None:
            assert self.gate.wait(timeout=60)
        version = uri.rsplit("/", 1)[1]
        if version in self.broken:
            raise OSError(f"artifacts of {uri} not found")
        return constant_model(version_override or version, float(version.isdigit() and version))


def make_loader(
    registry: FakeRegistry,
    store: FakeStore,
    clock: FakeClock,
    uri: str = ALIAS_URI,
    refresh_seconds: float = 60.0,
    **kwargs: Any,
) -> ModelHolder:
    return ModelHolder(
        uri,
        "m",
        refresh_seconds=refresh_seconds,
        load=store.load,
        resolve=registry.resolve,
        clock=clock,
        **kwargs,
    )


def a_request(loader: ModelHolder) -> LoadedModel:
    """What a request does with the holder: take the model, then (the service, after the
    message) start the background work that is due."""
    model = loader.get()
    loader.refresh_work.start_if_due()
    return model


def refreshed_once_more(loader: ModelHolder, registry: FakeRegistry, clock: FakeClock) -> None:
    """Let a refresh period pass, trigger the refresh with a request, wait until it is done."""
    resolutions = len(registry.resolutions)
    clock.advance(loader.refresh_seconds)
    a_request(loader)
    wait_until(
        lambda: len(registry.resolutions) > resolutions and not loader.refreshing,
        "the refresh",
        SWAP_TIMEOUT_SECONDS,
    )


def messages(logs: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [line for line in logs if line["message"].startswith(text)]


@pytest.mark.parametrize(
    ("uri", "movable"),
    [
        ("models:/ride-duration@champion", True),
        ("models:/ride-duration/latest", True),
        ("models:/ride-duration/Production", True),
        ("models:/ride-duration@champion/sub/path", True),
        ("models:/ride-duration/3", False),
        ("models:/m-0123456789abcdef", False),
        ("gs://bucket/1/run/artifacts/model", False),
        ("runs:/abc/model", False),
        ("/tmp/model", False),
    ],
)
def test_which_uris_move(uri: str, movable: bool) -> None:
    assert is_movable(uri) is movable


def test_pinned_uri_keeps_the_sub_path() -> None:
    assert pinned_uri("models:/ride-duration@champion", "7") == "models:/ride-duration/7"
    assert pinned_uri("models:/ride-duration/latest/a/b", "7") == "models:/ride-duration/7/a/b"


def test_the_alias_is_resolved_once_and_that_version_loaded() -> None:
    registry, store, clock = FakeRegistry("4"), FakeStore(), FakeClock()
    loader = make_loader(registry, store, clock)

    model = loader.get()

    assert registry.resolutions == [ALIAS_URI]
    assert store.loads == ["models:/ride-duration/4"]
    assert model.version == "4"


def test_load_model_resolves_a_moving_uri_once_then_loads_that_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The label of a directly loaded alias is the version whose files were read, even when the
    alias moves between the download and the label."""
    import mlflow

    from ride_predictor import loaders

    resolutions: list[tuple[str, str]] = []
    versions = iter(["5", "6"])  # a second resolution would see the alias moved

    class MovingAliasClient:
        def get_model_version_by_alias(self, name: str, alias: str) -> Any:
            resolutions.append((name, alias))
            return type("ModelVersion", (), {"version": next(versions)})

    downloaded: list[str] = []

    def download(uri: str) -> tuple[str, str, str, Callable[..., Any]]:
        downloaded.append(uri)
        return "run", "uuid", "sklearn", lambda rows: [0.0] * len(rows)

    monkeypatch.setattr(mlflow, "MlflowClient", MovingAliasClient)
    monkeypatch.setattr(loaders, "_load_with_mlflow", download)

    loaded = load_model(ALIAS_URI, "m", None)

    assert downloaded == ["models:/ride-duration/5"]
    assert resolutions == [("ride-duration", "champion")]
    assert loaded.version == "5"


def test_a_request_after_the_period_starts_the_refresh_and_does_not_wait_for_it(
    json_logs: list[dict[str, Any]],
) -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    loader = make_loader(registry, store, clock)
    assert loader.get().version == "1"

    clock.advance(59)
    assert a_request(loader).version == "1"
    assert len(registry.resolutions) == 1  # not due yet: nothing resolved

    registry.version = "2"
    store.gate = threading.Event()  # the new version's load hangs until released
    clock.advance(1)
    answered: list[str] = []
    request = threading.Thread(target=lambda: answered.append(a_request(loader).version))
    request.start()
    request.join(timeout=SWAP_TIMEOUT_SECONDS)
    assert answered == ["1"]  # answered by the current version while the load hangs
    wait_until(lambda: store.loads[-1:] == ["models:/ride-duration/2"], "the load of v2")
    assert loader.get().version == "1"

    store.gate.set()
    wait_until(lambda: not loader.refreshing, "the swap", SWAP_TIMEOUT_SECONDS)
    assert loader.get().version == "2"
    (swap,) = messages(json_logs, "model swapped")
    assert swap["severity"] == "INFO"
    assert (swap["from_version"], swap["model_version"]) == ("1", "2")
    assert swap["load_ms"] >= 0
    assert len(registry.resolutions) == 2


def test_one_refresh_at_a_time_however_many_requests() -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    loader = make_loader(registry, store, clock)
    loader.get()
    registry.version = "2"
    store.gate = threading.Event()
    clock.advance(60)

    for _ in range(50):
        assert a_request(loader).version == "1"
    clock.advance(60)  # even a second period passing while the load hangs starts no other
    for _ in range(50):
        a_request(loader)
    store.gate.set()
    wait_until(lambda: not loader.refreshing, "the swap", SWAP_TIMEOUT_SECONDS)

    assert loader.get().version == "2"
    assert store.loads == ["models:/ride-duration/1", "models:/ride-duration/2"]
    assert len(registry.resolutions) == 2


def test_an_unchanged_alias_loads_nothing(json_logs: list[dict[str, Any]]) -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    loader = make_loader(registry, store, clock)
    first = loader.get()

    for _ in range(3):
        refreshed_once_more(loader, registry, clock)

    assert loader.get() is first
    assert store.loads == ["models:/ride-duration/1"]
    assert len(registry.resolutions) == 4
    assert messages(json_logs, "model swapped") == []


def test_a_refresh_called_directly_before_the_first_load_does_nothing_then_swaps() -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    loader = make_loader(registry, store, clock)

    loader.refresh()  # nothing loaded yet: the first load resolves the alias itself
    assert (loader.loaded, registry.resolutions, store.loads) == (None, [], [])

    assert loader.get().version == "1"
    registry.version = "2"
    loader.refresh()  # on the caller's thread, whatever the period
    assert loader.get().version == "2"
    assert store.loads == ["models:/ride-duration/1", "models:/ride-duration/2"]


def test_rollback_is_moving_the_alias_back(json_logs: list[dict[str, Any]]) -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    loader = make_loader(registry, store, clock)
    versions = [loader.get().version]
    for target in ("2", "1"):
        registry.version = target
        refreshed_once_more(loader, registry, clock)
        versions.append(loader.get().version)

    assert versions == ["1", "2", "1"]
    swaps = [(s["from_version"], s["model_version"]) for s in messages(json_logs, "model swapped")]
    assert swaps == [("1", "2"), ("2", "1")]


@pytest.mark.parametrize("failure", ["tracking server down", "artifacts missing"])
def test_a_failed_refresh_logs_one_error_keeps_serving_and_retries_next_period(
    failure: str, json_logs: list[dict[str, Any]]
) -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    loader = make_loader(registry, store, clock)
    loader.get()
    registry.version = "2"
    if failure == "tracking server down":
        registry.failure = ConnectionError("tracking server unreachable")
    else:
        store.broken.add("2")

    refreshed_once_more(loader, registry, clock)
    for _ in range(100):  # many requests in the same period: still the one ERROR
        assert a_request(loader).version == "1"

    (error,) = [line for line in json_logs if line["severity"] == "ERROR"]
    assert error["message"].startswith("model refresh failed")
    assert error["model_version"] == "1"
    assert error["model_uri"] == ALIAS_URI

    refreshed_once_more(loader, registry, clock)  # the next period tries again, fails again
    assert len([line for line in json_logs if line["severity"] == "ERROR"]) == 2

    registry.failure = None
    store.broken.clear()
    refreshed_once_more(loader, registry, clock)  # fixed: the next period picks it up
    assert loader.get().version == "2"


def test_a_model_whose_label_differs_from_the_resolved_version_is_not_swapped_in(
    json_logs: list[dict[str, Any]],
) -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    loader = make_loader(registry, store, clock)
    loader.get()
    registry.version = "2"
    loader._load = lambda uri, name, override: constant_model("3")

    refreshed_once_more(loader, registry, clock)

    assert loader.get().version == "1"
    (error,) = messages(json_logs, "model refresh failed")
    assert "'3'" in error["reason"]


@pytest.mark.parametrize(
    ("uri", "refresh_seconds", "override"),
    [
        (ALIAS_URI, 0.0, None),  # MODEL_REFRESH_SECONDS=0
        (ALIAS_URI, 60.0, "2024-06-rc1"),  # MODEL_VERSION set by hand
        ("models:/ride-duration/1", 60.0, None),  # a fixed version
        ("gs://bucket/1/run/artifacts/model", 60.0, None),  # not the registry
    ],
)
def test_refresh_is_off_for_fixed_models_zero_seconds_and_a_hand_set_version(
    uri: str, refresh_seconds: float, override: str | None
) -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    loader = make_loader(
        registry, store, clock, uri=uri, refresh_seconds=refresh_seconds, version_override=override
    )
    first = loader.get()
    registry.version = "2"
    resolutions = len(registry.resolutions)

    for _ in range(5):
        clock.advance(3600)
        assert a_request(loader) is first

    assert not loader.refreshes
    assert len(registry.resolutions) == resolutions
    assert not any(thread.name == "model-refresh" for thread in threading.enumerate())


def test_a_cold_instance_that_cannot_resolve_fails_as_before() -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    registry.failure = ConnectionError("tracking server unreachable")
    loader = make_loader(registry, store, clock)

    with pytest.raises(ModelLoadError, match="unreachable"):
        loader.get()
    registry.failure = None
    assert loader.get().version == "1"


class Payload:
    """A megabyte in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.data = bytearray(1024 * 1024)
        self.me = self


@pytest.mark.slow  # a dozen swaps under tracemalloc, with full collections: seconds
def test_swapped_out_models_are_freed_despite_gc_freeze() -> None:
    """Memory does not grow with the number of swaps, though every load is followed by
    ``gc.freeze()``, which hides the old models' reference cycles from the collector."""
    registry, clock = FakeRegistry("1"), FakeClock()
    payloads: list[weakref.ref[Payload]] = []

    def load(uri: str, name: str, override: str | None) -> LoadedModel:
        payload = Payload()
        payloads.append(weakref.ref(payload))
        version = uri.rsplit("/", 1)[1]
        return LoadedModel(name, version, uri, "test", lambda rows, payload=payload: [1.0])

    loader = ModelHolder(
        ALIAS_URI, "m", refresh_seconds=1, load=load, resolve=registry.resolve, clock=clock
    )
    loader.get()
    tracemalloc.start()
    try:
        traced_after: dict[int, int] = {}
        for swap in range(1, 13):
            registry.version = "2" if swap % 2 else "1"
            refreshed_once_more(loader, registry, clock)
            assert loader.get().version == registry.version
            traced_after[swap] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    assert len(payloads) == 13
    assert sum(ref() is not None for ref in payloads) == 1  # only the serving model's
    # 8 more swaps, 8 MiB more loaded: less than one payload more held.
    assert traced_after[12] - traced_after[4] < 1024 * 1024


def ride_batch(count: int, seed: int) -> list[dict[str, Any]]:
    return [
        {
            "ride": {"PULocationID": 1 + i % 50, "DOLocationID": 2, "trip_distance": 1.0},
            "ride_id": f"{seed}-{i}",
        }
        for i in range(count)
    ]


@pytest.mark.slow  # many threads' requests across many swaps: seconds
def test_every_ride_of_a_batch_is_predicted_and_labelled_by_one_version_across_swaps(
    recording_publisher: RecordingPublisher,
) -> None:
    """Requests on several threads while the alias flips back and forth: every output names the
    version whose prediction it carries, and every ride of a message has the same version."""
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    loader = make_loader(registry, store, clock, refresh_seconds=1)
    settings = main.Settings(model_uri=ALIAS_URI, project_id="p", model_name="m")
    service = main.PredictionService(settings, loader, recording_publisher)
    stop = threading.Event()
    results: list[Sequence[dict[str, Any]]] = []

    def send(worker: int) -> None:
        sent = 0
        while not stop.is_set():
            out = service.handle(pubsub_event_data(ride_batch(20, worker * 10_000 + sent)))
            assert isinstance(out, list)
            results.append(out)
            sent += 1
            # Pacing, so that the busy senders leave the refresh thread some of the GIL.
            stop.wait(0.001)

    loader.get()  # loaded before the first period starts, so that it is the test's to end
    workers = [threading.Thread(target=send, args=(worker,)) for worker in range(3)]
    for worker in workers:
        worker.start()
    try:
        for swap in range(1, 9):
            registry.version = "2" if swap % 2 else "1"
            refreshed_once_more(loader, registry, clock)
            seen = len(results)
            wait_until(lambda seen=seen: len(results) > seen + 4, "requests after the swap")
    finally:
        stop.set()
        for worker in workers:
            worker.join()

    versions_seen = set()
    for batch in results:
        (version,) = {message["version"] for message in batch}
        versions_seen.add(version)
        assert {m["prediction"]["ride_duration"] for m in batch} == {int(version)}
    assert versions_seen == {"1", "2"}
    published = recording_publisher.published
    for _, message in published:
        body = json.loads(message.data)
        assert message.attributes["model_version"] == body["version"]
        assert body["prediction"]["ride_duration"] == int(body["version"])


def test_settings_read_model_refresh_seconds() -> None:
    base = {"MODEL_URI": ALIAS_URI, "PROJECT_ID": "p"}
    assert main.settings_from_env(base).model_refresh_seconds == 60
    assert main.settings_from_env(base | {"MODEL_REFRESH_SECONDS": "0"}).model_refresh_seconds == 0
    refresh = main.settings_from_env(base | {"MODEL_REFRESH_SECONDS": "0.2"}).model_refresh_seconds
    assert refresh == 0.2
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(InvalidSettingError, match="MODEL_REFRESH_SECONDS"):
            main.settings_from_env(base | {"MODEL_REFRESH_SECONDS": bad})


def test_build_service_wires_the_refresh_period(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MLFLOW_HTTP_BOUNDS.items():  # build_service sets them when unset
        monkeypatch.setenv(name, value)
    settings = main.Settings(model_uri=ALIAS_URI, project_id="p", model_refresh_seconds=5)
    assert main.build_service(settings).model_holder.refresh_seconds == 5


def test_mlflow_http_calls_are_bounded_unless_the_deployment_says_otherwise() -> None:
    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
    bound_mlflow_http_requests(environ)
    assert environ == {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": MLFLOW_HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"],
    }


def test_the_lambda_follows_the_alias_too() -> None:
    """The Lambda shares the model holder: a batch after the period starts the refresh, is answered
    by the current version, and a later batch by the new one; every record of a batch by one."""
    import lambda_function
    from lambda_settings import LambdaSettings
    from tests.aws_events import InMemoryWriter, kinesis_event, ride

    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    loader = make_loader(registry, store, clock, refresh_seconds=60)
    writer = InMemoryWriter()
    settings = LambdaSettings(model_uri=ALIAS_URI, model_name="m")
    service = lambda_function.KinesisPredictionService(settings, loader, writer)

    def versions_written() -> list[str]:
        return [body["version"] for body in writer.json_to(settings.predictions_stream_name)]

    assert service.handle(kinesis_event(ride(1), ride(2))) == {"batchItemFailures": []}
    registry.version = "2"
    clock.advance(60)
    service.handle(kinesis_event(ride(3), ride(4)))  # starts the refresh, answered by v1
    wait_until(lambda: not loader.refreshing, "the refresh", SWAP_TIMEOUT_SECONDS)
    service.handle(kinesis_event(ride(5), ride(6)))

    assert versions_written() == ["1", "1", "1", "1", "2", "2"]


def test_lambda_settings_read_model_refresh_seconds() -> None:
    from lambda_settings import MissingSettingError, settings_from_env

    base = {"MODEL_URI": ALIAS_URI}
    assert settings_from_env(base).model_refresh_seconds == 60
    assert settings_from_env(base | {"MODEL_REFRESH_SECONDS": "0"}).model_refresh_seconds == 0
    with pytest.raises(MissingSettingError, match="MODEL_REFRESH_SECONDS"):
        settings_from_env(base | {"MODEL_REFRESH_SECONDS": "-5"})


def test_a_model_still_in_use_at_the_swap_is_freed_once_the_request_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ride_predictor import model_holder

    registry, clock = FakeRegistry("1"), FakeClock()
    payloads: dict[str, weakref.ref[Payload]] = {}

    def load(uri: str, name: str, override: str | None) -> LoadedModel:
        payload = Payload()
        version = uri.rsplit("/", 1)[1]
        payloads[version] = weakref.ref(payload)
        return LoadedModel(name, version, uri, "test", lambda rows, payload=payload: [1.0])

    loader = ModelHolder(
        ALIAS_URI, "m", refresh_seconds=1, load=load, resolve=registry.resolve, clock=clock
    )
    in_flight = loader.get()  # a request still predicting with version 1
    in_flight_ref = weakref.ref(in_flight)
    collections: list[bool] = []  # at each collection: was version 1 still in use?
    refreeze = model_holder._refreeze_after_swap

    def observed_refreeze() -> None:
        collections.append(in_flight_ref() is not None)
        refreeze()

    monkeypatch.setattr(model_holder, "_refreeze_after_swap", observed_refreeze)
    registry.version = "2"
    clock.advance(1)
    a_request(loader)
    wait_until(lambda: loader.get().version == "2", "the swap", SWAP_TIMEOUT_SECONDS)

    del in_flight  # the request is done
    wait_until(lambda: not loader.refreshing, "the collection", SWAP_TIMEOUT_SECONDS)

    assert collections == [False]  # the collection waited for the request to let go
    assert payloads["1"]() is None


def test_a_swap_in_the_middle_of_a_batch_changes_neither_its_values_nor_its_labels(
    recording_publisher: RecordingPublisher,
) -> None:
    """The swap lands while version 1 predicts a batch: every ride of it is labelled 1."""
    registry, clock = FakeRegistry("1"), FakeClock()
    loader: ModelHolder

    def predict_while_the_alias_moves(rows: Sequence[dict[str, Any]]) -> list[float]:
        registry.version = "2"
        clock.advance(1)
        loader.refresh_work.start_if_due()  # another request, finished, starts the refresh
        wait_until(lambda: loader.loaded.version == "2", "the swap", SWAP_TIMEOUT_SECONDS)
        return [1.0] * len(rows)

    models = {
        "1": LoadedModel("m", "1", ALIAS_URI, "test", predict_while_the_alias_moves),
        "2": constant_model("2"),
    }
    loader = ModelHolder(
        ALIAS_URI,
        "m",
        refresh_seconds=1,
        load=lambda uri, name, override: models[uri.rsplit("/", 1)[1]],
        resolve=registry.resolve,
        clock=clock,
    )
    settings = main.Settings(model_uri=ALIAS_URI, project_id="p", model_name="m")
    service = main.PredictionService(settings, loader, recording_publisher)

    out = service.handle(pubsub_event_data(ride_batch(5, 1)))

    assert isinstance(out, list)
    assert [(m["version"], m["prediction"]["ride_duration"]) for m in out] == [("1", 1)] * 5
    published = recording_publisher.published
    assert [message.attributes["model_version"] for _, message in published] == ["1"] * 5
    assert loader.get().version == "2"
