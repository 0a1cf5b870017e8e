from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sse.encoding import InvalidEvent
from sse.security import tokens


class Command(BaseCommand):
    help = "Print a signed token that lets a client without cookies read STREAMs (see sse/security/tokens.py)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("streams", nargs="+", metavar="STREAM", help="stream names, e.g. notifications")
        parser.add_argument("--user", help="primary key of the user the token names (needed for user.<id>)")
        parser.add_argument("--ttl", type=int, default=60, help="seconds the token may open connections (default 60)")

    def handle(self, *args: Any, **options: Any) -> None:
        user = options["user"]
        if user is not None:
            model = get_user_model()
            try:
                user = model.objects.get(pk=user)
            except (model.DoesNotExist, ValidationError, ValueError, TypeError):
                raise CommandError(f"no user with primary key {options['user']!r}") from None
        try:
            self.stdout.write(tokens.mint(options["streams"], user=user, ttl=options["ttl"]))
        except (InvalidEvent, ValueError) as exc:
            raise CommandError(str(exc)) from None
