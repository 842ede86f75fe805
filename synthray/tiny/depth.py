"""`tiny:depth`: an offline twin of Depth-Anything-V2, with random weights."""

from __future__ import annotations

from pathlib import Path


def build_tiny_depth(folder: Path, seed: int = 0) -> Path:
    """Save a random-weight `DepthAnythingForDepthEstimation` and its image processor to `folder`; returns it.

    Same classes and layout as Depth-Anything-V2 (DINOv2 backbone, 4 reassembled stages at x4, x2, x1, x0.5 of the
    patch grid, DPT fusion, relative ReLU head), shrunk: hidden 32, 4 layers (DINOv2's backbone refuses repeated
    `out_indices`, so the neck's 4 feature maps need 4 layers), and 56 px inputs, a 4x4 grid of 14 px patches.
    """
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    # At the usual 0.02 the random features shrink through every block and the depth is ~1e-8 everywhere.
    init = 0.1
    backbone = Dinov2Config(
        image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
        out_indices=[1, 2, 3, 4], reshape_hidden_states=False, initializer_range=init,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=32, reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="relative",
        initializer_range=init,
    )
    with torch.random.fork_rng(devices=[]):  # a fixed model without disturbing the caller's random stream
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():
        # A trained relative head predicts positive disparity; random weights straddle 0 and the final ReLU would
        # flatten about half of every map, so lift the last bias above the pre-activation's spread (~0.01).
        model.head.conv3.bias.fill_(0.1)
    # Depth-Anything-V2's preprocessing (bicubic, aspect kept, multiple of 14, ImageNet statistics), at 56 px not 518.
    processor = DPTImageProcessor(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3, do_pad=False,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    folder = Path(folder)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder
