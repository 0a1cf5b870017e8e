"""Daphne on uvloop: ``python -m sse.transports.serve`` takes the ``daphne`` command's arguments.

Daphne runs Twisted on an asyncio loop that it makes when ``daphne.server`` is first
imported, from the event-loop policy in force at that moment. The ``daphne`` command
imports it before any of the project's code runs, so only a launcher can choose the
loop. Twisted supports uvloop under its asyncio reactor (21.7 and later). Measured with
20,000 streams through nginx on 8 instances, interleaved runs: a reconnect storm of all
of them caught up in about 8 % less time (docs/decisions.md). Where uvloop is not
installed (Windows has no build), Daphne keeps asyncio's own loop.
"""

import asyncio
import sys


def use_uvloop() -> bool:
    """Make uvloop the loop policy if it is installed; True if it now is."""
    if "daphne.server" in sys.modules:
        return False  # too late: its loop exists already
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main() -> None:
    use_uvloop()
    from daphne.cli import CommandLineInterface

    sys.argv[0] = "daphne"  # its usage and error lines name the command users know
    sys.exit(CommandLineInterface.entrypoint())


if __name__ == "__main__":
    main()
