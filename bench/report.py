"""Turns bench/results/results.json into results.md (tables) and PNG plots.

python bench/report.py [bench/results]   # re-render from an existing results.json
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ORDER = ["ours-channels", "ours-async_view", "naive", "eventstream", "starlette", "ceiling"]
LABELS = {
    "ours-channels": "ours, channels mode",
    "ours-async_view": "ours, async_view mode",
    "naive": "naive Channels tutorial",
    "eventstream": "django-eventstream",
    "starlette": "sse-starlette (uvicorn)",
    "ceiling": "bare asyncio (ceiling)",
}
COLORS = {
    "ours-channels": "tab:blue",
    "ours-async_view": "tab:cyan",
    "naive": "tab:red",
    "eventstream": "tab:orange",
    "starlette": "tab:green",
    "ceiling": "tab:gray",
}


def results(data: dict, scenario: str, system: str) -> list[dict]:
    return [
        r
        for r in data["results"]
        if r["scenario"] == scenario and r["system"] == system and "error" not in r and "na" not in r
    ]


def values(rows: list[dict], get: Callable[[dict], float | None]) -> list[float]:
    out = []
    for row in rows:
        try:
            value = get(row)
        except (KeyError, IndexError, TypeError):
            continue
        if value is not None:
            out.append(float(value))
    return out


def median(vals: list[float]) -> float | None:
    return statistics.median(vals) if vals else None


def num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def cell(vals: list[float], digits: int = 0) -> str:
    """Median, then min–max when the runs differ."""
    if not vals:
        return "n/a"
    mid, low, high = statistics.median(vals), min(vals), max(vals)
    if len(vals) == 1 or low == high:
        return num(mid, digits)
    return f"{num(mid, digits)} ({num(low, digits)}–{num(high, digits)})"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b or math.isinf(a) or math.isinf(b):
        return "n/a"
    return f"{a / b:.2f}×"


def systems_in(data: dict) -> list[str]:
    present = {r["system"] for r in data["results"]}
    return [s for s in ORDER if s in present] + sorted(present - set(ORDER))


def errors_of(data: dict, scenario: str, system: str) -> str:
    errs = [r["error"] for r in data["results"] if r["scenario"] == scenario and r["system"] == system and "error" in r]
    return f" ({len(errs)} run(s) failed: {errs[0][:80]})" if errs else ""


def level_of(row: dict, level: int) -> dict:
    return next(x for x in row["levels"] if x["level"] == level)


def idle_table(data: dict, systems: list[str]) -> list[str]:
    levels = data["config"]["idle_levels"]
    lines = [
        "| system | open streams | succeeded | connect p99 (ms) | RSS per stream (KB) | resets | failed connects |",
        "|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        rows = results(data, "idle", system)
        for level in levels:

            def get(key: str, lv: int = level) -> Callable[[dict], float | None]:
                return lambda r: level_of(r, lv)[key]

            failed = values(rows, lambda r, lv=level: sum(level_of(r, lv)["errors"].values()))
            lines.append(
                f"| {LABELS.get(system, system)}{errors_of(data, 'idle', system)} | {level:,} "
                f"| {cell(values(rows, get('succeeded')))} | {cell(values(rows, get('connect_p99_ms')))} "
                f"| {cell(values(rows, get('rss_per_stream_kb')), 1)} | {cell(values(rows, get('resets')))} "
                f"| {cell(failed)} |"
            )
    return lines


def fanout_table(data: dict, systems: list[str]) -> list[str]:
    lines = [
        "| system | delivered / expected | lost | duplicated | out of order | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        rows = results(data, "fanout", system)
        lat = {q: values(rows, lambda r, q=q: r["latency_ms"][q]) for q in ("p50", "p95", "p99", "max")}
        lines.append(
            f"| {LABELS.get(system, system)}{errors_of(data, 'fanout', system)} "
            f"| {cell(values(rows, lambda r: r['delivered']))} / {cell(values(rows, lambda r: r['expected']))} "
            f"| {cell(values(rows, lambda r: r['lost']))} | {cell(values(rows, lambda r: r['duplicated']))} "
            f"| {cell(values(rows, lambda r: r['out_of_order']))} | {cell(lat['p50'], 1)} | {cell(lat['p95'], 1)} "
            f"| {cell(lat['p99'], 1)} | {cell(lat['max'], 1)} |"
        )
    return lines


def saturation_medians(data: dict, systems: list[str]) -> dict[str, float | None]:
    return {
        s: median(values(results(data, "saturation", s), lambda r: r["max_good_deliveries_per_s"])) for s in systems
    }


def saturation_table(data: dict, systems: list[str]) -> list[str]:
    best = saturation_medians(data, systems)
    lines = [
        (
            "| system | max good deliveries/s | last good rate (ev/s) | peak measured deliveries/s "
            "| × naive | × django-eventstream | × sse-starlette | × ceiling |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        rows = results(data, "saturation", system)
        mine = best[system]
        lines.append(
            f"| {LABELS.get(system, system)}{errors_of(data, 'saturation', system)} "
            f"| {cell(values(rows, lambda r: r['max_good_deliveries_per_s']))} "
            f"| {cell(values(rows, lambda r: r['max_good_rate']), 1)} "
            f"| {cell(values(rows, lambda r: r['peak_measured_deliveries_per_s']))} "
            f"| {ratio(mine, best.get('naive'))} | {ratio(mine, best.get('eventstream'))} "
            f"| {ratio(mine, best.get('starlette'))} | {ratio(mine, best.get('ceiling'))} |"
        )
    return lines


def per_run_ratios(data: dict, systems: list[str]) -> list[str]:
    """Ratios within each run: both systems measured minutes apart, under the same machine load."""
    pairs = [
        (a, b) for a, b in (("ours-channels", "naive"), ("ours-async_view", "eventstream")) if {a, b} <= set(systems)
    ]
    if not pairs:
        return []
    best: dict[int, dict[str, float]] = {}
    for row in data["results"]:
        if row["scenario"] == "saturation" and "max_good_deliveries_per_s" in row:
            best.setdefault(row["run"], {})[row["system"]] = row["max_good_deliveries_per_s"]
    lines = ["| run | " + " | ".join(f"{a} ÷ {b}" for a, b in pairs) + " |", "|---" * (len(pairs) + 1) + "|"]
    for run, got in sorted(best.items()):
        lines.append(f"| {run} | " + " | ".join(ratio(got.get(a), got.get(b)) for a, b in pairs) + " |")
    return lines


def reconnect_table(data: dict, systems: list[str]) -> list[str]:
    lines = [
        (
            "| system | all caught up (s) | half caught up (s) | clients with exactly the missed events, in order "
            "| lost | duplicated | out of order | other events |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        rows = results(data, "reconnect", system)
        if not rows and not errors_of(data, "reconnect", system):
            lines.append(f"| {LABELS.get(system, system)} | n/a: no replay | | | | | | |")
            continue
        exact = cell(values(rows, lambda r: r["clients_exact"]))
        total = cell(values(rows, lambda r: r["clients"]))
        lines.append(
            f"| {LABELS.get(system, system)}{errors_of(data, 'reconnect', system)} "
            f"| {cell(values(rows, lambda r: r['catch_up_s']), 2)} "
            f"| {cell(values(rows, lambda r: r['catch_up_p50_s']), 2)} | {exact} / {total} "
            f"| {cell(values(rows, lambda r: r['lost']))} | {cell(values(rows, lambda r: r['duplicated']))} "
            f"| {cell(values(rows, lambda r: r['out_of_order']))} | {cell(values(rows, lambda r: r['stray']))} |"
        )
    return lines


def ratio_table(data: dict, systems: list[str]) -> list[str]:
    top = max(data["config"]["idle_levels"])
    rss = {
        s: median(values(results(data, "idle", s), lambda r: level_of(r, top)["rss_per_stream_kb"])) for s in systems
    }
    p99 = {s: median(values(results(data, "fanout", s), lambda r: r["latency_ms"]["p99"])) for s in systems}
    sat = saturation_medians(data, systems)
    lines = [
        "Medians compared; for deliveries/s higher is better, for RSS and p99 lower is better.",
        "",
        (
            "| system | deliveries/s × naive | × eventstream | × ceiling "
            f"| RSS/stream at {top:,} × naive | × eventstream | × ceiling | fan-out p99 × naive | × eventstream | × ceiling |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in systems:
        cells = []
        for metric in (sat, rss, p99):
            cells += [ratio(metric[s], metric.get(ref)) for ref in ("naive", "eventstream", "ceiling")]
        lines.append(f"| {LABELS.get(s, s)} | " + " | ".join(cells) + " |")
    return lines


def run_ratio(a: float | None, b: float | None) -> float | None:
    """a ÷ b for one run; a lost event (∞ latency) on one side only still says who won."""
    if a is None or b is None or (math.isinf(a) and math.isinf(b)):
        return None
    if math.isinf(b) or math.isinf(a):
        return 0.0 if math.isinf(b) else math.inf
    return a / b if b else None


def times(vals: list[float]) -> str:
    """Ratios as a cell: the median, then (min–max) when the runs differ."""
    if not vals:
        return "n/a"
    mid, low, high = statistics.median(vals), min(vals), max(vals)
    text = f"{num(mid, 2)}×"
    return text if len(vals) == 1 or low == high else f"{text} ({num(low, 2)}–{num(high, 2)}×)"


def peer_table(data: dict, systems: list[str], peer: str = "starlette") -> list[str]:
    """Ours ÷ the peer users would pick instead, each ratio taken within one run, then the median of the runs."""
    ours = [s for s in ("ours-channels", "ours-async_view") if s in systems]
    if peer not in systems or not ours:
        return []
    top = max(data["config"]["idle_levels"])
    metrics: list[tuple[str, Callable[[dict], float | None]]] = [
        ("idle", lambda r: level_of(r, top)["rss_per_stream_kb"]),
        ("fanout", lambda r: r["latency_ms"]["p99"]),
        ("saturation", lambda r: r["max_good_deliveries_per_s"]),
    ]

    def by_run(scenario: str, system: str, get: Callable[[dict], float | None]) -> dict[int, float]:
        return {r["run"]: v for r in results(data, scenario, system) for v in values([r], get)}

    lines = [
        (
            "Each ratio is taken within one run (both measured minutes apart, under the same machine load), then "
            "the median of the runs (min–max). RSS and p99: below 1× means ours is better; deliveries/s: above 1×. "
            "A p99 ratio of ∞ or 0: only one side lost events."
        ),
        "",
        f"| ours ÷ {LABELS.get(peer, peer)} | RSS per idle stream at {top:,} | fan-out p99 | max good deliveries/s |",
        "|---|---|---|---|",
    ]
    for system in ours:
        cells = []
        for scenario, get in metrics:
            mine, theirs = by_run(scenario, system, get), by_run(scenario, peer, get)
            got = [run_ratio(mine[run], theirs[run]) for run in sorted(mine.keys() & theirs.keys())]
            cells.append(times([v for v in got if v is not None]))
        lines.append(f"| {LABELS.get(system, system)} | " + " | ".join(cells) + " |")
    return lines


def targets(data: dict, systems: list[str]) -> list[str]:
    """The issue's targets, per Daphne process, checked against the medians."""
    out = []
    levels = data["config"]["idle_levels"]
    sat = saturation_medians(data, systems)

    def check(ok: bool | None, text: str) -> None:
        mark = "n/a" if ok is None else ("met" if ok else "NOT met")
        out.append(f"| {text} | {mark} |")

    for system, rss_limit, p99_limit in (("ours-channels", 22, 100), ("ours-async_view", 30, 150)):
        if system not in systems:
            continue
        idle = results(data, "idle", system)
        top = max(levels)
        if top >= 10_000:
            ok10k = values(idle, lambda r: level_of(r, 10_000)["succeeded"])
            resets = values(idle, lambda r: level_of(r, 10_000)["resets"])
            check(
                bool(ok10k) and min(ok10k) >= 10_000 and max(resets, default=0) == 0,
                f"{system}: 10,000 idle streams, no resets (got {cell(ok10k)}, resets {cell(resets)})",
            )
        rss = values(idle, lambda r, top=top: level_of(r, top)["rss_per_stream_kb"])
        check(
            median(rss) <= rss_limit if rss else None,
            f"{system}: RSS per stream ≤ {rss_limit} KB (got {cell(rss, 1)} KB at {top:,})",
        )
        fan = results(data, "fanout", system)
        p99 = values(fan, lambda r: r["latency_ms"]["p99"])
        lost = values(fan, lambda r: r["lost"] + r["duplicated"])
        check(
            (median(p99) <= p99_limit and max(lost) == 0) if p99 and lost else None,
            f"{system}: fan-out p99 ≤ {p99_limit} ms, zero loss (got {cell(p99, 1)} ms, lost+dup {cell(lost)})",
        )
    if "ours-channels" in systems and "naive" in systems:
        r = sat["ours-channels"] / sat["naive"] if sat["ours-channels"] and sat["naive"] else None
        check(
            None if r is None else r >= 10,
            f"ours-channels saturation ≥ 10× naive (got {ratio(sat['ours-channels'], sat['naive'])})",
        )
    if "ours-async_view" in systems and "eventstream" in systems:
        a, e = sat["ours-async_view"], sat["eventstream"]
        check(
            None if not (a and e) else a / e >= 1.4,
            f"ours-async_view saturation ≥ 1.4× django-eventstream (got {ratio(a, e)})",
        )
    return ["| target | result |", "|---|---|", *out] if out else []


def machine_lines(data: dict) -> list[str]:
    m = data["machine"]
    cfg = data["config"]
    lines = [
        (
            f"- Date: {m['date']}; template commit {m.get('template_commit', '?')}; "
            f"{cfg['runs']} run(s), whole bench {data.get('duration_s', '?')} s"
        ),
        f"- CPU: {m['cpu']}, {m['cores']} cores; kernel {m['kernel']}; Python {m['python']}; redis-server {m['redis']}",
        f"- Pinning: {m['pinning']}; load generator on uvloop: {m['uvloop_in_load_generator']}",
    ]
    for system, pkgs in m.get("packages", {}).items():
        if pkgs:
            lines.append(f"- {LABELS.get(system, system)}: " + ", ".join(f"{k} {v}" for k, v in sorted(pkgs.items())))
    return lines


def markdown(data: dict) -> str:
    systems = systems_in(data)
    cfg = data["config"]
    scenarios = {r["scenario"] for r in data["results"]}
    parts = ["# SSE benchmark results", "", *machine_lines(data), ""]
    parts += ["Each cell: median of the runs, then (min–max) when they differ. ∞: some events never arrived.", ""]
    if targets(data, systems):
        parts += ["## Targets (per Daphne process)", "", *targets(data, systems), ""]
    if "idle" in scenarios:
        parts += [
            "## 1. Idle streams",
            "",
            (
                f"Clients open streams in steps ({', '.join(f'{n:,}' for n in cfg['idle_levels'])}; at most 500 connecting "
                "at once) and hold them. RSS per stream = (server VmRSS with N open − VmRSS before) / N."
            ),
            "",
            *idle_table(data, systems),
            "",
        ]
    if "fanout" in scenarios:
        parts += [
            "## 2. Fan-out",
            "",
            (
                f"{cfg['clients']:,} clients, {cfg['fanout_events']} events at {cfg['fanout_rate']:g}/s from a separate "
                f"publisher process. Latency: publish time in the event → bytes read by the client. Events still missing "
                f"{cfg['drain_s']:g} s after the last publish count as lost, with an infinite latency."
            ),
            "",
            *fanout_table(data, systems),
            "",
        ]
    if "saturation" in scenarios:
        parts += [
            "## 3. Saturation",
            "",
            (
                f"{cfg['clients']:,} clients; the event rate goes up in steps of {cfg['step_s']:g} s "
                f"({', '.join(f'{r:g}' for r in cfg['rates'])} ev/s) until a step has p99 > 1 s or any loss, "
                "twice in a row (a failing step is repeated once, 2 s later). "
                "Max good deliveries/s = clients × rate of the last good step; peak measured = the most deliveries/s "
                "seen in any step, the failing one included."
            ),
            "",
            *saturation_table(data, systems),
            "",
            "Saturation ratios within each run:",
            "",
            *per_run_ratios(data, systems),
            "",
        ]
    if "reconnect" in scenarios:
        parts += [
            "## 4. Reconnect storm",
            "",
            (
                f"{cfg['clients']:,} clients get one event, disconnect; {cfg['storm_events']} events are published; then "
                "all reconnect at once with Last-Event-ID. Time from the reconnect burst until every client has every "
                f"missed event; n/a when some had not after {cfg.get('storm_timeout', 30):g} s (then see lost)."
            ),
            "",
            *reconnect_table(data, systems),
            "",
        ]
    parts += ["## Ratios", "", *ratio_table(data, systems), ""]
    if peer_table(data, systems):
        parts += ["## Ours ÷ sse-starlette", "", *peer_table(data, systems), ""]
    return "\n".join(parts)


def plots(data: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    systems = systems_in(data)
    if any(results(data, "saturation", s) for s in systems):
        fig, ax = plt.subplots(figsize=(8, 5))
        for system in systems:
            for i, row in enumerate(results(data, "saturation", system)):
                xs = [s["offered_deliveries_per_s"] for s in row["steps"]]
                ys = [min(s["latency_ms"]["p99"] or math.inf, 20_000) for s in row["steps"]]
                ax.plot(xs, ys, "o-", color=COLORS.get(system), alpha=0.8, label=LABELS.get(system) if i == 0 else None)
        ax.axhline(1000, color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered deliveries/s (clients × events/s)")
        ax.set_ylabel("p99 latency (ms; lost events count as ∞, drawn at 20 s)")
        ax.set_title("Saturation: p99 vs offered load, one server process on one core")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "saturation.png", dpi=110)
        plt.close(fig)
        made.append("saturation.png")
    sat = saturation_medians(data, systems)
    levels = data["config"]["idle_levels"]
    rss = {
        s: median(values(results(data, "idle", s), lambda r: level_of(r, max(levels))["rss_per_stream_kb"]))
        for s in systems
    }
    if any(sat.values()) or any(rss.values()):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
        short = {
            "naive": "naive\ntutorial",
            "eventstream": "django-\neventstream",
            "starlette": "sse-starlette\n(uvicorn)",
            "ceiling": "bare asyncio\n(ceiling)",
        }
        names = [short.get(s, s.replace("-", "\n", 1)) for s in systems]
        colors = [COLORS.get(s, "tab:green") for s in systems]
        a1.bar(names, [sat[s] or 0 for s in systems], color=colors)
        a1.set_title("max good deliveries/s (higher is better)")
        a2.bar(names, [rss[s] or 0 for s in systems], color=colors)
        a2.set_title(f"RSS per idle stream at {max(levels):,}, KB (lower is better)")
        for ax in (a1, a2):
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "summary.png", dpi=110)
        plt.close(fig)
        made.append("summary.png")
    return made


def write(data: dict, out: Path) -> None:
    text = markdown(data)
    images = plots(data, out)
    if images:
        text += "\n" + "\n".join(f"![{name}]({name})" for name in images) + "\n"
    (out / "results.md").write_text(text)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    write(json.loads((folder / "results.json").read_text()), folder)
