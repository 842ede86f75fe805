"""`tiny:sam3`: an offline twin of SAM 3 (`facebook/sam3`, the promptable segmenter of the label stage), random weights.

The real transformers classes (`Sam3Config`, `Sam3Model`, `Sam3Processor` with `Sam3ImageProcessor` and a CLIP
tokenizer) over small configs, saved with `save_pretrained` and loaded back through `from_pretrained`, the path a
hub checkpoint takes. Its detections are noise; every line of text prompting, image preprocessing, the DETR
detector, the mask decoder and `post_process_instance_segmentation` runs without the network.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

# Every width the model wires together (FPN, DETR encoder/decoder, geometry encoder, mask decoder) is one number in
# SAM 3 (256); the mask decoder's GroupNorm(8, .) needs a multiple of 8.
WIDTH = 16
# 56 px inputs: a 4x4 grid of 14 px patches, so masks come out at 16x16 (the FPN's x4 level), as 288 for 1008.
IMAGE_SIZE = 56
INIT = 0.3
PRESENCE_LIFT = 3.0


def build_tiny_sam3(folder: Path, seed: int = 0) -> Path:
    """Save a random-weight `Sam3Model` and its `Sam3Processor` to `folder`; returns it.

    Same layout as SAM 3 (ViT with windowed and global RoPE attention, 4-level FPN neck, CLIP text encoder, DETR
    encoder/decoder with a presence token, dot-product scoring, mask decoder), shrunk to one or two layers of width
    16 and 56 px inputs (SAM 3: 32 ViT layers of 1024 at 1008 px). 8 object queries instead of 200.
    """
    import torch
    from transformers import CLIPTokenizer, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    from synthray.tiny.tokenizers import check_vocab, write_clip_tokenizer

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    check_vocab(tokenizer, vocab)
    grid = IMAGE_SIZE // 14
    config = Sam3Config(
        vision_config={
            # Window 2 over the 4x4 grid, global attention in the last layer, as SAM 3's windows of 24 over 72.
            "backbone_config": {"model_type": "sam3_vit_model", "hidden_size": 16, "intermediate_size": 32,
                                "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": 14,
                                "window_size": 2, "global_attn_indexes": [1], "pretrain_image_size": IMAGE_SIZE},
            "fpn_hidden_size": WIDTH,
            "backbone_feature_sizes": [[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
        },
        text_config={"model_type": "clip_text_model", "vocab_size": vocab, "hidden_size": 16, "intermediate_size": 32, "projection_dim": 16,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        geometry_encoder_config={"hidden_size": WIDTH, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "roi_size": 2},
        detr_encoder_config={"hidden_size": WIDTH, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
        detr_decoder_config={"hidden_size": WIDTH, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "num_queries": 8},
        mask_decoder_config={"hidden_size": WIDTH, "num_attention_heads": 2},
    )
    for sub in (config, config.vision_config, config.vision_config.backbone_config, config.text_config,
                config.geometry_encoder_config, config.detr_encoder_config, config.detr_decoder_config, config.mask_decoder_config):
        # At SAM 3's 0.02 every score is 0.25 (both sigmoids at 0) and every mask logit ~0, so at any threshold a
        # detection is all or nothing and every mask fills the image; 0.3 spreads scores, masks and boxes (some past
        # the image's edge, as a real model's can be).
        sub.initializer_range = INIT
    with torch.random.fork_rng(devices=[]):  # a fixed model without disturbing the caller's random stream
        torch.manual_seed(seed)
        model = Sam3Model(config).eval()
    with torch.no_grad():
        # A score is sigmoid(query logit) * sigmoid(presence logit); the random presence head says "absent" (~0.1)
        # for every image, so lift its last bias: at the study's 0.3 threshold some images then get a few
        # detections and some none, like a real labelling run.
        model.detr_decoder.presence_head.layer3.bias.add_(PRESENCE_LIFT)
    # SAM 3's preprocessing (a plain bilinear resize to a square, ImageNet-standard 0.5 mean/std), at 56 px not 1008.
    image_processor = Sam3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                         mask_size={"height": 4 * grid, "width": 4 * grid})
    processor = Sam3Processor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(str(folder), safe_serialization=True)
    processor.save_pretrained(str(folder))
    return folder
