"""Logging for the engine: one line per authorization, buffered so that logging never costs a system
call per request, and flushed at least every FLUSH_INTERVAL_S, at every warning, and at shutdown."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

FLUSH_INTERVAL_S = 0.2
BUFFER_RECORDS = 1024
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class BufferedHandler(logging.handlers.MemoryHandler):
    """A MemoryHandler that also flushes when its oldest buffered record is older than the interval."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__(BUFFER_RECORDS, flushLevel=logging.WARNING, target=target, flushOnClose=True)
        self._last_flush = time.monotonic()

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return super().shouldFlush(record) or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        super().flush()


class SecondFormatter(logging.Formatter):
    """The standard line, with the date and time formatted once a second rather than once a line."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
        return self.default_msec_format % (self._stamp, record.msecs)


def configure(path: Path | None = None, *, level: int = logging.INFO) -> BufferedHandler:
    """Send the processor's and the HSM's logs to `path` (or stderr), buffered; returns the handler."""
    if path:
        # Created owner-only before the handler opens it: the log names cards (masked) and terminals.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    target: logging.Handler = logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stderr)
    target.setFormatter(SecondFormatter(FORMAT))
    # A record per authorization: the format names no source file, thread or process, so none is looked up
    # (the logging HOWTO's "Optimization": no stack walk for the caller's frame on every record).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BufferedHandler(target)
    for name in ("processor", "hsm_sim"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return handler


def quiet_library_deprecations() -> None:
    """psec and pyemv still call TDES the old way; their warnings say nothing an operator can act on."""
    import warnings

    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:
        return
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
