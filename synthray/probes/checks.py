"""Checks of `probes.<name>` values shared by the probes (transforms.py) and the depth probe (depth.py)."""

from __future__ import annotations

from synthray.core.registry import SynthrayError


def check_flag(name: str, params: dict, key: str) -> None:
    """`probes.<name>.<key>` is absent or a boolean: one line otherwise."""
    if not isinstance(params.get(key, False), bool):
        raise SynthrayError(f"probes.{name}.{key} must be true or false, got {params[key]!r}")


def check_size(name: str, params: dict, key: str, null_means: str) -> None:
    """`probes.<name>.<key>` is null (`null_means`) or a positive int: one line otherwise."""
    size = params.get(key)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise SynthrayError(f"probes.{name}.{key} must be null ({null_means}) or a positive int, got {size!r}")
