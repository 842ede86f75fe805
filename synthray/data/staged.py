"""Reading real data that `synthray stage-data` copied into storage: `data.source=imagefolder data.root=<URI>`.

A staged artifact (`<storage>/staged/<key>/`, written by `data/staging.py`) holds an ImageFolder tree's image files,
their bytes as they were, in parquet shards (`shards/part-NNNNN.parquet`: path, split, class, image, size, sha256),
an index of them without the bytes (`files.parquet`: path, split, class, size, sha256, shard, row) and `meta.json`.
Every node reads it through the storage layer, so a sweep's real data no longer has to be on a disk of its own.

The real data read from it is keyed as the folder it came from: `fingerprint` hashes the same relative names and
sizes as `graph.identity.real_fingerprint` does for the folder, so moving a sweep from the folder to its staged
copy rebuilds nothing. Rows come out as the folder's loader gives them: the same ids, order and bytes.
"""

from __future__ import annotations

import collections
import functools
import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from synthray.core import storage
from synthray.core.artifacts import MANIFEST
from synthray.core.registry import SynthrayError

KIND = "staged"
INDEX = "files.parquet"
INDEX_COLUMNS = ("path", "split", "class", "size", "sha256", "shard", "row")


def fingerprint(files: Iterable[tuple[str, int]]) -> str:
    """sha256 (16 hex) of (relative posix path, size) pairs: exactly `graph.identity.real_fingerprint`'s digest of
    the folder the files came from (sorted as `Path`s sort, part by part, which is not plain string order)."""
    import hashlib

    digest = hashlib.sha256()
    for path, size in sorted(files, key=lambda f: PurePosixPath(f[0])):
        digest.update(f"{path}\0{int(size)}\n".encode())
    return digest.hexdigest()[:16]


def is_staged_root(root: str | None) -> bool:
    """Whether `data.root` names storage rather than a plain folder: any URI (only a staged artifact is read there),
    or a local folder holding an artifact's manifest (a staged copy in local storage)."""
    if not root:
        return False
    return not storage.is_local(root) or Path(root, MANIFEST).is_file()


def _manifest(root: str) -> dict[str, Any] | None:
    """The staged artifact's manifest at `root`; None when there is none, or it is another kind's."""
    try:
        manifest = json.loads(storage.read_text(storage.join(root, MANIFEST)))
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return manifest if manifest.get("kind") == KIND else None


@functools.lru_cache(maxsize=8)
def _meta(root: str) -> dict[str, Any]:
    """meta.json of the complete staged artifact at `root` (cached: a committed artifact never changes)."""
    from synthray.core.artifacts import read_checked

    return json.loads(read_checked(storage.join(root, "meta.json")))


@functools.lru_cache(maxsize=4)
def _index(root: str) -> Any:
    """The index table (pyarrow) of the staged artifact at `root`, checked against its manifest."""
    from synthray.core.images import read_shard

    return read_shard(storage.join(root, INDEX), list(INDEX_COLUMNS))


def _rows(root: str, classes: Iterable[str], columns: list[str]) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = _index(root)
    return table.filter(pc.is_in(table.column("class"), value_set=pa.array(list(classes), pa.string()))).select(columns)


_FINGERPRINTS: dict[tuple[str, tuple[str, ...]], str] = {}  # (root, classes) -> fingerprint: a plan asks per trial


def staged_fingerprint(root: str, classes: Iterable[str]) -> str:
    """The fingerprint of `classes`' files in the staged artifact at `root`, as the folder staged there would have
    given: from the meta when the classes are those staged, else from the index. `unread <root>` when it cannot
    be read here (not staged, or unreachable: a dry plan on a laptop): never equal to a real fingerprint, and
    `check_staged` says why."""
    classes = list(classes)
    if (root, tuple(classes)) in _FINGERPRINTS:
        return _FINGERPRINTS[(root, tuple(classes))]
    try:
        _reachable(root)
        if _manifest(root) is None:
            return f"unread {root}"
        stored = _meta(root)["fingerprint"]
        if set(stored["classes"]) == set(classes):  # the fingerprint counts files only: order does not matter
            files = str(stored["files"])
        else:
            rows = _rows(root, classes, ["path", "size"]).to_pydict()
            files = fingerprint(zip(rows["path"], rows["size"]))
    except (OSError, SynthrayError):
        return f"unread {root}"
    _FINGERPRINTS[(root, tuple(classes))] = files  # a committed artifact never changes
    return files


def _reachable(root: str) -> None:
    """One line at once when the storage of `root` cannot answer (no credentials, no endpoint, no bucket), rather
    than the storage layer's retries for minutes."""
    if not storage.is_local(root):
        try:
            storage.check_storage(root)
        except SynthrayError as err:
            raise SynthrayError(f"data.root={root}: {str(err).split(': ', 1)[-1]}") from None


def check_staged(root: str, source: str, classes: Iterable[str]) -> None:
    """One line when `data.root` is not a staged artifact a sweep can read: not staged, unreachable, read with the
    wrong source, or without some of the classes. Reads the manifest and meta only."""
    _reachable(root)
    try:
        manifest = _manifest(root)
    except OSError as err:
        raise SynthrayError(f"data.root={root}: cannot read it ({_first_line(err)})") from None
    if manifest is None:
        raise SynthrayError(f"data.root={root} is not a staged artifact (no staged {MANIFEST} there); copy the real "
                            f"data into storage with `synthray stage-data <folder or URI> storage=<URI>` and set the "
                            f"data.root it prints")
    if source != "imagefolder":
        raise SynthrayError(f"data.root={root} is a staged ImageFolder tree; read it with data.source=imagefolder "
                            f"(not {source})")
    staged = _meta(root)["classes"]
    wanted = list(classes)
    for split, folder in (("train", "train"), ("test", _meta(root)["test_dir"])):
        missing = [c for c in wanted if c not in set(staged[split])]
        if missing:
            raise SynthrayError(f"data.root={root}: {len(missing)} of {len(wanted)} classes were not staged in "
                                f"{folder}/, e.g. {', '.join(missing[:3])}; stage them with `synthray stage-data`")


def staged_items(root: str, classes: Iterable[str]) -> dict[str, dict[str, list[tuple[str, StagedImage]]]]:
    """items[split][class id] = [(row id, image)] for the real-data loader (`data.real._assign`), as the folder's
    loader lists them: ids are the files' paths relative to the tree, in the folder's order within each class.
    An image's bytes are read only when asked for, a shard at a time."""
    rows = _rows(root, classes, ["path", "split", "class", "sha256", "shard", "row"]).to_pydict()
    shards = _ShardCache(root)
    items: dict[str, dict[str, list[tuple[str, StagedImage]]]] = {"train": {}, "test": {}}
    for path, split, cid, sha, shard, row in zip(*(rows[c] for c in ("path", "split", "class", "sha256", "shard", "row"))):
        items[split].setdefault(cid, []).append((path, StagedImage(shards, path, int(shard), int(row), sha)))
    for per_class in items.values():
        for entries in per_class.values():
            entries.sort(key=lambda e: PurePosixPath(e[0]))  # the index is in this order already; the loader relies on it
    return items


def shard_name(shard: int) -> str:
    return f"shards/part-{shard:05d}.parquet"


class _ShardCache:
    """The last few shards read (their path and image columns): the loader walks one class at a time, through
    the train shards and then a test shard, so a handful of shards in memory reads each one about once."""

    def __init__(self, root: str, keep: int = 3):
        self.root, self.keep = root, keep
        self.tables: collections.OrderedDict[int, Any] = collections.OrderedDict()

    def column(self, shard: int) -> tuple[list[str], Any]:
        from synthray.core.images import read_shard

        if shard not in self.tables:
            table = read_shard(storage.join(self.root, shard_name(shard)), ["path", "image"])  # checked: manifest
            self.tables[shard] = (table.column("path").to_pylist(), table.column("image"))
            while len(self.tables) > self.keep:
                self.tables.popitem(last=False)
        self.tables.move_to_end(shard)
        return self.tables[shard]


class StagedImage:
    """One staged file's bytes, read on demand (`read_bytes`, as a `Path` offers), checked against its sha256."""

    def __init__(self, shards: _ShardCache, path: str, shard: int, row: int, sha256: str):
        self.shards, self.path, self.shard, self.row, self.sha256 = shards, path, shard, row, sha256

    def read_bytes(self) -> bytes:
        import hashlib

        paths, images = self.shards.column(self.shard)
        data = images[self.row].as_py()
        if paths[self.row] != self.path or hashlib.sha256(data).hexdigest() != self.sha256:
            raise OSError(f"the staged copy in {self.shards.root} differs from its index; stage the folder again")
        return data


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
