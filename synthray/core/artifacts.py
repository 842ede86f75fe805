"""Content-addressed artifacts (DomainBed's `Job`): a stage's output lives at `<storage>/<kind>/<key>/`.

The key is a hash of the stage's spec, which embeds the keys of its inputs and nothing about where it ran: not
the storage root, the scratch folder, or the cluster's nodes and GPUs.

Commit protocol (no rename, no shared lock file; see docs/DESIGN.md):
- a builder writes the artifact's files in place, each one whole (an object PUT, or a renamed local file);
- it writes `_MANIFEST.json` last, listing every file with its size and sha256. Only then is the artifact complete;
- files without a manifest are an unfinished build: never read as complete, and resumed by the next builder
  (a stage skips its shards that are already there; their content depends on the spec alone);
- one builder per key at a time holds a lease from a named Ray actor (`synthray.core.leases`); the others wait for the
  manifest. A builder that dies stops renewing its lease, and after `lease_s` another one takes over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthray.core import progress, storage
from synthray.core.registry import SynthrayError, error_line

log = logging.getLogger("synthray")

MANIFEST = "_MANIFEST.json"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def spec_key(spec: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit key of a JSON-able spec (order of dict keys does not matter)."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:16]


def without_legacy(values: Mapping[str, Any], legacy: Mapping[str, Any]) -> dict[str, Any]:
    """`values` less the settings at their legacy value: a setting added later, left as it was, computes what was
    computed before it existed, so leaving it out keeps the keys of artifacts built then; any other value is in the
    key, so new semantics never reuse them. Equal means of the same type too: `0 == False` in Python, but `size: 0`
    is not a legacy `null`."""
    return {k: v for k, v in values.items() if not (k in legacy and type(v) is type(legacy[k]) and v == legacy[k])}


def seed_hash(*parts: Any) -> int:
    """A seed in [0, 2**63) from any JSON-able parts (DomainBed's `seed_hash`, widened to 63 bits)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Store:
    """Where artifacts live (`root`, a URI shared by every node) and this node's `scratch` setting for caches.

    `lease_s`: how long a builder's claim on a key outlives its last heartbeat.
    """

    root: str
    scratch: str | None = None
    lease_s: float = 120.0

    @classmethod
    def from_cfg(cls, cfg: Any) -> Store:
        return cls(storage.normalize(cfg.storage), cfg.get("scratch"), float(cfg.get("lease_s", 120.0)))

    def uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def scratch_dir(self) -> Path:
        """This node's scratch folder (resolved where it is called: each node has its own)."""
        return storage.scratch_dir(self.scratch)


@dataclass
class BuildDir:
    """What a stage's `make` writes to: `uri`, the artifact folder itself (workers write shards there directly),
    and `local`, a scratch folder whose files are uploaded into the artifact when `make` returns."""

    uri: str
    local: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, rel: str, entry: Mapping[str, Any]) -> None:
        """Remember the manifest entry of a file written straight to `uri/rel`, so it need not be read back.

        Only size and sha256 are kept (what `verify` compares): `write_table`'s entries also carry `rows`."""
        self.entries[rel] = {"size": int(entry["size"]), "sha256": str(entry["sha256"])}


class Artifact:
    """One stage output: `kind` names the stage, `spec` fully determines the content."""

    def __init__(self, store: Store, kind: str, spec: Mapping[str, Any], label: str = "", legacy: tuple[str, ...] = ()):
        self.store = store
        self.kind = kind
        self.spec = dict(spec)
        self.key = spec_key(self.spec)
        self.label = label or kind
        self.uri = store.uri(kind, self.key)
        # Keys an earlier synthray gave this artifact: one stored under them is read where it is (see `is_complete`).
        self.legacy = tuple(k for k in legacy if k != self.key)
        self._legacy_found = False  # found under a legacy key, and not yet aliased under its key (`adopt`)

    @property
    def ref(self) -> str:
        """`<kind>/<key>`: the artifact's identity, the same under every storage root."""
        return f"{self.kind}/{self.key}"

    def file(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def is_complete(self) -> bool:
        """Whether the artifact is committed, under its key or, failing that, under a legacy key. A legacy copy (or
        an alias to one, written by `build`) is read in place: `uri` then points at it."""
        home = self.store.uri(self.kind, self.key)
        if not self.legacy:
            return storage.exists(storage.join(home, MANIFEST))
        try:
            alias = json.loads(storage.read_text(storage.join(home, MANIFEST))).get("alias")
        except FileNotFoundError:
            alias = None
        else:
            self.uri = self.store.uri(*alias.split("/")) if alias else home
            return True
        for key in self.legacy:
            uri = self.store.uri(self.kind, key)
            if storage.exists(storage.join(uri, MANIFEST)):
                self.uri, self._legacy_found = uri, True
                return True
        return False

    def adopt(self) -> None:
        """Record at this key that the artifact lives under a legacy key, so that it is found here from now on,
        even once the legacy key can no longer be computed (the data folder moved, say). Nothing to do for an
        artifact stored under its key, or not stored. Call it after `is_complete` found the artifact."""
        if self._legacy_found:
            self._legacy_found = False
            home = self.store.uri(self.kind, self.key)
            alias = f"{self.kind}/{storage.name(self.uri)}"
            storage.write_bytes(storage.join(home, MANIFEST), json.dumps(
                {"kind": self.kind, "key": self.key, "alias": alias, "files": {}}, indent=1, sort_keys=True).encode())
            log.info("%s %s is the legacy %s: aliased", self.kind, self.key, alias)

    def manifest(self) -> dict[str, Any]:
        return json.loads(storage.read_text(self.file(MANIFEST)))

    def meta(self) -> dict[str, Any]:
        return json.loads(read_checked(self.file("meta.json")))

    def verify(self) -> list[str]:
        """Files whose size or checksum differs from the manifest (empty: the artifact is intact)."""
        bad = []
        for rel, want in self.manifest()["files"].items():
            try:
                got = storage.entry(storage.read_bytes(self.file(rel)))
            except FileNotFoundError:
                got = None
            if got != want:
                bad.append(rel)
        return bad

    def local_copy(self, *parts: str) -> Path:
        """A local folder holding `parts` of this (complete) artifact: itself on local storage, else a scratch copy
        whose files were checked against the manifest."""
        return storage.local_copy(self.file(*parts), self.store.scratch_dir(), read=read_checked)

    def build(self, make: Callable[[BuildDir], Mapping[str, Any] | None]) -> Artifact:
        """Return the complete artifact, calling `make(build_dir)` only if nobody has built it yet.

        `make` may find files of an interrupted earlier attempt under `build_dir.uri`, and returns metadata that is
        stored in `meta.json`. Concurrent callers anywhere on the cluster build it once (see the module docstring).
        """
        from synthray.core.leases import Lease

        if self.is_complete():
            self.adopt()
            log.info("reused %s %s (%s)", self.kind, self.key, self.label)
            return self
        waited = False
        while True:
            with Lease(self.uri, self.store.lease_s) as lease:
                if lease.held:
                    if self.is_complete():  # finished by another builder while we waited
                        break
                    self._make(make)
                    return self
            if self.is_complete():
                break
            if not waited:
                log.info("waiting for %s %s (%s): another trial is building it", self.kind, self.key, self.label)
                progress.post(stage=f"waiting: {stage_name(self.kind, self.label)}, built by another trial")
                waited = True
            time.sleep(min(2.0, self.store.lease_s / 8))
        log.info("reused %s %s (%s), built by a concurrent trial", self.kind, self.key, self.label)
        return self

    def _make(self, make: Callable[[BuildDir], Mapping[str, Any] | None]) -> None:
        log.info("building %s %s (%s)", self.kind, self.key, self.label)
        start = time.perf_counter()
        local = Path(tempfile.mkdtemp(prefix=f"{self.kind}-{self.key}-", dir=storage.ensure_dir(self.store.scratch_dir() / "build")))
        try:
            out = BuildDir(self.uri, local)
            with storage.scratch_space(self.store.scratch_dir()), progress.stage(stage_name(self.kind, self.label)):
                meta = dict(make(out) or {})
            out.entries.update(storage.upload_dir(local, self.uri))
            out.entries["spec.json"] = storage.write_bytes(self.file("spec.json"), json.dumps(self.spec, indent=1, sort_keys=True).encode())
            out.entries["meta.json"] = storage.write_bytes(self.file("meta.json"),
                                                           json.dumps(meta, indent=1, sort_keys=True, default=str).encode())
            commit(self.uri, out.entries, {"kind": self.kind, "key": self.key})
        finally:
            shutil.rmtree(local, ignore_errors=True)
        log.info("built %s %s (%s) in %.1f s", self.kind, self.key, self.label, time.perf_counter() - start)


STAGE_VERBS = {"real": "prepare real data", "synthetic": "generate", "views": "", "features": "", "tiny-models": "build",
               "models": "train", "results": "evaluate", "captions": "caption", "prompts": "prompts"}


def stage_name(kind: str, label: str) -> str:
    """The console's name for building an artifact: `train tiny-cnn on real/rgb`."""
    return f"{STAGE_VERBS.get(kind, kind)} {label}".strip()


class CorruptArtifact(SynthrayError):
    """A file of a committed artifact is missing or differs from its manifest entry."""


_HOLDERS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {}  # folder -> (artifact uri, entries of its files)


def committed_files(folder: str) -> tuple[str, dict[str, dict[str, Any]]] | None:
    """(artifact uri, {file name: manifest entry}) for the files directly in `folder`, from the manifest of the
    committed artifact that holds it (the folder itself or one of its two parents); None when none does.

    Cached per process: a manifest never changes once written (a rebuild writes the same content).
    """
    if folder in _HOLDERS:
        return _HOLDERS[folder]
    here, prefix = folder, ""
    for _ in range(3):
        try:
            text = storage.read_bytes(storage.join(here, MANIFEST))
        except FileNotFoundError:
            prefix, here = f"{storage.name(here)}/{prefix}", storage.parent(here)
            continue
        try:
            files = json.loads(text)["files"]
        except (ValueError, KeyError, TypeError):
            _quarantine(here, MANIFEST, "is unreadable")
        entries = {rel[len(prefix):]: e for rel, e in files.items() if rel.startswith(prefix) and "/" not in rel[len(prefix):]}
        _HOLDERS[folder] = (here, entries)
        return _HOLDERS[folder]
    return None


def read_checked(uri: str) -> bytes:
    """The bytes of `uri`, verified against the manifest of the artifact that holds it (size and sha256).

    A file that is missing or differs raises `CorruptArtifact`, one line naming the artifact and the file, after
    removing the manifest and the bad file: the artifact is incomplete again, and the next build of it (an automatic
    retry of the trial, or `synthray resume`) rebuilds just what is missing. Files outside a committed artifact
    are read as they are.
    """
    holder = committed_files(storage.parent(uri))
    want = holder[1].get(storage.name(uri)) if holder else None
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        if want is None:
            raise
        _quarantine(holder[0], storage.relative(uri, holder[0]), "is missing")
    if want is not None:
        got = storage.entry(data)
        if got != want:
            _quarantine(holder[0], storage.relative(uri, holder[0]),
                        f"is corrupt ({got['size']} B, sha256 {got['sha256'][:12]}; the manifest says "
                        f"{want['size']} B, {want['sha256'][:12]})")
    return data


def _quarantine(artifact_uri: str, rel: str, what: str) -> None:
    # The manifest goes first: from then on nobody takes the artifact for complete, whatever happens next.
    storage.delete_file(storage.join(artifact_uri, MANIFEST))
    if rel != MANIFEST:
        storage.delete_file(storage.join(artifact_uri, rel))
    for folder in [f for f, (holder, _) in _HOLDERS.items() if holder == artifact_uri]:
        del _HOLDERS[folder]
    ref = "/".join(artifact_uri.rstrip("/").split("/")[-2:])
    raise CorruptArtifact(f"artifact {ref}: {rel} {what}; removed it and the manifest so that the artifact is rebuilt "
                          f"(storage: {artifact_uri})")


def corruption(err: BaseException) -> str | None:
    """The `CorruptArtifact` line in `err` or an error it wraps; None when the failure was something else."""
    return error_line(err, "CorruptArtifact")


def commit(uri: str, known: Mapping[str, Mapping[str, Any]], about: Mapping[str, Any]) -> dict[str, Any]:
    """Make the folder `uri` complete: write its manifest, last, listing every file with size and sha256.

    `known` holds the entries of files this builder wrote itself; any other file found (say, a shard from an
    interrupted earlier attempt) is read back and hashed, so the manifest always describes what is there.
    """
    files = {}
    for rel, size in storage.list_files(uri).items():
        if rel == MANIFEST:
            continue
        entry = known.get(rel)
        files[rel] = dict(entry) if entry and entry["size"] == size else storage.entry(storage.read_bytes(storage.join(uri, rel)))
    manifest = dict(about, files=files)
    storage.write_bytes(storage.join(uri, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def write_folder(local: Path, uri: str, about: Mapping[str, Any]) -> int:
    """Copy the local folder `local` to `uri` and commit it; returns the number of files."""
    return len(commit(uri, storage.upload_dir(local, uri), about)["files"])


@dataclass(frozen=True)
class DatasetRef:
    """One split of an image-dataset artifact (`data`, or real data's `train`/`control`/`test`): a folder of
    parquet shards. `ref` names it independently of the storage root; `uri` says where it is."""

    artifact: Artifact
    split: str

    @property
    def uri(self) -> str:
        return self.artifact.file(self.split)

    @property
    def ref(self) -> str:
        return f"{self.artifact.ref}/{self.split}"

    def ref_for(self, legacy: bool = False) -> str:
        """As `graph.specs.Split.ref_for`: a split of a built artifact is named by its key."""
        return self.ref

    @property
    def label(self) -> str:
        return f"{self.artifact.label} [{self.split}]"
