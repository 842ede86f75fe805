"""Tiny offline twins of real pipelines: the real diffusers classes, small configs, random weights.

They are saved with `save_pretrained` and loaded back through `from_pretrained`, the same path a hub
checkpoint takes, so every line of the loading and sampling code runs in CI without the network.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

def bytes_to_unicode() -> list[str]:
    """CLIP's reversible byte -> printable-character table (openai/CLIP `bytes_to_unicode`)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(path: Path) -> int:
    """Write an offline CLIP tokenizer (vocab.json + empty merges.txt) to `path`; returns the vocab size."""
    from transformers import CLIPTokenizer

    symbols = bytes_to_unicode()
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)
    # Recent transformers can silently build a 2-token tokenizer offline; refuse to continue if so.
    if len(tok) != len(vocab):
        raise RuntimeError(f"offline CLIP tokenizer has {len(tok)} tokens, expected {len(vocab)}")
    tok.save_pretrained(str(path))
    return len(vocab)


def build_tiny_sd(path: Path, seed: int = 0, resolution: int = 32) -> Path:
    """Build a random-weight `StableDiffusionPipeline` from small configs and save it to `path`.

    Latents are resolution/2 (a 2-level VAE); the UNet follows diffusers' `get_dummy_components`.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # CLIP's byte-level BPE with no merges: every byte is a token, all a random-weight model needs.
    with tempfile.TemporaryDirectory() as tok_dir:
        vocab_size = write_clip_tokenizer(Path(tok_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=resolution // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=vocab_size,
        )
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


TINY_BUILDERS = {"sd": build_tiny_sd}
import synthray.generation.tiny_families  # noqa: E402,F401  (registers the other families)
