"""Where a sweep's console output goes: the log stream that stands in for stdout and stderr, Ray's switch for
forwarding worker lines, and the logging handlers that are moved to the log and back.

The command line owns its process, so a sweep it runs replaces `sys.stdout` and `sys.stderr` by the log stream.
A sweep run from Python (`synthray.run`, a notebook) runs under `leave_sys_streams()`: `sys.stdout` and
`sys.stderr` stay as they are (a notebook's streams are its own), only logging handlers move to the log, and the
lines Ray forwards from workers are printed only when asked for (`worker_lines=True`)."""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

# None: the command line's capture (sys.stdout/sys.stderr replaced); else whether workers' lines are forwarded.
_LEAVE_SYS: ContextVar[bool | None] = ContextVar("synthray_leave_sys", default=None)


@contextmanager
def leave_sys_streams(worker_lines: bool = False) -> Iterator[None]:
    """Within it, a sweep leaves `sys.stdout`/`sys.stderr` alone (the Python API); `worker_lines`: whether the
    driver prints the lines Ray forwards from workers (else they stay in Ray's own logs)."""
    before = getattr(sys.modules.get("ray._private.worker"), "_worker_logs_enabled", True)
    token = _LEAVE_SYS.set(worker_lines)
    try:
        yield
    finally:
        _LEAVE_SYS.reset(token)
        worker = sys.modules.get("ray._private.worker")
        if worker is not None:  # Ray's switch as it was: the console's own restore went through the gate above
            worker._worker_logs_enabled = before


def replaces_sys_streams() -> bool:
    """Whether a sweep's console replaces `sys.stdout`/`sys.stderr` by its log (the command line), or not."""
    return _LEAVE_SYS.get() is None


class LogStream(io.TextIOBase):
    """A text stream into the log file, thread-safe (Ray's log thread writes too), echoing whole lines if asked."""

    def __init__(self, file: TextIO, echo: Callable[[str], None] | None):
        self.file, self.echo, self.lock, self.partial = file, echo, threading.Lock(), ""
        self.last = time.monotonic()

    def settle(self, quiet_s: float = 1.0, most_s: float = 4.0) -> None:
        """Wait until nothing has been written for `quiet_s` (at most `most_s`): Ray's log monitor forwards a
        worker's lines some time after they are written, seconds on a loaded machine."""
        start = time.monotonic()
        while time.monotonic() - self.last < quiet_s and time.monotonic() - start < most_s:
            time.sleep(0.1)

    def write(self, text: str) -> int:
        self.last = time.monotonic()
        with self.lock:
            self.file.write(text)
            self.file.flush()  # a crash keeps every line written so far
            if self.echo:
                *lines, self.partial = (self.partial + text).split("\n")
                for line in lines:
                    self.echo(line)
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


def forward_worker_logs(on: bool) -> bool:
    """Whether the driver prints the log lines Ray forwards from workers (Ray's own switch, which its debugger
    uses); returns the previous setting. The command line turns it off once a sweep is over, so that a trial's
    late lines stay in Ray's logs instead of landing under the results table."""
    import ray._private.worker

    before = ray._private.worker._worker_logs_enabled
    ray._private.worker._worker_logs_enabled = on and _LEAVE_SYS.get() is not False
    return before


def own_width(stream: TextIO) -> int | None:
    """The width of a terminal that is not this process's stdin/out/err (rich measures only those, and follows
    their resizing); None for those."""
    try:
        fd = stream.fileno()
        return None if fd in (0, 1, 2) else os.get_terminal_size(fd).columns
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


def stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    return [h for lg in loggers for h in getattr(lg, "handlers", [])
            # _StderrHandler writes to whatever sys.stderr is at the time: it follows the capture by itself
            if isinstance(h, logging.StreamHandler) and not isinstance(h, (logging.FileHandler, logging._StderrHandler))]
