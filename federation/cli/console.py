"""Terminal output shared by the coordinator and the edge client: a rich console when stderr is a TTY,
and logging through it (log lines above a live panel) or as plain lines when it is not (CI, systemd)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from types import TracebackType
from typing import TypeVar

from rich.console import Console, RenderableType
from rich.live import Live

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


_Panel = TypeVar("_Panel", bound="LivePanel")


class LivePanel:
    """A rich Live panel drawn while started, when there is a console; subclasses give `render`.

    Without a console start() and stop() do nothing, so callers need not check for a terminal."""

    def __init__(self, console: Console | None, refresh_per_second: float) -> None:
        self.console = console
        self._refresh = refresh_per_second
        self._live: Live | None = None

    @property
    def live(self) -> bool:
        """True while a live panel is drawn."""
        return self._live is not None

    def render(self) -> RenderableType:
        raise NotImplementedError

    def start(self) -> None:
        if self.console is not None and self._live is None:
            self._live = Live(get_renderable=self.render, console=self.console,
                              refresh_per_second=self._refresh, transient=False, redirect_stderr=False)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self: _Panel) -> _Panel:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
