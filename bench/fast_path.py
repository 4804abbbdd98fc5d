"""``python -m bench.fast_path``: what the linear fast path saves, under each billing mode.

The project as deployed and the same project with the pipeline's own ``predict``
(``bench/variants/pipeline_main.py``), in one run, rounds interleaved:

* in process, ``PredictionService.handle`` with an in-memory publisher: CPU per single-ride
  message and per 1,000-ride message (the handler's own cost, no framework, no network);
* one instance as deployed (functions-framework on the function's CPU, Publish RPCs through a
  ``--rtt-ms`` round trip, ``bench.concurrency``) at concurrency 1 and ``--concurrency``:
  messages per second, the function's CPU per message, latency, and 1,000-ride messages.

From those, the compute per million rides (``bench.cost``, the deploy's 1 vCPU / 1 GiB):
instance-based billing bills CPU per message (instances ∝ 1 ÷ capacity); request-based bills
instance time while requests are in flight: at full load 1 ÷ capacity too, at a trickle each
request's latency rounded up to 100 ms. Writes ``results.json`` and ``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import concurrency, cost
from bench.harness import BENCH_DIR, Target, Variant, on_function_cpus, sample_rides
from bench.levers import NullPublisher, event_data, per_call, rides

DEFAULT_OUT = BENCH_DIR / "results" / "fast-path"
PROJECT, PIPELINE = "project", "pipeline"
VARIANTS = (
    Variant(PROJECT, "main", "main.py as deployed", (), takes_batches=True),
    Variant(PIPELINE, "pipeline_main", "main.py, pipeline.predict", (), takes_batches=True),
)


def step(message: str) -> None:
    """Progress on stderr."""
    print(f"… {message}", file=sys.stderr, flush=True)


def services(model_dir: Path) -> dict[str, Any]:
    """The two handlers in process: the loaded model, and the same with the pipeline's predict."""
    import main
    from ride_predictor.loaders import LoadedModel, _load_directly, load_model
    from ride_predictor.model_holder import ModelHolder

    fast = load_model(str(model_dir), "m", None)
    direct = _load_directly(str(model_dir))
    assert direct is not None, "the bench's model is read without MLflow"
    pipeline = LoadedModel(fast.name, fast.version, fast.source_uri, fast.flavor, direct[1].predict)
    settings = main.Settings(
        model_uri=str(model_dir), project_id="bench", message_log_level="DEBUG"
    )
    return {
        name: main.PredictionService(
            settings, ModelHolder("memory://", "m", load=lambda *_, m=model: m), NullPublisher()
        )
        for name, model in ((PROJECT, fast), (PIPELINE, pipeline))
    }


def in_process(model_dir: Path, rounds: int, calls: int) -> dict[str, list[float]]:
    """CPU µs per single-ride message and per 1,000-ride message, both handlers interleaved."""
    handlers = services(model_dir)
    singles = [event_data(ride) for ride in rides(calls, seed=5)]
    batch = event_data(rides(1000, seed=6))
    results: dict[str, list[float]] = {}
    with on_function_cpus():
        for _ in range(rounds):
            for name, service in handlers.items():
                cycle = iter(singles * 2)
                single = per_call(lambda s=service, c=cycle: s.handle(next(c)), calls)[0]
                thousand = per_call(lambda s=service: s.handle(batch), max(3, calls // 50))[0]
                results.setdefault(f"{name}: 1 ride, CPU µs", []).append(single)
                results.setdefault(f"{name}: 1000 rides, CPU µs", []).append(thousand)
    return results


def one_instance(args: argparse.Namespace, model_dir: Path, log_dir: Path) -> list[dict[str, Any]]:
    """Both variants as deployed, at concurrency 1 and ``args.concurrency``, behind the proxy."""
    from bench.delay_proxy import DelayProxyService
    from devstack.emulators import PubSubEmulator
    from devstack.pubsub_admin import PubSubAdmin
    from devstack.stack import STACK_TAG_VARIABLE

    # Every process started here carries the tag, so leftovers can be found (and tested).
    tag = {STACK_TAG_VARIABLE: str(args.work_dir.resolve())}
    target = Target("bench-project")
    pubsub = PubSubEmulator(target.project_id, log_dir, extra_env=tag)
    sizes = concurrency.ConcurrencySizes(
        levels=(1, args.concurrency), rtt_ms=args.rtt_ms, one_rpc_levels=(), other_rpc_caps=()
    )
    pairs = [(pickup, dropoff) for pickup in range(1, 266) for dropoff in range(1, 266)]
    rides_ = sample_rides(pairs, 2000)
    batches = [sample_rides(pairs, 1000, seed=11 + index) for index in range(sizes.batch_messages)]
    proxy: DelayProxyService | None = None
    try:
        pubsub.start()
        PubSubAdmin(pubsub.host, target.project_id).create_topic("ride-predictions")
        proxy = DelayProxyService(pubsub.host, sizes.rtt_ms, log_dir, extra_env=tag).start()
        env = {
            "MODEL_URI": str(model_dir),
            "PROJECT_ID": target.project_id,
            "PUBLISH_STREAM": "ride-predictions",
            "PUBSUB_EMULATOR_HOST": proxy.host,
            **tag,
        }
        return concurrency.run_rounds(
            VARIANTS, args.rounds, env, log_dir, target, rides_, batches, sizes, step
        )
    finally:
        if proxy is not None:
            proxy.stop()
        pubsub.stop()


def ratios(raw: list[dict[str, Any]], level: int, phase: str) -> float:
    """Median over rounds of the project's throughput ÷ the pipeline's, within each round."""
    pairs = concurrency._windows(raw, level, PROJECT, PIPELINE, phase)
    return statistics.median(p.per_second / q.per_second for p, q in pairs if q.per_second)


def compute_costs(entry: dict[str, Any], alone: dict[str, Any]) -> dict[str, float]:
    """Compute dollars per million rides (``bench.cost``) from one variant's measurements."""
    instance, single = cost.DEPLOY, entry["msgs_per_s"]
    batch_rides = entry.get("batch_rides_per_s", float("nan"))
    trickle_seconds = max(alone["latency_p50_ms"] / 1000, cost.PRICES.billing_granularity_seconds)
    return {
        "instance-based, single rides": cost.instance_based_per_million(single, instance),
        "instance-based, 1,000-ride messages": cost.instance_based_per_million(
            batch_rides, instance
        ),
        "request-based at full load, single rides": cost.per_million_rides(single, 1, instance)[
            "compute"
        ],
        "request-based at full load, 1,000-ride messages": cost.per_million_rides(
            batch_rides, 1000, instance
        )["compute"],
        "request-based at 1 msg/s, single rides": cost.MILLION
        * trickle_seconds
        * cost.busy_rate(instance, cost.PRICES),
    }


def summarise(
    levers: dict[str, list[float]], raw: list[dict[str, Any]], level: int
) -> dict[str, Any]:
    """Medians, the within-round ratios and the compute cost of each variant."""
    summary = concurrency.summarise(raw)["levels"]
    busy, alone = summary[str(level)], summary["1"]
    return {
        "in_process_us": {key: statistics.median(values) for key, values in levers.items()},
        "instance": {
            name: {"1": alone[name], str(level): busy[name]} for name in (PROJECT, PIPELINE)
        },
        "throughput_ratio": {
            "single": ratios(raw, level, "single"),
            "batch": ratios(raw, level, "batch"),
        },
        "compute_per_million": {
            name: compute_costs(busy[name], alone[name]) for name in (PROJECT, PIPELINE)
        },
    }


def _row(label: str, project: float, pipeline: float, digits: int) -> str:
    ratio = project / pipeline if pipeline else float("nan")
    return f"| {label} | {project:,.{digits}f} | {pipeline:,.{digits}f} | {ratio:.2f} |"


def markdown(summary: dict[str, Any], level: int, rounds: int) -> str:
    """The results as a table: each figure for both variants, and project ÷ pipeline."""
    us, inst = summary["in_process_us"], summary["instance"]
    lines = [
        "# The linear fast path, measured (`python -m bench.fast_path`)",
        "",
        f"Medians of {rounds} interleaved rounds. Project: `main.py` as deployed; pipeline: the "
        "same with `pipeline.predict` instead of the fast path.",
        "",
        "| figure | project | pipeline | project ÷ pipeline |",
        "|---|---:|---:|---:|",
    ]
    for shape in ("1 ride", "1000 rides"):
        label = f"in process, {shape} per message: CPU µs"
        lines.append(
            _row(label, us[f"{PROJECT}: {shape}, CPU µs"], us[f"{PIPELINE}: {shape}, CPU µs"], 1)
        )
    lines += _instance_rows(inst, level)
    costs = summary["compute_per_million"]
    for key in costs[PROJECT]:
        lines.append(
            _row(
                f"compute $ per million rides, {key}", costs[PROJECT][key], costs[PIPELINE][key], 4
            )
        )
    ratio = summary["throughput_ratio"]
    lines += [
        "",
        f"Within-round throughput ratio at concurrency {level}: single rides "
        f"{ratio['single']:.3f}, 1,000-ride messages {ratio['batch']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def _instance_rows(inst: dict[str, dict[str, Any]], level: int) -> list[str]:
    project, pipeline = inst[PROJECT], inst[PIPELINE]
    rows: list[tuple[str, str, str, int]] = [
        ("1", "latency_p50_ms", "latency alone (concurrency 1), p50 ms", 2),
        (str(level), "msgs_per_s", f"single rides at concurrency {level}: msg/s", 0),
        (str(level), "cpu_ms_per_msg", "… function's CPU per message, ms", 3),
        (
            str(level),
            "batch_rides_per_s",
            f"1,000-ride messages at concurrency {level}: rides/s",
            0,
        ),
        (str(level), "batch_cpu_ms_per_msg", "… function's CPU per 1,000-ride message, ms", 2),
    ]
    return [
        _row(label, project[at].get(key, float("nan")), pipeline[at].get(key, float("nan")), digits)
        for at, key, label, digits in rows
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Train, measure in process and as deployed, write the results."""
    from bench.__main__ import train_model

    parser = argparse.ArgumentParser(prog="python -m bench.fast_path", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rides", type=int, default=200_000)
    parser.add_argument("--zones", type=int, default=265)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--work-dir", type=Path, default=BENCH_DIR / "results" / "raw" / "fast-path"
    )
    args = parser.parse_args(argv)
    log_dir = args.work_dir / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    step(f"training the model on {args.rides} rides over {args.zones} zones")
    model_dir = train_model(args.work_dir, args.rides, args.zones)
    step("in process: the handler with and without the fast path")
    levers = in_process(model_dir, args.rounds, args.calls)
    step(f"one instance at concurrency 1 and {args.concurrency}, {args.rtt_ms:.0f} ms to Pub/Sub")
    raw = one_instance(args, model_dir, log_dir)
    summary = summarise(levers, raw, args.concurrency)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"rounds": args.rounds, "load": os.getloadavg(), "python": sys.version.split()[0]}
    results = {"meta": meta, "in_process": levers, "levels": raw, "summary": summary}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(markdown(summary, args.concurrency, args.rounds))
    print(markdown(summary, args.concurrency, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
