"""The `diffusers` generator kind's worker: any diffusers pipeline class, loaded with `from_pretrained` from a hub
id, a local path, or a tiny offline twin (`model: tiny:<family>`) that was saved to disk the same way. The kinds
themselves, and the zoo lookup, are records in `kinds.py`."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from synthray.generation.compiled import attention_backend, compile_timeout, speed_up, within_budget

log = logging.getLogger(__name__)


class DiffusersGenerator:
    """A diffusers pipeline on the actor's device. Seeds are CPU generators, so noise is device-independent.

    Spec keys: pipeline, model_path, dtype, params (steps, guidance, resolution), and optional guidance_kwarg,
    call (extra call kwargs), cpu_offload, vae_tiling, and the speed settings of `compiled.speed_up`:
    channels_last, fuse_qkv, compile (a mode), compile_scope, compile_vae, compile_cpu, compile_cache,
    compile_timeout_s, attention, scratch, storage.
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
        self.name = spec.get("name", spec["pipeline"])
        self.attention = str(spec.get("attention", "default"))  # checked against the device in `speed_up`
        self.compile_timeout_s = compile_timeout(spec.get("compile_timeout_s"))
        self.compiled_batches: set[int] = set()  # batch sizes whose graphs are compiled (dynamic=False: one per size)

    def _pipe(self, kwargs: dict[str, Any], output_type: str) -> Any:
        """The pipeline call, under the attention backend. With a compiled denoiser, a call at a batch size not seen
        before compiles (dynamic=False), so it runs within `compile_timeout_s` (`within_budget`)."""
        torch = self.torch

        def call() -> Any:
            with attention_backend(self.attention), torch.inference_mode():  # per thread: set on the one that runs
                return self.pipe(**kwargs, output_type=output_type)

        size = len(kwargs["prompt"])
        if self.compile_cache is None or size in self.compiled_batches:
            return call()
        budget = "no limit" if self.compile_timeout_s is None else f"up to {self.compile_timeout_s:g} s"
        log.info("generate %s: compiling for batch %d (%s, generation.compile_timeout_s)", self.name, size, budget)
        out = within_budget(call, self.compile_timeout_s, f"generate {self.name}")
        self.compiled_batches.add(size)
        return out

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
        out = self._pipe(self._call_kwargs(rows), "np")
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
            images = self._pipe(self._call_kwargs(rows), "pt").images
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
        with stance("force_eager") if stance else contextlib.nullcontext(), attention_backend(self.attention), torch.inference_mode():
            self.pipe(**self._call_kwargs(rows, steps=min(2, int(self.params["steps"]))), output_type="pt")
        cuda.synchronize()
        per_image = (cuda.max_memory_allocated() - before) / PROBE_IMAGES
        cuda.empty_cache()  # CUDA graphs' private pool cannot reuse the blocks the probe leaves cached
        # CUDA graphs hold the graphed module's peak in their own pool, next to the eager parts' (the VAE decode):
        # about twice what one eager peak needs, so half the budget.
        headroom = 0.5 if compile_mode(self.compile) == "reduce-overhead" else HEADROOM
        batch = choose_batch(available, per_image, headroom=headroom, shard=shard)
        return batch, {"available_gib": available / 2**30, "per_image_gib": per_image / 2**30}
