"""main.py with fake CloudEvents, a real model and an in-memory publisher."""

from __future__ import annotations

import json
from typing import Any

import pytest

import main
from ride_predictor.errors import ModelLoadError, PublishError
from ride_predictor.loaders import LoadedModel
from ride_predictor.model_holder import ModelHolder
from ride_predictor.publisher import DEFAULT_MAX_RPCS_IN_FLIGHT
from ride_predictor.settings import (
    DEFAULT_MAX_BATCH_RIDES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MODEL_NAME,
    InvalidSettingError,
)
from tests.conftest import (
    PROJECT_ID,
    SAMPLE_FEATURES,
    ModelFixture,
    RecordingPublisher,
    load_json,
    pubsub_cloud_event,
    pubsub_event_data,
    ride_features,
)

OUTPUT_TOPIC = f"projects/{PROJECT_ID}/topics/ride-predictions"
DEAD_LETTER_TOPIC = f"projects/{PROJECT_ID}/topics/ride-dead-letter"


@pytest.fixture(scope="module")
def shared_loader(test_model: ModelFixture) -> ModelHolder:
    """One loaded model for the module's tests (loading is tested in test_model_loader)."""
    loader = ModelHolder(test_model.path, DEFAULT_MODEL_NAME)
    loader.get()
    return loader


def make_service(
    loader: ModelHolder, publisher: RecordingPublisher, **settings: Any
) -> main.PredictionService:
    return main.PredictionService(
        main.Settings(model_uri=loader.model_uri, project_id=PROJECT_ID, **settings),
        loader,
        publisher,
    )


@pytest.fixture
def service(
    shared_loader: ModelHolder,
    recording_publisher: RecordingPublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> main.PredictionService:
    """The function's service with dead-lettering on, injected into main."""
    injected = make_service(
        shared_loader, recording_publisher, dead_letter_stream="ride-dead-letter"
    )
    monkeypatch.setattr(main, "_service", injected)
    return injected


def test_tutorial_plain_dict_event_gives_the_models_prediction(
    service: main.PredictionService,
    recording_publisher: RecordingPublisher,
    test_model: ModelFixture,
) -> None:
    result = main.predict_duration(load_json("tutorial_event.json"))

    expected = {
        "model": "ride_duration_prediction_model",
        "version": test_model.logged.run_id,
        "prediction": {
            "ride_duration": test_model.expected_duration(SAMPLE_FEATURES),
            "ride_id": 123,
        },
    }
    assert result == expected
    (published,) = recording_publisher.to(OUTPUT_TOPIC)
    assert json.loads(published.data) == expected
    assert published.attributes == {
        "ride_id": "123",
        "model_version": test_model.logged.run_id,
        "source_message_id": "1234567890",  # the event id: the tutorial's message has none
    }


def test_cloud_event_with_the_tutorial_base64_sample(
    service: main.PredictionService,
    recording_publisher: RecordingPublisher,
    test_model: ModelFixture,
) -> None:
    sample_b64 = load_json("tutorial_event.json")["data"]["message"]["data"]
    result = main.predict_duration(pubsub_cloud_event(sample_b64, message_id="9157203630716966"))

    assert result["prediction"] == {
        "ride_duration": test_model.expected_duration(SAMPLE_FEATURES),
        "ride_id": 123,
    }
    (published,) = recording_publisher.to(OUTPUT_TOPIC)
    assert published.attributes["source_message_id"] == "9157203630716966"


@pytest.mark.parametrize(
    "ride",
    [
        {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 0.0},
        {"PULocationID": 43, "DOLocationID": 238, "trip_distance": 25.1},
        {"PULocationID": 264, "DOLocationID": 264, "trip_distance": 1},
    ],
)
def test_output_equals_the_models_own_prediction_rounded(
    service: main.PredictionService, test_model: ModelFixture, ride: dict[str, Any]
) -> None:
    result = main.predict_duration(pubsub_cloud_event({"ride": ride, "ride_id": "r-1"}))
    assert result["prediction"]["ride_duration"] == test_model.expected_duration(
        ride_features(ride)
    )
    assert result["prediction"]["ride_id"] == "r-1"


def test_model_name_and_version_come_from_the_environment(
    test_model: ModelFixture,
    recording_publisher: RecordingPublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_URI", test_model.path)
    monkeypatch.setenv("PROJECT_ID", PROJECT_ID)
    monkeypatch.setenv("MODEL_NAME", "duration-v2")
    monkeypatch.setenv("MODEL_VERSION", "2024-06-01")
    settings = main.settings_from_env()
    monkeypatch.setattr(
        main,
        "_service",
        main.PredictionService(
            settings,
            ModelHolder(settings.model_uri, settings.model_name, settings.model_version),
            recording_publisher,
        ),
    )

    result = main.predict_duration(load_json("tutorial_event.json"))

    assert (result["model"], result["version"]) == ("duration-v2", "2024-06-01")
    assert recording_publisher.published[0][1].attributes["model_version"] == "2024-06-01"


def test_settings_defaults_and_project_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PROJECT_ID",
        "PUBLISH_STREAM",
        "DEAD_LETTER_STREAM",
        "MODEL_NAME",
        "MODEL_VERSION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_URI", "gs://bucket/1/run/artifacts/model")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "fallback-project")

    settings = main.settings_from_env()

    assert settings.output_topic_path == "projects/fallback-project/topics/ride-predictions"
    assert settings.dead_letter_topic_path is None
    assert settings.model_name == "ride_duration_prediction_model"
    assert settings.model_version is None
    assert settings.max_batch_rides == 1000


def test_missing_model_uri_is_a_named_error() -> None:
    with pytest.raises(InvalidSettingError, match="MODEL_URI"):
        main.settings_from_env({"PROJECT_ID": "p"})
    with pytest.raises(InvalidSettingError, match="PROJECT_ID or GOOGLE_CLOUD_PROJECT"):
        main.settings_from_env({"MODEL_URI": "x"})


def test_publish_max_rpcs_in_flight_comes_from_the_environment() -> None:
    required = {"MODEL_URI": "x", "PROJECT_ID": "p"}
    default = main.settings_from_env(required).publish_max_rpcs_in_flight
    assert default == DEFAULT_MAX_RPCS_IN_FLIGHT
    settings = main.settings_from_env(required | {"PUBLISH_MAX_RPCS_IN_FLIGHT": "7"})
    assert settings.publish_max_rpcs_in_flight == 7
    # The wired publisher gets it.
    assert main.build_service(settings).publisher.max_rpcs_in_flight == 7


@pytest.mark.parametrize("raw", ["0", "-2", "1.5", "two"])
def test_invalid_publish_max_rpcs_in_flight_is_a_named_error(raw: str) -> None:
    with pytest.raises(InvalidSettingError, match="PUBLISH_MAX_RPCS_IN_FLIGHT"):
        main.settings_from_env(
            {"MODEL_URI": "x", "PROJECT_ID": "p", "PUBLISH_MAX_RPCS_IN_FLIGHT": raw}
        )


INVALID_EVENT_DATA: list[tuple[str, Any, str]] = [
    ("no message", {"subscription": "s"}, "no Pub/Sub message"),
    ("message not an object", {"message": "x"}, "no Pub/Sub message"),
    ("no data", {"message": {"messageId": "1"}}, "has no data"),
    ("bad base64", pubsub_event_data("not base64!!"), "base64"),
    ("bad UTF-8", pubsub_event_data(b"\xc3\x28"), "UTF-8"),
    ("bad JSON", pubsub_event_data(b"{ride"), "JSON"),
    (
        "NaN",
        pubsub_event_data(b'{"ride": {"trip_distance": NaN}, "ride_id": 1}'),
        "NaN is not a JSON number",
    ),
    ("a number", pubsub_event_data(b"42"), "Expected `object | array`, got `int`"),
    ("missing field", pubsub_event_data({"ride_id": 1}), "missing required field `ride`"),
    (
        "wrong type",
        pubsub_event_data(
            {"ride": {"PULocationID": "130", "DOLocationID": 205, "trip_distance": 1}, "ride_id": 1}
        ),
        "Expected `int`, got `str` - at `$.ride.PULocationID`",
    ),
    (
        "out of range",
        pubsub_event_data(
            {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": -1}, "ride_id": 1}
        ),
        "Expected `float` >= 0.0 - at `$.ride.trip_distance`",
    ),
    (
        "oversized",
        pubsub_event_data(b" " * (DEFAULT_MAX_MESSAGE_BYTES + 10)),
        "over the limit",
    ),
]


@pytest.mark.parametrize(
    ("event_data", "reason"),
    [(data, reason) for _, data, reason in INVALID_EVENT_DATA],
    ids=[name for name, _, _ in INVALID_EVENT_DATA],
)
def test_invalid_input_is_acked_logged_once_and_dead_lettered(
    service: main.PredictionService,
    recording_publisher: RecordingPublisher,
    json_logs: list[dict[str, Any]],
    event_data: Any,
    reason: str,
) -> None:
    assert main.predict_duration({"data": event_data, "id": "evt-1"}) is None

    errors = [line for line in json_logs if line["severity"] == "ERROR"]
    assert len(errors) == 1
    assert reason in errors[0]["reason"]
    assert recording_publisher.to(OUTPUT_TOPIC) == []
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert reason in dead_letter.attributes["dlq_reason"]


def test_dead_letter_keeps_the_original_bytes_ids_and_attributes(
    service: main.PredictionService, recording_publisher: RecordingPublisher
) -> None:
    original = b'{"ride": {"PULocationID": 0}, "ride_id": 5}'
    event_data = pubsub_event_data(original, message_id="m-77", attributes={"origin": "meter-3"})

    main.predict_duration({"data": event_data})

    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.data == original
    assert dead_letter.attributes == {
        "origin": "meter-3",
        "ride_id": "5",  # the rejected ride's own id, as on a prediction
        "dlq_reason": "Expected `int` >= 1 - at `$.ride.PULocationID`",
        "dlq_source_message_id": "m-77",
        "dlq_source_publish_time": "2024-01-08T08:22:49.792Z",
        "dlq_source_subscription": f"projects/{PROJECT_ID}/subscriptions/taxi-ride-sub",
    }


def test_undecodable_base64_is_dead_lettered_as_received(
    service: main.PredictionService, recording_publisher: RecordingPublisher
) -> None:
    main.predict_duration({"data": pubsub_event_data("%%%not-base64")})
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.data == b"%%%not-base64"


def test_without_a_dead_letter_topic_invalid_input_is_only_logged(
    shared_loader: ModelHolder,
    recording_publisher: RecordingPublisher,
    json_logs: list[dict[str, Any]],
) -> None:
    service = make_service(shared_loader, recording_publisher)
    assert service.handle(pubsub_event_data(b"not json")) is None
    assert recording_publisher.published == []
    assert [line["severity"] for line in json_logs] == ["ERROR"]


def test_a_failed_publish_raises_so_pubsub_redelivers(
    service: main.PredictionService, recording_publisher: RecordingPublisher
) -> None:
    recording_publisher.failure = PublishError("topic not found")
    with pytest.raises(PublishError):
        main.predict_duration(pubsub_cloud_event(load_json("sample_ride.json")))


def test_a_failed_dead_letter_publish_raises_so_the_message_is_not_lost(
    service: main.PredictionService, recording_publisher: RecordingPublisher
) -> None:
    recording_publisher.failure = PublishError("dead-letter topic not found")
    with pytest.raises(PublishError):
        main.predict_duration(pubsub_cloud_event(b"not json"))


def test_an_unloadable_model_raises_and_a_valid_ride_is_not_lost(
    recording_publisher: RecordingPublisher, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = ModelHolder(str(tmp_path / "no-model-here"), DEFAULT_MODEL_NAME)
    monkeypatch.setattr(main, "_service", make_service(loader, recording_publisher))
    with pytest.raises(ModelLoadError):
        main.predict_duration(pubsub_cloud_event(load_json("sample_ride.json")))
    assert recording_publisher.published == []


def test_one_info_line_per_handled_message_with_the_ids(
    service: main.PredictionService, json_logs: list[dict[str, Any]], test_model: ModelFixture
) -> None:
    main.predict_duration(pubsub_cloud_event(load_json("sample_ride.json"), message_id="m-1"))

    (line,) = json_logs
    assert line["severity"] == "INFO"
    assert line["ride_id"] == 123
    assert line["message_id"] == "m-1"
    assert line["model_version"] == test_model.logged.run_id
    assert isinstance(line["latency_ms"], float)
    assert line["logging.googleapis.com/labels"]["ride_id"] == "123"


def test_message_log_level_debug_silences_the_per_message_line(
    shared_loader: ModelHolder,
    recording_publisher: RecordingPublisher,
    json_logs: list[dict[str, Any]],
) -> None:
    service = make_service(shared_loader, recording_publisher, message_log_level="DEBUG")
    service.handle(pubsub_event_data(load_json("sample_ride.json")))
    assert json_logs == []
    assert len(recording_publisher.published) == 1


def _ride_event(ride_id: Any, distance: float = 2.0) -> dict[str, Any]:
    return {
        "ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": distance},
        "ride_id": ride_id,
    }


def test_batch_predicts_valid_rides_in_order_and_dead_letters_the_rest(
    service: main.PredictionService,
    recording_publisher: RecordingPublisher,
    test_model: ModelFixture,
) -> None:
    batch = [_ride_event("a", 1.0), {"ride_id": "b"}, _ride_event("c", 9.5), "junk", _ride_event(4)]

    results = main.predict_duration(pubsub_cloud_event(batch, message_id="batch-1"))

    assert [r["prediction"]["ride_id"] for r in results] == ["a", "c", 4]
    assert [r["prediction"]["ride_duration"] for r in results] == [
        test_model.expected_duration({"PU_DO": "130_205", "trip_distance": d})
        for d in (1.0, 9.5, 2.0)
    ]
    published = recording_publisher.to(OUTPUT_TOPIC)
    assert [json.loads(m.data) for m in published] == results
    assert [m.attributes["ride_index"] for m in published] == ["0", "2", "4"]
    assert {m.attributes["source_message_id"] for m in published} == {"batch-1"}
    dead_letters = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert [m.attributes["dlq_ride_index"] for m in dead_letters] == ["1", "3"]
    assert [json.loads(m.data) for m in dead_letters] == [{"ride_id": "b"}, "junk"]


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        ([], "Expected `array` of length >= 1"),
        ([_ride_event(i) for i in range(1001)], "over the limit of 1000"),
    ],
    ids=["empty", "over-limit"],
)
def test_empty_and_over_limit_batches_are_permanent_errors(
    service: main.PredictionService,
    recording_publisher: RecordingPublisher,
    batch: list[Any],
    reason: str,
) -> None:
    assert main.predict_duration(pubsub_cloud_event(batch)) is None
    assert recording_publisher.to(OUTPUT_TOPIC) == []
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert reason in dead_letter.attributes["dlq_reason"]
    assert json.loads(dead_letter.data) == batch


def test_a_batch_is_not_acked_unless_every_publish_succeeds(
    service: main.PredictionService, recording_publisher: RecordingPublisher
) -> None:
    recording_publisher.failure = PublishError("unavailable")
    with pytest.raises(PublishError):
        main.predict_duration(pubsub_cloud_event([_ride_event(1), _ride_event(2)]))


def test_a_non_finite_prediction_is_a_permanent_error(
    service: main.PredictionService, recording_publisher: RecordingPublisher
) -> None:
    result = main.predict_duration(pubsub_cloud_event(_ride_event(9, distance=1e308)))
    assert result is None
    assert recording_publisher.to(OUTPUT_TOPIC) == []
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert "predicted" in dead_letter.attributes["dlq_reason"]


def test_a_full_batch_keeps_order_ids_and_indexes_and_predicts_like_the_pipeline(
    service: main.PredictionService,
    recording_publisher: RecordingPublisher,
    test_model: ModelFixture,
) -> None:
    ride_ids: list[Any] = [i if i % 3 else f"ride-{i}" for i in range(DEFAULT_MAX_BATCH_RIDES)]
    batch = [_ride_event(ride_id, distance=(i % 97) / 7) for i, ride_id in enumerate(ride_ids)]
    for i, event in enumerate(batch):
        event["ride"]["PULocationID"] = 1 + i % 263
        event["ride"]["DOLocationID"] = 1 + (i * 7) % 263

    results = main.predict_duration(pubsub_cloud_event(batch, message_id="full"))

    published = recording_publisher.to(OUTPUT_TOPIC)
    expected = test_model.pipeline.predict([ride_features(e["ride"]) for e in batch])
    assert [r["prediction"]["ride_id"] for r in results] == ride_ids
    assert [json.loads(m.data) for m in published] == results
    assert [m.attributes["ride_index"] for m in published] == [str(i) for i in range(len(batch))]
    assert [m.attributes["ride_id"] for m in published] == [str(i) for i in ride_ids]
    assert [r["prediction"]["ride_duration"] for r in results] == [round(v) for v in expected]
    assert recording_publisher.to(DEAD_LETTER_TOPIC) == []


def fixed_model_service(
    publisher: RecordingPublisher, name: str, version: str, *predictions: float
) -> main.PredictionService:
    """The service over a model that returns ``predictions`` (what a real model cannot)."""
    model = LoadedModel(
        name, version, "memory://fixed", "python_function", lambda rows: predictions[: len(rows)]
    )
    loader = ModelHolder("memory://fixed", name, load=lambda *_: model)
    return make_service(loader, publisher, dead_letter_stream="ride-dead-letter")


@pytest.mark.parametrize(
    ("name", "version", "ride_id"),
    [
        ("ride_duration_prediction_model", "1249d7520918485082939f0da74a7e54", 123),
        ('modèle "durée"', "v\\1\u2028", 'r-é"\\\n'),
        ("m", "", -(2**63)),
        ("m", "7", "😀" * 3),
    ],
)
def test_output_bytes_are_compact_utf8_json_of_the_contract_message(
    recording_publisher: RecordingPublisher, name: str, version: str, ride_id: Any
) -> None:
    service = fixed_model_service(recording_publisher, name, version, 17.6)

    result = service.handle(pubsub_event_data(_ride_event(ride_id)))

    message = {
        "model": name,
        "version": version,
        "prediction": {"ride_duration": 18, "ride_id": ride_id},
    }
    assert result == message
    (published,) = recording_publisher.to(OUTPUT_TOPIC)
    # docs/design.md, "Output": no spaces, non-ASCII text as UTF-8 rather than \u escapes.
    assert published.data == json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def test_a_batch_elements_dead_letter_is_its_original_bytes(
    service: main.PredictionService, recording_publisher: RecordingPublisher
) -> None:
    good = json.dumps(_ride_event(1)).encode()
    bad = b'{ "ride_id" : "b",\n  "ride": {"PULocationID": 0.0, "note": "caf\\u00e9"} }'
    data = b"[" + good + b",  " + bad + b" ]"

    main.predict_duration(pubsub_cloud_event(data))

    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.data == bad
    assert dead_letter.attributes["dlq_ride_index"] == "1"
    assert (
        dead_letter.attributes["dlq_reason"]
        == "Expected `int`, got `float` - at `$.ride.PULocationID`"
    )
    assert len(recording_publisher.to(OUTPUT_TOPIC)) == 1


def test_a_non_finite_prediction_in_a_batch_dead_letters_that_element_alone(
    recording_publisher: RecordingPublisher,
) -> None:
    service = fixed_model_service(recording_publisher, "m", "v", 3.0, float("nan"), 5.0)
    elements = [json.dumps(_ride_event(i)).encode() for i in range(3)]

    results = service.handle(pubsub_event_data(b"[" + b", ".join(elements) + b"]"))

    assert [r["prediction"] for r in results] == [
        {"ride_duration": 3, "ride_id": 0},
        {"ride_duration": 5, "ride_id": 2},
    ]
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.data == elements[1]
    assert dead_letter.attributes["dlq_ride_index"] == "1"
    assert dead_letter.attributes["dlq_reason"] == "the model predicted nan for this ride"


@pytest.mark.parametrize(
    "data",
    [
        b'[{"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1}, "ride_id": 1},'
        b' {"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1},'
        b' "ride_id": "\\ud800"}]',
        b'{"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1}, "ride_id": 7,'
        b' "note": "\\udc00"}',
    ],
    ids=["batch-ride-id", "ignored-field"],
)
def test_a_lone_surrogate_is_a_permanent_error_with_a_clear_reason(
    service: main.PredictionService, recording_publisher: RecordingPublisher, data: bytes
) -> None:
    # It used to be accepted, then fail at publish (a ride_id attribute must be valid UTF-8)
    # and send the whole batch back for redelivery, forever.
    assert main.predict_duration(pubsub_cloud_event(data)) is None

    assert recording_publisher.to(OUTPUT_TOPIC) == []
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.data == data
    assert "lone UTF-16 surrogate" in dead_letter.attributes["dlq_reason"]
