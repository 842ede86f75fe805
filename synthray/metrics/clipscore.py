"""CLIPScore: how well each image matches its prompt, by a CLIP model (a hub id or folder, see `resolve_encoder`)."""

from __future__ import annotations

import numpy as np
import torch

from synthray.core.registry import SynthrayError
from synthray.metrics.encoders import ClipEncoder


class ClipScorer:
    """CLIPScore = max(100 * cos(image_embed, text_embed), 0) per (image, prompt) pair.

    This is torchmetrics' `CLIPScore` convention: the raw prompt (no "A photo depicts" prefix) and weight 100
    rather than Hessel et al.'s 2.5, so scores lie in [0, 100]. Prompts longer than the text tower's context are
    truncated. Images are embedded by `ClipEncoder`, so preprocessing matches the CLIP feature encoder.
    """

    def __init__(self, model: str, device: str | None = None, batch_size: int = 64):
        from transformers import AutoTokenizer

        self.images = ClipEncoder(model, device, batch_size)
        self.model, self.device = self.images.model, self.images.device
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        text = self.model.config.text_config
        # Recent transformers can silently hand back a 2-token tokenizer offline; every prompt would then embed alike.
        if len(self.tokenizer) != text.vocab_size:
            raise SynthrayError(
                f"CLIP tokenizer in '{model}' has {len(self.tokenizer)} tokens but its text model expects {text.vocab_size}"
            )
        self.max_length = min(int(self.tokenizer.model_max_length), int(text.max_position_embeddings))

    def text_features(self, prompts: list[str]) -> np.ndarray:
        """(N,) prompts -> float32 (N, D) projected text embeddings."""
        chunks = [torch.zeros(0, self.images.dim)]
        for start in range(0, len(prompts), self.images.batch_size):
            tokens = self.tokenizer(
                list(prompts[start : start + self.images.batch_size]), padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode(), self.images.autocast():
                out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                out = getattr(out, "pooler_output", out)  # transformers >= 5 returns an output whose pooler is projected
            chunks.append(out.float().cpu())
        return torch.cat(chunks).numpy()

    def __call__(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        """uint8 (H, W, 3) images and their prompts -> float32 (N,) scores in [0, 100]."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        img = self.images(images)
        txt = self.text_features(prompts)
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        return np.maximum(100.0 * (img * txt).sum(axis=1), 0.0).astype(np.float32)
