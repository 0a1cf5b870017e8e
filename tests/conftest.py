"""Shared fixtures: baked projects with one virtualenv per mode, Redis, Daphne.

Baking and installing is the slow part, so each mode is baked and installed
once per session (and per xdist worker: tests are grouped by mode so that a
mode lives on one worker).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODES = [pytest.param(mode, marks=pytest.mark.xdist_group(mode), id=mode) for mode in ("channels", "async_view")]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range, in a block of its own per xdist worker.

    bind(0) hands out ephemeral ports, which the other worker (and every client socket)
    draws from too: a port probed free here could be taken before the server binds it.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block = 10_000 + 5_000 * (int(worker) % 4 if worker.isdigit() else 0)
    for _ in range(1000):
        port = random.randrange(block, block + 5_000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port")


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


class RedisServer:
    """A private redis-server on a free port, which tests may stop and start."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "yes" if self.persistent else "no"]
        self.proc = subprocess.Popen(
            [*cmd, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run tests/run.sh, which installs it")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class RedisCluster:
    """A private Redis Cluster: ``primaries`` primaries with ``replicas`` replicas each, one
    redis-server per node on a free port, each in a folder of its own (its nodes.conf).

    ``cluster-node-timeout`` is short so that a killed primary's replica takes over in
    about a second and tests can wait for it.
    """

    def __init__(self, workdir: Path, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.workdir = workdir
        self.primaries, self.replicas, self.node_timeout_ms = primaries, replicas, node_timeout_ms
        self.ports = [free_port() for _ in range(primaries * (1 + replicas))]
        # The cluster bus defaults to port + 10000, which may be taken (or above 65535).
        self.bus_ports = {port: free_port() for port in self.ports}
        self.procs: dict[int, subprocess.Popen] = {}
        self.frozen: set[int] = set()

    @property
    def nodes(self) -> str:
        """``REDIS_CLUSTER_NODES``: every node (a client needs only one that is up)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start_node(self, port: int) -> None:
        folder = self.workdir / str(port)
        folder.mkdir(exist_ok=True)
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        cmd += ["--cluster-port", str(self.bus_ports[port]), "--cluster-node-timeout", str(self.node_timeout_ms)]
        # Replicas sync at once (Redis 7 waits 5 s for more of them to share one transfer).
        cmd += ["--repl-diskless-sync-delay", "0", "--dir", str(folder)]
        with (folder / "redis.log").open("ab") as out:
            self.procs[port] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(port, self.procs[port])

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
            + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def cli(self, port: int, *args: str, timeout: float = 30) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout, check=True
        )
        return result.stdout

    def alive(self) -> list[int]:
        """The nodes that run and answer (not frozen)."""
        return [port for port, proc in self.procs.items() if proc.poll() is None and port not in self.frozen]

    def topology(self) -> dict[int, dict]:
        """``CLUSTER NODES`` as seen by a live node: port -> role, id, primary's id, slots."""
        for port in self.alive():
            with contextlib.suppress(subprocess.SubprocessError):
                text = self.cli(port, "cluster", "nodes", timeout=5)
                break
        else:
            raise RuntimeError("no cluster node answers")
        nodes = {}
        for line in text.splitlines():
            fields = line.split()
            node_port = int(fields[1].split("@")[0].rpartition(":")[2])
            flags = fields[2].split(",")
            nodes[node_port] = {
                "id": fields[0],
                "primary": "master" in flags,
                "failed": "fail" in flags or "fail?" in flags,
                "of": fields[3],
                "slots": fields[8:],
            }
        return nodes

    def primary_ports(self) -> list[int]:
        return sorted(p for p, n in self.topology().items() if n["primary"] and n["slots"] and not n["failed"])

    def primary_of_slot(self, slot: int) -> int:
        for port, node in self.topology().items():
            if not node["primary"] or node["failed"]:
                continue
            for span in node["slots"]:
                if span.startswith("["):  # a slot being migrated or imported
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return port
        raise LookupError(f"no primary serves slot {slot}")

    def slot(self, key: str) -> int:
        return int(self.cli(self.alive()[0], "cluster", "keyslot", key))

    def synced(self) -> bool:
        """Whether every live replica has its primary's data: one that never synced will not
        take over (``Disconnected from master for longer than allowed``)."""
        topology = self.topology()
        replicas = [p for p in self.alive() if p in topology and not topology[p]["primary"]]
        return all("master_link_status:up" in self.cli(p, "info", "replication", timeout=5) for p in replicas)

    def wait_ok(self, timeout: float = 60) -> None:
        """Until every live node says ``cluster_state:ok``, ``primaries`` primaries serve slots
        and every replica is in sync."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(subprocess.SubprocessError, RuntimeError):
                states = [self.cli(port, "cluster", "info", timeout=5) for port in self.alive()]
                ok = all("cluster_state:ok" in s for s in states) and len(self.primary_ports()) == self.primaries
                if ok and self.synced():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ok after {timeout}s: {self.topology()}")
            time.sleep(0.2)

    def migrate_slot(self, slot: int, to: int, during: Callable[[], object] | None = None) -> None:
        """Move ``slot`` with its keys to the primary on port ``to``, as ``redis-cli --cluster
        reshard`` does it: IMPORTING/MIGRATING, MIGRATE key by key, then SETSLOT NODE
        everywhere. ``during`` runs between the keys and the hand-over: then commands on the
        slot's keys reach the target by ASK redirections, and shard channels stay on the source."""
        source = self.primary_of_slot(slot)
        topology = self.topology()
        src_id, dst_id = topology[source]["id"], topology[to]["id"]
        self.cli(to, "cluster", "setslot", str(slot), "importing", src_id)
        self.cli(source, "cluster", "setslot", str(slot), "migrating", dst_id)
        while keys := self.cli(source, "cluster", "getkeysinslot", str(slot), "100").split():
            self.cli(source, "migrate", "127.0.0.1", str(to), "", "0", "5000", "keys", *keys)
        if during is not None:
            during()
        for port in (to, source):
            self.cli(port, "cluster", "setslot", str(slot), "node", dst_id)
        for port, node in topology.items():  # the others learn it by gossip too; sooner this way
            if node["primary"] and port not in (to, source) and port in self.alive():
                self.cli(port, "cluster", "setslot", str(slot), "node", dst_id)

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[port]
        proc.send_signal(sig)
        proc.wait(10)

    def freeze(self, port: int) -> None:
        """SIGSTOP: the node keeps its connections and answers nothing, as if cut off."""
        self.procs[port].send_signal(signal.SIGSTOP)
        self.frozen.add(port)

    def thaw(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGCONT)
        self.frozen.discard(port)

    def restart(self, port: int) -> None:
        """Start a stopped node again: it rejoins, as a replica of whoever took its slots."""
        self.start_node(port)

    def stop(self) -> None:
        for port in list(self.frozen):
            self.thaw(port)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()  # none may outlive the session: a running Popen warns when collected
                proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    """Three primaries and three replicas, shared by the session: for tests that leave its
    nodes and slots as they found them."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server is not installed: run tests/run.sh, which installs it")
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them in /usr/lib/postgresql/<version>/bin."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    path = str(found[-1]) if found else shutil.which(name)
    if path is None:
        pytest.fail(f"PostgreSQL's {name} is not installed: run tests/run.sh, which installs it")
    return path


class PostgresServer:
    """A private PostgreSQL cluster on a free port, with trust authentication for ``postgres``.

    initdb refuses to run as root, so as root the cluster belongs to an unprivileged
    user (``postgres`` if it exists, else ``nobody``). Its folder is a fresh one in /tmp,
    which that user can reach; the socket lives there too, so a server on 5432 is never touched.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="sse-pg-"))
        self.data = self.workdir / "data"
        self.proc: subprocess.Popen | None = None
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            import pwd

            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    user = pwd.getpwnam(name)
                    break
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
            # setpriv execs the program itself (runuser would stay its parent): signals reach postgres.
            self.prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        if not self.data.exists():
            subprocess.run(
                [*self.prefix, postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust"]
                + ["-E", "UTF8", "--locale=C", "--no-sync"],
                check=True,
                capture_output=True,
                cwd=self.workdir,
            )
        cmd = [*self.prefix, postgres_bin("postgres"), "-D", str(self.data), "-p", str(self.port)]
        cmd += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.workdir}"]
        cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        cmd += ["-c", "log_connections=on"]  # tests read the log to see which databases were used
        self.log = self.workdir / "postgres.log"
        with self.log.open("ab") as out:  # appends: a restart keeps what the first run logged
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + 30
        while subprocess.run(
            [postgres_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"], check=False
        ).returncode:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.1)

    def sql(self, query: str, database: str = "postgres") -> str:
        """Run ``query`` with psql; its rows, unaligned."""
        cmd = [postgres_bin("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", query, self.url(database)]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: SIGTERM would wait for every client
            self.proc.wait(30)
            self.proc = None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


class Project:
    """A baked project with its own virtualenv."""

    def __init__(self, path: Path, mode: str, venv: Path) -> None:
        self.path, self.mode, self.venv = path, mode, venv
        self.python = str(venv / "bin" / "python")

    def env(self, **extra: str) -> dict[str, str]:
        """Production settings, as a deploy would have them, plus ``extra``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_", "SSE_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DJANGO_DEBUG="0",
            DJANGO_SECRET_KEY="e2e-" + "k" * 60,
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DJANGO_SECURE_SSL_REDIRECT="0",
            # Tests use many stream names; test_e2e checks the default policy. Every name but
            # user.*: a public pattern matching private streams is a system check warning.
            SSE_PUBLIC_STREAMS="[!u]*,u[!s]*",
            PYTHONUNBUFFERED="1",
            # Deprecations are errors in every process of the generated project (Daphne,
            # manage.py, scripts) as in its own suite: Django 6 must find no deprecated call.
            PYTHONWARNINGS="error::DeprecationWarning,error::PendingDeprecationWarning",
        )
        env.update(extra)
        return env

    def run(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("env", self.env())
        kwargs.setdefault("timeout", 600)
        kwargs.setdefault("cwd", self.path)
        result = subprocess.run([self.python, *args], capture_output=True, text=True, check=False, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def manage(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("manage.py", *args, **kwargs)


def bake(output: Path, **context: str) -> Path:
    from cookiecutter.main import cookiecutter

    return Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(output), extra_context=context))


def uv(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the uv that tests/requirements.txt installs next to this interpreter."""
    exe = Path(sys.executable).with_name("uv")
    run_env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    # Only the interpreters on this machine: a test must not fetch another Python.
    run_env.update(UV_PYTHON_DOWNLOADS="never", **(env or {}))
    result = subprocess.run(
        [str(exe if exe.exists() else "uv"), *args],
        cwd=cwd,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"uv {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def uv_sync(path: Path, venv: Path, python: str, *args: str) -> None:
    """Install a baked project's lock into ``venv``, as its README's quickstart does."""
    uv("sync", "--frozen", "--python", python, *args, cwd=path, env={"UV_PROJECT_ENVIRONMENT": str(venv)})


@pytest.fixture(scope="session", params=MODES)
def project(request, tmp_path_factory) -> Project:
    """One baked and installed project per mode, shared by the whole session.

    Installed from the project's uv.lock on python3 (3.11 here: Django 5.2), with the
    postgres extra, so that tests needing PostgreSQL can reuse the same environment.
    """
    mode = request.param
    base = tmp_path_factory.mktemp(f"project-{mode}")
    path = bake(base, sse_mode=mode, project_name=f"E2E {mode}")
    venv = base / "venv"
    uv_sync(path, venv, "python3", "--extra", "postgres")
    project = Project(path, mode, venv)
    project.manage("migrate", "-v0")
    return project


class Daphne:
    """A Daphne process of ``project``: on a TCP port, on a unix socket, or as runserver."""

    def __init__(
        self,
        project: Project,
        port: int | None,
        env: dict[str, str],
        log: Path,
        runserver: bool = False,
        unix: Path | None = None,
    ) -> None:
        self.port, self.unix, self.log = port, unix, log
        # The endpoint string raises Twisted's listen backlog of 50, as deploy/ does.
        endpoint = f"unix:{unix}:mode=660:backlog=1024" if unix else f"tcp:port={port}:interface=127.0.0.1:backlog=1024"
        # As the systemd unit starts it: the daphne command on uvloop.
        cmd = [project.python, "-m", "sse.transports.serve", "-e", endpoint, "config.asgi:application"]
        if runserver:  # the development server: Daphne too, and it serves static files
            cmd = [project.python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                cmd, cwd=project.path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while True:  # wait for Django to answer (any status)
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited {self.proc.returncode}: {self.output()}")
            try:
                self.request("/")
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()  # not left running for a later test to trip over
                    raise
                time.sleep(0.1)

    def request(self, path: str) -> int:
        if self.unix:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(self.unix))
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
                return int(sock.recv(100).split()[1])
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def start_daphne(project, redis_server, tmp_path):
    """Start Daphne processes of ``project`` sharing the test Redis; stopped at teardown."""
    started: list[Daphne] = []

    def start(runserver: bool = False, port: int | None = None, **env: str) -> Daphne:
        port = port or free_port()
        settings = project.env(**{"REDIS_URL": redis_server.url, **env})
        log = tmp_path / f"daphne-{port}-{len(started)}.log"
        daphne = Daphne(project, port, settings, log, runserver)
        started.append(daphne)
        return daphne

    yield start
    for daphne in started:
        daphne.stop()
    for daphne in started:
        assert "Traceback" not in daphne.output(), daphne.output()


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
