import json
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template import TemplateDoesNotExist, TemplateSyntaxError

from sse import publish
from sse.backends import BrokerUnavailable
from sse.encoding import InvalidEvent
from sse.html import render


class Command(BaseCommand):
    help = "Publish an event to an SSE stream and print its id: JSON data, or an HTML fragment or template."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("stream", help="stream name, e.g. notifications")
        parser.add_argument("--event", default="message", help="event name (default: message)")
        parser.add_argument(
            "--data", default=None, help="event data as JSON, or - to read it from stdin (default: null)"
        )
        parser.add_argument(
            "--html",
            default=None,
            help="an HTML fragment sent as is (not escaped: you are trusted), or - to read it from stdin",
        )
        parser.add_argument(
            "--template", default=None, help='a template to render as the data, e.g. "orders/list.html#row"'
        )
        parser.add_argument("--context", default=None, help="the template's context, a JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        given = [name for name in ("data", "html", "template") if options[name] is not None]
        if len(given) > 1:
            raise CommandError(f"give only one of --data, --html and --template, not --{' and --'.join(given)}")
        if options["context"] is not None and options["template"] is None:
            raise CommandError("--context only goes with --template")
        if not any(getattr(settings, name, None) for name in ("REDIS_URL", "REDIS_SENTINELS", "REDIS_CLUSTER_NODES")):
            # An in-memory event would only reach this short-lived process.
            raise CommandError(
                "REDIS_URL is not set, so the servers keep events in their own memory and nothing "
                "published from this process can reach them. Start Redis and add "
                "REDIS_URL=redis://127.0.0.1:6379/0 to .env (or the environment) of the servers and of "
                "this command, restart the servers, and run it again; or publish with the demo page's form."
            )
        if options["html"] is not None:
            data, text = None, sys.stdin.read() if options["html"] == "-" else options["html"]
        elif options["template"] is not None:
            data, text = None, self.render(options["template"], options["context"])
        else:
            data, text = self.json(options["data"]), None
        try:
            event_id = publish(options["stream"], options["event"], data, text=text)
        except (InvalidEvent, BrokerUnavailable) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(event_id)

    def json(self, option: str | None) -> Any:
        text = sys.stdin.read() if option == "-" else option or "null"
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--data is not valid JSON: {exc}") from None
        except RecursionError:
            raise CommandError("--data is nested too deeply") from None

    def render(self, template_name: str, context_json: str | None) -> str:
        try:
            context = json.loads(context_json or "{}")
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CommandError(f"--context is not valid JSON: {exc}") from None
        if not isinstance(context, dict):
            raise CommandError(f"--context must be a JSON object, not {type(context).__name__}")
        try:
            return render(template_name, context)
        except TemplateDoesNotExist as exc:
            raise CommandError(f"template not found: {' '.join(str(exc).split())}") from None
        except TemplateSyntaxError as exc:
            raise CommandError(f"template {template_name!r} has an error: {' '.join(str(exc).split())}") from None
