"""`synthray stage-data`: copy an ImageFolder tree into storage once, so that every node of a cluster reads it.

The tree is laid out like ImageNet: `train/<class>/*.JPEG` and `val/<class>/*` (or `test/<class>/*`, read when
there is no `val/`, as the real-data loader does). It may be a local folder or a bucket prefix. Its image files are
copied as they are (never re-encoded) into parquet shards of at most `SHARD_FILES` files and `SHARD_BYTES` bytes, so
a later read is a few large objects rather than a million small ones; `data/staged.py` reads them.

The artifact's key comes from the content alone: the sorted file list with sizes and sha256 checksums, never the
path. That key is known only once every byte was read, so shards are first written under
`<storage>/staged/.partial-<listing>/` (the listing: names, sizes and modification times) and moved under the key
at the end; an interrupted run resumes from the shards already there. A second run finds the listing's pointer
(`.listing-<listing>.json`) to a complete artifact and copies nothing (rsync's quick check: same names, sizes and
times); the same files staged from elsewhere end up under the same key.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from synthray.core import progress, storage
from synthray.core.artifacts import Artifact, Store, commit
from synthray.core.registry import SynthrayError
from synthray.data.real import IMAGE_EXTENSIONS
from synthray.data.staged import INDEX, KIND, fingerprint, shard_name

log = logging.getLogger("synthray")

SHARD_FILES = 1000       # files per shard: ImageNet's ~110 kB JPEGs make ~110 MB shards
SHARD_BYTES = 128 << 20  # and never much more than this, whatever the files weigh
THREADS = 16             # files read at once: an object store answers each read in tens of ms
SCHEMA = 1

Entry = tuple[str, str, str, int, int]  # path (relative, posix), split (train | test), class, size, mtime_ns


def stage_data(source: str, store: Store, classes: Sequence[str] | None = None, shard_files: int = SHARD_FILES,
               shard_bytes: int = SHARD_BYTES, threads: int = THREADS) -> tuple[Artifact, bool]:
    """Stage the tree at `source` (all its classes, or `classes`) into `store`; returns the complete artifact, and
    whether anything was copied (False: found complete)."""
    root = _source_root(source)
    entries, class_dirs, test_dir = list_tree(root, classes)
    listing = _listing_key(entries, classes)
    pointer = store.uri(KIND, f".listing-{listing}.json")
    try:
        found = Artifact(store, KIND, json.loads(storage.read_text(pointer)))
    except FileNotFoundError:
        found = None
    if found is not None and found.is_complete():
        log.info("stage-data: %s is staged already, at %s", root, found.uri)
        return found, False
    partial = store.uri(KIND, f".partial-{listing}")
    start = time.perf_counter()
    with progress.stage(f"stage {root}"):
        shards = _write_shards(root, entries, partial, shard_files, shard_bytes, threads)
    digest = hashlib.sha256()
    for (path, _, _, size, _), sha in zip(entries, (s for shard in shards for s in shard["sha256"])):
        digest.update(f"{path}\0{size}\0{sha}\n".encode())
    art = Artifact(store, KIND, {"schema": SCHEMA, "layout": "imagefolder", "content": digest.hexdigest()},
                   label=f"staged {root}")
    copied = not art.is_complete()  # else: the same files, staged before from elsewhere
    if copied:
        meta = {"layout": "imagefolder", "test_dir": test_dir, "classes": class_dirs, "files": len(entries),
                "bytes": sum(e[3] for e in entries), "shards": len(shards), "listing": listing,
                "counts": {split: sum(1 for e in entries if e[1] == split) for split in ("train", "test")},
                "fingerprint": {"classes": sorted({e[2] for e in entries}),
                                "files": fingerprint((e[0], e[3]) for e in entries)},
                "staged_from": root, "seconds": round(time.perf_counter() - start, 1)}  # not keyed: where it came from
        _publish(art, partial, entries, shards, meta)
    storage.write_bytes(pointer, json.dumps(art.spec, sort_keys=True).encode())
    storage.delete(partial)
    log.info("stage-data: %s at %s", "staged" if copied else "the same files were staged already", art.uri)
    return art, copied


def _source_root(source: str) -> str:
    """The tree's root as a storage URI (a local folder: its absolute path); one line when it is not a folder."""
    import re

    import pyarrow.fs as pafs

    try:  # answers at once for an unknown scheme, missing credentials or an unreachable endpoint (no retrying)
        root = storage.normalize(source) if storage.is_local(storage.normalize(source)) else storage.check_storage(source)
    except SynthrayError as err:
        raise SynthrayError(re.sub(r"^storage '?([^' ]*)'?", r"stage-data: source \1", str(err))) from None
    fs, path = storage.resolve(root)
    try:
        kind = fs.get_file_info(path).type
    except OSError as err:
        raise SynthrayError(f"stage-data: cannot read {root} ({str(err).strip().splitlines()[0]})") from None
    if kind == pafs.FileType.NotFound:
        raise SynthrayError(f"stage-data: no such folder {root}")
    if kind != pafs.FileType.Directory:
        raise SynthrayError(f"stage-data: {root} is a file; give the folder (or bucket prefix) that holds train/ and val/")
    return root


def list_tree(root: str, classes: Sequence[str] | None = None) -> tuple[list[Entry], dict[str, list[str]], str]:
    """The image files the real-data loader would read under `root`, sorted as its fingerprint sorts them: direct
    children of `train/<class>/` and `<test dir>/<class>/` with an image suffix. Also the class folders of each
    split, and the test folder's name (val, else test). One line for a tree of another layout, or with no images."""
    import pyarrow.fs as pafs

    fs, base = storage.resolve(root)
    dirs = set(storage.list_dirs(root))
    layout = "ImageNet layout: train/<class>/*.JPEG and val/<class>/*; stage-data reads ImageFolder trees only"
    if "train" not in dirs:
        raise SynthrayError(f"stage-data: {root} has no train/ folder of class folders ({layout})")
    test_dir = next((d for d in ("val", "test") if d in dirs), None)
    if test_dir is None:
        raise SynthrayError(f"stage-data: {root} has no val/ or test/ folder of class folders beside train/ ({layout})")
    entries: list[Entry] = []
    class_dirs: dict[str, list[str]] = {}
    for split, folder in (("train", "train"), ("test", test_dir)):
        found: set[str] = set()
        for info in fs.get_file_info(pafs.FileSelector(f"{base.rstrip('/')}/{folder}", recursive=True)):
            parts = info.path[len(base.rstrip("/")) + 1:].split("/")
            if info.type == pafs.FileType.Directory and len(parts) == 2:
                found.add(parts[1])
            elif info.type == pafs.FileType.File and len(parts) == 3:
                found.add(parts[1])
                if PurePosixPath(parts[2]).suffix.lower() in IMAGE_EXTENSIONS:
                    entries.append(("/".join(parts), split, parts[1], int(info.size), int(info.mtime_ns or 0)))
        if classes is not None:
            missing = [c for c in classes if c not in found]
            if missing:
                raise SynthrayError(f"stage-data: {root}/{folder}: {len(missing)} of {len(classes)} class folders "
                                    f"missing, e.g. {', '.join(missing[:3])}")
            found &= set(classes)
        class_dirs[split] = sorted(found)
    if classes is not None:
        entries = [e for e in entries if e[2] in set(classes)]
    if not entries:
        raise SynthrayError(f"stage-data: no images under {root}/train/<class>/ or {root}/{test_dir}/<class>/ ({layout})")
    entries.sort(key=lambda e: PurePosixPath(e[0]))
    return entries, class_dirs, test_dir


def _listing_key(entries: list[Entry], classes: Sequence[str] | None) -> str:
    """What a second run compares to find the tree staged: names, sizes and modification times (not the bytes)."""
    digest = hashlib.sha256(json.dumps({"schema": SCHEMA, "classes": sorted(classes) if classes else None}).encode())
    for path, _, _, size, mtime in entries:
        digest.update(f"{path}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()[:16]


def _cut(entries: list[Entry], shard_files: int, shard_bytes: int) -> list[list[Entry]]:
    """Consecutive shards of at most `shard_files` files and `shard_bytes` bytes (a bigger file: a shard alone),
    from the listing alone, so an interrupted run cuts the same shards again."""
    shards: list[list[Entry]] = [[]]
    weight = 0
    for entry in entries:
        if shards[-1] and (len(shards[-1]) >= shard_files or weight + entry[3] > shard_bytes):
            shards.append([])
            weight = 0
        shards[-1].append(entry)
        weight += entry[3]
    return shards


def _write_shards(root: str, entries: list[Entry], partial: str, shard_files: int, shard_bytes: int,
                  threads: int) -> list[dict[str, Any]]:
    """Write every shard not yet under `partial`, reading `threads` files at a time, one shard in memory; returns
    each shard's manifest entry with its files' sha256 (read back from a shard an earlier run wrote)."""
    from synthray.core.images import write_table

    plan = _cut(entries, shard_files, shard_bytes)
    present = set(storage.list_files(partial))
    total, total_bytes = len(entries), sum(e[3] for e in entries)
    done = done_bytes = 0
    start = time.perf_counter()
    out = []
    resumed = sum(1 for i in range(len(plan)) if shard_name(i) in present)
    if resumed:
        log.info("stage-data: %d of %d shards already written by an interrupted run, resuming", resumed, len(plan))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for i, shard in enumerate(plan):
            uri = storage.join(partial, shard_name(i))
            if shard_name(i) in present:
                out.append(_written(uri, shard))
            else:
                datas = list(pool.map(lambda e: _read_file(root, e), shard))
                columns = {"path": [e[0] for e in shard], "split": [e[1] for e in shard], "class": [e[2] for e in shard],
                           "image": datas, "size": [e[3] for e in shard],
                           "sha256": [hashlib.sha256(d).hexdigest() for d in datas]}
                entry = write_table(uri, columns)
                out.append({"size": entry["size"], "sha256_file": entry["sha256"], "sha256": columns["sha256"]})
            done, done_bytes = done + len(shard), done_bytes + sum(e[3] for e in shard)
            elapsed = time.perf_counter() - start
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else 0.0
            log.info("stage-data: shard %d/%d, %d/%d files, %.0f/%.0f MB, %.1f files/s, ETA %.0f s", i + 1, len(plan),
                     done, total, done_bytes / 1e6, total_bytes / 1e6, rate, eta)
            progress.advance(done, total, unit="files")
    return out


def _read_file(root: str, entry: Entry) -> bytes:
    data = storage.read_bytes(storage.join(root, entry[0]))
    if len(data) != entry[3]:  # changed since it was listed: the listing (and so the key) would not describe it
        raise SynthrayError(f"stage-data: {root}/{entry[0]} changed while it was staged ({entry[3]} bytes listed, "
                            f"{len(data)} read); run stage-data again")
    return data


def _written(uri: str, shard: list[Entry]) -> dict[str, Any]:
    """The manifest entry and file checksums of a shard an interrupted run wrote, checked to hold `shard`'s files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = storage.read_bytes(uri)
    table = pq.read_table(pa.BufferReader(data), columns=["path", "sha256"])
    if table.column("path").to_pylist() != [e[0] for e in shard]:
        raise SynthrayError(f"stage-data: {uri} holds other files than this listing's; delete {storage.parent(uri)} "
                            "and run stage-data again")
    file = storage.entry(data)
    return {"size": file["size"], "sha256_file": file["sha256"], "sha256": table.column("sha256").to_pylist()}


def _publish(art: Artifact, partial: str, entries: list[Entry], shards: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Move the shards under the artifact's key, write the index, meta and spec, then the manifest (last)."""
    from synthray.core.images import write_table

    fs, _ = storage.resolve(art.uri)
    known = {}
    for i, shard in enumerate(shards):
        src, dst = storage.join(partial, shard_name(i)), art.file(shard_name(i))
        if storage.is_local(dst):
            storage.ensure_dir(Path(dst).parent)
        fs.move(storage.resolve(src)[1], storage.resolve(dst)[1])  # an object store copies inside the bucket
        known[shard_name(i)] = {"size": shard["size"], "sha256": shard["sha256_file"]}
    shard_of = [(i, row) for i, shard in enumerate(shards) for row in range(len(shard["sha256"]))]
    index = {"path": [e[0] for e in entries], "split": [e[1] for e in entries], "class": [e[2] for e in entries],
             "size": [e[3] for e in entries], "sha256": [s for shard in shards for s in shard["sha256"]],
             "shard": [i for i, _ in shard_of], "row": [r for _, r in shard_of]}
    known[INDEX] = {k: v for k, v in write_table(art.file(INDEX), index).items() if k in ("size", "sha256")}
    known["spec.json"] = storage.write_bytes(art.file("spec.json"), json.dumps(art.spec, indent=1, sort_keys=True).encode())
    known["meta.json"] = storage.write_bytes(art.file("meta.json"), json.dumps(meta, indent=1, sort_keys=True).encode())
    commit(art.uri, known, {"kind": KIND, "key": art.key})
