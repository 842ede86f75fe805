"""Content-addressed artifacts (DomainBed's `Job`): a stage's output lives at `<storage>/<kind>/<key>`.

The key is a hash of the stage's spec, which embeds the keys of its inputs. A directory holding `_SUCCESS` is
complete and is reused. Work in progress lives in `<key>.partial/` so a crashed build resumes where it stopped,
and a file lock makes concurrent trials that need the same artifact build it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from filelock import FileLock

log = logging.getLogger("synthray")

SUCCESS = "_SUCCESS"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def spec_key(spec: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit key of a JSON-able spec (order of dict keys does not matter)."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:16]


def seed_hash(*parts: Any) -> int:
    """A seed in [0, 2**63) from any JSON-able parts (DomainBed's `seed_hash`, widened to 63 bits)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary sibling and rename, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Artifact:
    """One stage output: `kind` names the stage, `spec` fully determines the content."""

    def __init__(self, storage: str | Path, kind: str, spec: Mapping[str, Any], label: str = ""):
        self.kind = kind
        self.spec = dict(spec)
        self.key = spec_key(self.spec)
        self.label = label or kind
        self.path = Path(storage).expanduser().resolve() / kind / self.key

    @property
    def partial(self) -> Path:
        return self.path.with_name(self.key + ".partial")

    def is_complete(self) -> bool:
        return (self.path / SUCCESS).exists()

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())

    def build(self, make: Callable[[Path], Mapping[str, Any] | None]) -> Path:
        """Return the complete artifact, calling `make(workdir)` only if nobody has built it yet.

        `make` fills `workdir` (which may hold files from an interrupted earlier attempt) and may return a
        dict of metadata that is stored in `meta.json`.
        """
        if self.is_complete():
            log.info("reused %s %s (%s)", self.kind, self.key, self.label)
            return self.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            if self.is_complete():  # another trial finished it while we waited for the lock
                log.info("reused %s %s (%s), built by a concurrent trial", self.kind, self.key, self.label)
                return self.path
            self.partial.mkdir(exist_ok=True)
            log.info("building %s %s (%s)", self.kind, self.key, self.label)
            start = time.perf_counter()
            meta = dict(make(self.partial) or {})
            write_atomic(self.partial / "spec.json", json.dumps(self.spec, indent=1, sort_keys=True).encode())
            write_atomic(self.partial / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())
            (self.partial / SUCCESS).touch()
            if self.path.exists():  # a stale incomplete directory from an older layout
                shutil.rmtree(self.path)
            os.replace(self.partial, self.path)
            log.info("built %s %s (%s) in %.1f s", self.kind, self.key, self.label, time.perf_counter() - start)
        return self.path
