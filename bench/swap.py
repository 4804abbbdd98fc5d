"""``python -m bench.swap``: what a hot swap costs the requests served meanwhile (run by ``bench``).

In one process, as on one Cloud Functions instance: ``--threads`` request threads call
``main.PredictionService.handle`` (one ride per message, in-memory publisher: everything but the
network) as fast as they can, while a ``ModelHolder`` following an alias swaps between two models
of the bench's size (trained with the project's own command) every ``--period`` seconds. Each
request's latency is recorded with the time it started; requests that overlap a refresh (from
the resolution to the end of the collection that frees the old model) form the *swap* window,
the rest the *steady* one. Reported per variant, on the same run:

* throughput (messages/s) and p50/p99 latency in each window, and failed requests (must be 0);
* ``default``: the loader as deployed; ``nice``: its refresh thread at nice 19 (Linux
  ``setpriority`` on the thread), to see whether a lower priority spares the requests;
* ``stages``: each stage of a swap timed alone (read and unpickle, the fast path's check, the
  full collection that frees the old model), to see whether loading in smaller steps could
  help: a stage that is one C call holds the GIL from start to end, whatever its priority.

The whole process runs on the function's CPU (``harness.on_function_cpus``): one core, as the
function's one vCPU, so the load competes with the requests as it does there.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "swap.json"


def train(work_dir: Path, rides: int, zones: int, seed: int) -> Path:
    """A bench-size model directory, trained by the bench's own step (cached in work_dir)."""
    from bench.__main__ import train_model

    target = work_dir / f"swap-model-{seed}"
    if not (target / "MLmodel").exists():
        shutil.copytree(train_model(work_dir / f"swap-train-{seed}", rides, zones, seed), target)
    return target


class SwappingHolder:
    """The model holder as deployed, following an alias that the test flips between two model
    directories, each refresh timed (``windows``) and each swap's duration kept (``swap_ms``)."""

    def __init__(self, name: str, model_dirs: dict[str, Path], period: float) -> None:
        from ride_predictor.background import PeriodicWork
        from ride_predictor.model_holder import ModelHolder

        self.variant = name
        self.model_dirs = model_dirs
        self.version = "1"
        self.windows: list[tuple[float, float]] = []
        self.swap_ms: list[float] = []
        self.holder = ModelHolder(
            "models:/bench@champion", "m", refresh_seconds=period, load=self.load,
            resolve=lambda uri: self.version,
        )  # fmt: skip
        # The same periodic work, timed: what the service starts after a message once it is due.
        self.holder.refresh_work = PeriodicWork("model-refresh", self.timed_refresh, period)

    def load(self, uri: str, model_name: str, override: str | None) -> Any:
        from ride_predictor.loaders import LoadedModel, load_model

        version = uri.rsplit("/", 1)[1]
        if self.variant == "nice":  # the refresh thread (which calls this) at the lowest priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        loaded = load_model(str(self.model_dirs[version]), model_name, None)
        return LoadedModel(loaded.name, version, uri, loaded.flavor, loaded.predict)

    def timed_refresh(self) -> None:
        before = self.holder.get().version  # not the model: the swap waits for its release
        started = time.perf_counter()
        self.holder.refresh()
        ended = time.perf_counter()
        self.windows.append((started, ended))
        if self.holder.get().version != before:
            self.swap_ms.append(round((ended - started) * 1000, 1))

    def flip(self, stop: threading.Event, period: float) -> None:
        """Move the alias to the other version every ``period`` until ``stop``."""
        while not stop.wait(period):
            self.version = "2" if self.version == "1" else "1"


class NullPublisher:
    """Accepts every message and does nothing: everything but the network."""

    def publish(self, topic: str, messages: Any) -> list[str]:
        return [""] * len(messages)


def run_variant(
    name: str, model_dirs: dict[str, Path], threads: int, seconds: float, period: float
) -> dict[str, Any]:
    """Serve requests on ``threads`` threads for ``seconds`` while the alias flips every
    ``period``; return the windows' throughput and latency."""
    import main

    swapping = SwappingHolder(name, model_dirs, period)
    # The per-message log line at DEBUG, below the logger's level: not written, as in levers.
    settings = main.Settings(
        model_uri=swapping.holder.model_uri, project_id="bench", model_name="m",
        message_log_level="DEBUG",
    )  # fmt: skip
    service = main.PredictionService(settings, swapping.holder, NullPublisher())
    swapping.holder.get()
    samples, failures, begin, end = serve(service, swapping, threads, seconds, period)
    while swapping.holder.refreshing:  # let the last refresh end before the next variant
        time.sleep(0.01)
    return {
        "variant": name,
        "refreshes": len(swapping.windows),
        "swaps": len(swapping.swap_ms),
        "swap_ms": swapping.swap_ms,  # each swap's refresh, from resolution to collection
        "failed_requests": len(failures),
        **split_windows(samples, swapping.windows, begin, end),
    }


def serve(
    service: Any, swapping: SwappingHolder, threads: int, seconds: float, period: float
) -> tuple[list[tuple[float, float]], list[str], float, float]:
    """``threads`` request threads as fast as they can, and the alias flipping, for ``seconds``:
    (start, latency) of every request, the failures, and when the run began and ended."""
    ride = {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 1}
    event = {"message": {"data": base64.b64encode(json.dumps(ride).encode()).decode()}}
    samples: list[tuple[float, float]] = []
    failures: list[str] = []
    stop = threading.Event()

    def request_thread() -> None:
        local: list[tuple[float, float]] = []
        while not stop.is_set():
            started = time.perf_counter()
            try:
                service.handle(event, "bench")
            except Exception as error:  # counted: a swap must fail no request
                failures.append(repr(error))
            local.append((started, time.perf_counter() - started))
        samples.extend(local)

    workers = [threading.Thread(target=request_thread) for _ in range(threads)]
    workers.append(threading.Thread(target=swapping.flip, args=(stop, period)))
    begin = time.perf_counter()
    for worker in workers:
        worker.start()
    stop.wait(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return samples, failures, begin, time.perf_counter()


def split_windows(
    samples: list[tuple[float, float]],
    refresh_windows: list[tuple[float, float]],
    begin: float,
    end: float,
) -> dict[str, Any]:
    """The requests that overlap a refresh (the *swap* window) and the rest (*steady*)."""

    def in_swap(started: float, latency: float) -> bool:
        return any(s <= started + latency and started <= e for s, e in refresh_windows)

    swap = [latency for started, latency in samples if in_swap(started, latency)]
    steady = [latency for started, latency in samples if not in_swap(started, latency)]
    swap_seconds = sum(min(e, end) - max(s, begin) for s, e in refresh_windows)
    return {
        "swap_window_s": round(swap_seconds, 2),
        "steady": window(steady, end - begin - swap_seconds),
        "swap": window(swap, swap_seconds),
    }


def window(latencies: list[float], window_seconds: float) -> dict[str, float]:
    """Messages, throughput and latency percentiles of one window."""
    ordered = sorted(latencies)
    return {
        "messages": len(ordered),
        "msgs_per_s": round(len(ordered) / window_seconds, 1) if window_seconds else 0.0,
        "p50_ms": round(statistics.median(ordered) * 1000, 3) if ordered else 0.0,
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 3) if ordered else 0.0,
        "max_ms": round(ordered[-1] * 1000, 3) if ordered else 0.0,
    }


def stages(model_dirs: dict[str, Path], rounds: int = 3) -> dict[str, float]:
    """Median ms of each stage of a swap, alone in this thread: each is one stretch that holds
    the GIL (C code: the unpickling, the collection), except the fast-path check (Python)."""
    import gc

    from ride_predictor.fast_path import sklearn_predictor
    from ride_predictor.loaders import _load_directly, load_model

    load_model(str(model_dirs["1"]), "m", None)
    gc.freeze()
    timings: dict[str, list[float]] = {"read_unpickle_ms": [], "check_ms": [], "collect_ms": []}
    for round_index in range(rounds * 2):
        path = str(model_dirs["2" if round_index % 2 == 0 else "1"])
        started = time.perf_counter()
        direct = _load_directly(path)
        assert direct is not None
        read = time.perf_counter()
        predictor = sklearn_predictor(direct[1])
        checked = time.perf_counter()
        del direct, predictor
        gc.unfreeze()
        collecting = time.perf_counter()
        gc.collect()
        collected = time.perf_counter()
        gc.freeze()
        timings["read_unpickle_ms"].append((read - started) * 1000)
        timings["check_ms"].append((checked - read) * 1000)
        timings["collect_ms"].append((collected - collecting) * 1000)
    return {name: round(statistics.median(values), 1) for name, values in timings.items()} | {
        "frozen_objects": gc.get_freeze_count()
    }


def markdown(results: list[dict[str, Any]]) -> str:
    """The results as a table."""
    lines = [
        "| variant | window | msgs/s | p50 ms | p99 ms | max ms | messages | failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for window in ("steady", "swap"):
            w = result[window]
            lines.append(
                f"| {result['variant']} | {window} | {w['msgs_per_s']} | {w['p50_ms']} | "
                f"{w['p99_ms']} | {w['max_ms']} | {w['messages']} | "
                f"{result['failed_requests'] if window == 'swap' else ''} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Train (or reuse) the two models, run every variant, write the JSON and print a table."""
    parser = argparse.ArgumentParser(prog="python -m bench.swap", description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_OUT.parent / "raw")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rides", type=int, default=200_000)
    parser.add_argument("--zones", type=int, default=265)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--period", type=float, default=2.0)
    parser.add_argument("--variants", nargs="+", default=["default", "nice"] * 2)
    args = parser.parse_args(argv)
    from bench.harness import on_function_cpus, on_other_cpus

    on_other_cpus()
    model_dirs = {
        "1": train(args.work_dir, args.rides, args.zones, 42),
        "2": train(args.work_dir, args.rides, args.zones, 7),
    }
    results = []
    with on_function_cpus():
        for variant in args.variants:
            print(f"… swap bench: {variant}", file=sys.stderr, flush=True)
            results.append(
                run_variant(variant, model_dirs, args.threads, args.seconds, args.period)
            )
        stage_ms = stages(model_dirs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"variants": results, "stages": stage_ms}, indent=1))
    print(markdown(results))
    print(f"\nstages of one swap, alone (median ms): {stage_ms}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
