"""One function instance against its concurrency, with a cloud-like round trip to Pub/Sub.

One instance as deployed: functions-framework serving the variant on the function's CPU alone,
with ``THREADS`` (gunicorn's threads, read by functions-framework's ``GunicornApplication``) set
to the concurrency, as Cloud Run functions' concurrency page advises
(https://cloud.google.com/functions/docs/configuring/concurrency). Its Publish RPCs go through
``bench.delay_proxy``, which adds ``rtt_ms`` to every round trip to the Pub/Sub emulator: on
this machine a publish otherwise takes well under a millisecond, and concurrency would buy
nothing. For each concurrency level, ``concurrency`` pushers (closed loop: each sends its next
request as soon as its previous one is answered) keep that many requests in flight:

1. single-ride messages: what completes in a ``seconds`` window after a warm-up gives the 2xx
   answers per second, the CPU the function's process group used per message, and each
   request's latency at the client (POST to answer);
2. the project only: ``batch_messages`` 1,000-ride messages (at least one per pusher), timed
   from the first send to the last answer (``fixed_work``), for rides per second.

The framework-only variant runs at the same levels, in the same rounds, on the same CPU: the
ratio project ÷ framework is how close the function gets to what functions-framework itself
allows. Beside the project as configured (``PUBLISH_MAX_RPCS_IN_FLIGHT`` unset: the publisher's
default, or whatever the bench's environment sets), the same project runs with
``PUBLISH_MAX_RPCS_IN_FLIGHT=1`` (one Publish RPC in flight per topic, the publisher before
several were allowed): project ÷ its one-RPC self is what several RPCs in flight buy; at
``rpc_levels``, caps of 2 and 8 run too. Rounds interleave (framework 1, project 1, project with
1 RPC 1, framework 4, ...). For the project's runs the probe keeps every Publish RPC
(``bench.publish_meter``): their sizes per phase, and the bytes of the function's log lines
(``bench.sizes``), are what ``bench.cost`` bills besides the throughputs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import publish_meter
from bench import sizes as measured_sizes
from bench.harness import (
    PROBE,
    REQUEST_TIMEOUT_SECONDS,
    Pusher,
    Target,
    Variant,
    cpu_seconds_of_group,
    median,
    on_function_cpus,
    on_other_cpus,
    percentile,
    probe_dump,
    push_body,
    ride_bodies,
)
from devstack.function_server import FunctionServer
from devstack.processes import group_members
from ride_predictor.publisher import DEFAULT_MAX_RPCS_IN_FLIGHT

# What functions-framework's gunicorn reads for its thread count (functions_framework/_http/
# gunicorn.py: ``threads = int(os.environ.get("THREADS", (os.cpu_count() or 1) * 4))``).
THREADS_VARIABLE = "THREADS"
FRAMEWORK, PROJECT = "framework", "project"
# The project with one Publish RPC in flight per topic (main.settings_from_env reads it).
PROJECT_ONE_RPC = "project-1rpc"
MAX_RPCS_VARIABLE = "PUBLISH_MAX_RPCS_IN_FLIGHT"
# Makes the probe keep the Publish RPCs (bench/variants/probe.py).
PUBLISH_METER_VARIABLE = "BENCH_PUBLISH_METER"


@dataclass(frozen=True)
class ConcurrencySizes:
    """The levels and how long each is measured (``quick`` sizes for the smoke test)."""

    levels: tuple[int, ...] = (1, 4, 8, 16, 32, 80)
    rtt_ms: float = 20.0
    warmup_seconds: float = 0.5
    seconds: float = 2.0
    # 1,000-ride messages per level, at least one per pusher (``fixed_work``).
    batch_messages: int = 30
    # Levels at which the project with one RPC in flight runs too (None: every level).
    one_rpc_levels: tuple[int, ...] | None = None
    # Other caps on Publish RPCs in flight, and the levels at which they run (billing modes).
    other_rpc_caps: tuple[int, ...] = (2, 8)
    rpc_levels: tuple[int, ...] = (32, 80)

    @classmethod
    def quick(cls) -> ConcurrencySizes:
        """Tiny sizes: every step runs, nothing is measured."""
        return cls(
            levels=(1, 2),
            warmup_seconds=0.1,
            seconds=0.3,
            batch_messages=2,
            one_rpc_levels=(2,),
            other_rpc_caps=(),
        )


@dataclass
class Window:
    """One closed-loop window: counts, elapsed seconds, the function's CPU, client latencies."""

    ok: int
    failed: int
    seconds: float
    function_cpu_s: float
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def per_second(self) -> float:
        """2xx answers per second."""
        return self.ok / self.seconds if self.seconds else float("nan")


@dataclass
class LevelResult:
    """One variant at one concurrency in one round."""

    variant: str
    round: int
    concurrency: int
    single: Window
    # 1,000-ride messages (project only); the rides per message are in ``batch_size``.
    batch: Window | None = None
    batch_size: int = 0
    # Peak resident memory (VmHWM) of the function's processes, summed: an upper bound of what
    # the instance needed at this concurrency (pages shared by master and worker count twice).
    peak_rss_bytes: int = 0
    # The publisher's cap on Publish RPCs in flight per topic (the project's variants only).
    max_rpcs_in_flight: int | None = None
    # The project's Publish RPCs per phase (``bench.publish_meter`` histograms) and its
    # per-message log lines (``bench.sizes.log_line_sizes``).
    publish_single: dict[str, Any] = field(default_factory=dict)
    publish_batch: dict[str, Any] = field(default_factory=dict)
    log_lines: dict[str, Any] = field(default_factory=dict)


class ClosedLoop:
    """``concurrency`` pushers, each POSTing its next body as soon as its last is answered.

    They run from ``__enter__`` until ``__exit__`` (or until each has sent ``per_pusher``
    requests); ``measure`` counts what completes inside a window of that run, so requests in
    flight at its edges are not counted twice. ``fixed_work`` uses ``per_pusher`` instead.
    """

    def __init__(
        self,
        port: int,
        path: str,
        bodies: Sequence[bytes],
        concurrency: int,
        per_pusher: int | None = None,
    ) -> None:
        self.port = port
        self.path = path
        self.bodies = bodies
        self.concurrency = concurrency
        self.per_pusher = per_pusher
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # (finished at, latency in s, 2xx?) of every answered request
        self._done: list[tuple[float, float, bool]] = []
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._push, args=(index,), daemon=True)
            for index in range(concurrency)
        ]

    def __enter__(self) -> ClosedLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_SECONDS)

    def _push(self, index: int) -> None:
        on_other_cpus()
        pusher = Pusher(self.port, self.path)
        own = self.bodies[index :: self.concurrency] or self.bodies
        sent = 0
        try:
            while not self._stop.is_set() and (self.per_pusher is None or sent < self.per_pusher):
                began = time.perf_counter()
                status = pusher.post(own[sent % len(own)])
                finished = time.perf_counter()
                with self._lock:
                    self._done.append((finished, finished - began, 200 <= status < 300))
                sent += 1
        except BaseException as error:  # reported by ``measure``, not lost in a thread
            if not self._stop.is_set():
                self._errors.append(error)
        finally:
            pusher.close()

    def measure(
        self, warmup_seconds: float, seconds: float, cpu_seconds: Callable[[], float]
    ) -> Window:
        """Let ``warmup_seconds`` pass, then count what completes in the next ``seconds``;
        ``cpu_seconds()`` (the function's CPU so far) is read at both ends of the window."""
        time.sleep(warmup_seconds)  # the warm-up itself, not a wait for readiness
        began, cpu_before = time.perf_counter(), cpu_seconds()
        time.sleep(seconds)  # the measurement window itself
        ended, cpu_after = time.perf_counter(), cpu_seconds()
        self._raise_errors()
        return self._window(began, ended, cpu_after - cpu_before)

    def run_to_end(self, cpu_seconds: Callable[[], float]) -> Window:
        """Start the pushers, wait until each has sent ``per_pusher`` requests; the window
        runs from the start to the last answer."""
        assert self.per_pusher is not None, "run_to_end needs a number of requests per pusher"
        began, cpu_before = time.perf_counter(), cpu_seconds()
        with self:
            for thread in self._threads:
                thread.join(REQUEST_TIMEOUT_SECONDS)
        cpu_after = cpu_seconds()
        self._raise_errors()
        with self._lock:
            ended = max((at for at, _latency, _ok in self._done), default=began)
        return self._window(began, ended, cpu_after - cpu_before)

    def _raise_errors(self) -> None:
        if self._errors:
            raise RuntimeError(f"a pusher failed: {self._errors[0]!r}") from self._errors[0]

    def _window(self, began: float, ended: float, cpu_s: float) -> Window:
        with self._lock:
            inside = [(latency, ok) for at, latency, ok in self._done if began < at <= ended]
        latencies = [latency * 1000 for latency, _ok in inside]
        ok = sum(1 for _latency, good in inside if good)
        return Window(
            ok=ok,
            failed=len(inside) - ok,
            seconds=ended - began,
            function_cpu_s=cpu_s,
            latency_p50_ms=percentile(latencies, 50),
            latency_p99_ms=percentile(latencies, 99),
        )


def fixed_work(
    port: int,
    path: str,
    bodies: Sequence[bytes],
    concurrency: int,
    per_pusher: int,
    cpu_seconds: Callable[[], float],
) -> Window:
    """``concurrency`` pushers send ``per_pusher`` requests each; the window runs from the first
    send to the last answer.

    For requests that each take long (1,000-ride messages take seconds at high concurrency), a
    time window would catch a burst or a gap: answers come in waves while the threads share
    the CPU. Counting a fixed amount of work from start to finish does not, as long as the
    function stays busy until the end, which it does once two or more requests are in flight.
    """
    return ClosedLoop(port, path, bodies, concurrency, per_pusher).run_to_end(cpu_seconds)


def peak_rss_of_group(process_group_id: int) -> int:
    """Sum of the peak resident set (``VmHWM`` in /proc/<pid>/status) of a group's processes."""
    total = 0
    for pid in group_members(process_group_id):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


def measure_level(
    variant: Variant,
    concurrency: int,
    round_index: int,
    env: dict[str, str],
    log_dir: Path,
    target: Target,
    bodies: Sequence[bytes],
    batch_bodies: Sequence[bytes],
    batch_size: int,
    sizes: ConcurrencySizes,
) -> LevelResult:
    """Start one instance with ``THREADS=concurrency`` on the function's CPU, measure, stop."""
    server_env = {
        **env,
        **variant.env,
        "BENCH_VARIANT": variant.module,
        THREADS_VARIABLE: str(concurrency),
    }
    metered = variant.module == "main"
    if metered:
        server_env[PUBLISH_METER_VARIABLE] = "1"
    server = FunctionServer(
        server_env,
        log_dir,
        source=PROBE,
        target="predict_duration",
        python=sys.executable,
        log_name=f"concurrency-{variant.name}-c{concurrency}-round{round_index}.log",
    )
    path = f"/projects/{target.project_id}/topics/{target.input_topic}"
    try:
        with on_function_cpus():
            server.start()
        first = Pusher(server.port, path)
        try:  # the first request waits for the project's lazy model load
            if not 200 <= first.post(bodies[0]) < 300:
                raise RuntimeError(f"{variant.name}: the first push failed; see {server.log_path}")
        finally:
            first.close()
        assert server.process is not None
        group = server.process.pid
        dump = log_dir / f"concurrency-{variant.name}-c{concurrency}-round{round_index}.json"
        published = {"first": _published(metered, server.port, path, dump)}
        with ClosedLoop(server.port, path, bodies, concurrency) as pushers:
            single = pushers.measure(
                sizes.warmup_seconds, sizes.seconds, lambda: cpu_seconds_of_group(group)
            )
        published["single"] = _published(metered, server.port, path, dump)
        batch = None
        if variant.takes_batches and batch_bodies:
            batch = fixed_work(
                server.port,
                path,
                batch_bodies,
                concurrency,
                max(1, -(-sizes.batch_messages // concurrency)),  # at least batch_messages
                lambda: cpu_seconds_of_group(group),
            )
            published["batch"] = _published(metered, server.port, path, dump)
        peak_rss = peak_rss_of_group(group)
    finally:
        if server.process is not None:
            # Measured already: no need to let gunicorn finish the requests still in flight.
            server.process.stop(grace_seconds=0)
        server.stop()
    return LevelResult(
        variant=variant.name,
        round=round_index,
        concurrency=concurrency,
        single=single,
        batch=batch,
        batch_size=batch_size if batch is not None else 0,
        peak_rss_bytes=peak_rss,
        max_rpcs_in_flight=max_rpcs_in_flight(server_env) if metered else None,
        publish_single=published["single"],
        publish_batch=published.get("batch", {}),
        log_lines=measured_sizes.log_line_sizes(server.log_path) if metered else {},
    )


def _published(metered: bool, port: int, path: str, dump: Path) -> dict[str, Any]:
    """The Publish RPCs the probe kept since the last call (``bench.publish_meter``), then
    forgets them; nothing for a variant that is not metered."""
    return probe_dump(port, path, dump)["publish"] if metered else {}


def max_rpcs_in_flight(server_env: dict[str, str]) -> int:
    """The cap the project's publisher runs with: its setting as the server sees it (the
    bench's own environment under the variant's), or the publisher's default."""
    raw = server_env.get(MAX_RPCS_VARIABLE) or os.environ.get(MAX_RPCS_VARIABLE)
    return int(raw) if raw else DEFAULT_MAX_RPCS_IN_FLIGHT


def measured_variants(variants: Sequence[Variant], other_caps: Sequence[int] = ()) -> list[Variant]:
    """``variants``, and after the project the same project with one RPC in flight, then with
    each of ``other_caps``."""
    measured = []
    for variant in variants:
        measured.append(variant)
        if variant.name == PROJECT:
            measured += [capped(variant, cap) for cap in (1, *other_caps)]
    return measured


def capped(project: Variant, cap: int) -> Variant:
    """The project with at most ``cap`` Publish RPCs in flight per topic."""
    return replace(
        project,
        name=PROJECT_ONE_RPC if cap == 1 else f"{PROJECT}-{cap}rpc",
        description=f"main.py with {MAX_RPCS_VARIABLE}={cap}",
        env={**project.env, MAX_RPCS_VARIABLE: str(cap)},
    )


def runs_at(variant: Variant, concurrency: int, sizes: ConcurrencySizes) -> bool:
    """Whether ``variant`` runs at ``concurrency``: the capped projects only at their levels."""
    if variant.name == PROJECT_ONE_RPC:
        return sizes.one_rpc_levels is None or concurrency in sizes.one_rpc_levels
    if variant.name.startswith(f"{PROJECT}-"):
        return concurrency in sizes.rpc_levels
    return True


def run_rounds(
    variants: Sequence[Variant],
    rounds: int,
    env: dict[str, str],
    log_dir: Path,
    target: Target,
    rides: Sequence[dict[str, Any]],
    batches: Sequence[list[dict[str, Any]]],
    sizes: ConcurrencySizes,
    progress: Callable[[str], None] = lambda message: None,
) -> list[dict[str, Any]]:
    """Every variant at every level, rounds interleaved; the raw results as dicts.

    The project also runs with one RPC in flight (``measured_variants``), at
    ``sizes.one_rpc_levels`` (every level by default), right after the project.
    """
    bodies = ride_bodies(rides)
    batch_bodies = [push_body(json.dumps(batch).encode()) for batch in batches]
    batch_size = len(batches[0]) if batches else 0
    results = []
    for round_index in range(1, rounds + 1):
        for concurrency in sizes.levels:
            for variant in measured_variants(variants, sizes.other_rpc_caps):
                if not runs_at(variant, concurrency, sizes):
                    continue
                result = measure_level(
                    variant,
                    concurrency,
                    round_index,
                    env,
                    log_dir,
                    target,
                    bodies,
                    batch_bodies,
                    batch_size,
                    sizes,
                )
                line = (
                    f"  concurrency {concurrency} round {round_index}: {variant.name} "
                    f"{result.single.per_second:.0f} msg/s, "
                    f"p99 {result.single.latency_p99_ms:.1f} ms"
                )
                if result.batch is not None:
                    rides_per_s = result.batch.per_second * batch_size
                    line += f", 1,000-ride messages {rides_per_s:.0f} rides/s"
                progress(line)
                results.append(asdict(result))
    return results


def _window(raw: dict[str, Any] | None) -> Window | None:
    return Window(**raw) if raw else None


def summarise(raw_levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per level: each variant's medians over rounds; the median over rounds of project ÷
    framework, and of project ÷ the project with one RPC in flight, each taken within a round.

    CPU per message is the function's CPU over the window divided by its 2xx answers.
    """
    levels: dict[int, dict[str, Any]] = {}
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for result in raw_levels:
        by_key.setdefault((result["variant"], result["concurrency"]), []).append(result)
    for (name, concurrency), results in sorted(by_key.items(), key=lambda item: item[0][1]):
        singles = [_window(r["single"]) for r in results]
        entry: dict[str, Any] = {
            "msgs_per_s": median([w.per_second for w in singles if w]),
            "cpu_ms_per_msg": median(
                [w.function_cpu_s * 1000 / w.ok for w in singles if w and w.ok]
            ),
            "latency_p50_ms": median([w.latency_p50_ms for w in singles if w]),
            "latency_p99_ms": median([w.latency_p99_ms for w in singles if w]),
            "errors": sum(w.failed for w in singles if w),
            "peak_rss_mib": median([r.get("peak_rss_bytes", 0) / 2**20 for r in results]),
            "rounds": len(results),
            "max_rpcs_in_flight": results[0].get("max_rpcs_in_flight"),
            "publish_single": publish_meter.merge(r.get("publish_single") or {} for r in results),
            "publish_batch": publish_meter.merge(r.get("publish_batch") or {} for r in results),
            "log_lines": measured_sizes.merge_log_sizes(r.get("log_lines") or {} for r in results),
        }
        batches = [(_window(r["batch"]), r["batch_size"]) for r in results if r.get("batch")]
        if batches:
            entry |= {
                "batch_size": batches[0][1],
                "batch_rides_per_s": median([w.per_second * size for w, size in batches if w]),
                "batch_cpu_ms_per_msg": median(
                    [w.function_cpu_s * 1000 / w.ok for w, _ in batches if w and w.ok]
                ),
                "batch_latency_p50_ms": median([w.latency_p50_ms for w, _ in batches if w]),
                "batch_latency_p99_ms": median([w.latency_p99_ms for w, _ in batches if w]),
                "batch_errors": sum(w.failed for w, _ in batches if w),
            }
        levels.setdefault(concurrency, {})[name] = entry
    for concurrency, variants in levels.items():
        ratios = [
            project.per_second / framework.per_second
            for project, framework in _windows(raw_levels, concurrency, PROJECT, FRAMEWORK)
            if framework.per_second
        ]
        if ratios:
            variants["project_over_framework"] = median(ratios)
        pairs = _windows(raw_levels, concurrency, PROJECT, PROJECT_ONE_RPC)
        if pairs:
            variants["project_over_one_rpc"] = median(
                [project.per_second / one.per_second for project, one in pairs if one.per_second]
            )
        batch_pairs = _windows(raw_levels, concurrency, PROJECT, PROJECT_ONE_RPC, "batch")
        if batch_pairs:
            variants["project_over_one_rpc_batch"] = median(
                [
                    project.per_second / one.per_second
                    for project, one in batch_pairs
                    if one.per_second
                ]
            )
    return {"levels": {str(level): levels[level] for level in sorted(levels)}}


def _windows(
    raw_levels: Sequence[dict[str, Any]],
    concurrency: int,
    first: str,
    second: str,
    phase: str = "single",
) -> list[tuple[Window, Window]]:
    """(``first``, ``second``) windows of ``phase`` in each round that measured both at
    ``concurrency``."""
    rounds: dict[int, dict[str, Any]] = {}
    for result in raw_levels:
        if result["concurrency"] == concurrency:
            rounds.setdefault(result["round"], {})[result["variant"]] = result
    pairs = []
    for both in rounds.values():
        if first in both and second in both:
            one, other = _window(both[first].get(phase)), _window(both[second].get(phase))
            if one and other:
                pairs.append((one, other))
    return pairs


def _fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "–"
    return f"{value:,.{digits}f}"


def markdown_lines(summary: dict[str, Any], meta: dict[str, Any], default: int | None) -> list[str]:
    """The concurrency table: per level, both variants' throughput, CPU, latency, the ratio."""
    sizes = meta.get("concurrency_sizes", {})
    rounds = meta.get("rounds", "?")
    lines = [
        "",
        f"## Concurrency: one instance on one CPU, {sizes.get('rtt_ms', 20):.0f} ms to Pub/Sub",
        "",
        f"One function instance (gunicorn `THREADS` = concurrency) on the function's CPU alone; "
        f"its Pub/Sub traffic goes through `bench.delay_proxy`, which adds "
        f"{sizes.get('rtt_ms', 20):.0f} ms to every round trip. `concurrency` pushers keep that "
        f"many requests in flight for {sizes.get('seconds', '?')} s after a warm-up. Medians of "
        f"{rounds} interleaved rounds; project ÷ framework is taken within each round. Latency "
        "is the pusher's, from POST to answer. 1,000-ride messages: "
        f"{sizes.get('batch_messages', '?')} of them (at least one per pusher), timed from the "
        "first send to the last answer. Peak RSS: the highest resident memory of gunicorn's "
        "master and worker, summed (an upper bound), after both phases." + _project_cap(summary),
        "",
        "| concurrency | project (msg/s) | framework (msg/s) | project ÷ framework "
        "| project CPU per msg (ms) | framework CPU per msg (ms) | project p50 (ms) "
        "| project p99 (ms) | 1,000-ride msgs (rides/s) | … p50 (ms) | … p99 (ms) "
        "| project peak RSS (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nan = float("nan")
    for level, variants in summary["levels"].items():
        project = variants.get(PROJECT, {})
        framework = variants.get(FRAMEWORK, {})
        mark = " **(default)**" if default is not None and int(level) == default else ""
        lines.append(
            f"| {level}{mark} | {_fmt(project.get('msgs_per_s', nan))} "
            f"| {_fmt(framework.get('msgs_per_s', nan))} "
            f"| {_fmt(variants.get('project_over_framework', nan), 2)} "
            f"| {_fmt(project.get('cpu_ms_per_msg', nan), 3)} "
            f"| {_fmt(framework.get('cpu_ms_per_msg', nan), 3)} "
            f"| {_fmt(project.get('latency_p50_ms', nan), 1)} "
            f"| {_fmt(project.get('latency_p99_ms', nan), 1)} "
            f"| {_fmt(project.get('batch_rides_per_s', nan))} "
            f"| {_fmt(project.get('batch_latency_p50_ms', nan), 0)} "
            f"| {_fmt(project.get('batch_latency_p99_ms', nan), 0)} "
            f"| {_fmt(project.get('peak_rss_mib', nan))} |"
        )
    errors = sum(
        v.get("errors", 0) + v.get("batch_errors", 0)
        for variants in summary["levels"].values()
        for v in variants.values()
        if isinstance(v, dict)
    )
    lines += ["", f"Non-2xx answers in the measured windows: {errors}."]
    return lines + one_rpc_lines(summary)


def _project_cap(summary: dict[str, Any]) -> str:
    caps = {
        variants[PROJECT].get("max_rpcs_in_flight")
        for variants in summary["levels"].values()
        if PROJECT in variants
    } - {None}
    if len(caps) != 1:
        return ""
    (cap,) = caps
    return f" The project's publisher: up to {cap} Publish RPC{'s' if cap != 1 else ''} in flight."


def one_rpc_lines(summary: dict[str, Any]) -> list[str]:
    """The project as configured against the same project with one Publish RPC in flight per
    topic, at each level where both ran; the ratios are taken within each round."""
    levels = {
        level: variants
        for level, variants in summary["levels"].items()
        if PROJECT in variants and PROJECT_ONE_RPC in variants
    }
    if not levels:
        return []
    nan = float("nan")
    lines = [
        "",
        "### Several Publish RPCs in flight against one",
        "",
        "The same project, interleaved in the same rounds: as configured, and with "
        f"`{MAX_RPCS_VARIABLE}=1`. ÷ 1 RPC is the median over rounds of the ratio within each "
        "round.",
        "",
        "| concurrency | publisher | msg/s | ÷ 1 RPC | CPU per msg (ms) | p50 (ms) | p99 (ms) "
        "| 1,000-ride msgs (rides/s) | ÷ 1 RPC | … p50 (ms) | … p99 (ms) | peak RSS (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level, variants in levels.items():
        for name in (PROJECT, PROJECT_ONE_RPC):
            entry = variants[name]
            cap = entry.get("max_rpcs_in_flight")
            label = f"{cap} RPC{'s' if cap != 1 else ''} in flight" if cap else name
            mine = name == PROJECT
            lines.append(
                f"| {level} | {label} | {_fmt(entry.get('msgs_per_s', nan))} "
                f"| {_fmt(variants.get('project_over_one_rpc', nan), 2) if mine else ''} "
                f"| {_fmt(entry.get('cpu_ms_per_msg', nan), 3)} "
                f"| {_fmt(entry.get('latency_p50_ms', nan), 1)} "
                f"| {_fmt(entry.get('latency_p99_ms', nan), 1)} "
                f"| {_fmt(entry.get('batch_rides_per_s', nan))} "
                f"| {_fmt(variants.get('project_over_one_rpc_batch', nan), 2) if mine else ''} "
                f"| {_fmt(entry.get('batch_latency_p50_ms', nan), 0)} "
                f"| {_fmt(entry.get('batch_latency_p99_ms', nan), 0)} "
                f"| {_fmt(entry.get('peak_rss_mib', nan))} |"
            )
    return lines


def with_levels(sizes: ConcurrencySizes, levels: Sequence[int] | None) -> ConcurrencySizes:
    """``sizes`` with other levels, if any are given."""
    return replace(sizes, levels=tuple(levels)) if levels else sizes
