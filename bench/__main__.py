"""``python -m bench``: the whole benchmark in one run (``make bench``).

Starts the Pub/Sub and GCS emulators, trains the course model on a realistic vocabulary, puts
it in a bucket, then runs ``--rounds`` interleaved rounds (baseline, floor, framework, project,
baseline, ...) of ``harness.measure_variant`` and of the bare import times, measures the levers in
process (``bench.levers``), measures one instance against its concurrency with a 20 ms round
trip to Pub/Sub and the cost per million rides that follows (``bench.concurrency``,
``bench.cost``), and writes ``results.md``, ``results.json`` and ``bench.png``.
Every process it starts is stopped when it ends, on error and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import concurrency, report
from bench import sizes as message_sizes
from bench.delay_proxy import DelayProxyService
from bench.harness import (
    BENCH_DIR,
    CPU_SPLIT,
    RoundResult,
    Sizes,
    Target,
    Variant,
    bare_import_seconds,
    measure_variant,
    on_function_cpus,
    on_other_cpus,
    sample_rides,
)
from devstack.emulators import PubSubEmulator, StorageEmulator
from devstack.function_server import REPO_ROOT
from devstack.processes import exit_on_sigterm
from devstack.pubsub_admin import PubSubAdmin
from devstack.stack import STACK_TAG_VARIABLE
from devstack.storage import storage_client, upload_directory

PROJECT_ID = "bench-project"
OUTPUT_TOPIC = "ride-predictions"
BUCKET = "bench-models"
DEFAULT_RESULTS_DIR = BENCH_DIR / "results"

FRAMEWORK = ("functions_framework", "google.cloud.pubsub_v1")
# What unpickling the course's pipeline imports, and what reads gs:// (directly or in MLflow).
MODEL_LIBRARIES = (
    "google.cloud.storage",
    "sklearn.pipeline",
    "sklearn.feature_extraction",
    "sklearn.linear_model",
)

VARIANTS = (
    Variant(
        name="baseline",
        module="baseline_main",
        description="the tutorial's function: mlflow.pyfunc at import, predict(dict), "
        "publish().result() with default batching",
        bare_imports=(*FRAMEWORK, "mlflow", "mlflow.pyfunc", *MODEL_LIBRARIES),
    ),
    Variant(
        name="floor",
        module="floor_main",
        description="no model: decode, constant prediction, publish().result()",
        bare_imports=FRAMEWORK,
        uses_model=False,
    ),
    Variant(
        name="framework",
        module="framework_main",
        description="functions-framework alone: the handler returns at once",
        bare_imports=("functions_framework",),
        uses_model=False,
    ),
    Variant(
        name="project",
        module="main",
        description="main.py",
        # main.py, its publisher and the loaders' direct path (a pickled sklearn model on
        # gs://, as here, needs no MLflow): see ride_predictor.loaders._load_directly.
        bare_imports=(
            "functions_framework",
            "google.pubsub_v1",
            "google.api_core.retry",
            "yaml",
            "cloudpickle",
            *MODEL_LIBRARIES,
        ),
        takes_batches=True,
    ),
)


def step(message: str) -> None:
    """Progress on stderr."""
    print(f"… {message}", file=sys.stderr, flush=True)


def train_model(work_dir: Path, rides: int, zones: int, seed: int = 42) -> Path:
    """Train with the project's own command (its defaults, e.g. the format); return the dir."""
    mlflow_dir = work_dir / "mlflow"
    shutil.rmtree(mlflow_dir, ignore_errors=True)
    mlflow_dir.mkdir(parents=True)
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            f"--rides={rides}",
            f"--zones={zones}",
            f"--seed={seed}",
            f"--tracking-uri=sqlite:///{mlflow_dir / 'mlflow.db'}",
            f"--artifact-location={mlflow_dir / 'artifacts'}",
            "--experiment=bench",
        ],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    ).stdout
    prefix = "artifacts:"
    return Path(
        next(line for line in output.splitlines() if line.startswith(prefix))[len(prefix) :].strip()
    )


def tutorial_copy(model_dir: Path, work_dir: Path) -> Path:
    """The same model files with the MLmodel the course's models had: no signature or example.

    The tutorial's ``model.predict(features_dict)`` only works without a signature (with one,
    pyfunc turns the dict into a DataFrame, which a DictVectorizer cannot read).
    """
    target = work_dir / "tutorial-model"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(model_dir, target)
    mlmodel_path = target / "MLmodel"
    mlmodel = yaml.safe_load(mlmodel_path.read_text())
    for key in ("signature", "saved_input_example_info"):
        mlmodel.pop(key, None)
    mlmodel_path.write_text(yaml.safe_dump(mlmodel))
    for example in ("input_example.json", "serving_input_example.json"):
        (target / example).unlink(missing_ok=True)
    return target


def warm_emulator(admin: PubSubAdmin, sizes: Sizes) -> None:
    """Publish for a while before round 1, so that no variant meets a cold JVM."""
    body = b'{"model": "m", "version": "v", "prediction": {"ride_duration": 1, "ride_id": 1}}'
    topic = admin.topic_path(OUTPUT_TOPIC)
    for _ in range(3 if sizes.warm_seconds < 1 else 30):
        futures = [admin.publisher.publish(topic, body, ride_id="1") for _ in range(200)]
        for future in futures:
            future.result(timeout=60)


def measure_concurrency(
    args: argparse.Namespace,
    sizes: concurrency.ConcurrencySizes,
    setup: Setup,
    pubsub_host: str,
) -> list[dict[str, Any]]:
    """The framework and the project at each concurrency, publishing through the delay proxy."""
    proxy = DelayProxyService(pubsub_host, sizes.rtt_ms, setup.log_dir, extra_env=setup.tag)
    variants = [v for v in VARIANTS if v.name in (concurrency.FRAMEWORK, concurrency.PROJECT)]
    step(
        f"concurrency {', '.join(map(str, sizes.levels))}: one instance, "
        f"{sizes.rtt_ms:.0f} ms round trip to Pub/Sub ({args.rounds} rounds)"
    )
    try:
        proxy.start()
        proxy_env = {
            **setup.env,
            "MODEL_URI": setup.model_uris["project"],
            "PUBSUB_EMULATOR_HOST": proxy.host,
        }
        return concurrency.run_rounds(
            variants,
            args.rounds,
            proxy_env,
            setup.log_dir,
            Target(PROJECT_ID),
            setup.rides,
            setup.batches,
            sizes,
            step,
        )
    finally:
        proxy.stop()


@dataclass
class Setup:
    """What every phase of a run shares: the model, the emulators' environment, the rides."""

    work_dir: Path
    log_dir: Path
    model_dir: Path
    tutorial_dir: Path
    tag: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    model_uris: dict[str, str] = field(default_factory=dict)
    rides: list[dict[str, Any]] = field(default_factory=list)
    batches: list[list[dict[str, Any]]] = field(default_factory=list)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, run every round, measure the levers; return the raw results."""
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    sizes = Sizes.quick() if args.quick else Sizes()
    variants = [variant for variant in VARIANTS if variant.name in args.variants]
    concurrency_sizes = concurrency.with_levels(
        concurrency.ConcurrencySizes.quick() if args.quick else concurrency.ConcurrencySizes(),
        args.concurrency_levels,
    )
    # The emulators, the training and the pushers stay off the function's CPU (see
    # harness.CPU_SPLIT); functions, bare imports and the in-process levers run on it.
    on_other_cpus()
    setup = prepare(args)
    pubsub = PubSubEmulator(PROJECT_ID, setup.log_dir, extra_env=setup.tag)
    storage = StorageEmulator(setup.log_dir, extra_env=setup.tag)
    admin: PubSubAdmin | None = None
    try:
        step("starting the Pub/Sub and GCS emulators")
        pubsub.start()
        storage.start()
        admin = PubSubAdmin(pubsub.host, PROJECT_ID)
        stage(setup, sizes, storage.url, pubsub.host, admin)
        measured_sizes = message_sizes.measure(setup.rides, setup.batches)
        bare, results = measure_rounds(args, setup, sizes, variants, admin, pubsub)
        phases = {
            "concurrency": []
            if args.skip_concurrency
            else measure_concurrency(args, concurrency_sizes, setup, pubsub.host),
            "levers": {} if args.skip_levers else measure_levers(args, setup),
            "swap": {} if args.skip_swap else measure_swap(args, setup),
        }
    finally:
        if admin is not None:
            admin.close()
        storage.stop()
        pubsub.stop()
    meta = run_meta(args, setup, sizes, variants, concurrency_sizes)
    meta |= {
        "seconds": round(time.perf_counter() - started, 1),
        # Other work on the machine slows everything measured here (docs/speed.md).
        "load": {
            "start": load_at_start,
            "end": os.getloadavg()[0],
            "how": "1-minute load average (os.getloadavg) at the start and the end",
        },
    }
    return {
        "meta": meta,
        "bare_import_s": bare,
        "rounds": [asdict(result) for result in results],
        "levers": phases["levers"],
        "concurrency": phases["concurrency"],
        "message_sizes": measured_sizes,
        "swap": phases["swap"],
    }


def prepare(args: argparse.Namespace) -> Setup:
    """A fresh log folder and the model trained, with the tutorial's copy of it."""
    work_dir: Path = args.work_dir
    log_dir = work_dir / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    step(f"training the model on {args.rides} synthetic rides over {args.zones} zones")
    model_dir = train_model(work_dir, args.rides, args.zones)
    # Every process the bench starts carries the tag, so leftovers can be found (and tested).
    tag = {STACK_TAG_VARIABLE: str(work_dir.resolve())}
    return Setup(work_dir, log_dir, model_dir, tutorial_copy(model_dir, work_dir), tag)


def stage(
    setup: Setup, sizes: Sizes, storage_url: str, pubsub_host: str, admin: PubSubAdmin
) -> None:
    """Both models in the bucket, the output topic, the environment and the rides."""
    client = storage_client(storage_url, PROJECT_ID)
    model_uri = upload_directory(client, setup.model_dir, f"gs://{BUCKET}/1/bench/artifacts/model")
    tutorial_uri = upload_directory(
        client, setup.tutorial_dir, f"gs://{BUCKET}/1/bench/artifacts/tutorial-model"
    )
    admin.create_topic(OUTPUT_TOPIC)  # no subscription: the emulator drops what arrives
    setup.env = {
        "PROJECT_ID": PROJECT_ID,
        "PUBLISH_STREAM": OUTPUT_TOPIC,
        "PUBSUB_EMULATOR_HOST": pubsub_host,
        "STORAGE_EMULATOR_HOST": storage_url,
        **setup.tag,
    }
    setup.model_uris = {"baseline": tutorial_uri, "project": model_uri}
    pairs = [(pickup, dropoff) for pickup in range(1, 266) for dropoff in range(1, 266)]
    setup.rides = sample_rides(pairs, max(sizes.cpu_messages, 2000))
    batch_rides = sample_rides(pairs, sizes.batch_size * sizes.batch_messages, seed=11)
    setup.batches = [
        batch_rides[i : i + sizes.batch_size] for i in range(0, len(batch_rides), sizes.batch_size)
    ]


def measure_rounds(
    args: argparse.Namespace,
    setup: Setup,
    sizes: Sizes,
    variants: list[Variant],
    admin: PubSubAdmin,
    pubsub: PubSubEmulator,
) -> tuple[dict[str, list[float]], list[RoundResult]]:
    """The interleaved rounds: each variant's bare import, then its round (``measure_variant``)."""
    step("priming the page cache and the emulator's JIT (untimed)")
    bare_import_seconds(sorted({m for v in variants for m in v.bare_imports}), REPO_ROOT)
    warm_emulator(admin, sizes)
    bare: dict[str, list[float]] = {variant.name: [] for variant in variants}
    results: list[RoundResult] = []
    for round_index in range(1, args.rounds + 1):
        for variant in variants:
            bare[variant.name].append(bare_import_seconds(variant.bare_imports, REPO_ROOT))
        for variant in variants:
            step(f"round {round_index}/{args.rounds}: {variant.name}")
            result = measure_variant(
                variant,
                round_index,
                variant_env(setup, variant),
                setup.log_dir,
                Target(PROJECT_ID),
                setup.rides,
                setup.batches,
                sizes,
                emulator_group=pubsub.process.pid if pubsub.process else None,
            )
            step(
                f"  cold start {result.cold_start_s:.2f}s, "
                f"warm {result.warm_msgs_per_s:.0f} msg/s, "
                f"PSS {result.pss_bytes / 2**20:.0f} MiB"
            )
            results.append(result)
    return bare, results


def variant_env(setup: Setup, variant: Variant) -> dict[str, str]:
    """The environment of one variant: its model, if it uses one."""
    env = dict(setup.env)
    if variant.uses_model:
        env["MODEL_URI"] = setup.model_uris.get(variant.name, setup.model_uris["project"])
    return env


def measure_levers(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """``bench.levers`` in its own process on the function's CPU; its JSON."""
    step("measuring the levers in process (bench.levers)")
    levers_path = setup.work_dir / "levers.json"
    with on_function_cpus():
        levers_process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.levers",
                f"--model-dir={setup.model_dir}",
                f"--tutorial-model-dir={setup.tutorial_dir}",
                f"--work-dir={setup.work_dir}",
                f"--out={levers_path}",
                f"--rounds={args.rounds}",
                *(["--quick"] if args.quick else []),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, **setup.env},
        )
    if levers_process.wait() != 0:
        raise RuntimeError(f"bench.levers failed ({levers_process.returncode})")
    levers: dict[str, Any] = json.loads(levers_path.read_text())
    return levers


def measure_swap(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """``bench.swap`` in its own process; its JSON."""
    step("measuring a hot swap in process (bench.swap)")
    swap_path = setup.work_dir / "swap.json"
    quick = ["--seconds=2", "--period=0.5", "--variants=default"] if args.quick else []
    subprocess.run(
        [sys.executable, "-m", "bench.swap", f"--work-dir={setup.work_dir}",
         f"--out={swap_path}", f"--rides={args.rides}", f"--zones={args.zones}", *quick],
        cwd=REPO_ROOT, check=True,
    )  # fmt: skip
    swap: dict[str, Any] = json.loads(swap_path.read_text())
    return swap


def run_meta(
    args: argparse.Namespace,
    setup: Setup,
    sizes: Sizes,
    variants: list[Variant],
    concurrency_sizes: concurrency.ConcurrencySizes,
) -> dict[str, Any]:
    """Where and how the run measured."""
    model_bytes = sum(p.stat().st_size for p in setup.model_dir.rglob("*") if p.is_file())
    return report.machine_info() | {
        "rounds": args.rounds,
        "rides_trained": args.rides,
        "zones": args.zones,
        "model_bytes": model_bytes,
        "sizes": asdict(sizes),
        "variants": {v.name: asdict(v) for v in variants},
        "function_cpus": sorted(CPU_SPLIT[0]) if CPU_SPLIT else None,
        "concurrency_sizes": asdict(concurrency_sizes),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run, write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rides", type=int, default=200_000, help="synthetic training rides")
    parser.add_argument("--zones", type=int, default=265, help="taxi zones of the rides")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    names = [variant.name for variant in VARIANTS]
    parser.add_argument("--variants", nargs="+", default=names, choices=names)
    parser.add_argument("--skip-levers", action="store_true")
    parser.add_argument("--skip-concurrency", action="store_true")
    parser.add_argument(
        "--concurrency-levels",
        type=int,
        nargs="+",
        default=None,
        help="concurrency levels to measure (default: 1 4 8 16 32 80)",
    )
    parser.add_argument("--skip-swap", action="store_true", help="skip bench.swap")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_RESULTS_DIR / "raw")
    parser.add_argument(
        "--from-results",
        type=Path,
        default=None,
        help="only redo the table and plot from an earlier run's results.json",
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()
    if args.from_results is not None:
        raw = json.loads(args.from_results.read_text())
        raw.pop("summary", None)
    else:
        raw = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(raw, indent=1))
    summary = report.summarise(raw)
    (args.out / "results.json").write_text(json.dumps(raw | {"summary": summary}, indent=1))
    (args.out / "results.md").write_text(report.markdown(raw, summary))
    report.plot(raw, summary, args.out / "bench.png")
    print(report.markdown(raw, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
