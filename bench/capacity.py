"""The capacity scenario: 100,000 open streams on one machine, through the deployment we ship.

Everything runs on this machine, as the deploy guide sets it up: the generated nginx site (TLS
left out, its per-address ``limit_conn`` kept) in front of several Daphne instances on unix
sockets, each started with the generated systemd unit's ExecStart, one Redis, and the load
generator as several processes (capacity_worker.py) opening streams from many loopback source
addresses. For each system (both modes, then the bare asyncio ceiling behind the same nginx):

1. open the streams (at --rate new streams/s), sampling RSS against open streams;
2. hold them for --hold seconds with heartbeats flowing: CPU per core and per process group;
3. broadcast one event to all: time until 50%, 99%, 100% have it; lost, duplicated;
4. one event/s for --ticks seconds;
5. reconnect storm: every client drops, --missed events are published, every client comes
   back at once with its Last-Event-ID: time until all have caught up, exact replay.

Normally started by ``bash bench/run.sh capacity``; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SYSTEMS = ["ours-channels", "ours-async_view", "ceiling"]
SLUG = "bench_project"
STREAM = "capacity"
BAKED: set[Path] = set()
PER_WORKER = 16_000  # streams per load generator process: under the 20,000 descriptors each may hold


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def read_cpu_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies per CPU, from /proc/stat."""
    cpus = []
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]  # idle + iowait
            cpus.append((sum(values) - idle, sum(values)))
    return cpus


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    return []


def bake(build: Path, mode: str, instances: int) -> Path:
    """The generated project as the guide deploys it: unix sockets, ``instances`` Daphnes."""
    out = build / f"capacity-{mode}-{instances}"
    project = out / SLUG
    if project.exists() and out in BAKED:
        return project
    shutil.rmtree(out, ignore_errors=True)  # always this checkout's template, not an old bake
    BAKED.add(out)
    subprocess.run(
        [
            sys.executable,  # run.sh's tools venv, or the template tests' one: both have cookiecutter
            "-m",
            "cookiecutter",
            "--no-input",
            "-f",
            "-o",
            str(out),
            str(ROOT),
            f"sse_mode={mode}",
            f"project_name=Capacity {mode}",
            f"project_slug={SLUG}",
            "daphne_socket=unix",
            f"daphne_instances={instances}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (project / ".env").unlink(missing_ok=True)  # production-like: settings from the environment
    return project


class Stack:
    """Redis, the Daphne (or ceiling) instances and nginx for one system."""

    def __init__(self, name: str, args: argparse.Namespace, workdir: Path, redis: bench.Redis) -> None:
        self.name, self.args, self.workdir, self.redis = name, args, workdir, redis
        self.build = Path(args.build)
        self.mode = name.removeprefix("ours-") if name.startswith("ours-") else None
        self.servers: list[subprocess.Popen] = []
        self.sockets: list[Path] = []
        self.nginx: subprocess.Popen | None = None
        self.port = 0
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.mode:
            self.project = bake(self.build, self.mode, args.instances)
            self.venv = self.build / f"venv-ours-{self.mode}"
        else:
            self.project = bake(self.build, "async_view", args.instances)  # for its nginx site only
            self.venv = Path(sys.prefix)

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def env(self) -> dict[str, str]:
        return bench.server_env(self.redis.url, DJANGO_SETTINGS_MODULE="config.settings")

    def exec_start(self, instance: int, sock: Path) -> list[str]:
        """The unit's ExecStart for one instance, with this run's venv and socket folder."""
        unit = next((self.project / "deploy" / "systemd").glob("*@.service")).read_text()
        line = re.search(r"^ExecStart=(.*)$", unit.replace("\\\n", " "), re.MULTILINE).group(1)
        line = line.replace(f"/srv/{SLUG}/venv/", f"{self.venv}/")
        line = line.replace(f"/run/{SLUG}/%i/daphne.sock", str(sock)).replace("%i", str(instance))
        return shlex.split(line)

    def start(self) -> None:
        run = self.workdir / "run"
        env = self.env()
        for n in range(1, self.args.instances + 1):
            sock = run / str(n) / "daphne.sock"
            sock.parent.mkdir(parents=True, exist_ok=True)
            sock.unlink(missing_ok=True)
            if self.mode:
                cmd, cwd = self.exec_start(n, sock), self.project
            else:
                cmd, cwd = [self.python, str(BENCH / "ceiling.py"), f"unix:{sock}", self.redis.url], BENCH
            log = (self.logs / f"{self.name}-{n}.log").open("wb")
            self.servers.append(
                subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
            self.sockets.append(sock)
        deadline = time.monotonic() + 120
        for proc, sock in zip(self.servers, self.sockets, strict=True):
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: an instance did not start; see {self.logs}")
                time.sleep(0.1)
        self.start_nginx()

    def site(self) -> str:
        """The generated site, TLS left out: port 80's redirect server dropped, 443 served plain."""
        text = (self.project / "deploy" / "nginx" / f"{SLUG}.conf").read_text()
        # The first server block is port 80's redirect to HTTPS.
        start = text.index("server {")
        depth, i = 0, start
        while True:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        text = text[:start] + text[i + 1 :]
        listen = f"listen 127.0.0.1:{self.port} reuseport backlog={self.args.backlog};"
        text = re.sub(r"listen 443 ssl http2;", listen, text)
        text = re.sub(r"\n\s*listen \[::\]:443 ssl http2;", "", text)
        text = re.sub(r"\n\s*ssl_[a-z_]+ [^;]*;", "", text)
        text = re.sub(r"/var/log/nginx/\S+\.access\.log", str(self.logs / "nginx-access.log"), text)
        for n, sock in enumerate(self.sockets, start=1):
            text = text.replace(f"unix:/run/{SLUG}/{n}/daphne.sock", f"unix:{sock}")
        return text

    def start_nginx(self) -> None:
        self.port = bench.free_port()
        conf = self.workdir / "nginx"
        conf.mkdir(exist_ok=True)
        (conf / "site.conf").write_text(self.site())
        temp = "".join(
            f"  {kind}_temp_path {conf}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        (conf / "nginx.conf").write_text(
            f"user root;\ndaemon off;\nworker_processes {self.args.nginx_workers};\n"
            f"worker_rlimit_nofile {hard};\npid {conf}/nginx.pid;\nerror_log {self.logs}/nginx-error.log;\n"
            f"events {{ worker_connections {hard - 500}; }}\n"
            f"http {{\n  include /etc/nginx/mime.types;\n{temp}  include {conf}/site.conf;\n}}\n"
        )
        self.nginx = subprocess.Popen(
            [nginx_binary(), "-p", str(conf), "-c", str(conf / "nginx.conf")],
            stdout=(self.logs / "nginx.out").open("wb"),
            stderr=subprocess.STDOUT,
        )
        bench.wait_port(self.port, self.nginx)

    def groups(self) -> dict[str, list[int]]:
        nginx = [self.nginx.pid, *children(self.nginx.pid)] if self.nginx else []
        return {"daphne": [p.pid for p in self.servers], "nginx": nginx, "redis": [self.redis.proc.pid]}

    def rss(self) -> dict[str, list[int]]:
        return {group: [bench.rss_kb(pid) for pid in pids] for group, pids in self.groups().items()}

    def cpu(self) -> dict[str, float]:
        return {group: sum(process_cpu(pid) for pid in pids) for group, pids in self.groups().items()}

    def stop(self) -> dict:
        problems: list[str] = []
        alive = all(p.poll() is None for p in self.servers)
        for proc in self.servers:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.servers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.nginx is not None:
            self.nginx.terminate()
            self.nginx.wait(30)
        for log in sorted(self.logs.glob(f"{self.name}-*.log")):
            lines = log.read_text(errors="replace").splitlines()
            problems += [f"{log.name}: {line}" for line in lines if "Traceback" in line][:3]
        errors = self.logs / "nginx-error.log"
        kinds: dict[str, int] = {}
        if errors.exists():
            for line in errors.read_text(errors="replace").splitlines():
                match = re.search(r"\[(error|crit|alert|emerg)\] \d+#\d+: (?:\*\d+ )?([^,(]+)", line)
                if match:
                    key = f"{match.group(1)}: {match.group(2).strip()[:80]}"
                    kinds[key] = kinds.get(key, 0) + 1
        return {"servers_alive_at_end": alive, "server_problems": problems[:10], "nginx_errors": kinds}


class Workers:
    """The load generator processes, driven over their stdin/stdout."""

    def __init__(self, count: int, logs: Path) -> None:
        self.count, self.logs = count, logs
        self.procs: list[asyncio.subprocess.Process] = []
        self.waiting: dict[tuple[int, int], asyncio.Future] = {}
        self.next_id = 0
        self.readers: list[asyncio.Task] = []

    async def start(self) -> None:
        for n in range(self.count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(BENCH / "capacity_worker.py"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=(self.logs / f"worker-{n}.log").open("ab"),
                limit=64 * 1024 * 1024,
            )
            self.procs.append(proc)
            self.waiting[(n, 0)] = asyncio.get_running_loop().create_future()
            self.readers.append(asyncio.create_task(self._read(n, proc)))
        await asyncio.gather(*(self.waiting[(n, 0)] for n in range(self.count)))

    async def _read(self, n: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            reply = json.loads(line)
            future = self.waiting.pop((n, reply.pop("id")), None)
            if future is not None and not future.done():
                future.set_result(reply)
        for (worker, _), future in list(self.waiting.items()):
            if worker == n and not future.done():
                future.set_exception(RuntimeError(f"load generator {n} exited; see {self.logs}/worker-{n}.log"))

    async def ask(self, worker: int, cmd: str, /, **fields) -> dict:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[(worker, self.next_id)] = future
        proc = self.procs[worker]
        assert proc.stdin is not None
        proc.stdin.write((json.dumps({"id": self.next_id, "cmd": cmd, **fields}) + "\n").encode())
        await proc.stdin.drain()
        reply = await future
        if "error" in reply:
            raise RuntimeError(f"load generator {worker}: {reply['error']}")
        return reply

    async def all(self, cmd: str, /, per_worker: list[dict] | None = None, **fields) -> list[dict]:
        return await asyncio.gather(
            *(self.ask(n, cmd, **fields, **(per_worker[n] if per_worker else {})) for n in range(self.count))
        )

    async def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.stdin.write(b'{"id": -1, "cmd": "quit"}\n')
                await proc.stdin.drain()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self.readers:
            task.cancel()


def source_addresses(count: int) -> list[str]:
    """``count`` distinct loopback addresses: 127.10.0.1 and up, skipping .0 and .255."""
    out = []
    for i in range(count):
        out.append(f"127.{10 + i // 62500}.{(i // 250) % 250 + 1}.{i % 250 + 1}")
    return out


def merge(replies: list[dict]) -> dict:
    """One phase's results from every load generator: counts summed, latencies from histograms.

    ``ms_to``: when the bytes reached the clients' sockets (the kernel's time); ``read_ms_to``:
    when the load generator processes got round to reading them.
    """
    total = {
        key: sum(r[key] for r in replies)
        for key in ("clients", "expected", "delivered", "lost", "duplicated", "out_of_order", "stray", "malformed")
    }
    total["complete_clients"] = sum(r["complete_clients"] for r in replies)
    for name, out in (("histogram_ms", "ms_to"), ("read_histogram_ms", "read_ms_to")):
        hist: dict[int, int] = {}
        for reply in replies:
            for ms, count in reply.get(name, {}).items():
                hist[int(ms)] = hist.get(int(ms), 0) + count
        total[out] = {f"{q:.0%}": reached(hist, q * total["expected"]) for q in (0.5, 0.99, 1.0)}
        total[name] = {str(k): hist[k] for k in sorted(hist)}
    return total


def reached(hist: dict[int, int], need: float) -> int | None:
    """The ms by which ``need`` deliveries of the histogram had happened (None: never)."""
    seen = 0
    for ms in sorted(hist):
        seen += hist[ms]
        if seen >= math.ceil(need):
            return ms
    return None


def sum_counts(replies: list[dict]) -> dict:
    errors: dict[str, int] = {}
    for reply in replies:
        for kind, count in reply["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    out = {
        key: sum(r[key] or 0 for r in replies)
        for key in ("attempted", "opened", "failed", "open_now", "resets", "dropped")
    }
    out["heartbeats"] = sum(r["heartbeats"] for r in replies)
    out["errors"] = errors
    out["connect_p99_ms_worst_worker"] = max((r["connect_p99_ms"] or 0) for r in replies)
    out["connect_max_ms"] = max((r["connect_max_ms"] or 0) for r in replies)
    return out


class Sampler:
    """CPU per core and per process group over a window."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.cores = read_cpu_times()
        self.groups = stack.cpu()
        self.started = time.monotonic()

    def result(self, workers: Workers) -> dict:
        seconds = time.monotonic() - self.started
        cores = read_cpu_times()
        groups = self.stack.cpu()
        loadgen_cpu = sum(process_cpu(p.pid) for p in workers.procs)
        out = {
            "seconds": round(seconds, 1),
            "core_busy_pct": [
                round(100 * (b1 - b0) / max(1, t1 - t0), 1)
                for (b0, t0), (b1, t1) in zip(self.cores, cores, strict=True)
            ],
            "group_pct_of_one_core": {g: round(100 * (groups[g] - self.groups[g]) / seconds, 1) for g in groups},
        }
        out["group_pct_of_one_core"]["load generator"] = round(100 * (loadgen_cpu - self.loadgen0) / seconds, 1)
        return out

    def with_loadgen(self, workers: Workers) -> Sampler:
        self.loadgen0 = sum(process_cpu(p.pid) for p in workers.procs)
        return self


async def publisher(stack: Stack) -> bench.Publisher:
    kind = "ours" if stack.mode else "ceiling"
    proc = await asyncio.create_subprocess_exec(
        stack.python,
        str(BENCH / "publisher.py"),
        kind,
        STREAM,
        cwd=stack.project if stack.mode else BENCH,
        env=stack.env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=(stack.logs / f"publisher-{stack.name}.log").open("ab"),
    )
    pub = bench.Publisher(proc)
    await pub.expect("ready", 60)
    return pub


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def run_system(name: str, args: argparse.Namespace, redis: bench.Redis, label: str) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"capacity-{name}-"))
    redis.command("FLUSHALL")
    stack = Stack(name, args, workdir, redis)
    result: dict = {"system": name, "run": label}
    workers = Workers(math.ceil(args.streams / PER_WORKER), stack.logs)
    pub = None
    try:
        stack.start()
        await workers.start()
        pub = await publisher(stack)
        path = f"/sse/{STREAM}/"
        sources = source_addresses(math.ceil(args.streams / args.per_source))
        share = [
            args.streams // workers.count + (1 if n < args.streams % workers.count else 0) for n in range(workers.count)
        ]
        plan, first = [], 0
        for n in range(workers.count):
            count = math.ceil(share[n] / args.per_source)
            plan.append({"n": share[n], "sources": sources[first : first + count], "rate": args.rate / workers.count})
            first += count
        # One stream first, so lazy imports and the first subscription are not measured.
        probe = await workers.ask(0, "open", port=stack.port, path=path, n=1, sources=["127.9.0.1"], rate=0)
        if probe["opened"] != 1:
            raise RuntimeError(f"the first stream did not open: {probe}")
        await asyncio.sleep(1)
        base_rss = stack.rss()
        result["rss_before_kb"] = base_rss
        log(f"{name}: opening {args.streams} streams through nginx at {args.rate}/s from {len(sources)} addresses")
        started = time.monotonic()
        sampler = Sampler(stack).with_loadgen(workers)
        opening = asyncio.ensure_future(
            workers.all("open", plan, port=stack.port, path=path, timeout=args.connect_timeout, inflight=args.inflight)
        )
        samples = []
        while not opening.done():
            await asyncio.wait([opening], timeout=2)
            with contextlib.suppress(RuntimeError):
                status = sum_counts(await workers.all("status"))
                rss = stack.rss()
                samples.append(
                    {
                        "t": round(time.monotonic() - started, 1),
                        "open": status["open_now"],
                        "daphne_kb": sum(rss["daphne"]),
                        "nginx_kb": sum(rss["nginx"]),
                        "redis_kb": sum(rss["redis"]),
                    }
                )
        replies = opening.result()
        result["open_cpu"] = sampler.result(workers)
        open_seconds = max(r["seconds"] for r in replies)
        counts = sum_counts(await workers.all("status"))
        result["open"] = {
            "seconds": round(open_seconds, 1),
            "rate_per_s": round((counts["opened"] - 1) / open_seconds) if open_seconds else None,
            **counts,
        }
        result["rss_samples"] = samples
        log(f"{name}: {counts['open_now']} open in {open_seconds:.0f} s, errors {counts['errors']}")
        await asyncio.sleep(5)
        held = counts["open_now"]
        rss = stack.rss()
        result["rss_open_kb"] = rss
        result["rss_per_stream_kb"] = {
            group: round((sum(rss[group]) - sum(base_rss[group])) / max(1, held), 2)
            for group in ("daphne", "nginx", "redis")
        }

        log(f"{name}: holding for {args.hold} s")
        await asyncio.sleep(min(20, args.hold / 4))  # let the opening's garbage settle
        sampler = Sampler(stack).with_loadgen(workers)
        await asyncio.sleep(max(0, args.hold - min(20, args.hold / 4)))
        result["idle_cpu"] = sampler.result(workers)
        status = sum_counts(await workers.all("status"))
        result["held"] = {"open_now": status["open_now"], "dropped": status["dropped"], "resets": status["resets"]}
        result["held"]["heartbeats_per_stream"] = round(status["heartbeats"] / max(1, status["open_now"]), 1)
        result["rss_held_kb"] = stack.rss()
        log(f"{name}: still open {status['open_now']}, idle CPU {result['idle_cpu']}")

        log(f"{name}: broadcast")
        await workers.all("phase", tag="b", n=1)
        sampler = Sampler(stack).with_loadgen(workers)
        await pub.publish("b", 1, 1.0)
        result["broadcast"] = merge(await workers.all("wait", timeout=args.wait))
        result["broadcast_cpu"] = sampler.result(workers)
        log(f"{name}: broadcast {result['broadcast']['ms_to']} lost {result['broadcast']['lost']}")

        log(f"{name}: 1 event/s for {args.ticks} s")
        await workers.all("phase", tag="t", n=args.ticks)
        sampler = Sampler(stack).with_loadgen(workers)
        await pub.publish("t", args.ticks, 1.0)
        result["ticks"] = merge(await workers.all("wait", timeout=args.wait))
        result["ticks_cpu"] = sampler.result(workers)
        log(f"{name}: ticks {result['ticks']['ms_to']} lost {result['ticks']['lost']}")

        replay = stack.mode is not None
        log(f"{name}: reconnect storm ({args.missed if replay else 0} missed events each)")
        drops = await workers.all("drop")
        result["storm_dropped"] = {
            "dropped": sum(d["dropped"] for d in drops),
            "without_id": sum(d["without_id"] for d in drops),
        }
        await asyncio.sleep(2)
        if replay:
            await pub.publish("m", args.missed, 50.0)
        await asyncio.sleep(1)
        sampler = Sampler(stack).with_loadgen(workers)
        storm = await workers.all("reconnect", tag="m", n=args.missed if replay else 0, timeout=args.storm_timeout)
        merged = merge(storm)
        merged["open"] = sum_counts([s["open"] for s in storm])
        merged["caught_up_s"] = max(s["caught_up_s"] for s in storm)
        merged["all_open_s"] = max(s["open"]["seconds"] for s in storm)
        merged["all_complete"] = all(s["all_complete"] for s in storm)
        merged["replay"] = replay
        result["storm"] = merged
        result["storm_cpu"] = sampler.result(workers)
        log(
            f"{name}: storm all open in {merged['all_open_s']} s, caught up {merged['caught_up_s']} s, lost {merged['lost']}"
        )
        status = sum_counts(await workers.all("status"))
        result["after_storm"] = {"open_now": status["open_now"], "errors": status["errors"]}
    except Exception as exc:  # noqa: BLE001 - report it and go on with the next system
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{name}: ERROR {result['error']}")
    finally:
        if pub is not None:
            await pub.close()
        await workers.stop()
        result.update(stack.stop())
        result["logs"] = str(stack.logs)
    return result


def numbers_median(values: list) -> object:
    """The median of each numeric leaf across runs (the first run's value for anything else)."""
    first = values[0]
    if isinstance(first, bool) or first is None:
        return first
    if isinstance(first, int | float):
        nums = [v for v in values if isinstance(v, int | float)]
        return statistics.median(nums) if nums else None
    if isinstance(first, dict):
        return {k: numbers_median([v.get(k) for v in values if isinstance(v, dict)]) for k in first}
    return first


def machine(args: argparse.Namespace, redis: bench.Redis) -> dict:
    info = bench.machine(redis, [], bench.Config(pin=False))
    info.pop("packages", None)
    info["pinning"] = "none: every process shares every core, as on a real server"
    # The load generator processes run on this interpreter and take uvloop when it is there.
    info["uvloop_in_load_generator"] = importlib.util.find_spec("uvloop") is not None
    nginx = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True)
    info["nginx"] = (nginx.stderr or nginx.stdout).strip().split("/")[-1]
    info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    info["fd_limit_per_process"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    info["somaxconn"] = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    info["packages"] = {
        f"ours-{m}": bench.versions(str(Path(args.build) / f"venv-ours-{m}" / "bin" / "python"))
        for m in ("channels", "async_view")
    }
    return info


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="capacity-redis-"))
    redis = bench.Redis(workdir, pin=False)
    data = {
        "machine": machine(args, redis),
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("build", "out")},
            "load_generators": math.ceil(args.streams / PER_WORKER),
        },
        "results": [],
    }
    started = time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            for name in args.systems:
                log(f"run {run}/{args.runs}: {name}")
                data["results"].append(await run_system(name, args, redis, str(run)))
                data["duration_s"] = round(time.monotonic() - started)
                (out / "capacity.json").write_text(json.dumps(data, indent=1, default=str))
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    data["medians"] = {
        name: numbers_median([r for r in data["results"] if r["system"] == name]) for name in args.systems
    }
    (out / "capacity.json").write_text(json.dumps(data, indent=1, default=str))
    import capacity_report

    capacity_report.write(data, out)
    log(f"done in {data['duration_s']} s: {out / 'capacity.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=str(BENCH / "build"), help="where run.sh put the venvs")
    parser.add_argument("--out", default=str(BENCH / "results"))
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {','.join(SYSTEMS)}")
    parser.add_argument("--runs", type=int, default=1, help="interleaved runs; the report shows medians")
    parser.add_argument("--streams", type=int, default=100_000)
    # The fewest that stay under this machine's 20,000 descriptors per process with room to spare
    # (16,667 streams each): on two cores, Daphne's CPU per stream grows with the instance count.
    parser.add_argument("--instances", type=int, default=6, help="Daphne instances behind nginx")
    parser.add_argument("--nginx-workers", type=int, default=12, help="each proxied stream is two descriptors")
    parser.add_argument("--per-source", type=int, default=30, help="streams per loopback source address")
    parser.add_argument("--rate", type=float, default=2500, help="new streams per second while opening")
    parser.add_argument("--inflight", type=int, default=1000, help="connects in flight per load generator")
    parser.add_argument("--backlog", type=int, default=65535, help="nginx listen backlog (the kernel caps it)")
    parser.add_argument("--hold", type=float, default=300, help="seconds to hold the streams idle")
    parser.add_argument("--ticks", type=int, default=60, help="seconds of 1 event/s")
    parser.add_argument("--missed", type=int, default=10, help="events published while every client is away")
    parser.add_argument("--wait", type=float, default=90, help="seconds to wait for a phase's events")
    parser.add_argument("--connect-timeout", type=float, default=60)
    parser.add_argument("--storm-timeout", type=float, default=120)
    parser.add_argument("--quick", action="store_true", help="10,000 streams, 30 s hold, 10 ticks: a few minutes")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.instances, args.nginx_workers, args.hold, args.ticks = 10_000, 2, 2, 30, 10
        args.rate = min(args.rate, 2000)
    args.systems = [s for s in args.systems.split(",") if s]
    for name in args.systems:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
    args.build = str(Path(args.build).resolve())
    args.out = str(Path(args.out).resolve())
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.streams / args.instances > hard - 1000:
        parser.error(f"{args.streams} streams over {args.instances} instances exceeds {hard} descriptors each")
    if 2 * args.streams / args.nginx_workers > hard - 1000:
        parser.error(f"{args.streams} proxied streams need more than {args.nginx_workers} nginx workers here")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
