"""Terminal output shared by the coordinator and the edge client: a rich console when stderr is a TTY,
and logging through it (log lines above a live panel) or as plain lines when it is not (CI, systemd)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from rich.console import Console

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"
NOISY_LOGGERS = ("absl", "tensorflow", "h5py")


def terminal_console() -> Console | None:
    """A rich console on stderr when stderr is an interactive terminal, else None (CI, systemd, pipes)."""
    console = Console(stderr=True)
    if console.is_terminal and not console.is_dumb_terminal:
        return console
    return None


def configure_logging(level: str, console: Console | None = None, always_info: Iterable[str] = ()) -> None:
    """Log at `level` through rich on `console`, else as plain timestamped lines on stderr.

    Loggers named in `always_info` still log INFO lines when `level` is WARNING or ERROR."""
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, log_time_format=f"[{LOG_DATE_FORMAT}]")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt=LOG_DATE_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in always_info:
        logger = logging.getLogger(name)
        logger.setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)
