"""The garbage collector of a server process: fewer passes over objects that live for hours.

Every open stream keeps some 125 objects that CPython's collector tracks (Daphne's
request, Twisted's transport, the task, the subscription...). The collector visits
all of them in a full pass whenever its long-lived objects have grown by a quarter,
and promotes survivors of its young passes, which run every 700 allocations. Opening
10,000 streams in one Daphne process took 12 full passes, 3.4 s of collector time
(a quarter of the CPU of opening them) and pauses of up to 0.57 s, during which no
event went out (gc.callbacks; bench/README.md).

:func:`tune` freezes what the startup left (modules, classes, URL and template
registries: they are never garbage) and sets the thresholds to ``SSE_GC_THRESHOLDS``,
10,000 / 0 / 2,500 by default. A young pass every 10,000 allocations: requests'
short-lived objects are freed by reference counting before a pass promotes them
(10,000 / 50 / 100, measured the same way: 1.1 s, no full pass, pauses under 0.25 s,
the same RSS). A middle threshold of 0: every other pass is a middle one, which moves
its survivors to the old generation. A stream's objects outlive the young pass that
first sees them; with a middle threshold of 50 each was visited again in a middle pass
over the survivors of the last 50 young passes, half of the collector's time, in
pauses of ~50 ms. Now half of them go on at once and the rest one pass later: the
collector's share of a Daphne's CPU (10,000 streams opened, then a reconnect storm)
went from 9.5-12.5 % to 7.7-9.9 %, the middle pauses from ~50 to ~5 ms. The old
generation is considered after 2,500 middle passes (5,000 young ones, as with 50 /
100), and then only once it has grown by a quarter, as in Python. Only reference
cycles wait longer to be freed, and only until the next young pass.
"""

import gc
import logging
from typing import Any

from sse.conf import setting

log = logging.getLogger("sse")
DEFAULT = (10_000, 0, 2_500)


def thresholds(value: Any) -> tuple[int, ...] | None:
    """``SSE_GC_THRESHOLDS`` as three non-negative integers; None for Python's own (an empty value)."""
    parts = value.split(",") if isinstance(value, str) else list(value or ())
    parts = [str(part).strip() for part in parts]
    if not any(parts):
        return None
    try:
        numbers = tuple(int(part) for part in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or min(numbers) < 0:
        raise ValueError(f"SSE_GC_THRESHOLDS must be three non-negative integers, like 10000,0,2500: got {value!r}")
    return numbers


def tune() -> tuple[int, ...] | None:
    """Freeze the startup's objects and set the thresholds; the thresholds in use, or None if left alone."""
    try:
        wanted = thresholds(setting("SSE_GC_THRESHOLDS", DEFAULT))
    except ValueError as exc:
        log.warning("sse: %s; keeping Python's own", exc)
        return None
    if wanted is None:
        return None
    gc.collect()  # what the startup left as garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*wanted)
    return wanted
