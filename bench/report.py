"""A bench run's summary: medians over rounds, ratios, targets, a markdown table and a plot."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import concurrency, cost_report
from bench.harness import percentile

MIB = 2**20
BATCH_TARGET_RIDES_PER_S = 100_000
NAMES = ("baseline", "floor", "framework", "project")
# A 1-minute load average at the start at or above this means other work shared the CPUs.
QUIET_LOAD = 1.0


def machine_info() -> dict[str, Any]:
    """Where the numbers come from."""
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _medians(values: dict[str, Any]) -> dict[str, Any]:
    """Medians of the lists in ``values``; anything else (e.g. a size) as it is."""
    return {key: _median(v) if isinstance(v, list) else v for key, v in values.items()}


def _per_round(raw: dict[str, Any], name: str, fn: Callable[[dict[str, Any]], Any]) -> list[Any]:
    return [fn(r) for r in raw["rounds"] if r["variant"] == name]


def _batch_rate(times_ms: Sequence[float], size: int) -> float:
    return size / (_median(times_ms) / 1000) if times_ms else float("nan")


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Per variant, the median over rounds of every figure; the ratios; the targets."""
    batch_size = raw["meta"]["sizes"]["batch_size"]
    metrics: dict[str, Callable[[dict[str, Any]], float]] = {
        "cold_start_s": lambda r: r["cold_start_s"],
        "warm_msgs_per_s": lambda r: r["warm_msgs_per_s"],
        "warm_function_cpu_ms": lambda r: r["warm_function_cpu_ms"],
        "warm_emulator_cpu_ms": lambda r: r["warm_emulator_cpu_ms"],
        "cpu_p50_ms": lambda r: percentile(r["cpu_ms"], 50),
        "cpu_p99_ms": lambda r: percentile(r["cpu_ms"], 99),
        "thread_cpu_p50_ms": lambda r: percentile(r["thread_cpu_ms"], 50),
        "latency_p50_ms": lambda r: percentile(r["wall_ms"], 50),
        "latency_p99_ms": lambda r: percentile(r["wall_ms"], 99),
        "pss_mib": lambda r: r["pss_bytes"] / MIB,
        "batch_in_function_rides_per_s": lambda r: _batch_rate(r["batch_wall_ms"], batch_size),
        "batch_e2e_rides_per_s": lambda r: _batch_rate(r["batch_e2e_ms"], batch_size),
    }
    variants: dict[str, dict[str, Any]] = {}
    for name in raw["bare_import_s"]:
        values = {key: _median(_per_round(raw, name, fn)) for key, fn in metrics.items()}
        values["bare_import_s"] = _median(raw["bare_import_s"][name])
        values["cold_over_bare"] = values["cold_start_s"] / values["bare_import_s"]
        timelines = _per_round(raw, name, lambda r: r["timeline"])
        values["timeline_s"] = {
            key: _median([t[key] for t in timelines]) for key in (timelines[0] if timelines else {})
        }
        values["packages"] = next(
            (r["packages"] for r in raw["rounds"] if r["variant"] == name), []
        )
        variants[name] = values

    levers = raw.get("levers") or {}
    handler = {key: _median(values) for key, values in levers.get("handler", {}).items()}
    in_process_ms = handler.get("1000 rides, no network: wall ms", float("nan"))
    in_process_rate = 1000 / (in_process_ms / 1000)

    def ratio(metric: str, over: str) -> float:
        if "project" not in variants or over not in variants:
            return float("nan")
        return variants["project"][metric] / variants[over][metric]

    ratios = {
        metric: {"vs_baseline": ratio(metric, "baseline"), "vs_floor": ratio(metric, "floor")}
        for metric in (*metrics, "bare_import_s")
    }
    project = variants.get("project", {})
    targets = [
        _target(
            "warm throughput ≥ 1.5 × baseline",
            ratios["warm_msgs_per_s"]["vs_baseline"],
            1.5,
            higher=True,
        ),
        _target("warm throughput ≥ floor", ratios["warm_msgs_per_s"]["vs_floor"], 1.0, higher=True),
        _target("cold start ≤ baseline", ratios["cold_start_s"]["vs_baseline"], 1.0),
        _target(
            "cold start ≤ 1.15 × bare import", project.get("cold_over_bare", float("nan")), 1.15
        ),
        _target("memory (PSS) ≤ baseline", ratios["pss_mib"]["vs_baseline"], 1.0),
        _target(
            "1,000-ride message ≥ 100,000 rides/s in process",
            in_process_rate / BATCH_TARGET_RIDES_PER_S,
            1.0,
            higher=True,
        ),
    ]
    concurrency_summary = concurrency.summarise(raw.get("concurrency") or [])
    cost, allin = _costs(raw, concurrency_summary)
    return {
        "variants": variants,
        "ratios": ratios,
        "targets": targets,
        "concurrency": concurrency_summary,
        "cost": cost,
        "allin": allin,
        "batch_in_process_rides_per_s": in_process_rate,
        "levers": {
            section: _medians(values) if isinstance(values, dict) else _median(values)
            for section, values in levers.items()
        },
    }


def _costs(
    raw: dict[str, Any], concurrency_summary: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The per-level cost table and, when the run measured message sizes, the all-in one."""
    if not concurrency_summary["levels"]:
        return None, None
    cost = cost_report.concurrency_cost(concurrency_summary)
    default, sizes = cost["default_concurrency"], raw.get("message_sizes")
    if default is None or not sizes:
        return cost, None
    return cost, cost_report.allin(concurrency_summary, default, sizes)


def _target(name: str, value: float, limit: float, higher: bool = False) -> dict[str, Any]:
    met = value >= limit if higher else value <= limit
    return {"target": name, "value": value, "limit": limit, "met": bool(met)}


def _fmt(value: float, digits: int = 2) -> str:
    if value != value:  # NaN
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


ROWS = (
    ("cold start: spawn → first 2xx (s)", "cold_start_s", 2),
    ("bare import of its libraries (s)", "bare_import_s", 2),
    ("cold start ÷ bare import", "cold_over_bare", 2),
    ("warm throughput, 8 pushers (msg/s)", "warm_msgs_per_s", 0),
    ("… function's CPU per message, all threads (ms)", "warm_function_cpu_ms", 3),
    ("… Pub/Sub emulator's CPU per message (ms)", "warm_emulator_cpu_ms", 3),
    ("in-process CPU per message, p50 (ms)", "cpu_p50_ms", 3),
    ("in-process CPU per message, p99 (ms)", "cpu_p99_ms", 3),
    ("… of which the handler's thread, p50 (ms)", "thread_cpu_p50_ms", 3),
    ("handler wall time, p50 (ms)", "latency_p50_ms", 2),
    ("handler wall time, p99 (ms)", "latency_p99_ms", 2),
    ("memory: PSS of master + worker (MiB)", "pss_mib", 0),
    ("1,000-ride message, in the function (rides/s)", "batch_in_function_rides_per_s", 0),
    ("1,000-ride message, end to end (rides/s)", "batch_e2e_rides_per_s", 0),
)


def markdown(raw: dict[str, Any], summary: dict[str, Any]) -> str:
    """The results as markdown: main table, targets, cold-start timeline, levers."""
    meta = raw["meta"]
    variants = summary["variants"]
    names = [name for name in NAMES if name in variants]
    lines = [
        "# Benchmark results",
        "",
        f"`make bench` on {meta['cpus']} CPUs ({meta['machine']}, Python {meta['python']}, "
        f"{meta['memory_gib']} GiB); every figure is the median of {meta['rounds']} "
        f"interleaved rounds ({', '.join(names)}, {names[0]}, …). Model: the course "
        f"pipeline trained on {meta['rides_trained']:,} synthetic rides over {meta['zones']} "
        f"zones ({meta['model_bytes'] / MIB:.1f} MiB of artifacts), served from the GCS "
        f"emulator. The run took {meta['seconds']:.0f} s."
        + (
            f" Each function ran on CPU {meta['function_cpus']} alone (its bare import and the "
            "in-process levers too); the emulators and the pushers ran on the other CPUs."
            if meta.get("function_cpus")
            else ""
        )
        + _load_sentence(meta.get("load")),
        "",
        "| | " + " | ".join(names) + " | project ÷ baseline | project ÷ floor |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    for label, key, digits in ROWS:
        cells = [_fmt(variants[name][key], digits) for name in names]
        ratio = summary["ratios"].get(key, {})
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {_fmt(ratio.get('vs_baseline', float('nan')))}"
            + f" | {_fmt(ratio.get('vs_floor', float('nan')))} |"
        )
    lines += [
        "",
        f"1,000-ride message in process (handler with an in-memory publisher: decode, validate, "
        f"predict, build the 1,000 output messages): "
        f"**{_fmt(summary['batch_in_process_rides_per_s'], 0)} rides/s**.",
        "",
        "## Targets",
        "",
        "| target | measured | limit | met |",
        "|---|---:|---:|:---:|",
    ]
    for target in summary["targets"]:
        lines.append(
            f"| {target['target']} | {_fmt(target['value'])} | {_fmt(target['limit'])} | "
            f"{'yes' if target['met'] else '**no**'} |"
        )
    lines += [
        "",
        "## Cold start, step by step (s after the spawn, medians)",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    steps = (
        ("functions-framework imported", "framework_imported"),
        ("the function's module imported (model loaded, for the baseline)", "variant_imported"),
        ("first request reaches the function", "first_call_start"),
        ("first request handled", "first_call_end"),
        ("first 2xx at the client", "first_2xx"),
    )
    for label, key in steps:
        cells = [_fmt(variants[name]["timeline_s"].get(key, float("nan"))) for name in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Heavy packages each function process had imported after the warm phase:", ""]
    for name in names:
        lines.append(f"- {name}: {', '.join(variants[name]['packages']) or 'none watched'}")
    if summary.get("cost"):
        lines += concurrency.markdown_lines(
            summary["concurrency"], meta, summary["cost"]["default_concurrency"]
        )
        lines += cost_report.concurrency_cost_lines(summary["cost"])
    if summary.get("allin"):
        lines += cost_report.allin_lines(summary["allin"])
    lines += _lever_lines(summary["levers"])
    lines += _round_lines(raw, names)
    return "\n".join(lines) + "\n"


def _load_sentence(load: dict[str, Any] | None) -> str:
    """The machine's load during the run, as recorded in ``meta``."""
    if not load:
        return ""
    figures = ", ".join(f"{key} {value:.1f}" for key, value in load.items() if key != "how")
    # The bench's own processes raise the load by its end; only a busy start says that other
    # work shared the CPUs for the whole run.
    if load.get("start", 0.0) >= QUIET_LOAD:
        verdict = (
            "other work was running on these CPUs when the run started: absolute figures are "
            "slower than on a quiet machine, ratios within a round hold better."
        )
    else:
        verdict = "the machine was quiet when the run started (the bench loads it by the end)."
    return f" Machine load during the run ({load.get('how', 'load average')}): {figures}; {verdict}"


def _lever_lines(levers: dict[str, Any]) -> list[str]:
    if not levers:
        return []
    lines = ["", "## Levers, measured in process (medians)", ""]
    if "model_load_ms" in levers:
        lines += [
            "| model format | artifacts (MiB) | first load in a fresh process (ms) |",
            "|---|---:|---:|",
        ]
        for fmt, ms in levers["model_load_ms"].items():
            lines.append(f"| {fmt} | {levers['model_bytes'][fmt] / MIB:.1f} | {_fmt(ms, 0)} |")
        lines.append("")
    if "predict_us" in levers:
        lines += ["| model call | CPU (µs per call) |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(us, 1)} |" for name, us in levers["predict_us"].items()]
        lines.append("")
    if "publish_us" in levers:
        lines += ["| publish to the emulator | µs per call |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(us, 0)} |" for name, us in levers["publish_us"].items()]
        lines.append("")
    if "handler" in levers:
        lines += ["| `PredictionService.handle` in process | |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(value, 2)} |" for name, value in levers["handler"].items()]
        lines.append("")
    if "contract_us" in levers:
        lines += ["| the message contract's own work | CPU (µs per call) |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(us, 1)} |" for name, us in levers["contract_us"].items()]
        lines.append("")
    if "log_line_us" in levers:
        cost = _fmt(levers["log_line_us"], 1)
        lines.append(f"One per-message JSON log line costs {cost} µs CPU.")
    return lines


def _round_lines(raw: dict[str, Any], names: Sequence[str]) -> list[str]:
    lines = [
        "",
        "## Every round",
        "",
        "| round | variant | bare import (s) | cold start (s) | warm (msg/s) "
        "| CPU p50 (ms) | PSS (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for result in raw["rounds"]:
        bare = raw["bare_import_s"][result["variant"]][result["round"] - 1]
        lines.append(
            f"| {result['round']} | {result['variant']} | {bare:.2f} | "
            f"{result['cold_start_s']:.2f} | {result['warm_msgs_per_s']:.0f} | "
            f"{percentile(result['cpu_ms'], 50):.3f} | {result['pss_bytes'] / MIB:.0f} |"
        )
    return lines


COLORS = {"baseline": "#9e9e9e", "floor": "#64b5f6", "framework": "#ffb74d", "project": "#2e7d32"}


def plot(raw: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    """Bars for the medians, dots for the rounds; one panel per measure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = summary["variants"]
    names = [name for name in NAMES if name in variants]
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    figure.suptitle(
        f"Ride-duration function vs the tutorial's (medians of {raw['meta']['rounds']} rounds; "
        "dots: each round)"
    )
    _cold_start_panel(axes[0][0], variants, names)
    _bars(
        axes[0][1],
        "warm throughput, msg/s (8 pushers)",
        raw,
        variants,
        names,
        lambda r: r["warm_msgs_per_s"],
        "warm_msgs_per_s",
    )
    _bars(
        axes[0][2],
        "memory: PSS, MiB",
        raw,
        variants,
        names,
        lambda r: r["pss_bytes"] / MIB,
        "pss_mib",
    )
    _cpu_panel(axes[1][0], variants, names)
    _batch_panel(axes[1][1], summary)
    _timeline_panel(axes[1][2], variants, names)
    for row in axes:
        for axis in row:
            axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# Width of one of two bars side by side, per variant.
_HALF_WIDTH = 0.38


def _bars(
    axis: Any,
    title: str,
    raw: dict[str, Any],
    variants: dict[str, Any],
    names: list[str],
    fn: Callable[[dict[str, Any]], float],
    key: str,
) -> None:
    """One bar per variant (its median), a dot per round, the median written on top."""
    for index, name in enumerate(names):
        axis.bar(index, variants[name][key], color=COLORS[name])
        points = _per_round(raw, name, fn)
        axis.scatter([index] * len(points), points, color="black", s=10, zorder=3)
        axis.annotate(
            _fmt(variants[name][key]),
            (index, variants[name][key]),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    axis.set_xticks(range(len(names)), names)
    axis.set_title(title)


def _cold_start_panel(axis: Any, variants: dict[str, Any], names: list[str]) -> None:
    """Cold start (solid) beside the bare import (hatched), and their ratio."""
    width = _HALF_WIDTH
    for index, name in enumerate(names):
        axis.bar(index - width / 2, variants[name]["cold_start_s"], width, color=COLORS[name])
        axis.bar(
            index + width / 2,
            variants[name]["bare_import_s"],
            width,
            color=COLORS[name],
            alpha=0.4,
            hatch="//",
        )
        axis.annotate(
            f"×{variants[name]['cold_over_bare']:.2f}",
            (index, max(variants[name]["cold_start_s"], variants[name]["bare_import_s"])),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    axis.set_xticks(range(len(names)), names)
    axis.set_title("cold start (solid) vs bare import (hatched), s")


def _cpu_panel(axis: Any, variants: dict[str, Any], names: list[str]) -> None:
    """In-process CPU per message: p50 solid, p99 light."""
    width = _HALF_WIDTH
    for index, name in enumerate(names):
        axis.bar(index - width / 2, variants[name]["cpu_p50_ms"], width, color=COLORS[name])
        axis.bar(
            index + width / 2, variants[name]["cpu_p99_ms"], width, color=COLORS[name], alpha=0.5
        )
    axis.set_xticks(range(len(names)), names)
    axis.set_title("in-process CPU per message, ms (p50 solid, p99 light)")


def _batch_panel(axis: Any, summary: dict[str, Any]) -> None:
    """The project's 1,000-ride messages: rides/s in process, in the function, end to end."""
    project = summary["variants"].get("project", {})
    rates = {
        "in process": summary["batch_in_process_rides_per_s"],
        "in the function": project.get("batch_in_function_rides_per_s", float("nan")),
        "end to end": project.get("batch_e2e_rides_per_s", float("nan")),
    }
    axis.bar(range(len(rates)), list(rates.values()), color=COLORS["project"])
    for index, value in enumerate(rates.values()):
        axis.annotate(_fmt(value, 0), (index, value), ha="center", va="bottom", fontsize=9)
    axis.axhline(BATCH_TARGET_RIDES_PER_S, color="red", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(rates)), list(rates))
    axis.set_title("project, 1,000-ride messages: rides/s\n(dashed: the 100,000 target)")


def _timeline_panel(axis: Any, variants: dict[str, Any], names: list[str]) -> None:
    """The cold start's steps as stacked horizontal bars, one per variant."""
    steps = ("framework_imported", "variant_imported", "first_call_start", "first_call_end")
    for index, name in enumerate(names):
        timeline = variants[name]["timeline_s"]
        previous = 0.0
        for step_index, key in enumerate(steps):
            value = timeline.get(key, previous)
            axis.barh(
                index,
                value - previous,
                left=previous,
                color=COLORS[name],
                alpha=0.3 + 0.7 * step_index / (len(steps) - 1),
                edgecolor="white",
            )
            previous = value
    axis.set_yticks(range(len(names)), names)
    axis.set_title(
        "cold start timeline, s (light to dark: framework\n"
        "import, module import, to 1st request, 1st request)"
    )
