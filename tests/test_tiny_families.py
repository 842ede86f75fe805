"""Tiny offline twins of every pipeline family: build, save, load back through `from_pretrained`, and sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthray.tiny.families import TINY_RESOLUTIONS
from synthray.tiny.pipelines import TINY_BUILDERS

PIPELINES = {
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "pixart": "PixArtAlphaPipeline",
    "sana": "SanaPipeline",
    "lumina2": "Lumina2Pipeline",
    "qwenimage": "QwenImagePipeline",
}
PROMPTS = ["a photo of a cat", "a red truck on a road"]


def _load(family: str, path):
    import diffusers

    cls = getattr(diffusers, PIPELINES[family])
    pipe = cls.from_pretrained(str(path), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return cls, pipe


def _generate(pipe, seeds: tuple[int, int], resolution: int, output_type: str = "pil"):
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(
        prompt=PROMPTS, generator=generators, num_inference_steps=2, guidance_scale=2.0,
        height=resolution, width=resolution, output_type=output_type,
    ).images


def test_importing_tiny_registers_every_family():
    assert set(PIPELINES) | {"sd"} <= set(TINY_BUILDERS)
    assert set(TINY_RESOLUTIONS) == set(PIPELINES)


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_tiny_family_round_trip(family, tmp_path):
    resolution = TINY_RESOLUTIONS[family]
    path = TINY_BUILDERS[family](tmp_path / "pipeline", seed=0, resolution=resolution)
    assert path == tmp_path / "pipeline" and (path / "model_index.json").is_file()

    cls, pipe = _load(family, path)
    assert type(pipe) is cls
    # Reloaded tokenizers keep their full vocabulary, and every id they emit has an embedding row.
    for name, tokenizer in pipe.components.items():
        if name.startswith("tokenizer") and tokenizer is not None:
            encoder = pipe.components[name.replace("tokenizer", "text_encoder")]
            assert 100 < len(tokenizer) <= encoder.get_input_embeddings().num_embeddings, name

    images = _generate(pipe, (1, 2), resolution)
    assert len(images) == 2
    arrays = [np.asarray(im) for im in images]
    for im, arr in zip(images, arrays):
        assert im.size == (resolution, resolution)
        assert arr.std() > 0, "constant image"
    assert not np.array_equal(arrays[0], arrays[1])

    again = [np.asarray(im) for im in _generate(pipe, (1, 2), resolution)]
    for a, b in zip(arrays, again):
        np.testing.assert_array_equal(a, b)

    # Same noise, different prompts: the text actually reaches the denoiser.
    same_noise = _generate(pipe, (3, 3), resolution, output_type="np")
    assert np.abs(same_noise[0] - same_noise[1]).max() > 1e-6


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_tiny_family_weights_follow_the_seed(family, tmp_path):
    from safetensors.torch import load_file

    def denoiser(seed: int, name: str) -> dict[str, torch.Tensor]:
        path = TINY_BUILDERS[family](tmp_path / name, seed=seed, resolution=TINY_RESOLUTIONS[family])
        sub = "unet" if (path / "unet").is_dir() else "transformer"
        return load_file(next((path / sub).glob("*.safetensors")))

    a, b, c = denoiser(0, "a"), denoiser(0, "b"), denoiser(1, "c")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
