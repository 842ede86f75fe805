"""Where a stage computes is configuration (`device: cpu | gpu`), never a look at the cluster as it is right now.

An autoscaling cluster starts with no GPU node: a stage that asks for GPUs makes the autoscaler add one, and a
stage that looked for GPUs first would find none and quietly run on the head's CPUs. Keys follow the same rule:
numerics (bf16 on GPU) come from `device`, so a model's key never depends on the cluster's GPU count.
"""

from __future__ import annotations

import os

from synthray.core.registry import SynthrayError

DEVICES = ("cpu", "gpu")
# Tests on Ray's fake autoscaler schedule "GPU" actors on nodes whose GPUs are only resource labels.
FAKE_GPUS_ENV = "SYNTHRAY_FAKE_GPUS"


def check_device_name(setting: str, value: object) -> str:
    if value not in DEVICES:
        raise SynthrayError(f"{setting}={value} is not one of {', '.join(DEVICES)}")
    return str(value)


def check_device(device: str) -> str:
    """The torch device string for a worker configured for `device`; one line if a GPU worker sees no CUDA."""
    import torch

    if device != "gpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get(FAKE_GPUS_ENV) == "1":
        return "cpu"
    raise SynthrayError(
        "this worker was scheduled with a GPU (device=gpu) but torch sees no CUDA device on node "
        f"{os.uname().nodename}; fix the node's CUDA install, or set device=cpu for this stage")
