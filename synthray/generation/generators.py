"""Generators: a name in the zoo (`conf/generators.yaml`) resolved to something that turns prompt rows into images.

Kinds:
- `diffusers`: any diffusers pipeline class, loaded with `from_pretrained` from a hub id, a local path, or a
  tiny offline twin (`model: tiny:<family>`) that was saved to disk the same way.
- `real-holdout` (`controls.py`): a control that "generates" by drawing held-out real training images of the prompted class.
- `collapsed` (`controls.py`): a mode-collapse control: a few held-out real prototypes per class, repeated with jitter.
- `vae-reencode` (`reencode.py`): held-out real images through a diffusers generator's VAE: `vae-reencode:<generator>`.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from synthray.generation.compiled import check_speed_settings, speed_up
from synthray.generation.controls import CollapsedGenerator, RealHoldoutGenerator
from synthray.generation.reencode import PREFIX as REENCODE_PREFIX, VaeReencodeGenerator, reencode_entry
from synthray.registry import Registry, SynthrayError, unknown_name

GENERATOR_KINDS = Registry("generator kind")
PROTOCOLS = ("model-default", "paper")


def generator_entry(cfg: Any, name: str) -> dict[str, Any]:
    """The zoo entry for `name` (a plain dict), or a one-line error listing the zoo. A set `generation.dtype`
    replaces every model's dtype (e.g. bfloat16 for all, where the study ran SD1.x/2.x/XL in float16)."""
    entry = _zoo_entry(cfg, name)
    dtype = OmegaConf.select(cfg, "generation.dtype", default=None)
    if dtype and "dtype" in entry:
        entry["dtype"] = str(dtype)
    return entry


def _zoo_entry(cfg: Any, name: str) -> dict[str, Any]:
    if name not in cfg.generators and name.startswith(REENCODE_PREFIX):
        return reencode_entry(cfg, name)  # vae-reencode:<generator>, made from the source's entry
    if name not in cfg.generators:
        raise unknown_name("generator", name, [*cfg.generators.keys(), f"{REENCODE_PREFIX}<generator>"])
    entry = dict(cfg.generators[name])
    GENERATOR_KINDS.get(entry.get("kind"))  # an unknown kind is a zoo typo
    return reencode_entry(cfg, name, entry) if entry["kind"] == "vae-reencode" else entry


def sampling_params(entry: dict[str, Any], protocol: str, overrides: Any = None) -> dict[str, Any]:
    """Steps, guidance and resolution (and scheduler, when one is set) under a protocol: the model's own, or the
    study's (CFG 2, 50 steps, 512px). `overrides` is the `generation` section (or a dict): its non-null
    `guidance`, `steps` and `scheduler` replace the generator's, the way a grid axis sweeps them."""
    if protocol not in PROTOCOLS:
        raise unknown_name("generation protocol", protocol, PROTOCOLS)
    if entry["kind"] != "diffusers":
        return {}
    if overrides is not None and "compile" in overrides:  # the generation section: its speed settings, checked early
        check_speed_settings(overrides)
    params: dict[str, Any] = {"steps": int(entry["steps"]), "guidance": float(entry["guidance"]), "resolution": int(entry["resolution"])}
    if protocol == "paper" and not str(entry["model"]).startswith("tiny:"):
        # gen/gen_images.py: 50 steps, CFG 2.0 and 512 px for every model; turbo/schnell run 4 steps at CFG 0.0.
        # An entry's `paper` mapping holds its exceptions (SDXL-Turbo: no size passed, the model's own).
        few = entry.get("distilled", False)
        params = {"steps": 4 if few else 50, "guidance": 0.0 if few else 2.0, "resolution": 512}
        exceptions = dict(entry.get("paper") or {})
        if set(exceptions) - set(params):
            raise SynthrayError(f"generator paper exceptions may set {', '.join(params)}; got {', '.join(sorted(set(exceptions) - set(params)))}")
        params.update(exceptions)
    if entry.get("scheduler"):
        params["scheduler"] = str(entry["scheduler"])
    for key, kind in (("guidance", float), ("steps", int), ("scheduler", str)):
        value = (overrides or {}).get(key)
        if value is None:
            continue
        if kind is not str and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or
                                (kind is int and (value != int(value) or value < 1))):
            raise SynthrayError(f"generation.{key} must be a {'whole number >= 1' if kind is int else 'number >= 0'}, got {value!r}")
        params[key] = kind(value)
    if "scheduler" in params:
        check_scheduler(params["scheduler"])
    return params


def check_scheduler(name: str) -> None:
    """A diffusers scheduler class name, or a one-line error listing them."""
    import diffusers

    known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("_"))
    if name not in known:
        raise unknown_name("scheduler", name, known)


@GENERATOR_KINDS.register("diffusers")
class DiffusersGenerator:
    """A diffusers pipeline on the actor's device. Seeds are CPU generators, so noise is device-independent.

    Spec keys: pipeline, model_path, dtype, params (steps, guidance, resolution), and optional guidance_kwarg,
    call (extra call kwargs), cpu_offload, vae_tiling, and the speed settings of `compiled.speed_up`:
    channels_last, fuse_qkv, compile (a mode), compile_vae, compile_cpu, compile_cache, scratch, storage.
    """

    def __init__(self, spec: dict[str, Any]):
        import diffusers
        import torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # bf16/fp16 on CPU is slow and poorly supported; tiny and CPU runs use fp32.
        dtype = getattr(torch, spec["dtype"]) if self.device == "cuda" else torch.float32
        cls = getattr(diffusers, spec["pipeline"])
        kwargs: dict[str, Any] = {"dtype": dtype}
        if spec.get("variant"):
            kwargs["variant"] = spec["variant"]  # e.g. SDXL's fp16 weight files, as the study loads them
        if "safety_checker" in inspect.signature(cls.__init__).parameters:
            kwargs.update(safety_checker=None, requires_safety_checker=False)  # study: raw model output
        pipe = cls.from_pretrained(spec["model_path"], **kwargs)
        if spec.get("cpu_offload") and self.device == "cuda":
            pipe.enable_model_cpu_offload()  # a large model on a small GPU: modules visit the GPU in turn
        else:
            pipe.to(self.device)
        if spec.get("vae_tiling"):
            pipe.vae.enable_tiling()
        # channels_last, fused QKV, torch.compile (and its node cache), each as the spec (the dataset key) says
        self.compile_cache = speed_up(pipe, spec, self.device)
        if spec["params"].get("scheduler"):  # same schedule settings, another sampler (the study's SD2.x; a grid axis)
            pipe.scheduler = getattr(diffusers, spec["params"]["scheduler"]).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.params = spec["params"]
        self.call = dict(spec.get("call") or {})
        self.guidance_kwarg = spec.get("guidance_kwarg") or "guidance_scale"
        self.copy_stream = None  # CUDA: where `launch` copies finished images to the host
        self.compile = spec.get("compile")  # its mode sizes `auto_batch_size`'s headroom

    def _call_kwargs(self, rows: pd.DataFrame, steps: int | None = None) -> dict[str, Any]:
        torch = self.torch
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in rows["seed"]]
        p = self.params
        call = dict(self.call)
        for key in ("negative_prompt",):  # per-image lists, so batched calls line up with prompts
            if isinstance(call.get(key), str):
                call[key] = [call[key]] * len(rows)
        if p["resolution"] is not None:  # None: pass no size, the pipeline uses the model's own (the study's SDXL-Turbo)
            call.update(height=p["resolution"], width=p["resolution"])
        return dict(prompt=list(rows["prompt"]), generator=generators, num_inference_steps=steps or p["steps"],
                    **{self.guidance_kwarg: p["guidance"]}, **call)

    def __call__(self, rows: pd.DataFrame) -> list[np.ndarray]:
        """Float images (H, W, 3) in [0, 1], one per row; NaNs are kept for the quality guard to see."""
        with self.torch.inference_mode():
            out = self.pipe(**self._call_kwargs(rows), output_type="np")
        if self.compile_cache is not None:
            self.compile_cache.publish()  # once, after the first batch compiled the graphs
        return [np.asarray(im, dtype=np.float32) for im in out.images]

    def launch(self, rows: pd.DataFrame) -> Callable[[], list[np.ndarray]]:
        """Run the pipeline and return at once with `__call__`'s images still to fetch: a function that waits for them.

        The pipeline stops at the denormalised tensor (output_type="pt") and its copy to pinned host memory is
        queued on a side stream, so this thread can launch the next batch while the copy runs. The fetch (on the
        stage's encoding thread) does what diffusers' "np" output does on the host: the same floats, the same bytes.
        """
        torch = self.torch
        with torch.inference_mode():
            images = self.pipe(**self._call_kwargs(rows), output_type="pt").images
            if self.compile_cache is not None:
                self.compile_cache.publish()
            if not isinstance(images, torch.Tensor):  # a pipeline without a tensor output: already on the host
                return lambda: [np.asarray(im, dtype=np.float32) for im in images]
            done = None
            if images.is_cuda:
                self.copy_stream = self.copy_stream or torch.cuda.Stream()
                self.copy_stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self.copy_stream):
                    host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
                    host.copy_(images, non_blocking=True)
                    done = torch.cuda.Event()
                    done.record(self.copy_stream)
                images.record_stream(self.copy_stream)  # its memory is not reused before the copy is done
            else:
                host = images

        def fetch() -> list[np.ndarray]:
            if done is not None:
                done.synchronize()
            with torch.inference_mode():
                array = host.permute(0, 2, 3, 1).float().numpy()  # diffusers' pt_to_numpy, minus its device copy
            return [np.asarray(im, dtype=np.float32) for im in array]

        return fetch

    def auto_batch_size(self, share: float = 1.0, shard: int | None = None) -> tuple[int, dict[str, float]]:
        """`generation.batch_size=auto` on CUDA: a short probe batch measures the peak memory each image adds, and
        `choose_batch` takes the largest batch that fits what is free. Returns the batch and the figures."""
        from synthray.generation.compiled import compile_mode
        from synthray.generation.throughput import HEADROOM, PROBE_IMAGES, available_gpu_bytes, choose_batch

        torch = self.torch
        cuda = torch.cuda
        cuda.synchronize()
        available = available_gpu_bytes(*cuda.mem_get_info(), cuda.memory_reserved(), cuda.memory_allocated(), share)
        rows = pd.DataFrame({"prompt": ["a probe"] * PROBE_IMAGES, "seed": range(PROBE_IMAGES)})
        cuda.reset_peak_memory_stats()
        before = cuda.memory_allocated()
        # Eager, two steps: a compiled denoiser would compile a graph for the probe's shape alone; a step's peak
        # repeats every step, and the VAE decode runs once either way.
        stance = getattr(torch.compiler, "set_stance", None)
        with stance("force_eager") if stance else contextlib.nullcontext(), torch.inference_mode():
            self.pipe(**self._call_kwargs(rows, steps=min(2, int(self.params["steps"]))), output_type="pt")
        cuda.synchronize()
        per_image = (cuda.max_memory_allocated() - before) / PROBE_IMAGES
        cuda.empty_cache()  # CUDA graphs' private pool cannot reuse the blocks the probe leaves cached
        # CUDA graphs hold the graphed module's peak in their own pool, next to the eager parts' (the VAE decode):
        # about twice what one eager peak needs, so half the budget.
        headroom = 0.5 if compile_mode(self.compile) == "reduce-overhead" else HEADROOM
        batch = choose_batch(available, per_image, headroom=headroom, shard=shard)
        return batch, {"available_gib": available / 2**30, "per_image_gib": per_image / 2**30}


# The controls and vae-reencode live in modules of their own, below this one; the registry names them here.
GENERATOR_KINDS.register("real-holdout")(RealHoldoutGenerator)
GENERATOR_KINDS.register("collapsed")(CollapsedGenerator)
GENERATOR_KINDS.register("vae-reencode")(VaeReencodeGenerator)


def build_generator(spec: dict[str, Any]) -> Any:
    return GENERATOR_KINDS.get(spec["kind"])(spec)
