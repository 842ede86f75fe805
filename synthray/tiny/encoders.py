"""`tiny:clip`, `tiny:dinov2`, `tiny:inception`: offline twins of the feature encoders, with random weights, in the
on-disk format each real checkpoint uses (transformers `save_pretrained`, timm `save_for_hf`)."""

from __future__ import annotations

from pathlib import Path

import torch

from synthray.core.registry import unknown_name
from synthray.metrics.encoders import IMAGENET_MEAN, IMAGENET_STD, TINY_TIMM_ARCH


def _tiny_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from synthray.tiny.tokenizers import write_clip_tokenizer

    vocab = write_clip_tokenizer(folder)  # byte-level BPE without merges; ids <|startoftext|>=V-2, <|endoftext|>=V-1
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    ids = dict(bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    text = dict(layers, **ids, vocab_size=vocab, max_position_embeddings=77)
    config = CLIPConfig(text_config=text, vision_config=dict(layers, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    # CLIP's own transform at 32 px: shortest edge to the input size, then a center crop
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


def _tiny_dinov2(folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    Dinov2Model(config).save_pretrained(folder, safe_serialization=True)
    # DINOv2's resize 256 / crop 224, scaled to 36 / 32
    norm = dict(image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, **norm).save_pretrained(folder)


def _tiny_timm(folder: Path) -> None:
    import timm
    from timm.models import save_for_hf

    net = timm.create_model(TINY_TIMM_ARCH, pretrained=False, num_classes=0)
    # inception_v3.tv_in1k's transform (bicubic, crop_pct 0.875: 341 -> 299, mean/std 0.5) scaled to 36 -> 32 px
    data = {"input_size": (3, 32, 32), "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    save_for_hf(net, str(folder), safe_serialization=True, data_config=data)


TINY_BUILDERS = {"clip": _tiny_clip, "dinov2": _tiny_dinov2, "inception": _tiny_timm}


def build_tiny_encoder(kind: str, folder: Path, seed: int = 0) -> Path:
    """Write a random-weight encoder of `kind` to `folder` in the on-disk format its real checkpoint uses."""
    if kind not in TINY_BUILDERS:
        raise unknown_name("tiny encoder", kind, TINY_BUILDERS)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # seed the init without moving the caller's RNG
        torch.manual_seed(seed)
        TINY_BUILDERS[kind](folder)
    return folder
