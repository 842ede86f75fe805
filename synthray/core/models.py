"""One resolver for every model name (generator pipelines, depth models, feature encoders): name -> loadable folder.

A name is one of:
- `tiny:<family>`: an offline random-weight twin, built once into a `tiny-models` artifact in storage;
- a hub id, optionally pinned: `org/name` or `org/name@<revision>` (the revision is part of every key);
- a local folder (absolute or ./relative): a `save_pretrained` folder that every node can read;
- a storage URI (`s3://…`, `gs://…`): a folder of weights in object storage.

Names are checked on the driver before anything launches (`check_model`), but resolved to a folder on the worker
that loads them (`Models.locate`): a path in the driver's Hugging Face cache means nothing on another node.
Hub ids are looked up, in order: the staged copy under `hub.cache` (see `stage_weights`, so autoscaled nodes never
need the hub), the node's own Hugging Face cache, then a download when `hub.allow_download` is on. `HF_TOKEN` is
read from the environment by huggingface_hub; it never enters a config, a key or a log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthray.core import storage
from synthray.core.artifacts import Artifact, Store, write_folder
from synthray.core.registry import SynthrayError, unknown_name

TINY_VERSION = 1  # bump when a tiny twin's definition changes, so stale twins are not reused


def _check_files(*names: str) -> Callable[[Path], None]:
    def check(folder: Path) -> None:
        for name in names:
            if not (folder / name).is_file():
                raise SynthrayError(f"{folder} has no {name}")

    return check


def _check_encoder(folder: Path) -> None:
    from synthray.metrics.encoders import check_encoder_folder

    check_encoder_folder(folder)


# What a loadable folder holds, per use: the file a `from_pretrained` of that kind needs.
USES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "pipeline": ("a diffusers save_pretrained folder", _check_files("model_index.json")),
    "depth": ("a transformers save_pretrained folder", _check_files("config.json")),
    "encoder": ("a transformers save_pretrained or timm save_for_hf folder", _check_encoder),
    "captioner": ("a transformers save_pretrained folder", _check_files("config.json")),
    "segmenter": ("a transformers save_pretrained folder", _check_files("config.json")),
}


def tiny_builders() -> dict[str, Callable[..., Any]]:
    """family -> builder(folder, seed=0, **params): every offline twin (`synthray/tiny/`), in one name space."""
    from synthray.tiny import builders

    return builders()


def split_revision(name: str) -> tuple[str, str]:
    """`org/name@rev` -> (`org/name`, `rev`); no `@` means the `main` branch."""
    repo, _, revision = name.partition("@")
    return repo, revision or "main"


def name_kind(name: str) -> str:
    """tiny | uri | folder | hub."""
    if name.startswith("tiny:"):
        return "tiny"
    if "://" in name:
        return "uri"
    path = Path(name).expanduser()
    return "folder" if path.is_absolute() or name.startswith(".") or path.exists() else "hub"


def model_identity(name: str, **tiny_params: Any) -> dict[str, Any]:
    """What a key records of a model name: never a cache path, and a hub id always with its revision."""
    kind = name_kind(name)
    if kind == "tiny":
        return {"tiny": name.split(":", 1)[1], "version": TINY_VERSION, **tiny_params}
    if kind == "hub":
        repo, revision = split_revision(name)
        return {"hub": repo, "revision": revision}
    if kind == "uri":
        return {"uri": storage.normalize(name)}
    return {"folder": str(Path(name).expanduser().resolve())}


def staged_uri(hub_cache: str, name: str) -> str:
    """Where `stage_weights` puts a hub snapshot: `<hub.cache>/models--org--name/<revision>/`."""
    repo, revision = split_revision(name)
    return storage.join(storage.normalize(hub_cache), "models--" + repo.replace("/", "--"), revision)


def _is_committed(uri: str) -> bool:
    from synthray.core.artifacts import MANIFEST

    return storage.exists(storage.join(uri, MANIFEST))


@dataclass(frozen=True)
class Models:
    """Everything a worker needs to turn a model name into a folder: picklable, built once from the config."""

    store: Store
    hub_cache: str | None = None
    allow_download: bool = False

    @classmethod
    def from_cfg(cls, cfg: Any) -> Models:
        return cls(Store.from_cfg(cfg), cfg.hub.get("cache"), bool(cfg.hub.allow_download))

    def tiny_artifact(self, name: str, **params: Any) -> Artifact:
        family = name.split(":", 1)[1]
        builders = tiny_builders()
        if family not in builders:
            raise unknown_name("tiny model family", family, builders)
        return Artifact(self.store, "tiny-models", model_identity(name, **params), label=f"tiny {family}")

    def locate(self, name: str, use: str, **tiny_params: Any) -> str:
        """A local folder holding model `name`, on the node that calls this (a worker about to load it)."""
        kind = name_kind(name)
        if kind == "tiny":
            art = self.tiny_artifact(name, **tiny_params)
            family = art.spec["tiny"]
            art.build(lambda out: {"family": family, "files": sorted(
                p.name for p in Path(tiny_builders()[family](out.local / "model", seed=0, **tiny_params)).iterdir())})
            return str(art.local_copy("model"))
        if kind == "folder":
            return str(Path(name).expanduser().resolve())
        if kind == "uri":
            return str(storage.local_copy(storage.normalize(name), self.store.scratch_dir()))
        if self.hub_cache:
            staged = staged_uri(self.hub_cache, name)
            if _is_committed(staged):
                return str(storage.local_copy(staged, self.store.scratch_dir()))
        repo, revision = split_revision(name)
        folder = _hf_cache_snapshot(repo, revision)
        if folder is not None and _holds(folder, use):
            return folder
        if self.allow_download:
            from huggingface_hub import snapshot_download

            return snapshot_download(repo, revision=revision)
        raise SynthrayError(f"weights for '{name}' are in neither hub.cache nor this node's Hugging Face cache "
                            f"({os.uname().nodename}); stage them with `synthray stage-weights {repo}`")


def _hf_cache_snapshot(repo: str, revision: str) -> str | None:
    """The node's cached snapshot folder of `repo` at `revision`, or None."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, revision=revision, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any miss in the local cache means the same thing here
        # A snapshot huggingface_hub calls incomplete may still hold all we load (say, all but the TF weights).
        return getattr(err, "snapshot_path", None)


def _holds(folder: str, use: str | None) -> bool:
    """Whether `folder` has what a `use` model needs (a snapshot can be incomplete: an interrupted download)."""
    if use is None:
        return True
    try:
        USES[use][1](Path(folder))
        return True
    except SynthrayError:
        return False


def check_model(models: Models, name: str, use: str, setting: str, gated: bool = False) -> None:
    """Before launch: a one-line error if `name` cannot be loaded on the cluster (tiny twins are built later).
    `gated`: the hub asks for a token to download it, so a download needs $HF_TOKEN here."""
    what, check = USES[use]
    kind = name_kind(name)
    if kind == "tiny":
        models.tiny_artifact(name)
        return
    if kind == "folder":
        folder = Path(name).expanduser()
        try:
            check(folder)
        except SynthrayError as err:
            raise SynthrayError(f"{setting}={name}: not {what} ({err})") from None
        return
    if kind == "uri":
        uri = storage.normalize(name)
        if not storage.list_files(uri):
            raise SynthrayError(f"{setting}={name}: no files at that storage URI")
        return
    if models.hub_cache and _is_committed(staged_uri(models.hub_cache, name)):
        return
    repo, revision = split_revision(name)
    folder = _hf_cache_snapshot(repo, revision)
    if folder is not None and _holds(folder, use):
        return
    if models.allow_download:
        if gated:
            from synthray.core.secrets import require_secret

            require_secret("HF_TOKEN", f"{setting}={name} is gated on the Hugging Face Hub, and downloading it",
                           f"or stage the weights once instead: synthray stage-weights {repo}")
        return
    where = f"hub.cache ({models.hub_cache}) or " if models.hub_cache else ""
    raise SynthrayError(f"weights for '{name}' are not in {where}the local Hugging Face cache; stage them "
                        f"(synthray stage-weights {repo}), point {setting} at a local folder, or set hub.allow_download=true")


def stage_weights(models: Models, name: str, use: str | None) -> tuple[str, int]:
    """Copy hub model `name` (local cache, or a download when allowed) to `hub.cache`; returns (URI, file count).

    Staging is itself committed with a manifest written last, so a half-copied snapshot is never used.
    """
    if not models.hub_cache:
        raise SynthrayError("stage-weights needs hub.cache=<storage URI> (e.g. s3://bucket/hub)")
    if name_kind(name) != "hub":
        raise SynthrayError(f"stage-weights takes hub ids (org/name[@revision]); '{name}' is not one")
    target = staged_uri(models.hub_cache, name)
    if _is_committed(target):
        return target, len(json.loads(storage.read_text(storage.join(target, "_MANIFEST.json")))["files"])
    repo, revision = split_revision(name)
    folder = _hf_cache_snapshot(repo, revision)
    if folder is None and models.allow_download:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo, revision=revision)
    if folder is None:
        raise SynthrayError(f"'{name}' is not in the local Hugging Face cache; download it first "
                            f"(huggingface-cli download {repo}) or pass hub.allow_download=true")
    if not _holds(folder, use):
        raise SynthrayError(f"the cached snapshot of '{name}' is incomplete ({folder}); download it again")
    files = write_folder(Path(folder), target, {"hub": repo, "revision": revision})
    return target, files
