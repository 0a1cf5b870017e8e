"""Keep tokens (``?token=…``, see sse.security.tokens) out of access logs, however they are spelled.

- Daphne's own access log (``daphne`` with verbosity 1, the default) writes the
  request line with its query string when a response ends: its writer is wrapped
  here, for every Daphne the project runs.
- ``runserver`` logs requests through the ``django.channels.server`` logger: the
  :class:`MaskTokens` filter in ``LOGGING`` covers it.
- Django's ``django.request`` warnings name ``request.path`` only, with no query
  string; the ``sse`` logger names streams, never tokens or cookies.
- nginx: the site file's ``log_format`` masks them (deploy/nginx).
"""

import logging
import re
from typing import Any

# Django reads only the literal "token" after "?" or "&" (sse.security.tokens), but a client may
# still send one as ";token=", "%74oken=" or "%26token=": refused, and still a secret.
# So any spelling of the name after any separator is masked, in any case.
NAME = "".join(f"(?:{c}|%{ord(c):x})" for c in "token")
TOKEN = re.compile(rf"((?:[?&;]|%26|%3b){NAME}(?:=|%3d))[^&\s\"]*", re.IGNORECASE)
MASK = r"\1[masked]"


def mask(text: str) -> str:
    return TOKEN.sub(MASK, text)


class MaskTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = {k: mask(v) if isinstance(v, str) else v for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(mask(v) if isinstance(v, str) else v for v in record.args)
        if isinstance(record.msg, str):
            record.msg = mask(record.msg)
        return True


def mask_daphne_access_log() -> None:
    from daphne.access import AccessLogGenerator

    write = AccessLogGenerator.write_entry
    if getattr(write, "masks_tokens", False):
        return

    def write_entry(self: AccessLogGenerator, host: Any, date: Any, request: str, *args: Any, **kwargs: Any) -> None:
        write(self, host, date, mask(request), *args, **kwargs)

    write_entry.masks_tokens = True  # type: ignore[attr-defined]
    AccessLogGenerator.write_entry = write_entry  # type: ignore[method-assign]
