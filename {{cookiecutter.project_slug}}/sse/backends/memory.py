"""The broker with no Redis: one process, a ring buffer per stream, ids in Redis' format."""

import itertools
import threading
import time
import weakref
from collections import deque
from typing import Any

from sse.backends.base import Broker, Entry, Feed, Sink, prepare, size
from sse.conf import setting
from sse.encoding import (
    parse_id,
)


class Log:
    """One stream's entries, oldest first, and the bytes of their names and data."""

    __slots__ = ("bytes", "entries")

    def __init__(self) -> None:
        self.entries: deque[Entry] = deque()
        self.bytes = 0

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.bytes += size(entry)

    def trim(self, now_ms: int) -> None:
        """The Redis log's bounds: count, bytes (the newest entry always stays), age."""
        maxlen = setting("SSE_MAXLEN", 10_000)
        max_bytes = setting("SSE_MAX_STREAM_BYTES", 16_777_216)
        max_age_ms = setting("SSE_MAX_AGE", 86_400) * 1000
        entries = self.entries
        while len(entries) > 1 and (
            len(entries) > maxlen
            or (max_bytes > 0 and self.bytes > max_bytes)
            or (max_age_ms > 0 and parse_id(entries[0][0])[0] < now_ms - max_age_ms)
        ):
            self.bytes -= size(entries.popleft())


class NullFeed:
    """Memory mode: publish() hands events to the hubs directly."""

    def __init__(self, hub: Sink) -> None:
        pass

    async def watch(self, stream: str) -> None:
        pass

    async def unwatch(self, stream: str) -> None:
        pass


class MemoryBroker(Broker):
    """One process, no Redis: a ring buffer per stream, ids in Redis' format."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, Log] = {}
        self._last = (0, 0)
        self.hubs: weakref.WeakSet[Sink] = weakref.WeakSet()

    def publish(self, stream: str, event: str, data: Any, text: str | None = None) -> str:
        stream, event, payload = prepare(stream, event, data, text)
        with self._lock:
            ms = max(int(time.time() * 1000), self._last[0])
            self._last = (ms, self._last[1] + 1 if ms == self._last[0] else 0)
            id = f"{self._last[0]}-{self._last[1]}"
            log = self._logs.get(stream) or self._logs.setdefault(stream, Log())
            log.append((id, event, payload))
            log.trim(ms)
            # Always through the loop's queue, under the lock: deliveries keep id order
            # whichever thread publishes.
            for hub in list(self.hubs):
                try:
                    hub.loop.call_soon_threadsafe(hub.deliver, stream, id, event, payload)
                except RuntimeError:  # that loop is closed
                    self.hubs.discard(hub)
        return id

    async def apublish(self, stream: str, event: str, data: Any, text: str | None = None) -> str:
        return self.publish(stream, event, data, text)

    def _entries(self, stream: str) -> deque[Entry]:
        """A stream's live entries, under the lock. Age applies to idle streams too (Redis
        trims only when publishing, so both brokers' readers drop what is too old), and a
        log with nothing published for SSE_STREAM_TTL is gone, as Redis' key expires."""
        log = self._logs.get(stream)
        if log is None:
            return deque()
        now_ms = int(time.time() * 1000)
        ttl_ms = setting("SSE_STREAM_TTL", 86_400) * 1000
        if ttl_ms > 0 and parse_id(log.entries[-1][0])[0] < now_ms - ttl_ms:
            del self._logs[stream]
            return deque()
        log.trim(now_ms)
        return log.entries

    async def areplay(self, stream: str, after: str, count: int, max_bytes: int = 0) -> list[Entry] | None:
        with self._lock:  # no copy of the whole log for each page
            entries = self._entries(stream)
            start = 0
            if after:
                ms, seq, _ = parse_id(after)
                base = f"{ms}-{seq}"
                start = next((index + 1 for index, entry in enumerate(entries) if entry[0] == base), -1)
                if start < 0:
                    return None
            page, used = [], 0
            for entry in itertools.islice(entries, start, start + count):
                page.append(entry)
                if max_bytes:
                    used += size(entry)
                    if used >= max_bytes:
                        break
            return page

    async def alast_id(self, stream: str) -> str | None:
        with self._lock:
            entries = self._entries(stream)
            return entries[-1][0] if entries else None

    async def arecent(self, stream: str, count: int) -> list[Entry]:
        with self._lock:
            entries = self._entries(stream)
            return list(itertools.islice(entries, max(0, len(entries) - count), None))

    def publish_control(self, message: str) -> None:
        for hub in list(self.hubs):
            try:
                hub.loop.call_soon_threadsafe(hub.control, message)
            except RuntimeError:  # that loop is closed
                self.hubs.discard(hub)

    def feed(self, hub: Sink) -> Feed:
        self.hubs.add(hub)
        return NullFeed(hub)
