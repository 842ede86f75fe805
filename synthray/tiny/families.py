"""Tiny offline twins of the transformer-era pipeline families: real diffusers classes, small configs, random weights.

Configs follow diffusers' own `get_dummy_components()` (tests/pipelines/<family>/), shrunk further where a CPU test
allows, with every tokenizer built in code (`tiny_tokenizers`) instead of fetched from the hub. Every family renders
32 px (`TINY_RESOLUTIONS`); the per-builder docstrings say which other sizes work.

PixArt-alpha and Sana keep the real pipelines' default `use_resolution_binning=True`, which snaps the request to
the aspect-ratio bin of `transformer.config.sample_size` (256 px for PixArt, 512 px for Sana), renders there and
resizes back. Their VAEs are therefore built with the real downsample factors (8 and 32), so a bin is still only
16x16 transformer tokens.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

# Smallest square size each twin renders (all reach 32 px; see the builders for the divisibility rules).
TINY_RESOLUTIONS = {"sdxl": 32, "sd3": 32, "flux": 32, "pixart": 32, "sana": 32, "lumina2": 32, "qwenimage": 32}


def _clip_tokenizer() -> tuple[Any, int]:
    """An offline CLIP tokenizer (byte-level, no merges) and its vocab size."""
    from transformers import CLIPTokenizer

    from synthray.tiny.tokenizers import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as tok_dir:
        vocab_size = write_clip_tokenizer(Path(tok_dir))
        return CLIPTokenizer.from_pretrained(tok_dir), vocab_size


def _clip_config(vocab_size: int, hidden: int, projection: int) -> Any:
    """A 2-layer CLIP text config: 2 layers because SDXL/SD3 read the penultimate hidden state."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, hidden_size=hidden,
        intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=2, num_hidden_layers=2, vocab_size=vocab_size,
        hidden_act="gelu", projection_dim=projection,
    )


def _t5_encoder(vocab_size: int, d_model: int = 32) -> Any:
    """A 2-layer T5 encoder, the shape of hf-internal-testing/tiny-random-t5 but sized to our tokenizer."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def _gemma2_encoder(vocab_size: int, hidden: int) -> Any:
    """A 2-layer Gemma2 encoder (Lumina2 reads the penultimate layer), ids as in `tiny_tokenizers.gemma_tokenizer`."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=4096, pad_token_id=0, eos_token_id=1,
        bos_token_id=2, attn_implementation="eager",
    )
    return Gemma2Model(config).eval()


def _kl_vae(levels: int, latent_channels: int, resolution: int, **extra: Any) -> Any:
    """An `AutoencoderKL` with `levels` blocks, i.e. a 2**(levels-1) downsample factor, and 8-16 channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16)[:levels], layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=resolution, **extra,
    )


def _save(pipe: Any, path: Path) -> Path:
    """Save as safetensors, the way hub checkpoints ship, and return `path`."""
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def build_tiny_sdxl(path: Path, seed: int = 0, resolution: int = 32) -> Path:
    """Random-weight `StableDiffusionXLPipeline` (two CLIP encoders, text_time UNet); resolution % 4 == 0."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, vocab_size = _clip_tokenizer()
    tokenizer_2, _ = _clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(vocab_size, hidden=32, projection=32))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(vocab_size, hidden=32, projection=32))
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=resolution // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six micro-conditioning ids + text_encoder_2's projection
        cross_attention_dim=64,  # both encoders' hidden states, concatenated
        norm_num_groups=8,
    )
    vae = _kl_vae(2, 4, resolution)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    return _save(pipe, path)


def build_tiny_sd3(path: Path, seed: int = 0, resolution: int = 32) -> Path:
    """Random-weight `StableDiffusion3Pipeline` (2x CLIP + T5, MMDiT, patch 2, VAE /2); resolution % 4 == 0."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from synthray.tiny.tokenizers import check_vocab, t5_tokenizer

    tokenizer, vocab_size = _clip_tokenizer()
    tokenizer_2, _ = _clip_tokenizer()
    tokenizer_3 = t5_tokenizer()
    torch.manual_seed(seed)
    # The two CLIP hidden states (16 + 16) are zero-padded up to T5's width (32), the joint attention dim.
    text_encoder = CLIPTextModelWithProjection(_clip_config(vocab_size, hidden=16, projection=16))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(vocab_size, hidden=16, projection=16))
    text_encoder_3 = _t5_encoder(len(tokenizer_3), d_model=32)
    check_vocab(tokenizer_3, encoder_vocab=text_encoder_3.config.vocab_size)
    transformer = SD3Transformer2DModel(
        sample_size=resolution // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
        pooled_projection_dim=32,  # the two CLIP projections, concatenated
    )
    vae = _kl_vae(2, 4, resolution, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    return _save(pipe, path)


def build_tiny_flux(path: Path, seed: int = 0, resolution: int = 32) -> Path:
    """Random-weight `FluxPipeline` (CLIP + T5, guidance-embedded like FLUX.1-dev, VAE /2); resolution % 4 == 0."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from synthray.tiny.tokenizers import check_vocab, t5_tokenizer

    tokenizer, vocab_size = _clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(vocab_size, hidden=32, projection=32))
    text_encoder_2 = _t5_encoder(len(tokenizer_2), d_model=32)
    check_vocab(tokenizer_2, encoder_vocab=text_encoder_2.config.vocab_size)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16,  # 4 latent channels packed 2x2
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )
    vae = _kl_vae(2, 4, resolution, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15
    )
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, transformer=transformer,
    )
    return _save(pipe, path)


def build_tiny_pixart(path: Path, seed: int = 0, resolution: int = 32) -> Path:
    """Random-weight `PixArtAlphaPipeline` (T5 + DiT, VAE /8); any resolution, rendered in the 256 px bins.

    `resolution` does not change the weights: binning, not the checkpoint, decides the render size.
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    from synthray.tiny.tokenizers import check_vocab, t5_tokenizer

    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _t5_encoder(len(tokenizer), d_model=32)
    check_vocab(tokenizer, encoder_vocab=text_encoder.config.vocab_size)
    transformer = PixArtTransformer2DModel(
        sample_size=32,  # must be 32/64/128 for resolution binning; 32 is PixArt-256's latent grid
        num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8,  # learned sigma: eps and variance
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=_kl_vae(4, 4, 256), transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )
    return _save(pipe, path)


def build_tiny_sana(path: Path, seed: int = 0, resolution: int = 32) -> Path:
    """Random-weight `SanaPipeline` (Gemma2 + linear-attention DiT, DC-AE /32); any resolution, 512 px bins.

    `resolution` does not change the weights: binning, not the checkpoint, decides the render size.
    """
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    from synthray.tiny.tokenizers import check_vocab, gemma_tokenizer

    tokenizer = gemma_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _gemma2_encoder(len(tokenizer), hidden=16)
    check_vocab(tokenizer, encoder_vocab=text_encoder.config.vocab_size)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=16,
        sample_size=16,  # must be 16/32/64/128 for resolution binning; 16 is Sana-512's latent grid
    )
    # Six levels give the real DC-AE's /32; attention only in the deepest (cheapest) level.
    blocks = ("ResBlock",) * 5 + ("EfficientViTBlock",)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=blocks, decoder_block_types=blocks,
        encoder_block_out_channels=(4, 4, 8, 8, 8, 8), decoder_block_out_channels=(4, 4, 8, 8, 8, 8),
        encoder_qkv_multiscales=((),) * 5 + ((5,),), decoder_qkv_multiscales=((),) * 5 + ((5,),),
        encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6, downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
    )
    pipe = SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    return _save(pipe, path)


def build_tiny_lumina2(path: Path, seed: int = 0, resolution: int = 32) -> Path:
    """Random-weight `Lumina2Pipeline` (Gemma2 + NextDiT); the pipeline fixes VAE /8 and patch 2: resolution % 16 == 0."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    from synthray.tiny.tokenizers import check_vocab, gemma_tokenizer

    tokenizer = gemma_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _gemma2_encoder(len(tokenizer), hidden=16)
    check_vocab(tokenizer, encoder_vocab=text_encoder.config.vocab_size)
    transformer = Lumina2Transformer2DModel(
        sample_size=resolution // 8, patch_size=2, in_channels=4, hidden_size=16, num_layers=1, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
        scaling_factor=1.0, axes_dim_rope=(4, 2, 2),  # sums to the head dim, 16 / 2
        cap_feat_dim=16,
    )
    vae = _kl_vae(4, 4, resolution, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = Lumina2Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=6.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer,
    )
    return _save(pipe, path)


def build_tiny_qwenimage(path: Path, seed: int = 0, resolution: int = 32) -> Path:
    """Random-weight `QwenImagePipeline` (Qwen2.5-VL + MMDiT, Wan-style VAE /4, 2x2 packing); resolution % 8 == 0."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from synthray.tiny.tokenizers import QWEN_SPECIALS, check_vocab, qwen2_tokenizer

    tokenizer = qwen2_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "rope_theta": 1000000.0,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        # Vision markers point into our vocab; prompts are text-only, so they are never looked up.
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    check_vocab(tokenizer, encoder_vocab=config.text_config.vocab_size)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4,  # 4 latent channels packed 2x2
        num_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),  # sums to attention_head_dim
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=transformer,
    )
    return _save(pipe, path)

