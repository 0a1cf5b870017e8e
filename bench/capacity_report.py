"""capacity.md and capacity.png from capacity.json (bench/capacity.py writes all three).

python bench/capacity_report.py [bench/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = {
    "ours-channels": "ours (channels)",
    "ours-async_view": "ours (async_view)",
    "ceiling": "bare asyncio (ceiling)",
}


def fmt(value, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits == 0 and value >= 100:
        return f"{value:,.0f}{unit}"
    if isinstance(value, int | float):
        if round(value, digits) == 0:
            value = 0.0  # not "-0.00": a rounding of nothing
        return f"{value:,.{digits}f}{unit}"
    return str(value)


def seconds(ms) -> str:
    return "never" if ms is None else f"{ms / 1000:.2f} s"


def errors_text(errors: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(errors.items()) if v) or "none"


def storm_errors(result: dict) -> dict:
    """The storm's failed connects: a load generator's error counts run from its start."""
    before = result["open"]["errors"]
    return {k: v - before.get(k, 0) for k, v in result["storm"]["open"]["errors"].items()}


def rows(data: dict) -> list[tuple[str, list[str]]]:
    names = [n for n in data["config"]["systems"] if n in data["medians"]]
    med = data["medians"]

    def each(fn) -> list[str]:
        out = []
        for name in names:
            try:
                out.append(fn(med[name]))
            except (KeyError, TypeError, ZeroDivisionError):
                out.append("–")
        return out

    def per_run(fn) -> list[str]:
        """Facts that must hold in every run (errors), not a median: joined over the runs."""
        out = []
        for name in names:
            runs = [r for r in data["results"] if r["system"] == name]
            try:
                out.append(" / ".join(fn(r) for r in runs))
            except (KeyError, TypeError):
                out.append("–")
        return out

    def ratio(fn) -> list[str]:
        ceiling = med.get("ceiling")
        out = []
        for name in names:
            try:
                out.append(f"{fn(med[name]) / fn(ceiling):.2f}×")
            except (KeyError, TypeError, ZeroDivisionError):
                out.append("–")
        return out

    def cpu(r: dict, key: str, group: str) -> str:
        return fmt(r[key]["group_pct_of_one_core"][group], " %", 1)

    def cores(r: dict, key: str) -> str:
        return " / ".join(f"{c:.0f} %" for c in r[key]["core_busy_pct"])

    def groups(r: dict, key: str) -> str:
        """Where a phase's CPU went: the servers, nginx, the load generator (% of one core each)."""
        pct = r[key]["group_pct_of_one_core"]
        return " / ".join(f"{pct[g]:.0f}" for g in ("daphne", "nginx", "load generator")) + " %"

    return [
        ("streams held after the hold", each(lambda r: fmt(r["held"]["open_now"]))),
        ("open: seconds for all", each(lambda r: fmt(r["open"]["seconds"], " s", 1))),
        ("open: new streams/s", each(lambda r: fmt(r["open"]["rate_per_s"]))),
        ("open: connect p99 (worst process)", each(lambda r: fmt(r["open"]["connect_p99_ms_worst_worker"], " ms"))),
        ("open: errors by kind (each run)", per_run(lambda r: errors_text(r["open"]["errors"]))),
        ("open: CPU per core", each(lambda r: cores(r, "open_cpu"))),
        ("open: CPU of servers / nginx / load generator", each(lambda r: groups(r, "open_cpu"))),
        (
            "held: dropped / reset by the server (each run)",
            per_run(lambda r: f"{r['held']['dropped']} / {r['held']['resets']}"),
        ),
        ("RSS per stream: Daphne (or ceiling)", each(lambda r: fmt(r["rss_per_stream_kb"]["daphne"], " KB", 1))),
        ("RSS per stream: nginx", each(lambda r: fmt(r["rss_per_stream_kb"]["nginx"], " KB", 1))),
        ("RSS per stream: Redis", each(lambda r: fmt(r["rss_per_stream_kb"]["redis"], " KB", 2))),
        ("RSS total: Daphne instances", each(lambda r: fmt(sum(r["rss_held_kb"]["daphne"]) / 1024, " MB"))),
        ("RSS total: nginx", each(lambda r: fmt(sum(r["rss_held_kb"]["nginx"]) / 1024, " MB"))),
        ("RSS total: Redis", each(lambda r: fmt(sum(r["rss_held_kb"]["redis"]) / 1024, " MB", 1))),
        ("RSS largest Daphne instance", each(lambda r: fmt(max(r["rss_held_kb"]["daphne"]) / 1024, " MB"))),
        ("idle CPU per core (heartbeats only)", each(lambda r: cores(r, "idle_cpu"))),
        ("idle CPU: Daphne, % of one core", each(lambda r: cpu(r, "idle_cpu", "daphne"))),
        ("idle CPU: nginx, % of one core", each(lambda r: cpu(r, "idle_cpu", "nginx"))),
        ("broadcast: 50% have it", each(lambda r: seconds(r["broadcast"]["ms_to"]["50%"]))),
        ("broadcast: 99% have it", each(lambda r: seconds(r["broadcast"]["ms_to"]["99%"]))),
        ("broadcast: 100% have it", each(lambda r: seconds(r["broadcast"]["ms_to"]["100%"]))),
        ("broadcast: 99% vs ceiling", ratio(lambda r: r["broadcast"]["ms_to"]["99%"])),
        ("broadcast: 99% read by the load generator", each(lambda r: seconds(r["broadcast"]["read_ms_to"]["99%"]))),
        (
            "broadcast: lost / duplicated (each run)",
            per_run(lambda r: f"{r['broadcast']['lost']} / {r['broadcast']['duplicated']}"),
        ),
        ("broadcast CPU per core", each(lambda r: cores(r, "broadcast_cpu"))),
        ("1 event/s: p50", each(lambda r: seconds(r["ticks"]["ms_to"]["50%"]))),
        ("1 event/s: p99", each(lambda r: seconds(r["ticks"]["ms_to"]["99%"]))),
        ("1 event/s: max", each(lambda r: seconds(r["ticks"]["ms_to"]["100%"]))),
        ("1 event/s: p99 read by the load generator", each(lambda r: seconds(r["ticks"]["read_ms_to"]["99%"]))),
        (
            "1 event/s: lost / duplicated (each run)",
            per_run(lambda r: f"{r['ticks']['lost']} / {r['ticks']['duplicated']}"),
        ),
        ("1 event/s: CPU per core", each(lambda r: cores(r, "ticks_cpu"))),
        ("storm: all reconnected", each(lambda r: fmt(r["storm"]["all_open_s"], " s", 1))),
        ("storm: CPU of servers / nginx / load generator", each(lambda r: groups(r, "storm_cpu"))),
        (
            "storm: all caught up (replay)",
            each(lambda r: fmt(r["storm"]["caught_up_s"], " s", 1) if r["storm"]["replay"] else "no replay"),
        ),
        (
            "storm: lost / duplicated / stray (each run)",
            per_run(
                lambda r: (
                    f"{r['storm']['lost']} / {r['storm']['duplicated']} / {r['storm']['stray']}"
                    if r["storm"]["replay"]
                    else "no replay"
                )
            ),
        ),
        ("storm: errors by kind (each run)", per_run(lambda r: errors_text(storm_errors(r)))),
        ("nginx error log (each run)", per_run(lambda r: errors_text(r.get("nginx_errors", {})))),
        ("server tracebacks (each run)", per_run(lambda r: str(len(r.get("server_problems", []))))),
    ]


def table(data: dict) -> str:
    names = [n for n in data["config"]["systems"] if n in data["medians"]]
    head = "| | " + " | ".join(LABELS.get(n, n) for n in names) + " |"
    sep = "|---" * (len(names) + 1) + "|"
    body = [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows(data)]
    return "\n".join([head, sep, *body])


def plot(data: dict, out: Path) -> bool:
    """capacity.png; False when matplotlib is not installed (run.sh installs it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for result in data["results"]:
        if result.get("run") != "1" or not result.get("rss_samples"):
            continue
        name = LABELS.get(result["system"], result["system"])
        samples = result["rss_samples"]
        xs = [s["open"] / 1000 for s in samples]
        base = samples[0]
        left.plot(xs, [(s["daphne_kb"] - base["daphne_kb"]) / 1024 for s in samples], label=f"{name}: server processes")
        if result["system"] == "ours-channels":
            left.plot(
                xs, [(s["nginx_kb"] - base["nginx_kb"]) / 1024 for s in samples], "k--", label="nginx (any system)"
            )
        hist = result.get("broadcast", {}).get("histogram_ms", {})
        expected = result.get("broadcast", {}).get("expected", 0)
        if hist and expected:
            seen, xs2, ys2 = 0, [], []
            for ms in sorted(hist, key=int):
                seen += hist[ms]
                xs2.append(int(ms) / 1000)
                ys2.append(100 * seen / expected)
            right.step(xs2, ys2, where="post", label=name)
    left.set_xlabel("open streams (thousands)")
    left.set_ylabel("RSS added (MB)")
    left.set_title("Memory against open streams (run 1)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.set_xlabel("seconds after publish")
    right.set_ylabel("% of streams that have the event")
    right.set_title(f"One event broadcast to {data['config']['streams']:,} streams (run 1)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "capacity.png", dpi=110)
    plt.close(fig)
    return True


def write(data: dict, out: Path) -> None:
    m, c = data["machine"], data["config"]
    lines = [
        f"# Capacity: {c['streams']:,} streams through nginx on one machine",
        "",
        f"{m['date']}, template {m['template_commit']}. {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, nginx {m['nginx']}, Redis {m['redis']}. "
        f"Descriptors per process: {m['fd_limit_per_process']:,}; somaxconn {m['somaxconn']}. {m['pinning']}.",
        "",
        f"{c['instances']} Daphne instances on unix sockets (the generated unit's ExecStart), the generated nginx "
        f"site without TLS ({c['nginx_workers']} workers, `reuseport`), one Redis, {c['streams']:,} streams on one "
        f"stream name from {c['streams'] // c['per_source']:,}+ loopback addresses ({c['per_source']} each), offered "
        f"at {c['rate']:,.0f} new streams/s. Held {c['hold']:.0f} s; one broadcast; {c['ticks']} s of 1 event/s; "
        f"then every client drops, {c['missed']} events are published, and all reconnect at once with their "
        f"Last-Event-ID. Median of {c['runs']} interleaved run(s); rows marked 'each run' list every run.",
        "",
        f"The clients are bare non-blocking sockets in {c.get('load_generators', '–')} load generator processes "
        f"(uvloop: {'yes' if m.get('uvloop_in_load_generator') else 'no'}). A client 'has' an event when its bytes "
        "reach its socket (the kernel's receive time, as a browser would have them); the rows 'read by the load "
        "generator' add the time these processes, each reading thousands of sockets in turn, took to get to them.",
        "",
        table(data),
        "",
    ]
    if plot(data, out):
        lines += ["![capacity](capacity.png)", ""]
    (out / "capacity.md").write_text("\n".join(lines))


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    write(json.loads((folder / "capacity.json").read_text()), folder)
