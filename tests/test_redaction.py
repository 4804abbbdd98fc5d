"""No credentials in any log line or error: URIs are redacted wherever they are logged or raised.

A tracking server's URI may carry user-info (``http://user:secret@host``) and a model URI or
tracking URI a token in its query; MLflow quotes the failing request's URL in its errors. The
end-to-end tests serve the function with such settings (its environment, HTTP, a process's
whole output) and the Lambda's handler, and look for the secrets in everything they wrote.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import lambda_function
from devstack.processes import free_port, wait_until
from ride_predictor.errors import ModelLoadError
from ride_predictor.loaders import LoadedModel
from ride_predictor.model_holder import ModelHolder
from ride_predictor.redaction import redact_credentials
from tests.aws_events import SAMPLE_RIDE, kinesis_event
from tests.conftest import ServeFunction, push, push_body

RIDE = json.dumps(
    {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 1}
).encode()


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("http://alice:pw@mlflow:5000", "http://***@mlflow:5000"),
        ("https://TOKEN@github.com/org/repo", "https://***@github.com/org/repo"),
        ("http://u:p@ss@host/x", "http://***@host/x"),  # the authority's last @
        (
            "API request to http://u:pw@h:1/api/2.0/mlflow/runs/get failed",
            "API request to http://***@h:1/api/2.0/mlflow/runs/get failed",
        ),
        (
            "https://h/?access_token=abc&name=ride&alias=champion",
            "https://h/?access_token=***&name=ride&alias=champion",
        ),
        (
            "url: /?token=abc/api/2.0/x&run_id=1 (Caused by",  # urllib3's path-only form
            "url: /?token=***&run_id=1 (Caused by",
        ),
        (
            "https://s3/k?X-Amz-Credential=AK%2F1&X-Amz-Date=20240101&X-Amz-Signature=9f",
            "https://s3/k?X-Amz-Credential=***&X-Amz-Date=20240101&X-Amz-Signature=***",
        ),
        (
            "https://gcs/o?X-Goog-Signature=1&sig=2&apiKey=3&client_secret=4&design=5",
            "https://gcs/o?X-Goog-Signature=***&sig=***&apiKey=***&client_secret=***&design=5",
        ),
        ("gs://bucket/1/run/artifacts/model", "gs://bucket/1/run/artifacts/model"),
        ("models:/ride-duration@champion", "models:/ride-duration@champion"),
        ("runs:/0a1b/model", "runs:/0a1b/model"),
        ("no URI here, a=b", "no URI here, a=b"),
    ],
)
def test_redact_credentials(text: str, redacted: str) -> None:
    assert redact_credentials(text) == redacted


def test_redacted_json_stays_json() -> None:
    line = json.dumps({"reason": "MlflowException('http://a:b@h/x?token=t')", "q": '"?key=v"'})
    assert json.loads(redact_credentials(line)) == {
        "reason": "MlflowException('http://***@h/x?token=***')",
        "q": '"?key=***"',
    }


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """The function's log records as they are made, before any formatter sees them."""
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Keep()
    logger = logging.getLogger("ride_predictor")
    logger.addHandler(handler)
    yield captured
    logger.removeHandler(handler)


def unformatted(records: list[logging.LogRecord]) -> str:
    return "\n".join(
        record.getMessage() + json.dumps(getattr(record, "fields", {}), default=str)
        for record in records
    )


SECRET_URI = "http://bob:URI-SECRET@127.0.0.1:{port}/model?token=TOKEN-SECRET&name=x"


def test_a_failed_load_redacts_its_log_line_and_its_error(
    records: list[logging.LogRecord],
) -> None:
    loader = ModelHolder(SECRET_URI.format(port=free_port()), "m")

    with pytest.raises(ModelLoadError) as raised:
        loader.get()

    assert "SECRET" not in str(raised.value)
    assert raised.value.__cause__ is None  # its traceback would quote the error unredacted
    assert "http://***@127.0.0.1" in str(raised.value)
    (line,) = [record for record in records if record.getMessage() == "model load failed"]
    assert "SECRET" not in unformatted(records)
    assert line.fields["model_uri"].startswith("http://***@127.0.0.1")  # type: ignore[attr-defined]


def test_a_failed_refresh_redacts_its_log_line(records: list[logging.LogRecord]) -> None:
    uri = "models:/ride@champion"
    tracking = "http://alice:TRACKING-SECRET@mlflow:5000?access_token=TOKEN-SECRET"
    versions = iter(["1"])

    def resolve(_: str) -> str:
        version = next(versions, None)
        if version is None:
            raise RuntimeError(f"API request to {tracking}/api/2.0/mlflow/alias failed")
        return version

    def load(pinned: str, name: str, _: str | None) -> LoadedModel:
        return LoadedModel(name, pinned.rsplit("/", 1)[1], pinned, "sklearn", lambda rows: [])

    now = [0.0]
    loader = ModelHolder(
        uri, "m", refresh_seconds=1, load=load, resolve=resolve, clock=lambda: now[0]
    )
    loader.get()
    now[0] = 5.0
    loader.get()
    loader.refresh_work.start_if_due()  # after the request: the refresh, which fails

    wait_until(
        lambda: any("refresh failed" in r.getMessage() for r in records),
        "the failed refresh's line",
        timeout_seconds=30,
    )

    assert "SECRET" not in unformatted(records)
    (line,) = [r for r in records if "refresh failed" in r.getMessage()]
    assert "http://***@mlflow:5000?access_token=***" in line.fields["reason"]  # type: ignore[attr-defined]


@pytest.mark.emulator
@pytest.mark.parametrize(
    "env",
    [
        {
            "MODEL_URI": "models:/ride@champion",
            "MLFLOW_TRACKING_URI": "http://alice:TRACKING-SECRET@127.0.0.1:{port}",
        },
        {"MODEL_URI": SECRET_URI},
        {
            "MODEL_URI": "runs:/0a1b2c/model",
            "MLFLOW_TRACKING_URI": "https://127.0.0.1:{port}/?access_token=QUERY-SECRET",
        },
    ],
    ids=["tracking-user-info", "model-uri", "tracking-token"],
)
def test_no_secret_reaches_the_function_output_or_its_answer(
    serve_function: ServeFunction, env: dict[str, str]
) -> None:
    port = free_port()  # nothing listens there: every request to it fails
    server = serve_function(
        **{name: value.format(port=port) for name, value in env.items()},
        MODEL_LOAD_TIMEOUT_SECONDS="90",
        MLFLOW_DISABLE_TELEMETRY="true",
    )

    status, answer = push(server, push_body(RIDE, "secret-1"))

    output = server.log_path.read_text()  # stdout and stderr, the framework's lines included
    assert status == 500
    assert "model load failed" in output  # the failure, with its reason, is logged
    assert "SECRET" not in output
    assert "SECRET" not in answer


def test_the_lambda_logs_no_secret(
    monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord], capfd: Any
) -> None:
    monkeypatch.setattr(lambda_function, "_service", None)
    monkeypatch.setenv("MODEL_URI", SECRET_URI.format(port=free_port()))
    monkeypatch.setenv("MODEL_LOAD_TIMEOUT_SECONDS", "60")

    response = lambda_function.lambda_handler(kinesis_event(SAMPLE_RIDE), None)

    assert len(response["batchItemFailures"]) == 1
    assert any("model not loaded" in record.getMessage() for record in records)
    assert "SECRET" not in unformatted(records)
    written = capfd.readouterr()
    assert "SECRET" not in written.out + written.err
