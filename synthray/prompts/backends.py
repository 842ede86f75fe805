"""Captioner backends (a registry, timm style): `local`, a transformers vision-language model on the actor's device,
and `openai`, an OpenAI-compatible HTTP endpoint (`synthray.prompts.remote`).

A backend is a class with
- `identity(c) -> dict`: what the captions key records of it (model identity and generation parameters; never an
  endpoint URL or a key). `c` is the `captioner` config section as a plain dict;
- `check(c, models, need_key) -> None`: one-line errors before anything launches;
- `remote`: whether it calls an HTTP endpoint (CPU actors, one shared rate limit) rather than loading a model;
- `api_key_env(c) -> str | None`: the environment variable its workers read a key from;
- `__init__(c, instruction, models, device, secret, pool_size)` inside each actor (loads the model once);
- `__call__(images) -> list[str | Exception]`: one caption per image (JPEG bytes, already preprocessed as the
  study did), or the error that image met, so a stage can keep the captions that did succeed.

The study preprocessed every image the same way whatever the model (`prepare_image`), and the preprocessing is
part of the key.
"""

from __future__ import annotations

import io
from typing import Any

from synthray.core.registry import Registry, SynthrayError
from synthray.prompts.remote import OpenAICaptioner, Secret

CAPTIONERS = Registry("captioner backend")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOCAL_MAX_TOKENS = 256  # the local model's cap when captioner.max_tokens is null: 5-6 sentences fit in about 150


def prepare_image(data: bytes, min_side: int = 256, quality: int = 95) -> bytes:
    """The study's preprocessing (labelling/openai_captioner.py): short side resized to `min_side` with Lanczos,
    up or down (an image whose short side already is `min_side` is kept), long side truncated to an int, then JPEG
    at `quality` with Pillow's defaults (4:2:0 chroma). Returns the JPEG bytes sent to the model."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    if min(width, height) != min_side:
        if width < height:
            size = (min_side, int(height * (min_side / width)))
        else:
            size = (int(width * (min_side / height)), min_side)
        image = image.resize(size, Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def local_max_tokens(c: dict[str, Any]) -> int:
    return int(c["max_tokens"]) if c.get("max_tokens") else LOCAL_MAX_TOKENS


def local_dtype(c: dict[str, Any]) -> str:
    """`auto`: bfloat16 on gpu, float32 on cpu. Part of the key: greedy decoding in bf16 can pick other words."""
    dtype = str(c["local"].get("dtype", "auto"))
    return ("bfloat16" if c["device"] == "gpu" else "float32") if dtype == "auto" else dtype


@CAPTIONERS.register("local")
class LocalCaptioner:
    """A transformers image-text-to-text model (`AutoModelForImageTextToText` + `AutoProcessor`), greedy decoding.

    The default is `Qwen/Qwen2-VL-2B-Instruct` (Apache-2.0): among small open VLMs it follows a long captioning
    instruction ("5-6 sentences ... background, foreground, objects and camera angle") closest to gpt-4.1-nano,
    and its native dynamic resolution takes the study's 256 px short-side image as it is (about 80-110 visual
    tokens), with no square resize or tiling. About 2.2B parameters: 4.5 GB in bf16, one per GPU. Any other
    model with a chat template that accepts `{"type": "image"}` content loads the same way (e.g.
    `HuggingFaceTB/SmolVLM-256M-Instruct` for a laptop CPU). Its offline twin is `tiny:captioner`.
    Batches are padded on the left (decoder-only generation); `captioner.batch_size` is part of the key because
    padding can change low bits of the logits.
    """

    remote = False  # a model on the actor's device, placed by captioner.device

    @staticmethod
    def api_key_env(c: dict[str, Any]) -> str | None:
        return None

    @staticmethod
    def identity(c: dict[str, Any]) -> dict[str, Any]:
        from synthray.core.models import model_identity

        return {"model": model_identity(str(c["local"]["model"])),
                "params": {"decoding": "greedy", "max_tokens": local_max_tokens(c), "dtype": local_dtype(c),
                           "batch_size": int(c["batch_size"])}}

    @staticmethod
    def check(c: dict[str, Any], models: Any, need_key: bool) -> None:
        from synthray.core.models import check_model

        if c.get("temperature") not in (None, 0, 0.0):
            raise SynthrayError(f"captioner.temperature={c['temperature']}: the local backend decodes greedily; "
                                "leave it null (it applies to the openai backend)")
        if str(c["local"].get("dtype", "auto")) not in DTYPES:
            raise SynthrayError(f"captioner.local.dtype={c['local']['dtype']} is not one of {', '.join(DTYPES)}")
        check_model(models, str(c["local"]["model"]), "captioner", "captioner.local.model")

    def __init__(self, c: dict[str, Any], instruction: str, models: Any, device: str, secret: Secret, pool_size: int):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = models.locate(str(c["local"]["model"]), "captioner")
        self.device = device
        self.max_tokens = local_max_tokens(c)
        self.processor = AutoProcessor.from_pretrained(folder)
        self.processor.tokenizer.padding_side = "left"  # every row's prompt ends where generation starts
        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=getattr(torch, local_dtype(c))).to(device).eval()
        # The study's message: the instruction, then the image, in one user turn.
        messages = [{"role": "user", "content": [{"type": "text", "text": instruction}, {"type": "image"}]}]
        self.prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def __call__(self, images: list[bytes]) -> list[str | Exception]:
        import torch

        from synthray.core.images import decode

        pictures = [decode(data) for data in images]
        inputs = self.processor(text=[self.prompt] * len(pictures), images=pictures, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            # Greedy: the same image gives the same caption on every run; sampling settings of the checkpoint's
            # generation_config are switched off rather than ignored with a warning.
            out = self.model.generate(**inputs, max_new_tokens=self.max_tokens, do_sample=False, num_beams=1,
                                      temperature=None, top_p=None, top_k=None)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True)]


# The openai backend lives in remote.py, which does not import this module; the registry names it here.
CAPTIONERS.register("openai")(OpenAICaptioner)
