"""Server-Sent Events: encoding, publishing and replay.

Publish from anywhere in the project::

    from sse import publish, apublish

    event_id = publish("notifications", "notification", {"msg": "hi"})
    event_id = await apublish("notifications", "notification", {"msg": "hi"})
"""

from typing import Any


def publish(stream: str, event: str = "message", data: Any = None) -> str:
    """Append an event to ``stream`` and deliver it live; return its id. Sync code."""
    from sse.broker import get_broker

    return get_broker().publish(stream, event, data)


async def apublish(stream: str, event: str = "message", data: Any = None) -> str:
    """Async twin of :func:`publish`, for views, consumers and tasks on an event loop."""
    from sse.broker import get_broker

    return await get_broker().apublish(stream, event, data)


__all__ = ["apublish", "publish"]
