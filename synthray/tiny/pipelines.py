"""Tiny offline twins of real pipelines: the real diffusers classes, small configs, random weights.

They are saved with `save_pretrained` and loaded back through `from_pretrained`, the same path a hub
checkpoint takes, so every line of the loading and sampling code runs in CI without the network.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from synthray.tiny.families import (
    build_tiny_flux,
    build_tiny_lumina2,
    build_tiny_pixart,
    build_tiny_qwenimage,
    build_tiny_sana,
    build_tiny_sd3,
    build_tiny_sdxl,
)
from synthray.tiny.tokenizers import write_clip_tokenizer


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
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


# tiny_families.py holds the other families' builders; the registry names them here.
TINY_BUILDERS = {
    "sd": build_tiny_sd,
    "sdxl": build_tiny_sdxl,
    "sd3": build_tiny_sd3,
    "flux": build_tiny_flux,
    "pixart": build_tiny_pixart,
    "sana": build_tiny_sana,
    "lumina2": build_tiny_lumina2,
    "qwenimage": build_tiny_qwenimage,
}
