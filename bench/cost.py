"""Cost per million rides on Cloud Run functions, from the concurrency measurement (bench only).

A Cloud Run function (2nd gen) is billed as a Cloud Run service with request-based billing: the
instance's *allocated* vCPU and memory for as long as it has at least one request in flight,
plus a fee per request. CPU actually used does not enter the bill. An instance kept busy at
concurrency ``c`` is billed all the time, so the billed instance time per ride is
1 ÷ (rides per second the instance serves at ``c``): that is what the cost is derived from.

Prices: https://cloud.google.com/run/pricing (Cloud Run functions' own pricing page sends 2nd gen
functions there), Tier 1 regions, request-based billing, list prices beyond the monthly free
tier; read 2026-11-27 through the `search` tool's stored copy. The stored copy shows the
CPU price and the free tier in full; its memory and request rows are cut off, and the figures
below for them are the ones that page is quoted with elsewhere (Cloud Run cost guides of 2025)
and that Cloud Run functions (1st gen) still lists for memory and invocations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PRICING_PAGE = "https://cloud.google.com/run/pricing"
PRICES_READ = "2026-11-27"
# A level's total cost per million rides may exceed the cheapest level's by this much and still
# be the default: past that point more concurrency saves little and adds latency and memory
# (see ``choose_default``).
DEFAULT_TOLERANCE = 0.05
# The project ÷ framework throughput the default should reach (issue 10).
FRAMEWORK_RATIO_AIM = 0.75


@dataclass(frozen=True)
class Prices:
    """Request-based billing, in US dollars."""

    per_vcpu_second: float = 0.000024
    per_gib_second: float = 0.0000025
    per_million_requests: float = 0.40


@dataclass(frozen=True)
class Instance:
    """What one instance is allocated (and billed for): the deploy's ``--cpu`` and ``--memory``."""

    vcpu: float
    memory_gib: float

    @property
    def label(self) -> str:
        """E.g. ``1 vCPU, 1 GiB``."""
        if self.memory_gib >= 1:
            memory = f"{self.memory_gib:g} GiB"
        else:
            memory = f"{self.memory_gib * 1024:g} MiB"
        return f"{self.vcpu:g} vCPU, {memory}"


# The deploy this table assumes (--cpu 1 --memory 1Gi), and the same with 512Mi: the function's
# memory (PSS, see docs/speed.md) fits in either.
INSTANCES = (Instance(vcpu=1, memory_gib=1), Instance(vcpu=1, memory_gib=0.5))


def per_million_rides(
    rides_per_second: float, rides_per_request: int, instance: Instance, prices: Prices = Prices()
) -> dict[str, float]:
    """Billed instance seconds and dollars per million rides, for an instance kept busy at
    ``rides_per_second`` by requests of ``rides_per_request`` rides each."""
    if not rides_per_second or rides_per_second != rides_per_second:
        nan = float("nan")
        return {"instance_seconds": nan, "compute": nan, "requests": nan, "total": nan}
    instance_seconds = 1_000_000 / rides_per_second
    compute = instance_seconds * (
        instance.vcpu * prices.per_vcpu_second + instance.memory_gib * prices.per_gib_second
    )
    requests = (1_000_000 / rides_per_request) * prices.per_million_requests / 1_000_000
    return {
        "instance_seconds": instance_seconds,
        "compute": compute,
        "requests": requests,
        "total": compute + requests,
    }


def choose_default(
    total_cost: dict[int, float],
    tolerance: float = DEFAULT_TOLERANCE,
) -> int | None:
    """The smallest concurrency whose total cost per million rides (instance time and request
    fees) is within ``tolerance`` of the cheapest level's.

    The fee per request does not depend on concurrency, so once the instance time per ride is
    small beside it, more concurrency hardly changes the bill, while requests in flight on the
    same CPU wait longer (latency grows with concurrency) and the instance holds more memory.
    """
    measured = {level: cost for level, cost in total_cost.items() if cost == cost and cost > 0}
    if not measured:
        return None
    cheapest = min(measured.values())
    return min(level for level, cost in measured.items() if cost <= cheapest * (1 + tolerance))


def summarise(concurrency_summary: dict[str, Any], prices: Prices = Prices()) -> dict[str, Any]:
    """Per level: single-ride and 1,000-ride cost per million rides for each of ``INSTANCES``;
    the default concurrency the single-ride figures support."""
    rows = []
    for level, variants in concurrency_summary["levels"].items():
        project = variants.get("project")
        if not project:
            continue
        row: dict[str, Any] = {"concurrency": int(level), "single": {}, "batch": {}}
        for instance in INSTANCES:
            row["single"][instance.label] = per_million_rides(
                project["msgs_per_s"], 1, instance, prices
            )
            if "batch_rides_per_s" in project:
                row["batch"][instance.label] = per_million_rides(
                    project["batch_rides_per_s"], project["batch_size"], instance, prices
                )
        row["framework_ratio"] = variants.get("project_over_framework", float("nan"))
        row["latency_p99_ms"] = project["latency_p99_ms"]
        rows.append(row)
    default = choose_default(
        {row["concurrency"]: row["single"][INSTANCES[0].label]["total"] for row in rows}
    )
    return {
        "pricing_page": PRICING_PAGE,
        "prices_read": PRICES_READ,
        "prices": asdict(prices),
        "instances": [asdict(instance) | {"label": instance.label} for instance in INSTANCES],
        "tolerance": DEFAULT_TOLERANCE,
        "framework_ratio_aim": FRAMEWORK_RATIO_AIM,
        "rows": rows,
        "default_concurrency": default,
    }


def _money(value: float) -> str:
    if value != value:  # NaN
        return "–"
    if value >= 1:
        return f"${value:,.2f}"
    if value >= 0.01:
        return f"${value:.3f}"
    return f"${value:.5f}"


def _seconds(value: float) -> str:
    return "–" if value != value else f"{value:,.0f}"


def markdown_lines(cost: dict[str, Any]) -> list[str]:
    """The cost table, the prices it uses, and the default it supports."""
    prices = cost["prices"]
    big, small = (instance["label"] for instance in cost["instances"])
    default = cost["default_concurrency"]
    lines = [
        "",
        "## Cost per million rides (Cloud Run functions, request-based billing)",
        "",
        f"Prices: [{cost['pricing_page']}]({cost['pricing_page']}), read {cost['prices_read']}: "
        f"${prices['per_vcpu_second']:.8f} per vCPU-second, "
        f"${prices['per_gib_second']:.8f} per GiB-second, "
        f"${prices['per_million_requests']:.2f} per million requests (Tier 1 regions, beyond the "
        "free tier). Billed instance time per million rides = 1,000,000 ÷ the rides per second "
        "one busy instance serves at that concurrency (table above); the allocated vCPU and "
        "memory are billed for all of it, whatever CPU the function uses. Deploy assumed: "
        f"`--cpu 1 --memory 1Gi` ({big}); the last columns are the same with 512Mi ({small}).",
        "",
        "| concurrency | single-ride: instance-s per M rides | compute | + requests "
        f"| total, {big} | total, {small} | 1,000-ride msgs: instance-s per M rides "
        f"| total, {big} | total, {small} |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nan = {"instance_seconds": float("nan"), "total": float("nan")}
    for row in cost["rows"]:
        single, batch = row["single"], row["batch"]
        mark = " **(default)**" if row["concurrency"] == default else ""
        lines.append(
            f"| {row['concurrency']}{mark} | {_seconds(single[big]['instance_seconds'])} "
            f"| {_money(single[big]['compute'])} | {_money(single[big]['requests'])} "
            f"| {_money(single[big]['total'])} | {_money(single[small]['total'])} "
            f"| {_seconds(batch.get(big, nan)['instance_seconds'])} "
            f"| {_money(batch.get(big, nan)['total'])} | {_money(batch.get(small, nan)['total'])} |"
        )
    if default is not None:
        row = next(row for row in cost["rows"] if row["concurrency"] == default)
        ratio = row["framework_ratio"]
        met = "met" if ratio >= cost["framework_ratio_aim"] else "**not met**"
        lines += [
            "",
            f"Default concurrency supported by this run: **{default}**, the smallest level whose "
            f"total cost per million single-ride messages ({INSTANCES[0].label}) is within "
            f"{cost['tolerance']:.0%} of the cheapest level's (more concurrency past it saves "
            "less than that and adds latency and memory). "
            f"Project ÷ framework there: {ratio:.2f} (aim ≥ {cost['framework_ratio_aim']:.2f}: "
            f"{met}).",
        ]
    return lines
