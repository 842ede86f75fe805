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


def test_built_as_the_studys_bag_net_py():
    """classifier/bag_net.py: stem BN momentum 0.001, convs ~ normal(0, sqrt(2 / (kh * kw * out_channels))),
    BN weight 1 and bias 0, its module names (its checkpoints load as they are), fc 2048 -> classes."""
    import math

    torch.manual_seed(0)
    model = create_model("bagnet9", num_classes=7)
    assert model.bn1.momentum == 0.001 and model.layer1[0].bn1.momentum == 0.1
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not any(m.padding != (0, 0) for m in convs)
    for conv in (model.conv1, model.conv2, model.layer1[0].conv2, model.layer3[5].conv3, model.layer4[0].downsample[0]):
        expected = math.sqrt(2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels))
        w = conv.weight.detach()
        assert abs(float(w.mean())) < 0.2 * expected and float(w.std()) == pytest.approx(expected, rel=0.15)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
               for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    names = set(model.state_dict())
    assert {"conv1.weight", "conv2.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight",
            "fc.weight", "fc.bias"} <= names
    assert model.fc.in_features == 2048 and model.fc.out_features == 7
    # Only the first block of stages 1-2 has a 3x3 (bagnet9: kernel3 [1, 1, 0, 0]).
    assert [b.conv2.kernel_size[0] for layer in (model.layer1, model.layer2, model.layer3) for b in layer] == \
        [3, 1, 1, 3, 1, 1, 1] + [1] * 6
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.eval()(x), model.patch_logits(x).mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)


def test_the_changed_bagnet_never_reuses_models_of_the_old_one(tmp_path):
    """BagNet became the study's (stem momentum, init): its version is in model and result keys, tiny-cnn's keys stay."""
    from synthray.config import compose
    from synthray.core.artifacts import Artifact, DatasetRef, Store
    from synthray.graph.planner import model_artifact

    cfg = compose([f"storage={tmp_path}"])
    data = DatasetRef(Artifact(Store(str(tmp_path)), "real", {"d": 1}), "train")
    assert model_artifact(cfg, "bagnet9", data, 10, "").spec["arch_version"] == 2
    assert "arch_version" not in model_artifact(cfg, "tiny-cnn", data, 10, "").spec
