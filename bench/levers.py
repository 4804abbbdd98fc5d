"""``python -m bench.levers``: the speed levers, measured in one process (run by ``bench``).

Each lever is timed in isolation, ``--rounds`` times interleaved, and reported as a median:

* ``model_load_ms`` / ``model_bytes``: ``mlflow.sklearn.load_model`` of the same pipeline saved
  as cloudpickle, pickle and skops, the first load in a fresh process whose MLflow and
  scikit-learn are imported beforehand (so the load and what the format imports count);
* ``predict_us``: one ride and a 1,000-ride batch through pyfunc with a feature dict (the
  tutorial's call), the sklearn flavour with a list of feature dicts, the same under
  ``sklearn.config_context(assume_finite=True, skip_parameter_validation=True)``, and the
  project's ``LoadedModel.predict``;
* ``publish_us``: CPU and wall time to publish one message, then 1,000, to the Pub/Sub emulator
  with ``PublisherClient.publish(...).result()`` (default batching, then ``max_latency=0``) and
  with the project's ``publisher.PubSubPublisher``;
* ``log_line_us``: one per-message JSON log line of ``main`` (written to /dev/null);
* ``contract_us``: decoding and validating one ride's message and a 1,000-ride message, and
  building and encoding 1,000 output messages, with ``ride_predictor.messages`` (msgspec), next to
  ``json.dumps``;
* ``handler``: ``main.PredictionService.handle`` in process for one ride and for 1,000-ride
  messages with an in-memory publisher (decode, validate, predict, build every output
  message: all but the network), then with the real publisher (emulator); and, with the
  emulator, 1,000-ride messages end to end (POST to 2xx) through functions-framework.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import main
from bench.harness import PROBE, Pusher, on_other_cpus, push_body
from devstack.function_server import FunctionServer
from ride_predictor.loaders import load_model
from ride_predictor.messages import (
    build_prediction_message,
    decode_message,
    encode_message,
    prepare_features,
)
from ride_predictor.model_holder import ModelHolder
from ride_predictor.publisher import OutgoingMessage, PubSubPublisher
from ride_predictor.settings import DEFAULT_MODEL_NAME

TOPIC = "ride-predictions"
# The function as deployed, as functions-framework serves it (suffix of its figures: none).
END_TO_END_VARIANTS = {"": "main"}


class NullPublisher:
    """Accepts every message and does nothing: the handler's cost without the network."""

    def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        return [""] * len(messages)


def per_call(fn: Callable[[], Any], calls: int, warmup: int = 3) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of ``fn``, averaged over ``calls`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (
        (time.process_time() - cpu) / calls * 1e6,
        (time.perf_counter() - wall) / calls * 1e6,
    )


def rides(count: int, seed: int) -> list[dict[str, Any]]:
    """Ride events over the 265 taxi zones."""
    rng = random.Random(seed)  # noqa: S311 - benchmark data, not a secret
    return [
        {
            "ride": {
                "PULocationID": rng.randint(1, 265),
                "DOLocationID": rng.randint(1, 265),
                "trip_distance": round(rng.gammavariate(2.0, 1.6), 2),
            },
            "ride_id": index,
        }
        for index in range(count)
    ]


def event_data(payload: Any) -> dict[str, Any]:
    """A CloudEvent's data for a Pub/Sub message holding ``payload`` as JSON."""
    return {
        "message": {
            "data": base64.b64encode(json.dumps(payload).encode()).decode(),
            "messageId": "bench",
            "publishTime": "2024-01-08T08:22:49.792Z",
            "attributes": {},
        },
        "subscription": "projects/bench/subscriptions/bench",
    }


# Imports the loading process does before the clock starts: the load alone is timed,
# including what the format itself imports (skops, cloudpickle) on first use.
_LOAD_PROBE = """
import sys, time
import mlflow.sklearn, sklearn.pipeline, sklearn.feature_extraction, sklearn.linear_model
began = time.perf_counter()
mlflow.sklearn.load_model(sys.argv[1])
print((time.perf_counter() - began) * 1000)
"""


def model_formats(
    model_dir: Path, work_dir: Path, rounds: int, quick: bool
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """First-load time in a fresh process (ms) and size (bytes) of the pipeline in each format."""
    import mlflow.sklearn

    pipeline = mlflow.sklearn.load_model(str(model_dir))
    dirs = {}
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    for fmt in ("cloudpickle", "pickle", "skops"):
        path = work_dir / f"format-{fmt}"
        shutil.rmtree(path, ignore_errors=True)
        mlflow.sklearn.save_model(pipeline, str(path), serialization_format=fmt)
        dirs[fmt] = path
    sizes = {
        fmt: sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        for fmt, path in dirs.items()
    }
    times: dict[str, list[float]] = {fmt: [] for fmt in dirs}
    for _ in range(1 if quick else rounds):
        for fmt, path in dirs.items():
            output = subprocess.run(
                [sys.executable, "-c", _LOAD_PROBE, str(path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            times[fmt].append(float(output.strip().splitlines()[-1]))
    return times, sizes


def predict_levers(
    model_dir: Path, tutorial_dir: Path, rounds: int, calls: int
) -> dict[str, list[float]]:
    """CPU µs per call of each way to call the model, for one ride and for 1,000."""
    import mlflow.pyfunc
    import mlflow.sklearn
    import sklearn

    tutorial = mlflow.pyfunc.load_model(str(tutorial_dir))
    flavour = mlflow.sklearn.load_model(str(model_dir))
    project = load_model(str(model_dir), "m", None)
    rows = [prepare_features(ride["ride"]) for ride in rides(1000, seed=3)]
    one = rows[:1]

    def fast_config(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
                return fn()

        return call

    cases: dict[str, Callable[[], Any]] = {
        "pyfunc predict(dict), 1 ride": lambda: tutorial.predict(one[0]),
        "sklearn predict([dict]), 1 ride": lambda: flavour.predict(one),
        "sklearn + config_context, 1 ride": fast_config(lambda: flavour.predict(one)),
        "project LoadedModel.predict, 1 ride": lambda: project.predict(one),
        "pyfunc predict(list of dicts), 1000 rides": lambda: tutorial.predict(rows),
        "sklearn predict, 1000 rides": lambda: flavour.predict(rows),
        "sklearn + config_context, 1000 rides": fast_config(lambda: flavour.predict(rows)),
        "project LoadedModel.predict, 1000 rides": lambda: project.predict(rows),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            repeat = calls if "1 ride" in name else max(3, calls // 50)
            results[name].append(per_call(fn, repeat)[0])
    return results


def publish_levers(rounds: int, calls: int) -> dict[str, list[float]]:
    """CPU and wall µs per publish call of each publisher, one message and 1,000."""
    from google.cloud import pubsub_v1

    topic = f"projects/{os.environ['PROJECT_ID']}/topics/{TOPIC}"
    data = json.dumps(
        {"model": "m", "version": "v" * 32, "prediction": {"ride_duration": 18, "ride_id": 123}}
    ).encode()
    attributes = {"ride_id": "123", "model_version": "v" * 32, "source_message_id": "1" * 16}
    default = pubsub_v1.PublisherClient()
    no_wait = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_latency=0.0)
    )
    project = PubSubPublisher()
    one = [OutgoingMessage(data, attributes)]
    thousand = one * 1000

    def client_publish(client: Any, count: int) -> Callable[[], Any]:
        def call() -> Any:
            futures = [client.publish(topic, data, **attributes) for _ in range(count)]
            return [future.result() for future in futures]

        return call

    cases: dict[str, Callable[[], Any]] = {
        "client, default batching, 1 message": client_publish(default, 1),
        "client, max_latency=0, 1 message": client_publish(no_wait, 1),
        "project publisher, 1 message": lambda: project.publish(topic, one),
        "client, max_latency=0, 1000 messages": client_publish(no_wait, 1000),
        "project publisher, 1000 messages": lambda: project.publish(topic, thousand),
    }
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, fn in cases.items():
            cpu, wall = per_call(fn, calls if "1 message" in name else max(3, calls // 50))
            results.setdefault(f"{name}: CPU", []).append(cpu)
            results.setdefault(f"{name}: wall", []).append(wall)
    return results


def handler_levers(model_dir: Path, rounds: int, calls: int, real_publish: bool) -> dict[str, Any]:
    """``PredictionService.handle`` in process: µs per single-ride message, ms per 1,000 rides."""
    loader = ModelHolder(str(model_dir), DEFAULT_MODEL_NAME)
    loader.get()
    settings = main.Settings(model_uri=str(model_dir), project_id=os.environ["PROJECT_ID"])
    services: dict[str, Any] = {
        "no network": main.PredictionService(settings, loader, NullPublisher()),
    }
    if real_publish:
        services["publish to the emulator"] = main.PredictionService(
            settings, loader, PubSubPublisher()
        )
    singles = [event_data(ride) for ride in rides(calls, seed=5)]
    batch = event_data(rides(1000, seed=6))
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, service in services.items():
            cycle = iter(singles * 2)
            cpu, wall = per_call(lambda s=service, c=cycle: s.handle(next(c)), calls)
            results.setdefault(f"1 ride, {name}: CPU µs", []).append(cpu)
            results.setdefault(f"1 ride, {name}: wall µs", []).append(wall)
            cpu, wall = per_call(lambda s=service: s.handle(batch), max(3, calls // 50))
            results.setdefault(f"1000 rides, {name}: CPU ms", []).append(cpu / 1000)
            results.setdefault(f"1000 rides, {name}: wall ms", []).append(wall / 1000)
    return results


def batch_end_to_end(
    model_dir: Path, work_dir: Path, rounds: int, messages: int
) -> dict[str, list[float]]:
    """ms per 1,000-ride message from the POST to the 2xx, through functions-framework.

    Each variant of ``END_TO_END_VARIANTS`` is served by the bench probe on this process's CPU
    (the function's) and publishes to the emulator; the client POSTs from the other CPUs, one
    message at a time, the variants taking turns within each round.
    """
    log_dir = work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    servers = {
        suffix: FunctionServer(
            {"MODEL_URI": str(model_dir), "PUBLISH_STREAM": TOPIC, "BENCH_VARIANT": module},
            log_dir,
            source=PROBE,
            log_name=f"levers-end-to-end-{module}.log",
        )
        for suffix, module in END_TO_END_VARIANTS.items()
    }
    path = f"/projects/{os.environ['PROJECT_ID']}/topics/taxi-ride-streaming"
    bodies = [push_body(json.dumps(rides(1000, seed=20 + i)).encode()) for i in range(messages)]
    results: dict[str, list[float]] = {}
    failure: list[BaseException] = []

    def client() -> None:
        on_other_cpus()  # this thread only: the functions keep their CPU
        try:
            pushers = {suffix: Pusher(server.port, path) for suffix, server in servers.items()}
            for pusher in pushers.values():
                if not 200 <= pusher.post(bodies[0]) < 300:  # loads the model: untimed
                    raise RuntimeError("a 1,000-ride warm-up message failed")
            for _ in range(rounds):
                for suffix, pusher in pushers.items():
                    times = []
                    for body in bodies:
                        began = time.perf_counter()
                        if not 200 <= pusher.post(body) < 300:
                            raise RuntimeError(f"a 1,000-ride message failed{suffix}")
                        times.append((time.perf_counter() - began) * 1000)
                    key = f"1000 rides, end to end (functions-framework, emulator){suffix}: wall ms"
                    results.setdefault(key, []).append(statistics.median(times))
            for pusher in pushers.values():
                pusher.close()
        except BaseException as error:  # reported by the caller's thread
            failure.append(error)

    try:
        for server in servers.values():
            server.start()
        thread = threading.Thread(target=client)
        thread.start()
        thread.join()
    finally:
        for server in servers.values():
            server.stop()
    if failure:
        raise failure[0]
    return results


def contract_levers(rounds: int, calls: int) -> dict[str, list[float]]:
    """CPU µs of the message contract's own work (msgspec), next to ``json.dumps``."""
    single = json.dumps(rides(1, seed=7)[0]).encode()
    batch = json.dumps(rides(1000, seed=8)).encode()
    name, version = DEFAULT_MODEL_NAME, "v" * 32
    dicts = [
        {"model": name, "version": version, "prediction": {"ride_duration": 18, "ride_id": i}}
        for i in range(1000)
    ]

    def encode() -> list[bytes]:
        outputs = [build_prediction_message(name, version, i, 17.6) for i in range(1000)]
        return [encode_message(output) for output in outputs]

    cases: dict[str, Callable[[], Any]] = {
        "decode + validate, 1 ride, msgspec": lambda: decode_message(single, 1 << 20),
        "decode + validate, 1000 rides, msgspec": lambda: decode_message(batch, 1 << 20),
        "build + encode 1000 outputs, msgspec": encode,
        "json.dumps of 1000 output dicts": lambda: [json.dumps(m).encode() for m in dicts],
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for case, fn in cases.items():
            repeat = calls * 10 if "1 ride" in case else max(3, calls // 10)
            results[case].append(per_call(fn, repeat)[0])
    return results


def log_line_levers(rounds: int, calls: int) -> list[float]:
    """CPU µs of one per-message log line (JSON formatting and the write, to /dev/null)."""
    fields = {"message_id": "1" * 16, "model_version": "v" * 32, "ride_id": 123}
    return [
        per_call(lambda: main.logger.info("prediction published", extra={"fields": fields}), calls)[
            0
        ]
        for _ in range(rounds)
    ]


def main_(argv: Sequence[str] | None = None) -> int:
    """Measure every lever and write them as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.levers", description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--tutorial-model-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    # The function's log lines (one per message) are part of its cost; they go nowhere here.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    for handler in main.logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    calls = 20 if args.quick else 500
    real_publish = bool(os.environ.get("PUBSUB_EMULATOR_HOST"))
    load_ms, sizes = model_formats(args.model_dir, args.work_dir, args.rounds, args.quick)
    results: dict[str, Any] = {
        "model_load_ms": load_ms,
        "model_bytes": sizes,
        "predict_us": predict_levers(args.model_dir, args.tutorial_model_dir, args.rounds, calls),
        "log_line_us": log_line_levers(args.rounds, calls),
        "contract_us": contract_levers(args.rounds, calls),
        "handler": handler_levers(args.model_dir, args.rounds, calls, real_publish),
    }
    if real_publish:
        results["publish_us"] = publish_levers(args.rounds, calls)
        results["handler"] |= batch_end_to_end(
            args.model_dir, args.work_dir, args.rounds, 3 if args.quick else 10
        )
    args.out.write_text(json.dumps(results, indent=1))
    print(
        json.dumps({k: statistics.median(v) for k, v in results["handler"].items()}),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main_())
