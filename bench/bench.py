"""The benchmark driver: starts each system, drives it with loadgen.py, writes bench/results/.

Normally started by ``bash bench/run.sh``, which installs and bakes what this needs in
bench/build/ and pins this process (the load generator) to CPU 1. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import loadgen

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SECRET = "bench-" + "s" * 58
SYSTEMS = ["ours-channels", "ours-async_view", "naive", "eventstream", "starlette", "ceiling"]
SCENARIOS = ["idle", "fanout", "saturation", "reconnect"]
REPLAY = {"ours-channels", "ours-async_view", "eventstream"}
LABELS = {
    "ours-channels": "ours (channels)",
    "ours-async_view": "ours (async_view)",
    "naive": "naive Channels tutorial",
    "eventstream": "django-eventstream",
    "starlette": "sse-starlette (uvicorn)",
    "ceiling": "bare asyncio (ceiling)",
}
# Daphne flags when the generated unit cannot be read: those of deploy/systemd.
DEFAULT_DAPHNE_FLAGS = ["--proxy-headers", "--application-close-timeout", "5"]
# uvicorn as its docs deploy it: uvloop and httptools, one worker, no access log (Daphne keeps
# none by default either), the same listen backlog as Daphne gets, a bounded shutdown.
UVICORN_FLAGS = ["--loop", "uvloop", "--http", "httptools", "--workers", "1", "--backlog", "4096"]
UVICORN_FLAGS += ["--no-access-log", "--timeout-graceful-shutdown", "5"]


@dataclass
class Config:
    runs: int = 3
    idle_levels: list[int] = field(default_factory=lambda: [1000, 5000, 10000])
    clients: int = 1000
    fanout_events: int = 200
    fanout_rate: float = 20.0
    drain_s: float = 10.0
    rates: list[float] = field(
        default_factory=lambda: [1, 2, 3, 5, 7, 10, 14, 20, 28, 40, 56, 80, 112, 160, 224, 320, 448, 640]
    )
    step_s: float = 3.0
    storm_events: int = 100
    storm_timeout: float = 30.0
    pin: bool = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pinned(cmd: list[str], cpu: int, pin: bool) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if pin and shutil.which("taskset") else cmd


class Redis:
    """The bench's own redis-server on a free port, pinned to CPU 1 like the load generator."""

    def __init__(self, workdir: Path, pin: bool) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(workdir), "--maxclients", "20000"]
        self.proc = subprocess.Popen(pinned(cmd, 1, pin), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    def command(self, *args: str, port: int | None = None) -> str:
        with socket.create_connection(("127.0.0.1", port or self.port), timeout=10) as sock:
            parts = [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
            sock.sendall(f"*{len(args)}\r\n{''.join(parts)}".encode())
            reply = b""
            while not reply.endswith(b"\r\n") or (reply[:1] == b"$" and reply.count(b"\r\n") < 2):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply.decode(errors="replace")

    def version(self) -> str:
        info = self.command("INFO", "server")
        match = re.search(r"redis_version:(\S+)", info)
        return match.group(1) if match else "?"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class RedisCluster(Redis):
    """For the ``ours-*-cluster`` systems: a Redis Cluster of three primaries on CPU 1.

    No replicas: they cost the primaries the same as a replica of one Redis would.
    """

    def __init__(self, workdir: Path, pin: bool) -> None:
        self.url = ""
        self.procs: dict[int, subprocess.Popen] = {}
        for _ in range(3):
            port, bus = free_port(), free_port()  # the bus would be port + 10000, maybe taken
            (workdir / str(port)).mkdir()
            cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            cmd += ["--cluster-enabled", "yes", "--cluster-port", str(bus), "--maxclients", "20000"]
            cmd += ["--dir", str(workdir / str(port))]
            self.procs[port] = subprocess.Popen(
                pinned(cmd, 1, pin), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            wait_port(port, self.procs[port])
        self.port, self.proc = next(iter(self.procs.items()))
        self.nodes = ",".join(f"127.0.0.1:{port}" for port in self.procs)
        create = ["redis-cli", "--cluster", "create", *self.nodes.split(","), "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        while not all("cluster_state:ok" in self.command("CLUSTER", "INFO", port=p) for p in self.procs):
            if time.monotonic() > deadline:
                raise TimeoutError("the bench's Redis Cluster did not come up")
            time.sleep(0.2)

    def command(self, *args: str, port: int | None = None) -> str:
        if port is not None:
            return super().command(*args, port=port)
        return "".join(Redis.command(self, *args, port=p) for p in self.procs)  # FLUSHALL: every primary

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
            proc.wait(10)


def server_env(redis_url: str, **extra: str) -> dict[str, str]:
    """A production-like environment for a server: this one's, minus its Django/Redis/SSE settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_", "SSE_"))}
    env.update(
        REDIS_URL=redis_url,
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=SECRET,
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SECURE_SSL_REDIRECT="0",  # no TLS in front of the servers here
        SSE_PUBLIC_STREAMS="*",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


class System:
    """How to serve and publish one of the compared systems."""

    def __init__(self, name: str, build: Path, redis: Redis, cfg: Config, logdir: Path) -> None:
        self.name, self.build, self.redis, self.cfg, self.logdir = name, build, redis, cfg, logdir
        self.replay = name.removesuffix("-cluster") in REPLAY
        if name.startswith("ours-"):
            mode = name.removeprefix("ours-").removesuffix("-cluster")  # -cluster: on RedisCluster
            self.kind = "ours"
            self.cwd = build / f"bake-{mode}" / "bench_project"
            self.venv = build / f"venv-ours-{mode}"
            self.settings, self.app = "config.settings", "config.asgi:application"
        elif name == "naive":
            self.kind, self.cwd, self.venv = "naive", BENCH / "naive", build / "venv-naive"
            self.settings, self.app = "naive_project.settings", "naive_project.asgi:application"
        elif name == "eventstream":
            self.kind, self.cwd, self.venv = "eventstream", BENCH / "eventstream", build / "venv-eventstream"
            self.settings, self.app = "es_project.settings", "es_project.asgi:application"
        elif name == "starlette":
            self.kind, self.cwd, self.venv = "starlette", BENCH / "starlette", build / "venv-starlette"
            self.settings, self.app = "", "app:app"
        elif name == "ceiling":
            self.kind, self.cwd, self.venv = "ceiling", BENCH, Path(sys.prefix)
            self.settings, self.app = "", ""
        else:
            raise SystemExit(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def env(self) -> dict[str, str]:
        env = server_env(self.redis.url, ES_DB=str(self.build / "eventstream.sqlite3"))
        if self.settings:
            env["DJANGO_SETTINGS_MODULE"] = self.settings
        if isinstance(self.redis, RedisCluster):
            env["REDIS_CLUSTER_NODES"] = self.redis.nodes
        return env

    def unit_command(self) -> tuple[list[str], list[str]]:
        """The generated deploy/systemd unit's ExecStart: how it starts Daphne, and its flags minus endpoint and app."""
        daphne = [str(self.venv / "bin" / "daphne")]
        units = list((self.cwd / "deploy" / "systemd").glob("*@.service")) if self.kind == "ours" else []
        if not units:
            return daphne, DEFAULT_DAPHNE_FLAGS
        text = units[0].read_text().replace("\\\n", " ")
        match = re.search(r"^ExecStart=(.*)$", text, re.MULTILINE)
        if not match:
            return daphne, DEFAULT_DAPHNE_FLAGS
        words = shlex.split(match.group(1))[1:]
        if words[:1] == ["-m"]:  # python -m <launcher>: the daphne command, started the unit's way
            daphne, words = [self.python, "-m", words[1]], words[2:]
        flags, skip = [], False
        for word in words:
            if skip:
                skip = False
            elif word in ("-e", "--endpoint", "-b", "--bind", "-p", "--port", "-u", "--unix-socket"):
                skip = True
            elif not word.endswith(":application"):
                flags.append(word)
        return daphne, flags

    def command(self) -> list[str]:
        if self.kind == "ceiling":
            return [self.python, str(BENCH / "ceiling.py"), str(self.port), self.redis.url]
        if self.kind == "starlette":
            where = ["--host", "127.0.0.1", "--port", str(self.port)]
            return [str(self.venv / "bin" / "uvicorn"), *where, *UVICORN_FLAGS, self.app]
        endpoint = f"tcp:port={self.port}:interface=127.0.0.1:backlog=4096"
        daphne, flags = self.unit_command()
        return [*daphne, "-e", endpoint, *flags, self.app]

    def start(self, label: str) -> None:
        self.port = free_port()
        self.log = self.logdir / f"{self.name}-{label}.log"
        self.proc = subprocess.Popen(
            pinned(self.command(), 0, self.cfg.pin),
            cwd=self.cwd,
            env=self.env(),
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port(self.port, self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> list[str]:
        """Stop the server; return the problems its log shows (tracebacks)."""
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if "Traceback" in line or "Error" in line][:5]

    async def publisher(self, stream: str) -> Publisher:
        cmd = pinned([self.python, str(BENCH / "publisher.py"), self.kind, stream], 1, self.cfg.pin)
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=self.cwd,
            env=self.env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=(self.logdir / f"publisher-{self.name}.log").open("ab"),
        )
        pub = Publisher(proc)
        await pub.expect("ready", 60)
        return pub


class Publisher:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def expect(self, word: str, timeout: float) -> list[str]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        words = line.decode().split()
        if not words or words[0] != word:
            raise RuntimeError(f"publisher said {line!r}, expected {word!r} (see its log in build/logs)")
        return words

    async def publish(self, tag: str, n: int, rate: float, timeout: float = 600) -> float:
        """Publish n events at ``rate``/s; return how long it took."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"pub {tag} {n} {rate}\n".encode())
        await self.proc.stdin.drain()
        words = await self.expect("done", timeout)
        return float(words[2])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
            await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def ms_p99(times: list[float]) -> float | None:
    return round(loadgen.percentile(sorted(times), 99) * 1000, 1) if times else None


async def warm_up(gen: loadgen.LoadGen, path: str) -> None:
    """One request first, so that lazy imports and the first subscription are not measured."""
    clients, _ = await gen.connect(1, path, timeout=30)
    await asyncio.sleep(0.3)
    await gen.close(clients, settle=0.3)


async def scenario_idle(system: System, gen: loadgen.LoadGen, cfg: Config, stream: str) -> dict:
    path = f"/sse/{stream}/"
    await warm_up(gen, path)
    before = rss_kb(system.pid)
    held: list[loadgen.Client] = []
    levels = []
    for level in cfg.idle_levels:
        clients, times = await gen.connect(level - len(held), path, concurrency=500, timeout=30)
        held += clients
        await asyncio.sleep(1.0)
        alive = [c for c in held if not c.closed]
        rss = rss_kb(system.pid)
        levels.append(
            {
                "level": level,
                "succeeded": len(alive),
                "connect_p99_ms": ms_p99(times),
                "rss_kb": rss,
                "rss_per_stream_kb": round((rss - before) / len(alive), 2) if alive else None,
                "resets": gen.resets,
                "errors": dict(gen.errors),
            }
        )
        print(f"    idle {level}: {len(alive)} open, p99 {ms_p99(times)} ms, rss +{rss - before} KB", flush=True)
    await gen.close(held, settle=0.5)
    return {"rss_before_kb": before, "levels": levels}


async def connect_all(gen: loadgen.LoadGen, path: str, n: int) -> list[loadgen.Client]:
    clients, _times = await gen.connect(n, path, concurrency=200, timeout=30)
    await asyncio.sleep(0.5)
    return clients


async def scenario_fanout(system: System, gen: loadgen.LoadGen, cfg: Config, stream: str) -> dict:
    publisher = await system.publisher(stream)
    try:
        clients = await connect_all(gen, f"/sse/{stream}/", cfg.clients)
        phase = loadgen.Phase("fan", cfg.fanout_events, clients)
        elapsed = await publisher.publish("fan", cfg.fanout_events, cfg.fanout_rate)
        await phase.wait(cfg.drain_s)
        result = phase.summary()
        result.update(publish_s=elapsed, connected=len(clients), dropped=gen.dropped, errors=dict(gen.errors))
        await gen.close(clients)
    finally:
        await publisher.close()
    lat = result["latency_ms"]
    print(f"    fanout: {result['delivered']}/{result['expected']} p50 {lat['p50']} p99 {lat['p99']} ms", flush=True)
    return result


async def saturation_step(
    publisher: Publisher, clients: list[loadgen.Client], cfg: Config, rate: float, retry: bool
) -> dict:
    n = max(1, math.ceil(rate * cfg.step_s))
    tag = f"r{rate:g}" + ("-again" if retry else "")
    phase = loadgen.Phase(tag, n, clients)
    started = time.time()
    elapsed = await publisher.publish(tag, n, rate)
    await phase.wait(max(0.5, 1.2 - (time.time() - started - elapsed)))
    summary = phase.summary(start=started)
    p99 = summary["latency_ms"]["p99"]
    good = summary["lost"] == 0 and summary["duplicated"] == 0 and p99 is not None and p99 <= 1000
    print(
        f"    rate {rate:g}/s{' (again)' if retry else ''}: {summary['delivered']}/{summary['expected']} "
        f"p99 {p99} ms, {summary['deliveries_per_s']:.0f}/s {'ok' if good else 'SATURATED'}",
        flush=True,
    )
    return {
        "rate": rate,
        "retry": retry,
        "offered_deliveries_per_s": rate * len(clients),
        "good": good,
        "publisher_behind": elapsed > 1.25 * n / rate + 0.2,
        "publish_s": elapsed,
        **summary,
    }


async def scenario_saturation(system: System, gen: loadgen.LoadGen, cfg: Config, stream: str) -> dict:
    publisher = await system.publisher(stream)
    steps = []
    try:
        clients = await connect_all(gen, f"/sse/{stream}/", cfg.clients)
        for rate in cfg.rates:
            step = await saturation_step(publisher, clients, cfg, rate, retry=False)
            steps.append(step)
            if not step["good"]:
                # One bad step on a shared machine may be a hiccup elsewhere: confirm it once.
                await asyncio.sleep(2.0)
                step = await saturation_step(publisher, clients, cfg, rate, retry=True)
                steps.append(step)
                if not step["good"]:
                    break
            await asyncio.sleep(0.3)
        await gen.close(clients)
    finally:
        await publisher.close()
    good_steps = [s for s in steps if s["good"]]
    return {
        "clients": len(clients),
        "max_good_rate": good_steps[-1]["rate"] if good_steps else 0,
        "max_good_deliveries_per_s": good_steps[-1]["offered_deliveries_per_s"] if good_steps else 0,
        "peak_measured_deliveries_per_s": max((s["deliveries_per_s"] for s in steps), default=0),
        "saturated": bool(steps) and not steps[-1]["good"],
        "steps": steps,
    }


async def scenario_reconnect(system: System, gen: loadgen.LoadGen, cfg: Config, stream: str) -> dict:
    publisher = await system.publisher(stream)
    path = f"/sse/{stream}/"
    try:
        clients = await connect_all(gen, path, cfg.clients)
        first = loadgen.Phase("before", 1, clients)
        await publisher.publish("before", 1, 100)
        if not await first.wait(15):
            return {"error": f"only {first.complete}/{len(clients)} clients got the first event"}
        last_ids = [c.parser.last_event_id for c in clients]
        await gen.close(clients, settle=1.0)
        await publisher.publish("storm", cfg.storm_events, 1000)
        storm = loadgen.Phase("storm", cfg.storm_events, [])
        storm.expect = len(last_ids)
        gen.join_phase = storm
        started = time.time()
        again, times = await gen.connect(len(last_ids), path, last_event_ids=last_ids, concurrency=None, timeout=30)
        gen.join_phase = None
        all_in = await storm.wait(cfg.storm_timeout)
        done = sorted(c.done_at - started for c in storm.clients if c.done_at)
        exact = sum(c.unique == storm.n and not (c.dup or c.ooo or c.stray) for c in storm.clients)
        summary = storm.summary()
        await gen.close(again)
    finally:
        await publisher.close()
    result = {
        "clients": len(last_ids),
        "reconnected": len(again),
        "connect_p99_ms": ms_p99(times),
        "all_caught_up": all_in,
        "catch_up_s": round(done[-1], 3) if all_in and done else None,
        "catch_up_p50_s": round(loadgen.percentile(done, 50), 3) if done else None,
        "clients_exact": exact,
        "clients_with_nothing": sum(c.unique == 0 for c in storm.clients),
        **{k: summary[k] for k in ("expected", "delivered", "lost", "duplicated", "out_of_order", "stray")},
        "errors": dict(gen.errors),
    }
    print(f"    reconnect: caught up in {result['catch_up_s']} s, {exact}/{len(last_ids)} exact", flush=True)
    return result


RUNNERS = {
    "idle": scenario_idle,
    "fanout": scenario_fanout,
    "saturation": scenario_saturation,
    "reconnect": scenario_reconnect,
}


async def run_one(system: System, scenario: str, cfg: Config, label: str) -> dict:
    if scenario == "reconnect" and not system.replay:
        return {"na": "no replay"}
    system.redis.command("FLUSHALL")
    system.start(label)
    gen = loadgen.LoadGen("127.0.0.1", system.port)
    stream = f"{scenario}-{label}"
    started = time.monotonic()
    try:
        result = await RUNNERS[scenario](system, gen, cfg, stream)
    except Exception as exc:  # noqa: BLE001 - one failing system must not lose the others' results
        result = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"    ERROR {result['error']}", flush=True)
    finally:
        alive = system.proc is not None and system.proc.poll() is None
        problems = system.stop()
    result["server_alive"] = alive
    result["server_problems"] = problems
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def versions(python: str) -> dict[str, str]:
    wanted = {"django", "daphne", "channels", "channels-redis", "redis", "django-eventstream", "twisted", "uvloop"}
    wanted |= {"sse-starlette", "starlette", "uvicorn", "httptools"}
    try:
        out = subprocess.run(
            [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return {p["name"]: p["version"] for p in json.loads(out) if p["name"].lower() in wanted}
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def machine(redis: Redis, systems: list[System], cfg: Config) -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "."], check=False, capture_output=True, text=True
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis.version(),
        "template_commit": commit.stdout.strip() + (" (dirty)" if dirty.stdout.strip() else ""),
        "pinning": "servers on CPU 0; load generator, publisher and redis-server on CPU 1"
        if cfg.pin
        else "not pinned (fewer than 2 CPUs)",
        "uvloop_in_load_generator": asyncio.get_event_loop_policy().__class__.__module__.startswith("uvloop"),
        "packages": {s.name: versions(s.python) for s in systems},
    }


async def main_async(args: argparse.Namespace, cfg: Config) -> None:
    build = Path(args.build).resolve()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logdir = build / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    redis = Redis(workdir, cfg.pin)
    cluster = RedisCluster(workdir, cfg.pin) if any(s.endswith("-cluster") for s in args.systems) else None
    systems = [
        System(name, build, cluster if name.endswith("-cluster") else redis, cfg, logdir) for name in args.systems
    ]
    started = time.monotonic()
    data = {"machine": machine(redis, systems, cfg), "config": cfg.__dict__, "results": []}
    try:
        for run in range(1, cfg.runs + 1):
            for scenario in args.scenarios:
                for system in systems:
                    print(f"run {run}/{cfg.runs} {scenario} {system.name}", flush=True)
                    result = await run_one(system, scenario, cfg, f"{run}")
                    data["results"].append({"run": run, "scenario": scenario, "system": system.name, **result})
                    data["duration_s"] = round(time.monotonic() - started)
                    (out / "results.json").write_text(json.dumps(data, indent=1, default=str))
    finally:
        redis.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    import report

    report.write(data, out)
    print(f"done in {data['duration_s']} s: {out / 'results.md'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", default=str(BENCH / "build"), help="where run.sh put the bakes and venvs")
    parser.add_argument("--out", default=str(BENCH / "results"))
    parser.add_argument("--runs", type=int, default=None, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="1 run, smaller numbers: a few minutes")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, from {','.join(SYSTEMS)}; ours-channels-cluster and ours-async_view-cluster "
        "run on a Redis Cluster of three primaries",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from {','.join(SCENARIOS)}")
    parser.add_argument("--clients", type=int, help="clients in fanout, saturation and reconnect")
    parser.add_argument("--events", type=int, help="events in the fan-out scenario")
    parser.add_argument("--idle", help="comma-separated idle levels, e.g. 1000,5000,10000")
    parser.add_argument("--storm-timeout", type=float, help="seconds the reconnect storm may take (default 30)")
    args = parser.parse_args()
    args.systems = [s for s in args.systems.split(",") if s]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for s in args.scenarios:
        if s not in RUNNERS:
            parser.error(f"unknown scenario {s!r}")
    cfg = Config()
    if args.quick:
        cfg = Config(
            runs=1,
            idle_levels=[500, 2000],
            clients=300,
            fanout_events=60,
            drain_s=5.0,
            step_s=1.5,
            storm_events=50,
        )
    if args.runs:
        cfg.runs = args.runs
    if args.clients:
        cfg.clients = args.clients
    if args.events:
        cfg.fanout_events = args.events
    if args.storm_timeout:
        cfg.storm_timeout = args.storm_timeout
    if args.idle:
        cfg.idle_levels = [int(x) for x in args.idle.split(",")]
    cfg.pin = (os.cpu_count() or 1) >= 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if max(cfg.idle_levels) + 100 > hard:
        print(f"warning: ulimit -n is {hard}; idle levels above that will fail", flush=True)
    loadgen.install_uvloop()
    asyncio.run(main_async(args, cfg))


if __name__ == "__main__":
    sys.exit(main())
