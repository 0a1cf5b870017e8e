"""One load generator process of the capacity scenario (bench/capacity.py drives several).

A process may hold at most about 20,000 descriptors here, so 100,000 streams need several of
these. Each opens its share of the streams through nginx from its own loopback source
addresses (a few streams per address, so the site's per-address ``limit_conn`` stays in
force), holds them, and reports what its clients saw. Commands and replies are JSON lines:

    {"id": 1, "cmd": "open", "port": P, "path": "/sse/cap/", "n": N, "rate": R, "sources": [...]}
    {"id": 2, "cmd": "status"}
    {"id": 3, "cmd": "phase", "tag": "b", "n": 1}
    {"id": 4, "cmd": "wait", "timeout": 30}
    {"id": 5, "cmd": "drop"}
    {"id": 6, "cmd": "reconnect", "tag": "storm", "n": 10, "timeout": 120}
    {"id": 7, "cmd": "quit"}

Every reply carries the command's id; "open" and "wait" run in the background while
"status" is answered at once, so the driver can sample progress.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import resource
import sys
import time

import loadgen


def histogram(latencies: list[float]) -> dict[int, int]:
    """Latencies (seconds) into 1 ms buckets: a few kB of JSON for millions of deliveries."""
    counts: collections.Counter[int] = collections.Counter()
    for value in latencies:
        counts[max(0, math.ceil(value * 1000))] += 1
    return dict(counts)


class Worker:
    def __init__(self) -> None:
        self.gen: loadgen.LoadGen | None = None
        self.clients: list[loadgen.Client] = []
        self.sources: list[str] = []
        self.path = ""
        self.phase: loadgen.Phase | None = None
        self.attempted = self.opened = self.failed = 0
        self.connect_times: list[float] = []
        self.last_ids: list[tuple[str, str]] = []

    async def _open_many(
        self, targets: list[tuple[str, str | None]], rate: float, inflight: int, timeout: float
    ) -> dict:
        """Open one client per (source, Last-Event-ID), ``rate`` per second at most (0: at once)."""
        assert self.gen is not None
        gate = asyncio.Semaphore(inflight)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def one(i: int, source: str, last_id: str | None) -> None:
            if rate:
                await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
            async with gate:
                self.attempted += 1
                client, took = await self.gen._open(self.path, last_id, timeout, source)
            self.connect_times.append(took)
            if client is None:
                self.failed += 1
            else:
                self.opened += 1
                self.clients.append(client)

        await asyncio.gather(*(one(i, source, last_id) for i, (source, last_id) in enumerate(targets)))
        return {"seconds": round(loop.time() - started, 3), **self.counts()}

    def counts(self) -> dict:
        gen = self.gen
        times = sorted(self.connect_times)
        return {
            "attempted": self.attempted,
            "opened": self.opened,
            "failed": self.failed,
            "open_now": sum(1 for c in self.clients if not c.closed),
            "errors": dict(gen.errors) if gen else {},
            "resets": gen.resets if gen else 0,
            "dropped": gen.dropped if gen else 0,
            "heartbeats": sum(c.parser.comments for c in self.clients),
            "connect_p50_ms": round(loadgen.percentile(times, 50) * 1000, 1) if times else None,
            "connect_p99_ms": round(loadgen.percentile(times, 99) * 1000, 1) if times else None,
            "connect_max_ms": round(times[-1] * 1000, 1) if times else None,
        }

    async def handle(self, msg: dict) -> dict:
        cmd = msg["cmd"]
        if cmd == "open":
            if self.gen is None:
                self.gen = loadgen.LoadGen("127.0.0.1", msg["port"], raw=True)
                self.gen.host_header = msg.get("host", self.gen.host_header)
            self.path, self.sources = msg["path"], msg["sources"]
            per_source = math.ceil(msg["n"] / len(self.sources))
            targets = [(self.sources[i // per_source], None) for i in range(msg["n"])]
            return await self._open_many(targets, msg.get("rate", 0), msg.get("inflight", 1000), msg.get("timeout", 60))
        if cmd == "status":
            return self.counts()
        if cmd == "phase":
            live = [c for c in self.clients if not c.closed]
            self.phase = loadgen.Phase(msg["tag"], msg["n"], live)
            return {"clients": len(live)}
        if cmd == "wait":
            assert self.phase is not None
            complete = await self.phase.wait(msg["timeout"])
            return self.summary(complete)
        if cmd == "drop":
            # What each browser would send back as Last-Event-ID after a dropped connection.
            live = [c for c in self.clients if not c.closed]
            self.last_ids = []
            for client in live:
                self.last_ids.append((self.source_of(client), client.parser.last_event_id))
                client.close()
            self.clients = []
            await asyncio.sleep(0.5)
            return {"dropped": len(live), "without_id": sum(1 for _, i in self.last_ids if not i)}
        if cmd == "reconnect":
            assert self.gen is not None
            phase = loadgen.Phase(msg["tag"], msg["n"], [])
            phase.expect = len(self.last_ids)
            if msg["n"]:  # with nothing to replay (the ceiling) there is nothing to wait for
                phase.all_done.clear()
            self.phase = phase
            self.gen.join_phase = phase  # every new client joins it, failed ones count as lost
            self.attempted = self.opened = self.failed = 0
            self.connect_times = []
            started = time.monotonic()
            targets = [(source, last_id or None) for source, last_id in self.last_ids]
            opened = await self._open_many(targets, 0, msg.get("inflight", 100_000), msg.get("timeout", 60))
            self.gen.join_phase = None
            complete = await phase.wait(max(1.0, msg["timeout"] - (time.monotonic() - started)))
            return {"open": opened, "caught_up_s": round(time.monotonic() - started, 3), **self.summary(complete)}
        raise ValueError(f"unknown command {cmd!r}")

    def source_of(self, client: loadgen.Client) -> str:
        return getattr(client, "source", None) or self.sources[0]

    def summary(self, complete: bool) -> dict:
        assert self.phase is not None
        phase = self.phase
        result = phase.summary()
        result["all_complete"] = complete
        result["histogram_ms"] = histogram(phase.latencies)
        result["read_histogram_ms"] = histogram(phase.read_latencies)
        done = [c.done_at for c in phase.clients if c.done_at]
        result["last_done_at"] = max(done) if done else None
        return result


async def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    worker = Worker()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task] = set()

    async def run(msg: dict) -> None:
        try:
            reply = await worker.handle(msg)
        except Exception as exc:  # noqa: BLE001 - the driver reports it with the worker's name
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps({"id": msg["id"], **reply}) + "\n")
        sys.stdout.flush()

    print(json.dumps({"id": 0, "ready": True, "uvloop": loop.__class__.__module__.startswith("uvloop")}), flush=True)
    while line := await reader.readline():
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        task = asyncio.create_task(run(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for client in worker.clients:
        client.close()


if __name__ == "__main__":
    loadgen.install_uvloop()
    asyncio.run(main())
