"""Measure one variant of the function end to end on the local stack (not deployed).

A variant is served by functions-framework through ``bench/variants/probe.py``, which times
every call inside the function's process. For one round of one variant ``measure_variant``:

1. **cold start**: spawns a fresh functions-framework process and POSTs the same Pub/Sub push
   request the emulator would send, again and again, until the first 2xx; the time from just
   before the spawn to that 2xx is the cold start;
2. **warm throughput**: ``concurrency`` pushers (keep-alive connections) POST ride messages for
   a warm-up, then for ``warm_seconds``; messages/s = 2xx answers / elapsed time;
3. **CPU per message**: one pusher sends ``cpu_messages`` messages one at a time; the probe's
   ``time.process_time`` delta around each call is its in-process CPU time (all threads, so the
   Pub/Sub client's own threads count);
   the CPU the function's processes (all threads) and the Pub/Sub emulator used in that window
   is divided by the messages answered;
4. **memory**: the PSS of every process of the function's process group (gunicorn's master and
   worker), read from ``/proc/<pid>/smaps_rollup`` right after step 3;
5. **batches** (variants that take JSON arrays): ``batch_messages`` messages of ``batch_size``
   rides one at a time; rides/s in the function (probe's wall time) and end to end (client).

``bare_import_seconds`` times a fresh interpreter that only imports a variant's libraries.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.function_server import FunctionServer
from devstack.processes import group_members

BENCH_DIR = Path(__file__).resolve().parent
PROBE = BENCH_DIR / "variants" / "probe.py"
# Between two cold-start probes while nothing listens yet: a connection refusal costs
# microseconds, so this bounds the probe's resolution, not the function's start.
COLD_POLL_SECONDS = 0.005
REQUEST_TIMEOUT_SECONDS = 120.0
COLD_START_TIMEOUT_SECONDS = 120.0


def _cpu_split() -> tuple[set[int], set[int]] | None:
    """(CPUs for the function, CPUs for everything else), or None on fewer than 2 CPUs.

    On Cloud Functions the function has its vCPU to itself and Pub/Sub runs elsewhere; here
    the emulators and the pushers would otherwise compete with it for the same cores.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


CPU_SPLIT = _cpu_split()


@contextlib.contextmanager
def on_function_cpus() -> Iterator[None]:
    """Run the block (and any process it spawns) on the function's CPUs, then move back.

    Linux affinity is per thread and inherited by children: a process spawned here, and every
    thread and process it starts later, stays on the function's CPUs.
    """
    if CPU_SPLIT is None:
        yield
        return
    os.sched_setaffinity(0, CPU_SPLIT[0])
    try:
        yield
    finally:
        os.sched_setaffinity(0, CPU_SPLIT[1])


def on_other_cpus() -> None:
    """Keep the calling thread (and what it spawns) off the function's CPUs."""
    if CPU_SPLIT is not None:
        os.sched_setaffinity(0, CPU_SPLIT[1])


@dataclass(frozen=True)
class Variant:
    """A function to measure: the module the probe wraps and the libraries it needs."""

    name: str
    module: str
    description: str
    # What ``bare_import_seconds`` imports: every library the variant needs to answer its
    # first message, as it imports them (including what MLflow imports to read gs:// and what
    # unpickling the model imports).
    bare_imports: tuple[str, ...]
    uses_model: bool = True
    takes_batches: bool = False
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    """How much work one round does (``quick`` sizes for the smoke test)."""

    warmup_seconds: float = 1.0
    warm_seconds: float = 4.0
    concurrency: int = 8
    cpu_messages: int = 400
    batch_size: int = 1000
    batch_messages: int = 12

    @classmethod
    def quick(cls) -> Sizes:
        """Tiny sizes: enough to exercise every step, not to measure anything."""
        return cls(
            warmup_seconds=0.2,
            warm_seconds=0.5,
            concurrency=2,
            cpu_messages=10,
            batch_size=50,
            batch_messages=2,
        )


@dataclass
class RoundResult:
    """Everything measured for one variant in one round (seconds, bytes, counts)."""

    variant: str
    round: int
    cold_start_s: float
    cold_start_attempts: int
    timeline: dict[str, float]
    warm_messages: int
    warm_errors: int
    warm_seconds: float
    warm_msgs_per_s: float
    # CPU seconds used during the warm window, per 2xx message: the function's process group
    # (every thread, framework included) and the Pub/Sub emulator's.
    warm_function_cpu_ms: float
    warm_emulator_cpu_ms: float
    cpu_ms: list[float]
    thread_cpu_ms: list[float]
    wall_ms: list[float]
    pss_bytes: int
    rss_bytes: int
    processes: int
    packages: list[str]
    batch_wall_ms: list[float] = field(default_factory=list)
    batch_e2e_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """Where the variants push: the function's URL path and the project it serves."""

    project_id: str
    input_topic: str = "taxi-ride-streaming"


def push_body(data: bytes, attributes: dict[str, str] | None = None) -> bytes:
    """A Pub/Sub push request body, as the emulator POSTs it."""
    return json.dumps(
        {
            "message": {
                "data": base64.b64encode(data).decode(),
                "messageId": uuid.uuid4().hex,
                "publishTime": "2024-01-08T08:22:49.792Z",
                "attributes": attributes or {},
            },
            "subscription": "projects/bench/subscriptions/taxi-ride-streaming-push",
        }
    ).encode()


def ride_bodies(rides: Sequence[dict[str, Any]]) -> list[bytes]:
    """One push body per ride event."""
    return [push_body(json.dumps(ride).encode()) for ride in rides]


def sample_rides(
    pairs: Sequence[tuple[int, int]], count: int, seed: int = 7
) -> list[dict[str, Any]]:
    """Ride events over the model's own zone pairs, with realistic distances."""
    rng = random.Random(seed)  # noqa: S311 - benchmark data, not a secret
    rides = []
    for ride_id in range(count):
        pickup, dropoff = rng.choice(pairs)
        rides.append(
            {
                "ride": {
                    "PULocationID": pickup,
                    "DOLocationID": dropoff,
                    "trip_distance": round(rng.gammavariate(2.0, 1.6), 2),
                },
                "ride_id": ride_id,
            }
        )
    return rides


class Pusher:
    """POSTs push bodies to one function over a keep-alive connection."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self._connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> int:
        """POST ``body``; return the HTTP status (reconnects once if the server closed)."""
        for attempt in range(2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_SECONDS
                )
            try:
                self._connection.request(
                    "POST", self.path, body, {"Content-Type": "application/json"}
                )
                response = self._connection.getresponse()
                response.read()
                return response.status
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _first_success(
    port: int, path: str, body: bytes, deadline: float, result: dict[str, Any]
) -> None:
    """POST ``body`` until a 2xx arrives; record when, and how many attempts it took."""
    on_other_cpus()
    attempts = 0
    while time.perf_counter() < deadline:
        attempts += 1
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if 200 <= response.status < 300:
                result["at"] = time.perf_counter()
                result["wall_at"] = time.time()
                break
            result["last_status"] = response.status
        except (OSError, http.client.HTTPException):
            time.sleep(COLD_POLL_SECONDS)
        finally:
            connection.close()
    result["attempts"] = attempts


def push_for(
    port: int, path: str, bodies: Sequence[bytes], concurrency: int, seconds: float
) -> tuple[int, int, float]:
    """``concurrency`` pushers POST for ``seconds``; return (2xx count, other count, elapsed)."""
    stop = threading.Event()
    counts = [[0, 0] for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)

    def run(index: int) -> None:
        on_other_cpus()
        pusher = Pusher(port, path)
        cycle = itertools.cycle(bodies[index::concurrency] or bodies)
        start.wait()
        try:
            while not stop.is_set():
                status = pusher.post(next(cycle))
                counts[index][0 if 200 <= status < 300 else 1] += 1
        finally:
            pusher.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)  # the measurement window itself, not a wait for readiness
    stop.set()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_SECONDS)
    elapsed = time.perf_counter() - began
    return sum(c[0] for c in counts), sum(c[1] for c in counts), elapsed


def cpu_seconds_of_group(process_group_id: int | None) -> float:
    """User + system CPU seconds of the live processes of a group, from /proc/<pid>/stat."""
    if process_group_id is None:
        return 0.0
    ticks = 0
    for pid in group_members(process_group_id):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_of_group(process_group_id: int) -> tuple[int, int, int]:
    """(PSS, RSS, process count) summed over a live process group, from smaps_rollup."""
    pss = rss = 0
    members = group_members(process_group_id)
    for pid in members:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            key, _, value = line.partition(":")
            if key in ("Pss", "Rss"):
                kib = int(value.split()[0]) * 1024
                if key == "Pss":
                    pss += kib
                else:
                    rss += kib
    return pss, rss, len(members)


def _control(pusher: Pusher, command: str) -> None:
    status = pusher.post(push_body(b"{}", {"bench_control": command}))
    if not 200 <= status < 300:
        raise RuntimeError(f"bench control {command!r} answered {status}")


def _dump(pusher: Pusher, path: Path) -> dict[str, Any]:
    _control(pusher, f"dump:{path}")
    return json.loads(path.read_text())


def probe_dump(port: int, path: str, dump_path: Path) -> dict[str, Any]:
    """What the probe of the function on ``port`` recorded since its last reset (written to
    ``dump_path``, see bench/variants/probe.py); then reset it."""
    pusher = Pusher(port, path)
    try:
        report = _dump(pusher, dump_path)
        _control(pusher, "reset")
    finally:
        pusher.close()
    return report


def measure_variant(
    variant: Variant,
    round_index: int,
    env: dict[str, str],
    log_dir: Path,
    target: Target,
    rides: Sequence[dict[str, Any]],
    batches: Sequence[list[dict[str, Any]]],
    sizes: Sizes,
    emulator_group: int | None = None,
) -> RoundResult:
    """One round of one variant: steps 1 to 5 of the module doc, then the process is stopped."""
    server = FunctionServer(
        {**env, **variant.env, "BENCH_VARIANT": variant.module},
        log_dir,
        source=PROBE,
        target="predict_duration",
        python=sys.executable,
        log_name=f"{variant.name}-round{round_index}.log",
    )
    path = f"/projects/{target.project_id}/topics/{target.input_topic}"
    bodies = ride_bodies(rides)
    dump_path = log_dir / f"{variant.name}-round{round_index}-probe.json"
    try:
        cold = _cold_start(variant, server, path, bodies[0])
        warm = _warm_phase(server, path, bodies, sizes, emulator_group)
        pusher = Pusher(server.port, path)
        report = _cpu_phase(variant, pusher, bodies[: sizes.cpu_messages], dump_path)
        assert server.process is not None
        memory = memory_of_group(server.process.pid)
        batch_e2e: list[float] = []
        batch_wall: list[float] = []
        if variant.takes_batches and batches:
            batch_e2e, batch_wall = _batch_phase(variant, pusher, batches, dump_path)
        pusher.close()
    finally:
        server.stop()
    return _round_result(variant, round_index, cold, warm, report, memory, batch_wall, batch_e2e)


@dataclass(frozen=True)
class _ColdStart:
    """Step 1: the spawn (monotonic and wall clock) and the first 2xx (``_first_success``)."""

    spawned: float
    spawned_wall: float
    first: dict[str, Any]

    @property
    def seconds(self) -> float:
        return float(self.first["at"]) - self.spawned


@dataclass(frozen=True)
class _Warm:
    """Step 2: 2xx and failed answers, the window, and the CPU of the function and emulator."""

    ok: int
    failed: int
    elapsed: float
    function_cpu: float
    emulator_cpu: float


def _cold_start(variant: Variant, server: FunctionServer, path: str, body: bytes) -> _ColdStart:
    """Spawn the function and push ``body`` until the first 2xx (the poller runs meanwhile)."""
    first: dict[str, Any] = {}
    poller = threading.Thread(
        target=_first_success,
        args=(server.port, path, body, time.perf_counter() + COLD_START_TIMEOUT_SECONDS, first),
        daemon=True,
    )
    try:
        poller.start()
        spawned, spawned_wall = time.perf_counter(), time.time()
        with on_function_cpus():
            server.start()
        poller.join(COLD_START_TIMEOUT_SECONDS)
    finally:
        poller.join(1.0)
    if "at" not in first:
        raise RuntimeError(
            f"{variant.name}: no 2xx within {COLD_START_TIMEOUT_SECONDS}s "
            f"(last status {first.get('last_status')}); see {server.log_path}"
        )
    return _ColdStart(spawned, spawned_wall, first)


def _warm_phase(
    server: FunctionServer,
    path: str,
    bodies: Sequence[bytes],
    sizes: Sizes,
    emulator_group: int | None,
) -> _Warm:
    """A warm-up, then ``sizes.warm_seconds`` of pushes, the CPU read around them."""
    push_for(server.port, path, bodies, sizes.concurrency, sizes.warmup_seconds)
    assert server.process is not None
    group = server.process.pid
    cpu_before = (cpu_seconds_of_group(group), cpu_seconds_of_group(emulator_group))
    ok, failed, elapsed = push_for(server.port, path, bodies, sizes.concurrency, sizes.warm_seconds)
    return _Warm(
        ok,
        failed,
        elapsed,
        function_cpu=cpu_seconds_of_group(group) - cpu_before[0],
        emulator_cpu=cpu_seconds_of_group(emulator_group) - cpu_before[1],
    )


def _cpu_phase(
    variant: Variant, pusher: Pusher, bodies: Sequence[bytes], dump_path: Path
) -> dict[str, Any]:
    """Step 3: the messages one at a time, the probe's records reset before and dumped after."""
    _control(pusher, "reset")
    for body in bodies:
        if not 200 <= pusher.post(body) < 300:
            raise RuntimeError(f"{variant.name}: a CPU-phase push failed")
    return _dump(pusher, dump_path)


def _batch_phase(
    variant: Variant, pusher: Pusher, batches: Sequence[list[dict[str, Any]]], dump_path: Path
) -> tuple[list[float], list[float]]:
    """Step 5: (end-to-end ms, in-function wall ms) of each 1,000-ride message."""
    _control(pusher, "reset")
    batch_e2e = []
    for batch in batches:
        body = push_body(json.dumps(batch).encode())
        began = time.perf_counter()
        if not 200 <= pusher.post(body) < 300:
            raise RuntimeError(f"{variant.name}: a batch push failed")
        batch_e2e.append((time.perf_counter() - began) * 1000)
    batch_report = _dump(pusher, dump_path.with_suffix(".batch.json"))
    return batch_e2e, [wall * 1000 for wall, _cpu, _thread in batch_report["records"]]


def _timeline(report: dict[str, Any], cold: _ColdStart) -> dict[str, float]:
    """The cold start's steps, in seconds after the spawn (wall clocks of two processes on one
    host)."""
    first_call = report["first_call"]
    return {
        "framework_imported": report["framework_imported"] - cold.spawned_wall,
        "variant_imported": report["variant_imported"] - cold.spawned_wall,
        "first_call_start": first_call.get("start", 0.0) - cold.spawned_wall,
        "first_call_end": first_call.get("end", 0.0) - cold.spawned_wall,
        "first_2xx": cold.first["wall_at"] - cold.spawned_wall,
    }


def _round_result(
    variant: Variant,
    round_index: int,
    cold: _ColdStart,
    warm: _Warm,
    report: dict[str, Any],
    memory: tuple[int, int, int],
    batch_wall: list[float],
    batch_e2e: list[float],
) -> RoundResult:
    records = report["records"]
    pss, rss, processes = memory
    return RoundResult(
        variant=variant.name,
        round=round_index,
        cold_start_s=cold.seconds,
        cold_start_attempts=cold.first["attempts"],
        timeline=_timeline(report, cold),
        warm_messages=warm.ok,
        warm_errors=warm.failed,
        warm_seconds=warm.elapsed,
        warm_msgs_per_s=warm.ok / warm.elapsed,
        warm_function_cpu_ms=warm.function_cpu * 1000 / max(warm.ok, 1),
        warm_emulator_cpu_ms=warm.emulator_cpu * 1000 / max(warm.ok, 1),
        cpu_ms=[cpu * 1000 for _wall, cpu, _thread in records],
        thread_cpu_ms=[thread * 1000 for _wall, _cpu, thread in records],
        wall_ms=[wall * 1000 for wall, _cpu, _thread in records],
        pss_bytes=pss,
        rss_bytes=rss,
        processes=processes,
        packages=report["packages"],
        batch_wall_ms=batch_wall,
        batch_e2e_ms=batch_e2e,
    )


def bare_import_seconds(modules: Sequence[str], cwd: Path) -> float:
    """Spawn a fresh interpreter that only imports ``modules``; seconds from the spawn until
    it says the imports are done (its shutdown, which can take long, is not counted)."""
    began = time.perf_counter()
    with (
        on_function_cpus(),
        subprocess.Popen(
            [sys.executable, "-c", f"import {', '.join(modules)}; print('imported', flush=True)"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        ) as process,
    ):
        assert process.stdout is not None
        line = process.stdout.readline()
        imported = time.perf_counter()
        process.stdout.read()
        if process.wait() != 0 or line.strip() != b"imported":
            raise RuntimeError(f"importing {modules} failed")
    return imported - began


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return statistics.median(values) if values else float("nan")
