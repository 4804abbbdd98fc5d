"""Bench-only entry point: serves one variant's ``predict_duration`` and times every call.

functions-framework loads this file as the ``--source``; ``BENCH_VARIANT`` names the module to
wrap (``main`` for the project, ``baseline_main`` or ``floor_main`` from this folder). For each
call it records the wall time, the CPU time of the whole process (``time.process_time``: every
thread, so the Pub/Sub client's background threads count too) and the CPU time of the handling
thread (``time.thread_time``). A push whose message has the attribute ``bench_control`` is a
command from the harness, not a ride: ``reset`` forgets the records, ``dump:<path>`` writes them
as JSON with the startup timeline and the heavy packages this process has imported. With
``BENCH_PUBLISH_METER`` set, ``bench.publish_meter`` keeps every Publish RPC the variant sends;
``reset`` forgets them too, and ``dump`` adds their histogram (``publish``).
"""

import importlib
import json
import os
import sys
import time
from pathlib import Path

STARTED = time.time()  # wall clock, comparable with the harness's spawn time

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO_ROOT))

import functions_framework  # noqa: E402

from bench import publish_meter  # noqa: E402

if os.environ.get("BENCH_PUBLISH_METER"):
    publish_meter.install()

FRAMEWORK_IMPORTED = time.time()
_variant = importlib.import_module(os.environ["BENCH_VARIANT"])
_target = _variant.predict_duration
VARIANT_IMPORTED = time.time()

# Packages whose presence tells what a variant really imported (reported, not timed).
WATCHED_PACKAGES = (
    "google.cloud.pubsub_v1",
    "google.cloud.storage",
    "grpc",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.sklearn",
    "sklearn",
    "scipy",
    "pandas",
    "skops",
)

_records: list[tuple[float, float, float]] = []
_first_call: dict[str, float] = {}


def _control(command: str) -> str:
    if command == "reset":
        _records.clear()
        publish_meter.METER.reset()
    elif command.startswith("dump:"):
        report = {
            "pid": os.getpid(),
            "started": STARTED,
            "framework_imported": FRAMEWORK_IMPORTED,
            "variant_imported": VARIANT_IMPORTED,
            "first_call": _first_call,
            "packages": [name for name in WATCHED_PACKAGES if name in sys.modules],
            "records": _records,
            "publish": publish_meter.METER.histogram(),
        }
        Path(command.removeprefix("dump:")).write_text(json.dumps(report))
    return command


@functions_framework.cloud_event
def predict_duration(cloud_event):
    """Forward to the variant, timing the call (or run a harness command)."""
    message = cloud_event.data["message"]
    command = (message.get("attributes") or {}).get("bench_control")
    if command:
        return _control(command)
    wall, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
    called = time.time()
    try:
        return _target(cloud_event)
    finally:
        _records.append(
            (
                time.perf_counter() - wall,
                time.process_time() - cpu,
                time.thread_time() - thread,
            )
        )
        if not _first_call:
            _first_call.update(start=called, end=time.time())
