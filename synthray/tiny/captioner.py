"""`tiny:captioner`: an offline twin of Qwen2-VL (the local captioner's default family), with random weights.

The real transformers classes (`Qwen2VLForConditionalGeneration`, `Qwen2VLProcessor` with its image and video
processors) over small configs and the offline byte-level Qwen2 tokenizer of the tiny pipelines, saved with
`save_pretrained` and loaded back through `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained`, the
path a hub checkpoint takes. Its captions are gibberish; every line of loading, chat templating, image
preprocessing, batched greedy decoding and decoding back to text runs without the network.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Qwen2-VL's chat template for text and image turns (the hub checkpoint ships its own; this one writes the same
# markers: a default system turn, `<|vision_start|><|image_pad|><|vision_end|>` per image, then the assistant cue).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_captioner(path: Path, seed: int = 0) -> Path:
    """Build a random-weight Qwen2-VL (2 text layers of width 32, 1 vision block) and its processor at `path`.

    The image processor keeps Qwen2-VL's defaults (14 px patches, 2x2 merge), so a 256 px image becomes 81 image
    tokens as it would for the real model.
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from synthray.tiny.tokenizers import QWEN_SPECIALS, check_vocab, qwen2_tokenizer

    tokenizer = qwen2_tokenizer()
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    torch.manual_seed(seed)
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 2048,
            # M-RoPE splits each head's 8 rotary frequencies over (time, height, width), as [16, 24, 24] does for 64.
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    check_vocab(tokenizer, len(ids) + 256, config.text_config.vocab_size)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    path = Path(path)
    model.save_pretrained(str(path), safe_serialization=True)
    processor.save_pretrained(str(path))
    return path
