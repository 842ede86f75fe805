"""BagNet's defining property: one output location depends only on a q x q window of the input."""

import pytest
import torch

from synthray.training.archs import create_model


@pytest.mark.parametrize("name, field", [("bagnet9", 9), ("bagnet17", 17), ("bagnet33", 33)])
def test_receptive_field(name, field):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    x = torch.randn(1, 3, 80, 80, requires_grad=True)
    logits = model.patch_logits(x)
    i, j = logits.shape[-2] // 2, logits.shape[-1] // 2
    logits[0, :, i, j].sum().backward()
    rows, cols = torch.nonzero(x.grad[0].abs().sum(0), as_tuple=True)
    assert rows.max() - rows.min() + 1 == field and cols.max() - cols.min() + 1 == field
    assert model(x.detach()).shape == (1, 5)
