import json
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sse import publish
from sse.broker import BrokerUnavailable
from sse.encoding import InvalidEvent


class Command(BaseCommand):
    help = "Publish an event to an SSE stream and print its id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("stream", help="stream name, e.g. notifications")
        parser.add_argument("--event", default="message", help="event name (default: message)")
        parser.add_argument(
            "--data", default="null", help="event data as JSON, or - to read it from stdin (default: null)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not (getattr(settings, "REDIS_URL", None) or getattr(settings, "REDIS_SENTINELS", None)):
            # An in-memory event would only reach this short-lived process.
            raise CommandError(
                "REDIS_URL is not set, so the servers keep events in their own memory and nothing "
                "published from this process can reach them. Start Redis and add "
                "REDIS_URL=redis://127.0.0.1:6379/0 to .env (or the environment) of the servers and of "
                "this command, restart the servers, and run it again; or publish with the demo page's form."
            )
        text = sys.stdin.read() if options["data"] == "-" else options["data"]
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--data is not valid JSON: {exc}") from None
        except RecursionError:
            raise CommandError("--data is nested too deeply") from None
        try:
            event_id = publish(options["stream"], options["event"], data)
        except (InvalidEvent, BrokerUnavailable) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(event_id)
