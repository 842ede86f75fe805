"""The VAE re-encode control, `vae-reencode:<generator>`: real images encoded by a generator's VAE, a latent sampled,
and decoded. Its Synth->Real beside Real->Real on the same images, untouched, isolates what that VAE alone does to
training data. `generation.reencode_split` says which images: `train`, the whole real training split, each image
once, beside the real model trained on exactly those (the study's); `control`, the prompt table's rows drawn from
the held-out split, beside `real-holdout` (synthray's earlier control, experiment=paper-controls-holdout).

It follows the study's `gen/vae_reencode.py` and `gen/t2i_vae_pipelines.py`
(Bill2462/When-Pretty-Isn-t-Useful-codebase): per image, the pipeline's image processor prepares it,
`vae.encode(...).latent_dist.sample()` draws a latent, `vae.decode` decodes it unscaled, and the image processor
turns the result back into an image.

- Pre/post-processing is the source pipeline's own image processor: resize down to a multiple of its factor
  (a no-op when the size divides), scale to [-1, 1]; then back to [0, 1], rounded as diffusers' `numpy_to_pil`.
- The latent is sampled from the posterior (not its mode), with a CPU `torch.Generator` seeded by the row's seed,
  so the noise is the same on any device and in any batch (the study's `sample()` took the global RNG).
- The sampled latent is decoded as is. The study applies no scaling/shift factor (those lines are commented out):
  the pipelines scale latents only for the denoiser, and scaling then unscaling is the identity, so skipping both
  is exact where a round trip would only add float error.
- dtype: the study's float16 on GPU, float32 for SDXL (its VAE overflows in float16; the study loads it in
  float32 too) and for sources that run in float32 (tiny twins). CPU runs use float32, as every generator does.

Per family (the VAE class is read from the source's `model_index.json`):
- AutoencoderKL (SD 1.x/2.x, SDXL, PixArt: 4 channels; SD3, FLUX, Lumina2: 16 channels): as above.
- AutoencoderDC (Sana): its encoder is deterministic (`EncoderOutput.latent`, no `latent_dist`; the study's
  `.latent_dist` line fails on it), so the latent is the encoder's output and the row's seed is unused.
- AutoencoderKLQwenImage (Qwen-Image): a video VAE; images get a one-frame axis, (B, 3, 1, H, W), as the Qwen
  pipeline does, and the frame is dropped after decoding. latents_mean/std normalise latents for the denoiser
  only and are skipped like the other families' factors. (The study's `self.pipe.vae(image).latent_dist` fails.)
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthray.core.registry import SynthrayError, unknown_name
from synthray.generation.controls import RealHoldoutGenerator, SplitImages

PREFIX = "vae-reencode:"
# The study keeps the SDXL VAE in float32 (float16 overflows to NaN in it) and runs every other VAE in float16.
FLOAT32_PIPELINES = ("StableDiffusionXLPipeline",)
VIDEO_VAES = ("AutoencoderKLQwenImage", "AutoencoderKLWan")  # (B, C, frames, H, W) in and out


def reencode_entry(zoo: Any, name: str, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """The generator entry of `vae-reencode:<generator>`, or of a zoo entry `{kind: vae-reencode, source: <generator>}`:
    the source's model, pipeline and resolution (tiny twins are built at it), and the VAE's dtype. `zoo`: the
    generator entries by name (`generators`)."""
    entry = dict(entry) if entry is not None else {"kind": "vae-reencode", "source": name[len(PREFIX):], "released": None}
    source = str(entry.get("source") or "")
    diffusers_names = [n for n, e in zoo.items() if e.get("kind") == "diffusers"]
    if source not in zoo:
        raise SynthrayError(f"{name}: {unknown_name('generator', source, diffusers_names)}")
    src = dict(zoo[source])
    if src.get("kind") != "diffusers":
        raise SynthrayError(f"{name}: {source} is a {src.get('kind')} generator and has no VAE; "
                            f"vae-reencode takes a diffusers generator ({', '.join(sorted(diffusers_names))})")
    if "dtype" not in entry:
        keep32 = src["dtype"] == "float32" or src["pipeline"] in FLOAT32_PIPELINES
        entry["dtype"] = "float32" if keep32 else "float16"
    entry.update(source=source, model=src["model"], pipeline=src["pipeline"], resolution=src["resolution"])
    if src.get("gated"):  # the same repository: its download needs the same token
        entry.setdefault("gated", True)
    entry.setdefault("released", None)
    return entry


def load_vae(folder: str, dtype: Any) -> Any:
    """Only the VAE of the pipeline saved in `folder`: its class from `model_index.json`, then `from_pretrained`."""
    import diffusers

    index = json.loads((Path(folder) / "model_index.json").read_text())
    if not index.get("vae"):
        raise SynthrayError(f"{folder}: the pipeline has no vae component (model_index.json)")
    cls = getattr(diffusers, index["vae"][1])
    return cls.from_pretrained(folder, subfolder="vae", dtype=dtype)


def image_processor(pipeline: str, vae: Any) -> Any:
    """The image processor `pipeline` would make for `vae` (the study calls `pipe.image_processor`).

    The pipeline object holds the VAE and None for every other component: diffusers pipelines take None for
    components they are not given, so no text encoder or denoiser is loaded, and the processor (its class and
    resize multiple, e.g. FLUX's 2x packing) comes from the pipeline's own `__init__`.
    """
    import diffusers

    cls = getattr(diffusers, pipeline)
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {n: None for n, p in params.items()
                              if n not in ("self", "vae") and p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD}
    if "requires_safety_checker" in params:
        kwargs["requires_safety_checker"] = False  # no safety checker is loaded; say so, so nothing warns
    return cls(vae=vae, **kwargs).image_processor


class VaeReencodeGenerator:
    """Each row's real image through the source's VAE, on the actor's device: with `reencode_split: train`, the
    training image the row names (`controls.split_rows`); otherwise the row's real-holdout image (the same row ->
    image assignment as real-holdout).

    Spec keys: control_uri (the real split it draws: control, or train), model_path (the source pipeline's folder),
    pipeline, dtype, reencode_split (absent: control).
    """

    def __init__(self, spec: dict[str, Any]):
        import torch

        whole = spec.get("reencode_split") == "train"
        self.reals = SplitImages(spec["control_uri"]) if whole else RealHoldoutGenerator(spec)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = getattr(torch, spec["dtype"]) if self.device == "cuda" else torch.float32
        self.vae = load_vae(spec["model_path"], self.dtype).to(self.device).eval()
        self.video = type(self.vae).__name__ in VIDEO_VAES
        self.processor = image_processor(spec["pipeline"], self.vae)

    def __call__(self, rows: pd.DataFrame) -> list[np.ndarray]:
        """Float images (H, W, 3) in [0, 1], one per row, each the input's size when the VAE's factor divides it;
        NaNs are kept for the quality guard to see."""
        reals = self.reals(rows)
        seeds = [int(s) for s in rows["seed"]]
        out: list[np.ndarray | None] = [None] * len(reals)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(reals):  # real images are stored square at one size; group in case they are not
            by_size.setdefault(image.size, []).append(i)
        for idx in by_size.values():
            for i, image in zip(idx, self._reencode([reals[i] for i in idx], [seeds[i] for i in idx])):
                out[i] = image
        return out  # type: ignore[return-value]

    def _reencode(self, images: list, seeds: list[int]) -> np.ndarray:
        """PIL images of one size -> float array (N, H, W, 3) in [0, 1]."""
        torch = self.torch
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]  # noise independent of device and batch
        with torch.inference_mode():
            x = self.processor.preprocess(images).to(self.device, dtype=self.dtype)  # (N, 3, H, W) in [-1, 1]
            if self.video:
                x = x.unsqueeze(2)  # one frame
            encoded = self.vae.encode(x)
            dist = getattr(encoded, "latent_dist", None)
            latent = dist.sample(generator=generators) if dist is not None else encoded.latent  # DC-AE: deterministic
            decoded = self.vae.decode(latent, return_dict=False)[0]
            if self.video:
                decoded = decoded[:, :, 0]
            return self.processor.postprocess(decoded, output_type="np")
