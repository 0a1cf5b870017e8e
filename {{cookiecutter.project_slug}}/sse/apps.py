from django.apps import AppConfig


class SseConfig(AppConfig):
    name = "sse"
    verbose_name = "Server-Sent Events"

    def ready(self) -> None:
        from sse.ops import checks, logmask, malloc  # noqa: F401  (registers the checks)

        logmask.mask_daphne_access_log()
        malloc.fix_mmap_threshold()

        from sse.security import revocation

        revocation.connect_signals()
