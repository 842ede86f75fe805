"""Speed settings of a diffusers generator: torch.compile, its on-disk cache and time budget, channels_last, fused
QKV and the SDPA attention backend.

Each setting that can change output bits is in the dataset key (`kernels_identity`); a setting left as it was
before it existed stays out of the key (`without_legacy`), so older datasets keep their keys.

Compile scope `regions` (the default) compiles the denoiser block by block: the blocks the model declares as
repeated (`_repeated_blocks`, through diffusers' `compile_repeated_blocks`), then every other block in a module
list (UNet resnets, up/down samplers, DiT blocks of models that declare none). Blocks of one shape share one
compiled graph, so compiling costs a few distinct blocks instead of one graph of the whole network: on an H200
the whole SD1.5 UNet with coordinate-descent tuning had no first shard after 5 min (issue 25). Scope `whole` is
the earlier behaviour, bit for bit: the whole forward compiled, inductor's default mode with the settings
BASELINES.md found fast on an H200 (8.19 img/s against 6.18 eager, 200 s to compile), coordinate descent included;
`max-autotune` (the old mode) was still tuning after 200 s.
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
import threading
import time
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
# Regions leave out coordinate-descent tuning: it benchmarks each kernel's block sizes at compile time (minutes on
# a UNet) for a few percent. It tunes Triton (GPU) kernels only, so CPU compiles are the same without it.
REGION_OPTIONS = {k: v for k, v in INDUCTOR_OPTIONS.items() if k != "coordinate_descent_tuning"}
COMPILE_SCOPES = ("regions", "whole")
# Blocks of one class but of other shapes (a UNet's resnets: ~15 channel/size combinations) each compile once
# more; dynamo's default of 8 per function would leave the rest eager, with a warning.
REGION_RECOMPILE_LIMIT = 64
# generation.attention -> torch.nn.attention.SDPBackend member; default: torch's own choice per call (as before).
ATTENTION_BACKENDS = {"default": None, "flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                      "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}
CPU_ATTENTION = ("default", "math")  # flash, cuDNN and efficient SDPA kernels are CUDA kernels
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


def compile_scope(g: Any, mode: str | None) -> str:
    """The scope that runs: `whole` when nothing compiles, and for reduce-overhead, whose CUDA graphs record the
    whole denoiser as one graph (graphs per block would replay into buffers the next block of that shape reuses)."""
    scope = g.get("compile_scope", "whole")
    if scope not in COMPILE_SCOPES:
        raise unknown_name("generation.compile_scope", str(scope), COMPILE_SCOPES)
    return "whole" if mode in (None, "reduce-overhead") else str(scope)


def compile_timeout(value: Any) -> float | None:
    """`generation.compile_timeout_s` in seconds, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SynthrayError(f"generation.compile_timeout_s must be a number of seconds > 0 or null; got {value!r}")
    return float(value)


def check_attention(name: Any, device: str | None = None) -> str:
    """`generation.attention`, checked against the device when it is known (on the actor)."""
    if name not in ATTENTION_BACKENDS:
        raise unknown_name("generation.attention", str(name), ATTENTION_BACKENDS)
    if device is not None and device != "cuda" and name not in CPU_ATTENTION:
        raise SynthrayError(f"generation.attention={name} needs a CUDA GPU; without one use {' or '.join(CPU_ATTENTION)}")
    return str(name)


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """Where every pipeline call runs: only the SDPA backend `name` allowed (an error if it cannot run a call)."""
    if ATTENTION_BACKENDS[name] is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, ATTENTION_BACKENDS[name]))


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
    compile_scope(g, None)
    compile_timeout(g.get("compile_timeout_s"))
    check_attention(g.get("attention", "default"))


def kernels_identity(g: Any, pipeline: str) -> dict[str, Any]:
    """What a dataset key records of the speed settings: everything that can change low bits of the images.

    Left out: where it runs (`compile_cpu`, the cache) and its time budget. The compile mode is recorded by name
    (`true` was max-autotune before, so it keys differently now); compile_vae and fuse_qkv only when they take
    effect; compile_scope only when it is `regions` (other fusions, no coordinate descent: bits may differ from
    the whole-model compile every key before it recorded); attention only when a backend is forced.
    """
    check_speed_settings(g)
    mode = compile_mode(g.get("compile"))
    kernels = {"vae_tiling": bool(g.vae_tiling), "channels_last": channels_last_for(g.channels_last, pipeline),
               "compile": mode or False}
    extra = {"compile_vae": bool(mode and g.get("compile_vae", False)),
             "fuse_qkv": bool(g.get("fuse_qkv", False) and fuses_qkv(pipeline)),
             "compile_scope": compile_scope(g, mode), "attention": str(g.get("attention", "default"))}
    legacy = {"compile_vae": False, "fuse_qkv": False, "compile_scope": "whole", "attention": "default"}
    return {**kernels, **without_legacy(extra, legacy)}


def compile_options(mode: str, scope: str = "whole") -> dict[str, Any]:
    return {**(INDUCTOR_OPTIONS if scope == "whole" else REGION_OPTIONS), **MODE_OPTIONS[mode]}


def check_cpu_compiler() -> None:
    """CPU inductor builds C++; say so in one line instead of a compiler traceback at the first batch."""
    if not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "g++", "clang++")):
        raise SynthrayError("generation.compile_cpu needs a C++ compiler (g++ or clang++) on PATH")


def speed_up(pipe: Any, spec: dict[str, Any], device: str) -> CompileCache | None:
    """Apply channels_last, fused QKV and compile to a loaded pipeline; returns the compile cache when compiling."""
    import torch

    check_attention(spec.get("attention", "default"), device)
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
    # The spec is the dataset key's: a key without compile_scope was compiled whole (every key before regions).
    scope = compile_scope(spec, mode)
    options = compile_options(mode, scope)
    vae = getattr(pipe, "vae", None)
    # The decoder module, not `vae.decode`: the pipelines pass per-row torch.Generators to decode, which would
    # guard-fail and recompile on every batch.
    targets = [denoiser] + ([vae.decoder if hasattr(vae, "decoder") else vae] if spec.get("compile_vae") and vae is not None else [])
    for target in targets:
        if scope == "regions":
            compile_regions(target, options)
        else:
            # dynamic=False: one graph per batch shape (a smaller last batch compiles once more, then is cached)
            target.forward = _compiled(target.forward, options, mode)
    return cache


def compile_regions(module: Any, options: dict[str, Any]) -> list[Any]:
    """Compile `module`'s blocks in place (`nn.Module.compile`, dynamic=False); returns the compiled blocks.

    The classes the model declares in `_repeated_blocks` go through diffusers' `compile_repeated_blocks`. Then each
    other diffusers block that is an item of a module list (or sequence), holds none of those and is inside none is
    compiled on its own (a UNet's resnets and samplers, a DiT's blocks where none are declared, a VAE decoder's up
    blocks).
    Glue between blocks (embeddings, norms, projections) stays eager: a few ops per step.
    """
    import torch

    declared = set(getattr(module, "_repeated_blocks", None) or ())
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, REGION_RECOMPILE_LIMIT)
    if declared and hasattr(module, "compile_repeated_blocks"):
        module.compile_repeated_blocks(options=options, dynamic=False)
    compiled = [m for m in module.modules() if type(m).__name__ in declared]

    def holds_declared(m: Any) -> bool:
        return any(type(s).__name__ in declared for s in m.modules())

    def visit(m: Any) -> None:
        for child in m.children():
            if type(child).__name__ in declared:
                continue  # compiled above
            block = (isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) and type(child).__module__.startswith("diffusers.")
                     and not holds_declared(child))
            if block:
                child.compile(options=options, dynamic=False)
                compiled.append(child)
            else:
                visit(child)

    visit(module)
    if not compiled:  # nothing block-like (a plain model): compiling it whole is the only compile there is
        module.compile(options=options, dynamic=False)
        compiled.append(module)
    return compiled


def within_budget(call: Any, timeout_s: float | None, what: str) -> Any:
    """`call()` (a pipeline call that compiles), given up after `timeout_s` seconds with one line naming the setting.

    The call runs on a helper thread while this one waits: checking the clock after the call would still wait for
    a compile that never ends, and a signal can neither reach a Ray actor's worker thread nor stop inductor inside
    a C++ compiler. A call past the budget cannot be interrupted, so its thread (a daemon) is left to finish or
    die with the process: the error fails the shard before anything is written, and the failed stage ends its
    actors. The caller's thread-local state (inference mode, the SDPA backend) must be set inside `call`.
    """
    if timeout_s is None:
        return call()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["out"] = call()
        except BaseException as err:  # noqa: BLE001  (re-raised on the waiting thread)
            box["err"] = err

    start = time.monotonic()
    worker = threading.Thread(target=run, name="synthray-compile", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise SynthrayError(f"{what}: compiling took over generation.compile_timeout_s={timeout_s:g} s "
                            f"(gave up after {time.monotonic() - start:.1f} s); raise it, set it to null for no limit, "
                            f"or set generation.compile=false")
    if "err" in box:
        raise box["err"]
    return box["out"]


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
