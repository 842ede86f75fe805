"""Storage that rides out an outage: every call on a remote filesystem retries transient errors with backoff.

An object store drops requests now and then, and for seconds to minutes at a time during an outage or a
network partition. pyarrow's own retry strategy gives up after a fraction of a second, and Ray Train, Tune and
Data all reach storage through the filesystem object synthray hands them. So that object is wrapped here
(`RetryingHandler` behind a `pyarrow.fs.PyFileSystem`): every call (synthray's reads and writes, Train's
checkpoint uploads, Tune's experiment state, Ray Data's reads) retries connection errors, timeouts, throttling
and 5xx answers for up to `SYNTHRAY_STORAGE_RETRY_S` seconds (default 300), with exponential backoff.

Streams are made whole: a read fetches the object in one retried call and serves it from memory, and a write
buffers and uploads on close, in one retried PUT. A retried write therefore never leaves half an object.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from synthray.core.registry import SynthrayError

log = logging.getLogger("synthray")
T = TypeVar("T")

# Substrings of the errors worth retrying: the AWS SDK's and GCS's network, throttling and server-side failures.
TRANSIENT = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't connect", "Connection refused",
             "connection reset", "Connection reset", "timed out", "Timeout", "TIMEOUT", "SLOW_DOWN", "SlowDown",
             "Throttl", "INTERNAL_FAILURE", "InternalError", "SERVICE_UNAVAILABLE", "ServiceUnavailable",
             "HTTP status 500", "HTTP status 502", "HTTP status 503", "HTTP status 504", "UNAVAILABLE")


def retry_budget_s() -> float:
    return float(os.environ.get("SYNTHRAY_STORAGE_RETRY_S", "300"))


class StorageUnavailable(SynthrayError, OSError):
    """Storage stayed unreachable for the whole retry budget (one line for the user)."""


def is_transient(err: BaseException) -> bool:
    return (isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, StorageUnavailable))
            and any(s in str(err) for s in TRANSIENT))


def with_retry(call: Callable[[], T], what: str) -> T:
    """`call()`, retried on transient errors with exponential backoff (0.5 s doubling to 8 s, with jitter) until
    `SYNTHRAY_STORAGE_RETRY_S` runs out; then one `StorageUnavailable` line that says what failed and for how long."""
    budget = retry_budget_s()
    start = time.monotonic()
    delay, attempt = 0.5, 0
    while True:
        try:
            result = call()
            if attempt:
                log.warning("storage is back after %.0f s (%s)", time.monotonic() - start, what)
            return result
        except OSError as err:
            waited = time.monotonic() - start
            if not is_transient(err):
                raise
            if waited + delay > budget:
                first = str(err).strip().splitlines()[0][:200]
                raise StorageUnavailable(f"storage unreachable for {waited:.0f} s while {what} ({first}); "
                                         "raise SYNTHRAY_STORAGE_RETRY_S to wait longer, or continue later with synthray resume") from None
            if attempt == 0:
                log.warning("storage unreachable while %s; retrying for up to %.0f s", what, budget)
            attempt += 1
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 8.0)


class _UploadOnClose:
    """A writable file that buffers, then uploads the whole object in one retried call when closed."""

    def __init__(self, fs: pafs.FileSystem, path: str, metadata: Any):
        self.fs, self.path, self.metadata = fs, path, metadata
        self.buffer = pa.BufferOutputStream()
        self.closed = False

    def write(self, data: Any) -> int:
        self.buffer.write(data)
        return len(data) if hasattr(data, "__len__") else memoryview(data).nbytes

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        data = self.buffer.getvalue()

        def put() -> None:
            with self.fs.open_output_stream(self.path, metadata=self.metadata) as out:
                out.write(data)

        with_retry(put, f"writing {self.path}")


class RetryingHandler(pafs.FileSystemHandler):
    """Delegates to `fs` (an S3 or GCS filesystem), retrying each call; pickles, so Ray workers can take it."""

    def __init__(self, fs: pafs.FileSystem):
        self.fs = fs

    def __reduce__(self) -> tuple:
        return RetryingHandler, (self.fs,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryingHandler) and self.fs.equals(other.fs)

    def get_type_name(self) -> str:
        return f"retrying-{self.fs.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return with_retry(lambda: self.fs.get_file_info(paths), f"reading information on {paths[0] if paths else '-'}")

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return with_retry(lambda: self.fs.get_file_info(selector), f"listing {selector.base_dir}")

    def create_dir(self, path: str, recursive: bool) -> None:
        with_retry(lambda: self.fs.create_dir(path, recursive=recursive), f"creating {path}")

    def delete_dir(self, path: str) -> None:
        with_retry(lambda: self.fs.delete_dir(path), f"deleting {path}")

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        with_retry(lambda: self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok), f"emptying {path}")

    def delete_root_dir_contents(self) -> None:
        raise OSError("synthray never empties a whole bucket")

    def delete_file(self, path: str) -> None:
        with_retry(lambda: self.fs.delete_file(path), f"deleting {path}")

    def move(self, src: str, dest: str) -> None:
        with_retry(lambda: self.fs.move(src, dest), f"moving {src}")

    def copy_file(self, src: str, dest: str) -> None:
        with_retry(lambda: self.fs.copy_file(src, dest), f"copying {src}")

    def _read_whole(self, path: str) -> pa.Buffer:
        def read() -> pa.Buffer:
            with self.fs.open_input_stream(path) as f:
                return f.read_buffer()

        return with_retry(read, f"reading {path}")

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self._read_whole(path))

    def open_input_file(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self._read_whole(path))

    def open_output_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        return pa.PythonFile(_UploadOnClose(self.fs, path, metadata), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        raise OSError(f"{path}: object stores cannot append")


def retrying(fs: pafs.FileSystem) -> pafs.FileSystem:
    return pafs.PyFileSystem(RetryingHandler(fs))
