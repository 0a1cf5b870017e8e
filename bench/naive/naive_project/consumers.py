"""The tutorial consumer: one channel-layer channel per client, in a group per stream.

Published with ``channel_layer.group_send(stream, {"type": "sse.event", "event": ..., "data": ...})``.
"""

from channels.generic.http import AsyncHttpConsumer


class EventsConsumer(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        self.group = self.scope["url_route"]["kwargs"]["stream"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send_headers(headers=[(b"Content-Type", b"text/event-stream"), (b"Cache-Control", b"no-cache")])
        # Daphne sends the headers with the first body chunk.
        await self.send_body(b"", more_body=True)

    async def http_request(self, message: dict) -> None:
        # The tutorials' handle() returns; the base class then raises StopConsumer and the client
        # never gets an event. Keep the consumer alive so that dispatch delivers group messages.
        if "body" in message:
            self.body.append(message["body"])
        if not message.get("more_body"):
            await self.handle(b"".join(self.body))

    async def sse_event(self, message: dict) -> None:
        await self.send_body(f"event: {message['event']}\ndata: {message['data']}\n\n".encode(), more_body=True)

    async def disconnect(self) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
