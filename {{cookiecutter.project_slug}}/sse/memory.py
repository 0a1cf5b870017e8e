"""The broker with no Redis: one process, a ring buffer per stream, ids in Redis' format."""

import itertools
import threading
import time
import weakref
from collections import deque
from typing import Any

from sse.broker import Broker, Entry, prepare
from sse.conf import setting
from sse.encoding import (
    parse_id,
)
from sse.hub import Feed, Hub, NullFeed


class MemoryBroker(Broker):
    """One process, no Redis: a ring buffer per stream, ids in Redis' format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, deque[Entry]] = {}
        self._last = (0, 0)
        self.hubs: weakref.WeakSet[Hub] = weakref.WeakSet()

    def publish(self, stream: str, event: str, data: Any) -> str:
        stream, event, payload = prepare(stream, event, data)
        with self._lock:
            ms = max(int(time.time() * 1000), self._last[0])
            self._last = (ms, self._last[1] + 1 if ms == self._last[0] else 0)
            id = f"{self._last[0]}-{self._last[1]}"
            entries = self._logs.setdefault(stream, deque(maxlen=setting("SSE_MAXLEN", 10_000)))
            entries.append((id, event, payload))
            max_age_ms = setting("SSE_MAX_AGE", 86_400) * 1000
            while max_age_ms > 0 and parse_id(entries[0][0])[0] < ms - max_age_ms:
                entries.popleft()
            # Always through the loop's queue, under the lock: deliveries keep id order
            # whichever thread publishes.
            for hub in list(self.hubs):
                try:
                    hub.loop.call_soon_threadsafe(hub.deliver, stream, id, event, payload)
                except RuntimeError:  # that loop is closed
                    self.hubs.discard(hub)
        return id

    async def apublish(self, stream: str, event: str, data: Any) -> str:
        return self.publish(stream, event, data)

    async def areplay(self, stream: str, after: str, count: int) -> list[Entry] | None:
        if not after:
            with self._lock:
                return list(itertools.islice(self._logs.get(stream, ()), count))
        ms, seq, _ = parse_id(after)
        base = f"{ms}-{seq}"
        with self._lock:  # no copy of the whole log for each page
            entries = self._logs.get(stream, ())
            for index, (id, _event, _data) in enumerate(entries):
                if id == base:
                    return list(itertools.islice(entries, index + 1, index + 1 + count))
        return None

    async def alast_id(self, stream: str) -> str | None:
        with self._lock:
            entries = self._logs.get(stream)
            return entries[-1][0] if entries else None

    def publish_control(self, message: str) -> None:
        from sse import revocation

        for hub in list(self.hubs):
            try:
                hub.loop.call_soon_threadsafe(revocation.received, hub, message)
            except RuntimeError:  # that loop is closed
                self.hubs.discard(hub)

    def feed(self, hub: Hub) -> Feed:
        self.hubs.add(hub)
        return NullFeed(hub)
