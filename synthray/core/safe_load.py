"""Loading checkpoints without running code from storage.

`torch.load` unpickles, and a pickle can call any function: whoever can write to a bucket could otherwise run code on
every node that resumes or evaluates from it (a manifest's checksums do not help: they live in the same bucket).
Every checkpoint synthray reads goes through `load_tensors`, which only rebuilds tensors and plain values
(`weights_only=True`), plus the numpy RNG state that checkpoints written before this module stored as an ndarray.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any

from synthray.core.registry import SynthrayError


class UnsafeCheckpoint(SynthrayError):
    """A checkpoint holds more than tensors and plain values: loading it could run code."""


def _numpy_globals() -> list[Any]:
    """What an ndarray pickle names: checkpoints written by earlier versions kept `np.random.get_state()` as one."""
    import numpy as np

    reconstruct = getattr(np, "_core", np.core).multiarray._reconstruct  # numpy 2 moved it to np._core
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_tensors(source: str | bytes, what: str) -> Any:
    """`torch.load` of a path or bytes, tensors and plain values only, onto the CPU. `what` names the file in the
    one-line refusal of anything else (an `UnsafeCheckpoint`)."""
    import torch

    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the function the pickle would call ("... GLOBAL posix.system ..."); the rest is its advice.
        called = re.search(r"GLOBAL (\S+)", str(err))
        named = f"it would call {called.group(1)}" if called else "not a weights-only pickle"
        raise UnsafeCheckpoint(f"{what}: refused to load: it holds more than tensors and plain values ({named}); "
                               "whoever wrote it could run code here. Delete it to rebuild it, and check who can "
                               "write to this storage") from None


def load_checkpoint_file(path: str, what: str | None = None) -> Any:
    """`load_tensors` of a local file (Ray Train's checkpoint folders)."""
    return load_tensors(path, what or os.path.basename(path))
