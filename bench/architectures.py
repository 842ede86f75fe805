"""Real generator architectures with random weights, saved with `save_pretrained` for the GPU benches: the compute
of the real checkpoints (SD1.5, SDXL base, FLUX.1-dev) without hub downloads."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def build_sd15_architecture(path: Path) -> Path:
    """The SD1.5 UNet (860M), 4-level VAE and 12-layer CLIP text model, random weights, saved for from_pretrained."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from synthray.tiny.tokenizers import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as tok_dir:
        vocab = write_clip_tokenizer(Path(tok_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                        vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    return path


def _clip_text(vocab: int, hidden: int, layers: int, heads: int, act: str, projection: bool = False) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=heads, num_hidden_layers=layers,
                            hidden_act=act, projection_dim=hidden, vocab_size=vocab, bos_token_id=vocab - 2,
                            eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _tokenizer() -> tuple:
    from transformers import CLIPTokenizer

    from synthray.tiny.tokenizers import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as tok_dir:
        vocab = write_clip_tokenizer(Path(tok_dir))
        return CLIPTokenizer.from_pretrained(tok_dir), vocab


def _save_bf16(pipe, path: Path) -> Path:
    """Weights stored in bf16, as run: half the disk and load time of float32 (FLUX is 12B + 4.7B parameters)."""
    pipe.to(torch.bfloat16).save_pretrained(str(path))
    return path


def build_sdxl_architecture(path: Path) -> Path:
    """SDXL base 1.0: the 2.6B UNet (text_time conditioning), CLIP-L + OpenCLIP-bigG text encoders, the SDXL VAE."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, vocab = _tokenizer()
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on the GPU: seconds, not minutes
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        )
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            scaling_factor=0.13025)
        text = _clip_text(vocab, 768, 12, 12, "quick_gelu")
        text_2 = _clip_text(vocab, 1280, 32, 20, "gelu", projection=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                       timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
                                     unet=unet, scheduler=scheduler, add_watermarker=False)
    return _save_bf16(pipe, path)


def build_flux_architecture(path: Path) -> Path:
    """FLUX.1-dev: the 12B MMDiT (19 double + 38 single blocks, guidance-embedded), CLIP-L, T5-v1.1-XXL, the
    16-channel VAE. Needs about 70 GB of GPU memory to build and 34 GB of disk."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from synthray.tiny.tokenizers import t5_tokenizer

    tokenizer, vocab = _tokenizer()
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                                             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                             guidance_embeds=True, axes_dims_rope=(16, 56, 56)).to(torch.bfloat16)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, sample_size=1024,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
        text = _clip_text(vocab, 768, 12, 12, "quick_gelu")
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                     feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1)).to(torch.bfloat16)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text, tokenizer=tokenizer, text_encoder_2=t5,
                        tokenizer_2=t5_tokenizer(), transformer=transformer)
    return _save_bf16(pipe, path)
