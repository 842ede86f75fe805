"""Where `from_pretrained` loads weights from: a local folder, or a hub id in the local Hugging Face cache.

Generators, depth models and feature encoders all resolve their `model` setting through here, so a missing
checkpoint fails the same way everywhere: one line naming the id and the three ways out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from synthray.registry import SynthrayError


def local_folder(model: str) -> Path | None:
    """`model` as a folder when it is written as a path (absolute, ./relative, or existing); None for a hub id."""
    path = Path(model).expanduser()
    return path if path.is_absolute() or model.startswith(".") or path.exists() else None


def hub_snapshot(model: str, allow_download: bool, setting: str, check: Callable[[Path], object] | None = None) -> str:
    """The cached snapshot folder of hub id `model`, or the id itself when downloads are allowed.

    `setting` names the config key a user can point at a local folder instead. `check(folder)` may raise a
    SynthrayError for a snapshot that lacks needed files; that counts as a miss too.
    """
    if allow_download:
        return model
    from huggingface_hub import snapshot_download

    missing = SynthrayError(
        f"weights for '{model}' are not in the local Hugging Face cache; download them "
        f"(huggingface-cli download {model}), point {setting} at a local folder, or set hub.allow_download=true"
    )
    try:
        folder = snapshot_download(model, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any miss in the local cache means the same thing to the user
        # A snapshot huggingface_hub calls incomplete may still hold all we load (say, all but the TF weights).
        folder = getattr(err, "snapshot_path", None)
        if folder is None:
            raise missing from None
    if check is not None:
        try:
            check(Path(folder))
        except SynthrayError:
            raise missing from None
    return str(folder)
