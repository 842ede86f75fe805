"""Speed settings of a diffusers generator: torch.compile, its on-disk cache, channels_last and fused QKV.

Each setting that can change output bits is in the dataset key (`kernels_identity`); a setting left as it was
before it existed stays out of the key (`without_legacy`), so older datasets keep their keys.

Compile uses inductor's default mode with the three settings BASELINES.md found fast on an H200 (SD1.5 UNet:
8.19 img/s against 6.18 eager, 200 s to compile); `max-autotune` (the old mode) was still tuning after 200 s.
`reduce-overhead` adds CUDA graphs (torch.compile's mode of that name): the shapes are static per batch size
(`dynamic=False`), so each step replays one recorded graph instead of launching hundreds of kernels from Python.
Inductor skips the graphs on CPU, where the mode runs as `default` does.
Compiled code is cached under this node's scratch folder, so only the first actor on a node pays, and can be
shared through storage (`<storage>/compile-cache/<torch version>/<device>.tar`), so a new node fetches it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

from synthray.core import storage
from synthray.core.artifacts import without_legacy
from synthray.core.registry import SynthrayError, unknown_name

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")
# Changing these changes compiled kernels, hence output bits: give such a change a new mode name (it is the key).
INDUCTOR_OPTIONS = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
                    "fx_graph_cache": True}
# What torch.compile's modes set (torch._inductor.list_mode_options), passed as options because torch.compile
# takes a mode or options, not both. max-autotune without CUDA graphs: it is the older, separately keyed mode.
MODE_OPTIONS = {"default": {}, "max-autotune": {"max_autotune": True}, "reduce-overhead": {"triton.cudagraphs": True}}
BY_PIPELINE = "by-pipeline"
CHANNELS_LAST_CHOICES = (BY_PIPELINE, "auto", True, False)  # "auto": the earlier spelling of by-pipeline, still read
# channels_last=by-pipeline: NHWC everywhere (the behaviour before the setting) except the UNets of these pipelines, where it
# was measured slower (BASELINES.md, H200, SD1.5 architecture batch 32 bf16: 5.54 img/s NHWC against 6.18 NCHW).
CHANNELS_LAST_SLOWER = ("StableDiffusionPipeline",)
# Pipelines where diffusers' fused QKV changes the computation: the pipeline's own method (SD, SDXL: UNet and VAE),
# or a denoiser whose processors use the fused weights (SD3, PixArt, FLUX). Elsewhere fusing is a no-op, so the
# setting stays out of those keys.
FUSED_QKV_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
                       "PixArtAlphaPipeline", "PixArtSigmaPipeline", "FluxPipeline")
COMPILE_CACHE_CHOICES = ("storage", "node")
MAX_SHARED_CACHE = 2 * 2**30  # bytes; a larger cache stays on its node rather than fill memory and storage


def compile_mode(value: Any) -> str | None:
    """`generation.compile` as a mode name, or None for off. `true` (older configs) means `default`."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if value in COMPILE_MODES:
        return str(value)
    raise SynthrayError(f"generation.compile must be false, true, {', '.join(COMPILE_MODES[:-1])} or {COMPILE_MODES[-1]}; "
                        f"got {value!r}")


def channels_last_for(setting: Any, pipeline: str) -> bool:
    if setting not in CHANNELS_LAST_CHOICES or isinstance(setting, int) and not isinstance(setting, bool):
        raise SynthrayError(f"generation.channels_last must be {BY_PIPELINE}, true or false; got {setting!r}")
    return pipeline not in CHANNELS_LAST_SLOWER if setting in (BY_PIPELINE, "auto") else bool(setting)


def fuses_qkv(pipeline: str) -> bool:
    return pipeline in FUSED_QKV_PIPELINES


def check_speed_settings(g: Any) -> None:
    """One line for a bad value, before anything launches."""
    compile_mode(g.get("compile"))
    channels_last_for(g.get("channels_last", True), "")
    if g.get("compile_cache", "storage") not in COMPILE_CACHE_CHOICES:
        raise unknown_name("generation.compile_cache", str(g.get("compile_cache")), COMPILE_CACHE_CHOICES)
    for key in ("compile_vae", "compile_cpu", "fuse_qkv"):
        if not isinstance(g.get(key, False), bool):
            raise SynthrayError(f"generation.{key} must be true or false; got {g.get(key)!r}")


def kernels_identity(g: Any, pipeline: str) -> dict[str, Any]:
    """What a dataset key records of the speed settings: everything that can change low bits of the images.

    Left out: where it runs (`compile_cpu`, the cache). The compile mode is recorded by name (`true` was
    max-autotune before, so it keys differently now); compile_vae and fuse_qkv only when they take effect.
    """
    check_speed_settings(g)
    mode = compile_mode(g.get("compile"))
    kernels = {"vae_tiling": bool(g.vae_tiling), "channels_last": channels_last_for(g.channels_last, pipeline),
               "compile": mode or False}
    extra = {"compile_vae": bool(mode and g.get("compile_vae", False)),
             "fuse_qkv": bool(g.get("fuse_qkv", False) and fuses_qkv(pipeline))}
    return {**kernels, **without_legacy(extra, {"compile_vae": False, "fuse_qkv": False})}


def compile_options(mode: str) -> dict[str, Any]:
    return {**INDUCTOR_OPTIONS, **MODE_OPTIONS[mode]}


def check_cpu_compiler() -> None:
    """CPU inductor builds C++; say so in one line instead of a compiler traceback at the first batch."""
    if not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "g++", "clang++")):
        raise SynthrayError("generation.compile_cpu needs a C++ compiler (g++ or clang++) on PATH")


def speed_up(pipe: Any, spec: dict[str, Any], device: str) -> CompileCache | None:
    """Apply channels_last, fused QKV and compile to a loaded pipeline; returns the compile cache when compiling."""
    import torch

    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if spec.get("channels_last") and device == "cuda" and getattr(pipe, "unet", None) is not None:
        pipe.unet.to(memory_format=torch.channels_last)  # NHWC convolutions on tensor cores (not for every UNet)
    if spec.get("fuse_qkv"):
        fuse_qkv(pipe, denoiser)
    mode = compile_mode(spec.get("compile"))
    if mode is None or denoiser is None or (device != "cuda" and not spec.get("compile_cpu")):
        return None
    if device != "cuda":
        check_cpu_compiler()
    cache = CompileCache.for_spec(spec, device)
    cache.activate()
    options = compile_options(mode)
    # dynamic=False: one graph specialised per batch shape (a smaller last batch compiles once more, then is cached)
    denoiser.forward = _compiled(denoiser.forward, options, mode)
    vae = getattr(pipe, "vae", None)
    if spec.get("compile_vae") and vae is not None:
        # The decoder module, not `vae.decode`: the pipelines pass per-row torch.Generators to decode, which
        # would guard-fail and recompile on every batch.
        target = vae.decoder if hasattr(vae, "decoder") else vae
        target.forward = _compiled(target.forward, options, mode)
    return cache


def _compiled(forward: Any, options: dict[str, Any], mode: str) -> Any:
    """`torch.compile(forward)`. With CUDA graphs (reduce-overhead) each replay writes the same output buffers, so
    a pipeline that calls the module twice and keeps the first output (separate cond and uncond passes: Lumina2,
    true-CFG FLUX and Qwen-Image; tiled VAE decode) would read an overwritten tensor: its outputs are copied
    (exactly) as they come out."""
    import torch
    from torch.utils._pytree import tree_map_only

    compiled = torch.compile(forward, options=options, dynamic=False)
    if mode != "reduce-overhead":
        return compiled

    @functools.wraps(forward)
    def copied(*args: Any, **kwargs: Any) -> Any:
        return tree_map_only(torch.Tensor, torch.clone, compiled(*args, **kwargs))  # diffusers' outputs are pytrees

    return copied


def fuse_qkv(pipe: Any, denoiser: Any) -> None:
    if not fuses_qkv(type(pipe).__name__):
        return  # a no-op elsewhere (see FUSED_QKV_PIPELINES); the key leaves it out for those too
    if hasattr(pipe, "fuse_qkv_projections"):
        pipe.fuse_qkv_projections()  # SD/SDXL: UNet and VAE attention, with diffusers' fused processor
    else:
        denoiser.fuse_qkv_projections()


class CompileCache:
    """Inductor's caches (FX graphs, kernels, autotuning) in `<scratch>/compile-cache/torch-<version>`, optionally
    shared as one tar in storage per torch version and device. Best effort: a cache never fails a generation."""

    def __init__(self, local: Path, remote: str | None):
        self.local, self.remote = Path(local), remote
        self.published = remote is None

    @classmethod
    def for_spec(cls, spec: dict[str, Any], device: str) -> CompileCache:
        import torch

        scratch = spec.get("scratch") or str(storage.scratch_dir(None))
        version = f"torch-{torch.__version__}"
        local = Path(scratch) / "compile-cache" / version
        tag = re.sub(r"[^A-Za-z0-9._-]+", "_", torch.cuda.get_device_name() if device == "cuda" else "cpu")
        shared = spec.get("compile_cache", "storage") == "storage" and spec.get("storage")
        return cls(local, storage.join(spec["storage"], "compile-cache", version, f"{tag}.tar") if shared else None)

    def activate(self) -> None:
        """Point inductor at the local folder (read at each use, so setting it before the first compile is enough)."""
        storage.ensure_dir(self.local)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.local)
        if self.remote:
            with self._lock():
                self._fetch()

    def _fetch(self) -> None:
        marker = self.local / ".synthray-fetched"
        if marker.exists():
            return  # another actor on this node fetched it already
        try:
            if storage.exists(self.remote):
                with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(self.remote))) as tar:
                    tar.extractall(self.local, filter="data")
                log.info("compile cache: fetched %s", self.remote)
        except Exception as err:  # noqa: BLE001  (a missing or broken cache means compiling, not failing)
            log.warning("compile cache: could not fetch %s (%s); compiling from scratch", self.remote, err)
        marker.touch()

    def publish(self) -> None:
        """After the first batch (when the graphs are compiled): upload this node's cache unless one is there."""
        if self.published:
            return
        self.published = True
        try:
            if storage.exists(self.remote):
                return
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                for path in sorted(self.local.rglob("*")):
                    if path.is_file() and not path.name.startswith(".synthray"):
                        tar.add(path, arcname=path.relative_to(self.local).as_posix())
            if buffer.tell() > MAX_SHARED_CACHE:
                log.warning("compile cache: %.1f GiB is too large to share; it stays on this node", buffer.tell() / 2**30)
                return
            storage.write_bytes(self.remote, buffer.getvalue())
            log.info("compile cache: published %s (%.0f MiB)", self.remote, buffer.tell() / 2**20)
        except Exception as err:  # noqa: BLE001  (e.g. a file that inductor replaced while it was being read)
            log.warning("compile cache: could not publish %s (%s)", self.remote, err)

    @contextlib.contextmanager
    def _lock(self):
        """One fetch per node: the other actors wait for it, then see the marker."""
        import fcntl

        with open(self.local / ".synthray-lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
