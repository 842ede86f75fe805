"""Decoding on the training worker (`training.jpeg_decode: gpu`), and the batches a worker reads from its shard.

With `jpeg_decode: cpu` (the default) Ray Data's CPU tasks decode every image with Pillow (`inputs.decode_images`)
and the worker receives uint8 arrays. Streaming a large set then needs many cores (Pillow decoded and resized a
512 px JPEG at ~155 images/s per core on the H100 host) to feed a GPU that trains a ResNet-50 at ~4,500 images/s.
With `gpu`, Ray Data ships the encoded bytes (`inputs.encoded_images`) and the worker decodes each batch in one
`torchvision.io.decode_jpeg` call, which on a CUDA device is nvjpeg (~11,700 images/s measured on an H100), then
resizes on the device as Pillow would.

nvjpeg's IDCT and chroma upsampling are its own, so its pixels may differ slightly from libjpeg-turbo's, and the
resize below is within one level of Pillow's: `jpeg_decode: gpu` is part of a model's key (`trainer.numerics`).
The same function runs on a CPU device too (libjpeg-turbo inside torchvision), which is how the path is tested
without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

JPEG_MAGIC = b"\xff\xd8\xff"  # SOI marker + the first marker's 0xff: every JPEG/JFIF/EXIF file starts so


def shard_batches(shard: Any, batch_size: int, jpeg_decode: str, device: torch.device | None = None,
                  native: bool = False, **iter_kwargs: Any) -> Iterable[dict[str, Any]]:
    """A Ray Data shard's batches as its iterator yields them: torch tensors already on the worker's device
    (`cpu`: Ray Data decoded them), or numpy arrays of encoded bytes and labels (`gpu`: `to_device` decodes), or
    (`native`, decoded images of many sizes, which no tensor holds) numpy object arrays that `to_device` moves.
    All iterators take the same shuffle arguments and see the same rows, so they yield rows in the same order."""
    if jpeg_decode == "cpu" and not native:
        if device is not None and torch.device(device).type == "cuda":
            # Pinned host tensors from Ray's fetch thread, copied here on a side stream one batch ahead (`prefetched`).
            pinned = shard.iter_torch_batches(batch_size=batch_size, device="cpu", pin_memory=True, **iter_kwargs)
            return prefetched(pinned, torch.device(device))
        # The worker's own device, not Ray's "auto" (cuda on any GPU worker, even one whose GPUs Ray only counts).
        return shard.iter_torch_batches(batch_size=batch_size, device=str(device) if device else "auto", **iter_kwargs)
    return shard.iter_batches(batch_size=batch_size, batch_format="numpy", **iter_kwargs)


def prefetched(batches: Iterable[dict[str, Any]], device: torch.device) -> Iterator[dict[str, Any]]:
    """`batches` of pinned host tensors, each yielded on the CUDA `device`, its copy issued on a side stream before
    the batch ahead of it is handed over, so it overlaps that batch's training step.

    Ray Data's own transfer (`iter_torch_batches(device=cuda)`) runs on its fetch thread on the default stream,
    where the copy of each batch (~50 MB at 256 images of 224 px) queues between the training step's kernels. The
    training stream waits for the copy through `wait_stream`, and `record_stream` keeps the copy's memory from
    reuse while the training stream may still read it. The tensors are the same values either way.
    """
    stream = copy_stream(device)

    def issue(batch: dict[str, Any]) -> dict[str, Any]:
        with torch.cuda.stream(stream):
            return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    source = iter(batches)
    first = next(source, None)
    staged = None if first is None else issue(first)
    while staged is not None:
        training = torch.cuda.current_stream(device)
        training.wait_stream(stream)  # this batch's copy, issued before the next one's
        for value in staged.values():
            if isinstance(value, torch.Tensor):
                value.record_stream(training)
        ready, following = staged, next(source, None)
        staged = None if following is None else issue(following)
        yield ready


def to_device(batch: dict[str, Any], jpeg_decode: str, size: int | None, device: torch.device,
              geometry: str = "round") -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
    """A batch from `shard_batches` -> (uint8 images (N, size, size, 3), int64 labels (N,)) on `device`; `size`
    None (native sizes): the images as a list of N uint8 (H_i, W_i, 3) tensors."""
    labels = batch["label"]
    if not isinstance(labels, torch.Tensor):
        labels = torch.from_numpy(np.asarray(labels))
        if torch.device(device).type == "cuda":  # a copy from pageable memory would wait for the queued step
            labels = labels.pin_memory()
    labels = labels.to(device, non_blocking=True)
    if jpeg_decode == "cpu" and size is None:
        return [torch.tensor(a, device=device) for a in batch["image"]], labels  # a copy: Ray Data's arrays are read-only
    if jpeg_decode == "cpu":
        return batch["image"].to(device, non_blocking=True), labels
    return decode_on_device(batch["image"], size, device, geometry), labels


_DECODE_STREAMS: dict[torch.device, Any] = {}
_COPY_STREAMS: dict[torch.device, Any] = {}


def copy_stream(device: torch.device) -> Any:
    """The side CUDA stream this process copies batches to `device` on (`prefetched`), one per device."""
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


def decode_stream(device: torch.device) -> Any:
    """The side CUDA stream this process decodes on, one per device."""
    if device not in _DECODE_STREAMS:
        _DECODE_STREAMS[device] = torch.cuda.Stream(device)
    return _DECODE_STREAMS[device]


def decode_on_device(data: Sequence[bytes], size: int | None, device: torch.device | str,
                     geometry: str = "round") -> torch.Tensor | list[torch.Tensor]:
    """Encoded images -> uint8 (N, size, size, 3) on `device`, the computation of `images.decode_array`: RGB,
    then a square image resized (bicubic) to `size`, another one's short side resized and its centre cropped.
    `size` None: a list of N uint8 (H_i, W_i, 3), each at its native size.

    JPEGs are decoded in one batched call; anything else (PNG rows) by Pillow on the host, exactly as the CPU
    path does. An image nvjpeg cannot decode raises rather than falling back: a fallback taken on a transient
    failure would make the pixels depend on the run, not on the spec.

    On CUDA the decode and resize run on a side stream, so they overlap the training step still queued on the
    current one, which then waits for them through an event. torchvision allocates nvjpeg's outputs on the current
    stream but writes them from its own stream, which waits for nothing (pytorch/vision#9606): a block freed by
    queued kernels could be written while they still read it. Here the current stream is the side stream, whose
    blocks are (a) intermediates of the previous decode, reused only after the host has waited for that decode
    (`synchronize` on the side stream below, not on the training's stream), or (b) outputs handed to the
    training's stream, which `record_stream` keeps from reuse until its kernels that read them have run."""
    device = torch.device(device)
    if device.type != "cuda":
        return _decode(data, size, device, geometry)
    side, training = decode_stream(device), torch.cuda.current_stream(device)
    side.synchronize()  # the previous decode's blocks are free to reuse: (a) above
    with torch.cuda.stream(side):
        out = _decode(data, size, device, geometry)
    training.wait_stream(side)  # an event: the step's kernels start after the decode, the host does not wait
    for img in out if isinstance(out, list) else [out]:
        img.record_stream(training)  # (b) above
    return out


def _decode(data: Sequence[bytes], size: int | None, device: torch.device,
            geometry: str) -> torch.Tensor | list[torch.Tensor]:
    """`decode_on_device` on the current stream."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from synthray.core.images import decode_array

    out: list[torch.Tensor | None] = [None] * len(data)
    jpegs = [i for i, b in enumerate(data) if bytes(b[:3]) == JPEG_MAGIC]
    if jpegs:
        # bytearray: torch.frombuffer wants a writable buffer; the copy is the size of the file, a few tens of KB.
        encoded = [torch.frombuffer(bytearray(data[i]), dtype=torch.uint8) for i in jpegs]
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)  # (3, H, W) each
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, img in enumerate(decoded):
            by_shape.setdefault(tuple(img.shape), []).append(j)
        for members in by_shape.values():  # generated sets have one shape: one resize call per batch
            same = torch.stack([decoded[j] for j in members])
            for j, img in zip(members, same if size is None else square_on_device(same, size, geometry)):
                out[jpegs[j]] = img
    for i in sorted(set(range(len(data))) - set(jpegs)):
        out[i] = torch.tensor(decode_array(data[i], size, geometry)).permute(2, 0, 1).to(device)  # a copy: Pillow's array is read-only
    if size is None:
        return [img.permute(1, 2, 0) for img in out]  # type: ignore[union-attr]
    if not out:
        return torch.zeros((0, size, size, 3), dtype=torch.uint8, device=device)
    # NHWC contiguous, the layout Ray Data hands the CPU path's batches in.
    return torch.stack(out).permute(0, 2, 3, 1).contiguous()


def square_on_device(x: torch.Tensor, size: int, geometry: str = "round") -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, 3, size, size) as `images.decode_array` computes it with `geometry`."""
    if geometry == "torchvision":
        from synthray.core.images import resize_center_crop

        return resize_center_crop(x, size)
    height, width = x.shape[-2:]
    if (height, width) == (size, size):
        return x
    if height == width:
        return pil_bicubic(x, size, size)
    scale = size / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    top, left = (h - size) // 2, (w - size) // 2
    return pil_bicubic(x, h, w)[..., top:top + size, left:left + size]


def pil_bicubic(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, C, height, width): Pillow's `Image.resize(..., BICUBIC)` as tensor ops.

    Pillow resamples with an antialiased bicubic kernel (a = -0.5, widened when shrinking), which is torch's
    `antialias=True` bicubic, in two passes, horizontal first, rounding to uint8 in between. Doing the same keeps
    the result within one level of Pillow's (its fixed-point weights differ in the last bits); one 2-D pass in
    float differs by up to 20 levels on noise, where the clamp after the first pass matters."""
    y = x.float()
    if width != x.shape[-1]:
        y = F.interpolate(y, size=(y.shape[-2], width), mode="bicubic", antialias=True, align_corners=False)
        y = y.round_().clamp_(0, 255)
    if height != x.shape[-2]:
        y = F.interpolate(y, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        y = y.round_().clamp_(0, 255)
    return y.to(torch.uint8)
