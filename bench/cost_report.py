"""The cost tables of a bench run: ``bench.cost``'s arithmetic applied to what the run measured.

``concurrency_cost`` prices each concurrency level (per million rides, both billing modes) and
picks the default concurrency; ``allin`` builds the measured message shapes and prices the
scenarios, the break-even rates, Dataflow on paper, the physical floor, Publish RPCs in flight
per billing mode and the log line; ``*_lines`` write them as markdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from bench import cost
from bench.cost import (
    DEFAULT_TOLERANCE,
    DEPLOY,
    FRAMEWORK_RATIO_AIM,
    INSTANCES,
    MILLION,
    MONTH_SECONDS,
    PRICE_SOURCES,
    PRICES_READ,
    Prices,
    Scenario,
    Shape,
)

SINGLE, BATCH = "single-ride", "1,000-ride"
PROJECT, FRAMEWORK = "project", "framework"
BILLINGS = ("request", "instance")
STEADY_RATES = (1.0, 10.0, 100.0, 1000.0)
BURSTY_RATE, BURSTY_HOURS = 100.0, 8.0


def scenarios() -> list[Scenario]:
    """Steady load at each of ``STEADY_RATES`` messages per second; a bursty day (8 busy hours),
    with and without one minimum instance."""
    steady = [Scenario(f"steady {rate:g} msg/s", rate) for rate in STEADY_RATES]
    name = f"{BURSTY_HOURS:g} h a day at {BURSTY_RATE:g} msg/s"
    bursty = Scenario(name, BURSTY_RATE, BURSTY_HOURS)
    return [*steady, bursty, replace(bursty, name=bursty.name + ", min 1", min_instances=1)]


# --- Per concurrency level -----------------------------------------------------------------


def concurrency_cost(
    concurrency_summary: dict[str, Any], prices: Prices = cost.PRICES
) -> dict[str, Any]:
    """Per level: single-ride and 1,000-ride cost per million rides for each of ``INSTANCES``
    (request-based) and at ``DEPLOY`` (instance-based); the default concurrency the single-ride
    request-based figures support."""
    rows = []
    for level, variants in concurrency_summary["levels"].items():
        project = variants.get(PROJECT)
        if not project:
            continue
        row: dict[str, Any] = {"concurrency": int(level), "single": {}, "batch": {}}
        for instance in INSTANCES:
            row["single"][instance.label] = cost.per_million_rides(
                project["msgs_per_s"], 1, instance, prices
            )
            if "batch_rides_per_s" in project:
                row["batch"][instance.label] = cost.per_million_rides(
                    project["batch_rides_per_s"], project["batch_size"], instance, prices
                )
        row["instance_based"] = {
            "single": cost.instance_based_per_million(project["msgs_per_s"], DEPLOY, prices),
            "batch": cost.instance_based_per_million(
                project.get("batch_rides_per_s", float("nan")), DEPLOY, prices
            ),
        }
        row["framework_ratio"] = variants.get("project_over_framework", float("nan"))
        row["latency_p99_ms"] = project["latency_p99_ms"]
        rows.append(row)
    default = cost.choose_default(
        {row["concurrency"]: row["single"][DEPLOY.label]["total"] for row in rows}
    )
    return {
        "pricing_page": cost.CLOUD_RUN_PAGE,
        "prices_read": PRICES_READ,
        "prices": asdict(prices),
        "instances": [asdict(instance) | {"label": instance.label} for instance in INSTANCES],
        "tolerance": DEFAULT_TOLERANCE,
        "framework_ratio_aim": FRAMEWORK_RATIO_AIM,
        "utilisation": cost.AUTOSCALER_UTILISATION,
        "rows": rows,
        "default_concurrency": default,
    }


def money(value: float) -> str:
    """Dollars, with the precision a figure of that size needs."""
    if value != value:  # NaN
        return "–"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    if abs(value) >= 0.01:
        return f"${value:.3f}"
    return f"${value:.5f}"


def _seconds(value: float) -> str:
    return "–" if value != value else f"{value:,.0f}"


def concurrency_cost_lines(table: dict[str, Any]) -> list[str]:
    """The per-level cost table, the prices it uses, and the default it supports."""
    prices = table["prices"]
    big, small = (instance["label"] for instance in table["instances"])
    default = table["default_concurrency"]
    lines = [
        "",
        "## Cost per million rides, per concurrency level (Cloud Run functions)",
        "",
        f"Prices: [{table['pricing_page']}]({table['pricing_page']}), read {table['prices_read']} "
        "(see the all-in section for which figures the page showed): request-based billing "
        f"${prices['request_vcpu_second']:.8f} per vCPU-second, "
        f"${prices['request_gib_second']:.8f} per GiB-second, "
        f"${prices['per_million_requests']:.2f} per million requests; instance-based "
        f"${prices['instance_vcpu_second']:.8f} per vCPU-second, "
        f"${prices['instance_gib_second']:.8f} per GiB-second (Tier 1, beyond the free tier). "
        "Request-based: billed instance time per million rides = 1,000,000 ÷ the rides per second "
        "one busy instance serves at that concurrency (table above); the allocated vCPU and "
        "memory are billed for all of it, whatever CPU the function uses. Instance-based: "
        f"instances at {table['utilisation']:.0%} of that throughput (the autoscaler's target), "
        f"billed all the time. Deploy assumed: `--cpu 1 --memory 1Gi` ({big}); the 512Mi "
        f"columns are the same with {small}.",
        "",
        "| concurrency | single-ride: instance-s per M rides | compute | + requests "
        f"| total, {big} | total, {small} | instance-based, {big} "
        f"| 1,000-ride msgs: instance-s per M rides | total, {big} | total, {small} "
        f"| instance-based, {big} |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nan = {"instance_seconds": float("nan"), "total": float("nan")}
    for row in table["rows"]:
        single, batch = row["single"], row["batch"]
        based = row.get("instance_based", {})
        mark = " **(default)**" if row["concurrency"] == default else ""
        lines.append(
            f"| {row['concurrency']}{mark} | {_seconds(single[big]['instance_seconds'])} "
            f"| {money(single[big]['compute'])} | {money(single[big]['requests'])} "
            f"| {money(single[big]['total'])} | {money(single[small]['total'])} "
            f"| {money(based.get('single', float('nan')))} "
            f"| {_seconds(batch.get(big, nan)['instance_seconds'])} "
            f"| {money(batch.get(big, nan)['total'])} | {money(batch.get(small, nan)['total'])} "
            f"| {money(based.get('batch', float('nan')))} |"
        )
    if default is not None:
        row = next(row for row in table["rows"] if row["concurrency"] == default)
        ratio = row["framework_ratio"]
        met = "met" if ratio >= table["framework_ratio_aim"] else "**not met**"
        lines += [
            "",
            f"Default concurrency supported by this run: **{default}**, the smallest level whose "
            f"total cost per million single-ride messages ({DEPLOY.label}, request-based) is "
            f"within {table['tolerance']:.0%} of the cheapest level's (more concurrency past it "
            "saves less than that and adds latency and memory). "
            f"Project ÷ framework there: {ratio:.2f} (aim ≥ {table['framework_ratio_aim']:.2f}: "
            f"{met}).",
        ]
    return lines


# --- The measured shapes -------------------------------------------------------------------


def shapes(
    levels: Mapping[str, Mapping[str, Any]], default: int, sizes: Mapping[str, Any]
) -> dict[str, Shape]:
    """The single-ride and 1,000-ride shapes the run measured, at concurrency ``default``
    (the project as configured; latency alone from concurrency 1)."""
    by_level = {int(level): variants for level, variants in levels.items() if PROJECT in variants}
    deploy, lowest = by_level[default], by_level[min(by_level)]
    project, framework = deploy[PROJECT], deploy.get(FRAMEWORK, {})
    logs = _log_bytes_per_line(by_level)
    common = {
        "framework_cpu_s": framework.get("cpu_ms_per_msg", float("nan")) / 1000,
        "log_envelope_bytes": sizes["log_envelope_bytes"],
        "request_log_bytes": sizes["request_log_bytes"],
        "dead_letter_bytes": sizes["dead_letter_bytes"],
    }
    single = Shape(
        name=SINGLE,
        rides_per_message=1,
        capacity=project["msgs_per_s"],
        latency_s=1 / lowest[PROJECT]["msgs_per_s"],
        cpu_s=project["cpu_ms_per_msg"] / 1000,
        push_message_bytes=sizes["single"]["message_bytes"],
        publish=_histograms(by_level, "msgs_per_s", "publish_single", 1),
        log_line_bytes=logs["single"],
        **common,
    )
    size = project["batch_size"]
    batch = Shape(
        name=BATCH,
        rides_per_message=size,
        capacity=project["batch_rides_per_s"] / size,
        latency_s=size / lowest[PROJECT]["batch_rides_per_s"],
        cpu_s=project["batch_cpu_ms_per_msg"] / 1000,
        push_message_bytes=sizes["batch"]["message_bytes"],
        publish=_histograms(by_level, "batch_rides_per_s", "publish_batch", size),
        log_line_bytes=logs["batch"],
        **common,
    )
    return {SINGLE: single, BATCH: batch}


def _histograms(
    by_level: Mapping[int, Mapping[str, Any]], rate_key: str, histogram_key: str, per: int
) -> tuple[tuple[float, Mapping[str, Any]], ...]:
    """(messages per second, Publish RPC histogram) of the project at each level, by rate."""
    pairs = [
        (variants[PROJECT][rate_key] / per, variants[PROJECT][histogram_key])
        for variants in by_level.values()
        if variants[PROJECT].get(histogram_key)
    ]
    return tuple(sorted(pairs, key=lambda pair: pair[0]))


def _log_bytes_per_line(by_level: Mapping[int, Mapping[str, Any]]) -> dict[str, float]:
    totals = {"single": [0, 0], "batch": [0, 0]}
    for variants in by_level.values():
        for kind, counts in variants[PROJECT].get("log_lines", {}).items():
            totals[kind][0] += counts["lines"]
            totals[kind][1] += counts["bytes"]
    return {kind: (b / n if n else float("nan")) for kind, (n, b) in totals.items()}


# --- All in --------------------------------------------------------------------------------


def lean(scenario: Scenario) -> Scenario:
    """The same traffic with the function's per-message line off (``MESSAGE_LOG_LEVEL=DEBUG``)
    and Cloud Run's request log excluded."""
    return replace(scenario, log_lines=False, request_log=False)


def allin(
    concurrency_summary: dict[str, Any],
    default: int,
    sizes: Mapping[str, Any],
    prices: Prices = cost.PRICES,
) -> dict[str, Any]:
    """The all-in table and everything derived from it (see the module doc)."""
    measured = shapes(concurrency_summary["levels"], default, sizes)
    bills, floors, dataflow = [], [], []
    for shape in measured.values():
        for scenario in scenarios():
            for billing in BILLINGS:
                bills.append(cost.bill(shape, scenario, billing, prices=prices))
                lean_bill = cost.bill(shape, lean(scenario), billing, prices=prices)
                lean_bill.billing = f"{billing}, lean"
                bills.append(lean_bill)
            floors.append(cost.floor_month(shape, scenario, prices))
            if scenario.busy_hours == 24:
                dataflow.append(cost.dataflow_month(shape, scenario, prices))
    return {
        "shapes": {name: asdict(shape) for name, shape in measured.items()},
        "bills": [one.as_dict() for one in bills + floors],
        "dataflow": [one.as_dict() for one in dataflow],
        "break_even": {
            name: cost.break_even_rate(shape, prices) for name, shape in measured.items()
        },
        "dataflow_break_even": {
            name: dataflow_break_even(shape, prices) for name, shape in measured.items()
        },
        "min_instance_month": {
            "request": MONTH_SECONDS * cost.idle_rate(DEPLOY, prices),
            "instance": MONTH_SECONDS * cost.instance_rate(DEPLOY, prices),
        },
        "rpcs_in_flight": rpcs_by_billing(concurrency_summary, prices),
        "log_line": log_line_share(measured[SINGLE], prices),
        "sources": {
            name: {"value": value, "page": PRICE_SOURCES[name][0], "how": PRICE_SOURCES[name][1]}
            for name, value in asdict(prices).items()
        },
        "deploy_concurrency": default,
    }


def dataflow_break_even(shape: Shape, prices: Prices = cost.PRICES) -> float | None:
    """The steady rate above which always-on Dataflow workers cost less than the function
    under its cheaper billing mode, lean (``lean``: Dataflow writes no per-element log either);
    None if never up to 20,000 msg/s."""

    def dataflow_cheaper(rate: float) -> bool:
        steady = Scenario("steady", rate)
        function = min(cost.bill(shape, lean(steady), b, prices=prices).total for b in BILLINGS)
        return cost.dataflow_month(shape, steady, prices).total <= function

    return cost.rate_above(dataflow_cheaper, steps=800)


def log_line_share(shape: Shape, prices: Prices = cost.PRICES) -> dict[str, float]:
    """Per million single-ride messages: what the per-message log line costs, and its share of
    the all-in cost at 100 msg/s under each billing mode."""
    scenario = Scenario("share", 100.0)
    line = (shape.log_line_bytes + shape.log_envelope_bytes) * MILLION / cost.GiB
    result = {"line_bytes": shape.log_line_bytes, "per_million": line * prices.logging_per_gib}
    for billing in ("request", "instance"):
        one = cost.bill(shape, scenario, billing, prices=prices)
        result[f"share_{billing}"] = one.items["logging_function_lines"] / one.total
    return result


def rpcs_by_billing(
    concurrency_summary: dict[str, Any], prices: Prices = cost.PRICES
) -> list[dict[str, Any]]:
    """Per level and Publish-RPC cap the run measured: what depends on the cap, per million
    single rides: request-based instance time, instance-based instances (at the autoscaler's
    target), and Pub/Sub's publish and pull of the predictions (their measured RPCs)."""
    rows = []
    for level, variants in concurrency_summary["levels"].items():
        for name, entry in variants.items():
            if not isinstance(entry, dict) or not name.startswith(PROJECT):
                continue
            cap = entry.get("max_rpcs_in_flight")
            if cap is None or not entry.get("publish_single"):
                continue
            histogram = entry["publish_single"]
            published, messages = cost.billed_histogram_bytes(histogram, prices)
            rpcs = sum(bucket["rpcs"] for bucket in histogram.values())
            pubsub = 2 * cost.pubsub_dollars(published / messages * MILLION, prices.pubsub_per_tib)
            request = cost.per_million_rides(entry["msgs_per_s"], 1, DEPLOY, prices)["compute"]
            instance = cost.instance_based_per_million(entry["msgs_per_s"], DEPLOY, prices)
            batch_rides = entry.get("batch_rides_per_s", float("nan"))
            rows.append(
                {
                    "concurrency": int(level),
                    "rpcs": cap,
                    "msgs_per_s": entry["msgs_per_s"],
                    "cpu_ms_per_msg": entry["cpu_ms_per_msg"],
                    "latency_p50_ms": entry["latency_p50_ms"],
                    "messages_per_rpc": messages / rpcs,
                    "pubsub": pubsub,
                    "request": request + pubsub,
                    "instance": instance + pubsub,
                    "batch_rides_per_s": batch_rides,
                    "batch_request": cost.per_million_rides(batch_rides, 1000, DEPLOY, prices)[
                        "compute"
                    ],
                    "batch_instance": cost.instance_based_per_million(batch_rides, DEPLOY, prices),
                }
            )
    return sorted(rows, key=lambda row: (row["concurrency"], row["rpcs"]))


def minimax_rpcs(rows: list[dict[str, Any]], billing: str) -> tuple[int, float] | None:
    """The cap whose worst excess over the cheapest cap is smallest, taken over the levels
    where three caps or more ran and over both shapes (single-ride, 1,000-ride), with that
    excess (0.1 = 10% over the cheapest)."""
    levels = {row["concurrency"] for row in rows}
    levels = {level for level in levels if sum(r["concurrency"] == level for r in rows) >= 3}
    excess: dict[int, float] = {}
    for level in levels:
        at = [row for row in rows if row["concurrency"] == level]
        for key in (billing, f"batch_{billing}"):
            measured = [row for row in at if row.get(key, float("nan")) == row.get(key)]
            if not measured:
                continue
            cheapest = min(row[key] for row in measured)
            for row in measured:
                worst = max(excess.get(row["rpcs"], 0.0), row[key] / cheapest - 1)
                excess[row["rpcs"]] = worst
    if not excess:
        return None
    cap = min(excess, key=lambda one: excess[one])
    return cap, excess[cap]


def best_rpcs(rows: list[dict[str, Any]], level: int, billing: str) -> int | None:
    """The smallest cap within ``DEFAULT_TOLERANCE`` of the cheapest at ``level`` for
    ``billing`` (the costs that depend on the cap only)."""
    candidates = {row["rpcs"]: row[billing] for row in rows if row["concurrency"] == level}
    return cost.choose_default(candidates)


# --- Markdown -------------------------------------------------------------------------------


def _count(value: float) -> str:
    return "–" if value != value else f"{value:,.0f}"


def _rate(value: float | None) -> str:
    if value is None:
        return "never (up to 20,000 msg/s)"
    return f"{value:,.1f} msg/s" if value < 100 else f"{value:,.0f} msg/s"


def allin_lines(result: dict[str, Any]) -> list[str]:
    """The all-in section of results.md."""
    return [
        *_prices_lines(result),
        *_scenario_lines(result),
        *_breakdown_lines(result),
        *_break_even_lines(result),
        *_rpcs_lines(result),
        *_log_lines(result),
    ]


def _prices_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## All in: what a million predictions cost (bench.cost)",
        "",
        f"Prices read {PRICES_READ} through the `search` tool's stored copies of each page; "
        "a figure marked *not readable* was not on the stored page (the reason is given) and is "
        "the list price as the page is quoted elsewhere. Free tiers are not deducted.",
        "",
        "| price | value | page | how read |",
        "|---|---:|---|---|",
    ]
    for name, source in result["sources"].items():
        how = "on the page" if source["how"] == "page" else f"*{source['how']}*"
        lines.append(f"| `{name}` | {source['value']:g} | {source['page']} | {how} |")
    shapes_ = result["shapes"]
    single, batch = shapes_[SINGLE], shapes_[BATCH]
    lines += [
        "",
        "Measured in this run, at the deploy's concurrency "
        f"({result['deploy_concurrency']}): one instance serves {single['capacity']:,.0f} "
        f"single-ride or {batch['capacity']:,.1f} 1,000-ride messages per second; a request "
        f"alone takes {single['latency_s'] * 1000:.0f} ms (single ride) or "
        f"{batch['latency_s'] * 1000:.0f} ms (1,000 rides); CPU per message "
        f"{single['cpu_s'] * 1000:.3f} ms and {batch['cpu_s'] * 1000:.1f} ms (functions-framework "
        f"alone: {single['framework_cpu_s'] * 1000:.3f} ms). A pushed message counts "
        f"{single['push_message_bytes']:.0f} and {batch['push_message_bytes']:,.0f} bytes "
        "(data, attributes, id: billed at least 1,000 per push); the function's log line "
        f"{single['log_line_bytes']:.0f} and {batch['log_line_bytes']:.0f} bytes per message "
        f"(+ an estimated {single['log_envelope_bytes']:.0f}-byte entry envelope); Cloud Run's "
        f"request log an estimated {single['request_log_bytes']:.0f} bytes per push; a dead "
        f"letter {single['dead_letter_bytes']:.0f} bytes. Publish RPC sizes: measured per level "
        "(below); a scenario uses those measured at the per-instance rate nearest below its own.",
    ]
    return lines


def _index(bills: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Bills by (shape, scenario), then by billing ("request", "instance", "request, lean",
    "instance, lean", "floor")."""
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for one in bills:
        index.setdefault((one["shape"], one["scenario"]), {})[one["billing"]] = one
    return index


def cheaper(pair: Mapping[str, Mapping[str, Any]], suffix: str = "") -> dict[str, Any]:
    """The cheaper of the request-based and instance-based bills (``suffix``: ", lean")."""
    request, instance = pair[f"request{suffix}"], pair[f"instance{suffix}"]
    return dict(request if request["total"] <= instance["total"] else instance)


def _scenario_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "### Monthly cost and cost per million predictions",
        "",
        "30-day months; 1% of rides rejected (dead-lettered); `--cpu 1 --memory 1Gi` at the "
        "deploy's concurrency. Both billing modes as deployed today: the function's log line on "
        "(`MESSAGE_LOG_LEVEL=INFO`) and Cloud Run's request log kept. *Lean*: the cheaper mode "
        "with the line off (`MESSAGE_LOG_LEVEL=DEBUG`) and the request log excluded. "
        "Instances: what the autoscaler runs while busy. *Floor*: what no implementation of "
        "this design can avoid (see below). *Default ÷ floor*: request-based as deployed today.",
        "",
        "| shape | scenario | instances | request-based / month | … per M predictions "
        "| instance-based / month | … per M predictions | lean / month | … per M (mode) "
        "| floor per M | default ÷ floor | lean ÷ floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (shape, scenario), bills in _index(result["bills"]).items():
        request, instance, floor = bills["request"], bills["instance"], bills["floor"]
        best = cheaper(bills, ", lean")
        lines.append(
            f"| {shape} | {scenario} | {request['instances']} | {money(request['total'])} "
            f"| {money(request['per_million'])} | {money(instance['total'])} "
            f"| {money(instance['per_million'])} | {money(best['total'])} "
            f"| {money(best['per_million'])} ({best['billing'].split(',')[0]}) "
            f"| {money(floor['per_million'])} | {request['total'] / floor['total']:.1f} "
            f"| {best['total'] / floor['total']:.1f} |"
        )
    return lines


ITEM_LABELS = {
    "compute": "Cloud Run compute",
    "requests": "Cloud Run request fee",
    "pubsub_producer": "Pub/Sub: producer → Stream A (outside the function)",
    "pubsub_push": "Pub/Sub: push delivery to the function",
    "pubsub_publish": "Pub/Sub: publish to Stream B",
    "pubsub_pull": "Pub/Sub: a consumer's pull of Stream B",
    "pubsub_dead_letters": "Pub/Sub: dead letters, published and pulled",
    "pubsub_bigquery": "Pub/Sub: BigQuery subscription (prediction log)",
    "bigquery_storage": "BigQuery storage (a month of rows kept a month)",
    "logging_function_lines": "Cloud Logging: the function's per-message line",
    "logging_request_log": "Cloud Logging: Cloud Run's request log (estimated size)",
}
BREAKDOWN_RATE = 100.0


def _breakdown_lines(result: dict[str, Any]) -> list[str]:
    index = _index(result["bills"])
    key = f"steady {BREAKDOWN_RATE:g} msg/s"
    lines = [
        "",
        f"### Where the money goes, per million predictions (steady {BREAKDOWN_RATE:g} msg/s)",
        "",
        "| item | single-ride, request-based | … instance-based | … lean | … floor "
        "| 1,000-ride, request-based | … instance-based | … lean | … floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    columns = []
    for shape in (SINGLE, BATCH):
        bills = index[(shape, key)]
        columns += [bills["request"], bills["instance"], cheaper(bills, ", lean"), bills["floor"]]
    for item, label in ITEM_LABELS.items():
        cells = [
            money(one["items"].get(item, 0.0) / one["predictions"] * MILLION) for one in columns
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| **total** | " + " | ".join(f"**{money(one['per_million'])}**" for one in columns) + " |"
    )
    return lines


def _break_even_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "### Break-even volumes",
        "",
        "| shape | instance-based cheaper than request-based above | always-on Dataflow cheaper "
        "than the lean function above |",
        "|---|---:|---:|",
    ]
    for shape in (SINGLE, BATCH):
        lines.append(
            f"| {shape} | {_rate(result['break_even'][shape])} "
            f"| {_rate(result['dataflow_break_even'][shape])} |"
        )
    minimum = result["min_instance_month"]
    lines += [
        "",
        f"One minimum instance ({DEPLOY.label}) idle all month: {money(minimum['request'])} "
        f"(request-based, idle rate) or {money(minimum['instance'])} (instance-based).",
        "",
        "Dataflow on paper: n1-standard-2 streaming workers with Streaming Engine and a 30 GB "
        "disk, always on; as many as the function's CPU per message needs at 60% of their vCPUs "
        "(Beam's own cost per element is not measured); Pub/Sub pulled in batches (no 1,000-byte "
        "minimum per message); no per-element log. Against the function as deployed today and "
        "lean, each in its cheaper billing mode:",
        "",
        "| shape | scenario | workers | Dataflow / month | function / month "
        "| lean function / month |",
        "|---|---|---:|---:|---:|---:|",
    ]
    index = _index(result["bills"])
    for one in result["dataflow"]:
        bills = index[(one["shape"], one["scenario"])]
        lines.append(
            f"| {one['shape']} | {one['scenario']} | {one['instances']} "
            f"| {money(one['total'])} | {money(cheaper(bills)['total'])} "
            f"| {money(cheaper(bills, ', lean')['total'])} |"
        )
    return lines


def _rpcs_lines(result: dict[str, Any]) -> list[str]:
    rows = result["rpcs_in_flight"]
    if not rows:
        return []
    lines = [
        "",
        "### Publish RPCs in flight, by billing mode (single-ride messages)",
        "",
        "What depends on `PUBLISH_MAX_RPCS_IN_FLIGHT`, per million single rides: request-based, "
        "the billed instance time (1 ÷ msg/s); instance-based, the instances at the autoscaler's "
        "60% target; both, Pub/Sub's publish and pull of the predictions at the RPC sizes "
        "measured (fewer messages per RPC, more 1,000-byte minimums). Request fees, push "
        "delivery and logs do not depend on it.",
        "",
        "| concurrency | RPCs in flight | msg/s | CPU per msg (ms) | p50 (ms) | msgs per RPC "
        "| Pub/Sub per M | request-based per M | instance-based per M "
        "| 1,000-ride msgs (rides/s) | … instance-based per M rides |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['concurrency']} | {row['rpcs']} | {row['msgs_per_s']:,.0f} "
            f"| {row['cpu_ms_per_msg']:.3f} | {row['latency_p50_ms']:.1f} "
            f"| {row['messages_per_rpc']:.1f} | {money(row['pubsub'])} "
            f"| {money(row['request'])} | {money(row['instance'])} "
            f"| {_count(row.get('batch_rides_per_s', float('nan')))} "
            f"| {money(row.get('batch_instance', float('nan')))} |"
        )
    lines.append("")
    for level in sorted({row["concurrency"] for row in rows}):
        if sum(1 for row in rows if row["concurrency"] == level) < 3:  # 1 and 4 RPCs only
            continue
        lines.append(
            f"At concurrency {level}, the smallest cap within {DEFAULT_TOLERANCE:.0%} of the "
            f"cheapest: request-based **{best_rpcs(rows, level, 'request')}**, instance-based "
            f"**{best_rpcs(rows, level, 'instance')}** (single rides)."
        )
    for billing in BILLINGS:
        chosen = minimax_rpcs(rows, billing)
        if chosen:
            lines.append(
                f"{billing.capitalize()}-based, over single-ride and 1,000-ride messages: the cap "
                f"with the smallest worst case is **{chosen[0]}**, at most {chosen[1]:.0%} over "
                "the cheapest cap."
            )
    return lines


def _log_lines(result: dict[str, Any]) -> list[str]:
    line = result["log_line"]
    return [
        "",
        f"The function's per-message log line ({line['line_bytes']:.0f} bytes, with the entry's "
        f"envelope billed as Cloud Logging ingestion): {money(line['per_million'])} per million "
        f"single-ride messages, {line['share_request']:.0%} of the all-in cost at a steady "
        f"100 msg/s request-based, {line['share_instance']:.0%} instance-based. "
        "`MESSAGE_LOG_LEVEL=DEBUG` drops it (rejections still log at ERROR).",
    ]
