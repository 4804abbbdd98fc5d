"""The model's output is checked per ride: a prediction that is not a finite real number, or
whose rounded duration is outside ``ride_duration``'s bound (a signed 32-bit integer), is a
permanent failure of that ride; a model that does not return one prediction per ride fails the
whole message the same way. Both dead-letter like a bad input, on both clouds.

The last tests serve misbehaving models with functions-framework (a model that answers text,
None, infinity, a bool, 1e300 or the wrong number of rows, and the real course model asked for
a 1e300-mile ride) and send them rides over HTTP, with the Pub/Sub emulator behind.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import cloudpickle
import numpy as np
import pytest

import lambda_function
import main
from devstack.pubsub_admin import PubSubAdmin
from lambda_settings import LambdaSettings
from ride_predictor.errors import InvalidRideError
from ride_predictor.loaders import LoadedModel
from ride_predictor.messages import MAX_RIDE_DURATION, MIN_RIDE_DURATION, build_prediction_message
from ride_predictor.model_holder import ModelHolder
from ride_predictor.settings import Settings
from tests.aws_events import InMemoryWriter, kinesis_event
from tests.conftest import (
    PROJECT_ID,
    ModelFixture,
    RecordingPublisher,
    ServeFunction,
    deliver,
    function_log,
    pubsub_event_data,
    push_body,
)

OUTPUT_TOPIC = f"projects/{PROJECT_ID}/topics/ride-predictions"
DEAD_LETTER_TOPIC = f"projects/{PROJECT_ID}/topics/ride-dead-letter"


def ride(ride_id: int | str, distance: float = 3.0, pu: int = 130, do: int = 205) -> dict:
    return {
        "ride": {"PULocationID": pu, "DOLocationID": do, "trip_distance": distance},
        "ride_id": ride_id,
    }


@pytest.mark.parametrize(
    ("prediction", "minutes"),
    [
        (17.6, 18),
        (np.float64(17.4), 17),
        (np.float32(2.5), 2),
        (np.int64(3), 3),
        (7, 7),
        (MAX_RIDE_DURATION + 0.4, MAX_RIDE_DURATION),
        (MIN_RIDE_DURATION, MIN_RIDE_DURATION),
        (-3.2, -3),
    ],
)
def test_a_finite_real_number_in_the_bound_is_a_prediction(prediction: Any, minutes: int) -> None:
    message = build_prediction_message("m", "v", 1, prediction)
    assert message.prediction.ride_duration == minutes
    assert type(message.prediction.ride_duration) is int


@pytest.mark.parametrize(
    ("prediction", "reason"),
    [
        ("12", "the model predicted '12' (str) for this ride: not a number"),
        (None, "the model predicted None (NoneType) for this ride: not a number"),
        (True, "the model predicted True (bool) for this ride: not a number"),
        (np.bool_(False), "(bool) for this ride: not a number"),
        ([1.0], "the model predicted [1.0] (list) for this ride: not a number"),
        (np.array([1.0]), "(ndarray) for this ride: not a number"),
        (complex(1, 0), "(complex) for this ride: not a number"),
        (math.nan, "the model predicted nan for this ride"),
        (-math.inf, "the model predicted -inf for this ride"),
        (1e300, "the model predicted 1e+300 minutes for this ride: outside"),
        (MAX_RIDE_DURATION + 0.5, "outside -2147483648 to 2147483647"),  # rounds half to even
        (MIN_RIDE_DURATION - 1, "outside -2147483648 to 2147483647"),
        (2**63, "outside -2147483648 to 2147483647"),
    ],
)
def test_any_other_prediction_is_a_permanent_error_of_its_ride(
    prediction: Any, reason: str
) -> None:
    with pytest.raises(InvalidRideError) as raised:
        build_prediction_message("m", "v", "ride-9", prediction)
    assert reason in raised.value.reason
    assert raised.value.ride_id == "ride-9"


def test_a_long_prediction_is_shown_cut_in_the_reason() -> None:
    with pytest.raises(InvalidRideError) as raised:
        build_prediction_message("m", "v", 1, "x" * 10_000)
    assert len(raised.value.reason) < 200


@pytest.mark.parametrize(
    ("output", "rides", "reason"),
    [
        (None, 1, "the model returned None for 1 ride: not one prediction per ride"),
        ("12", 1, "the model returned '12' for 1 ride"),
        (b"\x07", 1, "the model returned b'\\x07' for 1 ride"),
        ({"a": 1.0}, 1, "the model returned {'a': 1.0} for 1 ride"),
        (3.5, 1, "the model returned 3.5 for 1 ride"),
        ([1.0, 2.0, 3.0], 2, "the model returned 3 predictions for 2 rides"),
        ([], 2, "the model returned 0 predictions for 2 rides"),
        (np.ones((1, 3)), 3, "the model returned 1 prediction for 3 rides"),
    ],
)
def test_an_output_that_is_not_one_prediction_per_ride_fails_the_whole_message(
    output: Any, rides: int, reason: str
) -> None:
    from ride_predictor.messages import predictions_for

    with pytest.raises(InvalidRideError) as raised:
        predictions_for(output, rides)
    assert raised.value.reason.startswith(reason)
    assert raised.value.ride_index is None


@pytest.mark.parametrize(
    "output", [[1.0, 2.0], np.array([1.0, 2.0]), (x for x in (1.0, 2.0)), (1.0, 2.0)]
)
def test_one_prediction_per_ride_is_accepted_in_order(output: Any) -> None:
    from ride_predictor.messages import predictions_for

    assert [float(p) for p in predictions_for(output, 2)] == [1.0, 2.0]


def answering(*outputs: Any) -> ModelHolder:
    """A loader whose model answers ``outputs`` (the whole output, as the model returns it)."""
    answers = iter(outputs)
    model = LoadedModel("m", "v", "memory://", "python_function", lambda rows: next(answers))
    return ModelHolder("memory://", "m", load=lambda *_: model)


def gcp_service(loader: ModelHolder, publisher: RecordingPublisher) -> main.PredictionService:
    settings = Settings(
        model_uri="memory://", project_id=PROJECT_ID, dead_letter_stream="ride-dead-letter"
    )
    return main.PredictionService(settings, loader, publisher)


@pytest.mark.parametrize("output", [None, "12", [1.0, 2.0], [], 4.0])
def test_a_single_ride_message_with_a_bad_output_is_dead_lettered(
    recording_publisher: RecordingPublisher, output: Any
) -> None:
    data = json.dumps(ride("r-1")).encode()

    result = gcp_service(answering(output), recording_publisher).handle(pubsub_event_data(data))

    assert result is None  # acked: never retried
    assert recording_publisher.to(OUTPUT_TOPIC) == []
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.data == data
    assert dead_letter.attributes["dlq_reason"].startswith("the model returned")
    assert dead_letter.attributes["ride_id"] == "r-1"


def test_a_batch_with_the_wrong_number_of_rows_is_dead_lettered_whole(
    recording_publisher: RecordingPublisher,
) -> None:
    data = json.dumps([ride(1), {"ride_id": 2}, ride(3)]).encode()

    result = gcp_service(answering([1.0, 2.0, 3.0]), recording_publisher).handle(
        pubsub_event_data(data)
    )

    assert result is None
    assert recording_publisher.to(OUTPUT_TOPIC) == []
    (dead_letter,) = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert dead_letter.data == data  # the whole message, once
    assert "dlq_ride_index" not in dead_letter.attributes
    assert dead_letter.attributes["dlq_reason"] == (
        "the model returned 3 predictions for 2 rides: not one prediction per ride"
    )


def test_a_bad_prediction_in_a_batch_dead_letters_that_ride_alone(
    recording_publisher: RecordingPublisher,
) -> None:
    elements = [json.dumps(ride(i)).encode() for i in range(4)]
    data = b"[" + b",".join(elements) + b"]"

    results = gcp_service(answering(["7", 5.0, None, 1e300]), recording_publisher).handle(
        pubsub_event_data(data)
    )

    assert [r["prediction"] for r in results] == [{"ride_duration": 5, "ride_id": 1}]
    dead_letters = recording_publisher.to(DEAD_LETTER_TOPIC)
    assert [m.attributes["dlq_ride_index"] for m in dead_letters] == ["0", "2", "3"]
    assert [m.data for m in dead_letters] == [elements[0], elements[2], elements[3]]
    assert [m.attributes["ride_id"] for m in dead_letters] == ["0", "2", "3"]


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (None, "the model returned None for 2 rides"),
        ([1.0], "the model returned 1 prediction for 2 rides"),
        (["x", 2.0], None),
    ],
)
def test_the_lambda_dead_letters_bad_outputs_and_reports_nothing(
    output: Any, reason: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = InMemoryWriter()
    service = lambda_function.KinesisPredictionService(
        LambdaSettings(model_uri="memory://", dead_letter_stream_name="dlq"),
        answering(output),
        writer,
    )

    response = service.handle(kinesis_event(ride(1), ride(2)))

    assert response == {"batchItemFailures": []}  # permanent: the shard moves on
    dead_letters = writer.json_to("dlq")
    if reason is None:  # one bad prediction: that record alone
        assert [d["dlq_reason"] for d in dead_letters] == [
            "the model predicted 'x' (str) for this ride: not a number"
        ]
        assert len(writer.json_to("ride_predictions")) == 1
    else:
        assert [d["dlq_reason"] for d in dead_letters] == [
            f"{reason}: not one prediction per ride"
        ] * 2
        assert "ride_predictions" not in writer.written


# Over HTTP: functions-framework serving a model that misbehaves on purpose.


class MisbehavingModel:
    """Answers per ride by its trip_distance, or misbehaves for the whole call by its first
    ride's zones: what a broken model, or a pyfunc model of the wrong kind, can return."""

    PER_RIDE: ClassVar[dict[float, Any]] = {
        1.0: "text",
        2.0: None,
        3.0: math.inf,
        4.0: 1e300,
        5.0: True,
        6.0: 12.6,
    }

    def predict(self, rows: Sequence[dict[str, Any]]) -> Any:
        first = rows[0]["PU_DO"]
        if first == "7_7":
            return [1.0] * (len(rows) + 1)
        if first == "8_8":
            return None
        if first == "9_9":
            return "12"
        return [self.PER_RIDE[row["trip_distance"]] for row in rows]


def misbehaving_model_dir(root: Path) -> Path:
    """An MLflow sklearn-flavour model directory holding a ``MisbehavingModel``."""
    model_dir = root / "misbehaving-model"
    model_dir.mkdir()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        (model_dir / "model.pkl").write_bytes(cloudpickle.dumps(MisbehavingModel()))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    (model_dir / "MLmodel").write_text(
        textwrap.dedent(
            f"""\
            flavors:
              sklearn:
                code: null
                pickled_model: model.pkl
                serialization_format: cloudpickle
            run_id: {uuid.uuid4().hex}
            """
        )
    )
    return model_dir


@pytest.mark.emulator
def test_bad_outputs_over_http_are_acked_and_dead_lettered(
    serve_function: ServeFunction,
    streams: dict[str, str],
    pubsub: PubSubAdmin,
    tmp_path: Path,
) -> None:
    server = serve_function(
        MODEL_URI=str(misbehaving_model_dir(tmp_path)),
        PUBLISH_STREAM=streams["output"],
        DEAD_LETTER_STREAM=streams["dead_letter"],
    )
    batch = [ride(f"b-{d}", distance=d) for d in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)]
    messages = {
        "batch": json.dumps(batch).encode(),
        "single-text": json.dumps(ride("s-1", distance=1.0)).encode(),
        "too-many-rows": json.dumps([ride("m-1", pu=7, do=7), ride("m-2")]).encode(),
        "none": json.dumps(ride("n-1", pu=8, do=8)).encode(),
        "text-output": json.dumps(ride("t-1", pu=9, do=9)).encode(),
    }

    # Before: each of these was an HTTP 500, delivered again and again.
    statuses = {name: deliver(server, push_body(data, name)) for name, data in messages.items()}

    assert statuses == dict.fromkeys(messages, 200)
    (prediction,) = pubsub.pull(f"{streams['output']}-sub", expected=1)
    assert json.loads(prediction.data)["prediction"] == {"ride_duration": 13, "ride_id": "b-6.0"}
    dead_letters = pubsub.pull(f"{streams['dead_letter']}-sub", expected=9)
    dead_letters += pubsub.drain(f"{streams['dead_letter']}-sub", quiet_seconds=1)
    reasons = sorted(
        (
            m.attributes["dlq_source_message_id"],
            m.attributes.get("dlq_ride_index", "-"),
            m.attributes["dlq_reason"],
        )
        for m in dead_letters
    )
    assert reasons == [
        ("batch", "0", "the model predicted 'text' (str) for this ride: not a number"),
        ("batch", "1", "the model predicted None (NoneType) for this ride: not a number"),
        ("batch", "2", "the model predicted inf for this ride"),
        (
            "batch",
            "3",
            "the model predicted 1e+300 minutes for this ride: outside -2147483648 to "
            "2147483647, the bound of ride_duration",
        ),
        ("batch", "4", "the model predicted True (bool) for this ride: not a number"),
        ("none", "-", "the model returned None for 1 ride: not one prediction per ride"),
        ("single-text", "-", "the model predicted 'text' (str) for this ride: not a number"),
        ("text-output", "-", "the model returned '12' for 1 ride: not one prediction per ride"),
        (
            "too-many-rows",
            "-",
            "the model returned 3 predictions for 2 rides: not one prediction per ride",
        ),
    ]
    errors = [line for line in function_log(server) if line["severity"] == "ERROR"]
    assert len(errors) == len(dead_letters)


@pytest.mark.emulator
def test_a_1e300_mile_ride_is_dead_lettered_not_published_with_301_digits(
    serve_function: ServeFunction,
    streams: dict[str, str],
    pubsub: PubSubAdmin,
    test_model: ModelFixture,
) -> None:
    server = serve_function(
        MODEL_URI=test_model.path,
        PUBLISH_STREAM=streams["output"],
        DEAD_LETTER_STREAM=streams["dead_letter"],
    )
    far = json.dumps(ride("far", distance=1e300)).encode()
    near = json.dumps(ride("near", distance=1e6)).encode()  # a few million minutes: in bound

    assert deliver(server, push_body(far, "far")) == 200
    assert deliver(server, push_body(near, "near")) == 200

    (dead_letter,) = pubsub.pull(f"{streams['dead_letter']}-sub", expected=1)
    assert dead_letter.data == far
    assert (
        "minutes for this ride: outside -2147483648 to 2147483647"
        in (dead_letter.attributes["dlq_reason"])
    )
    (prediction,) = pubsub.pull(f"{streams['output']}-sub", expected=1)
    body = json.loads(prediction.data)
    assert body["prediction"]["ride_id"] == "near"
    assert body["prediction"]["ride_duration"] == test_model.expected_duration(
        {"PU_DO": "130_205", "trip_distance": 1e6}
    )
