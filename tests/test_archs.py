"""Architectures by source (torchvision `tv:` names, timm names, ours), and how a worker builds them: SyncBatchNorm
across workers and fp32 without autocast."""

import subprocess
import sys

import pytest
import torch
import torchvision.models

from synthray.config import compose
from synthray.core.registry import SynthrayError
from synthray.sweep.plan import validate
from synthray.training.archs import check_arch, count_parameters, create_model
from synthray.training.loop import autocast_for, build_model

STUDY_TV = ["resnet50", "resnet18", "convnext_tiny", "swin_t"]


@pytest.mark.parametrize("name", STUDY_TV)
def test_torchvision_architectures_are_built_as_the_study_builds_them(name):
    """`tv:X` is `torchvision.models.X(num_classes=n)`: same class, same parameters, torchvision's defaults."""
    check_arch(f"tv:{name}")
    model = create_model(f"tv:{name}", num_classes=7)
    with torch.device("meta"):  # the reference's shapes only: no time spent initialising it
        reference = getattr(torchvision.models, name)(num_classes=7)
    assert type(model) is type(reference) and count_parameters(model) == count_parameters(reference)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    depth = [m.p for m in model.modules() if isinstance(m, torchvision.ops.StochasticDepth)]
    # torchvision's own stochastic depth (convnext 0.1, swin 0.2, reached by the last block), nothing passed.
    assert max(depth, default=0.0) == pytest.approx({"convnext_tiny": 0.1, "swin_t": 0.2}.get(name, 0.0))


def test_torchvision_weights_are_torchvisions_own_random_init():
    torch.manual_seed(3)
    ours = create_model("tv:resnet18", num_classes=5).state_dict()
    torch.manual_seed(3)
    theirs = torchvision.models.resnet18(num_classes=5).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")  # torchvision's own notice
def test_timm_names_keep_working_and_differ_from_torchvision():
    check_arch("resnet50")
    check_arch("vit_tiny_patch16_224")
    assert type(create_model("resnet18", 5)).__module__.startswith("timm")
    assert type(create_model("tv:resnet18", 5)).__module__.startswith("torchvision")
    # googlenet's auxiliary heads would make its training output a tuple; synthray builds it without them.
    assert isinstance(create_model("tv:googlenet", 5).train()(torch.zeros(2, 3, 64, 64)), torch.Tensor)


@pytest.mark.parametrize("name, needle", [("tv:resnet5", "did you mean tv:resnet50"), ("tv:fasterrcnn_resnet50_fpn", "tv:<name>"),
                                          ("tv:", "unknown architecture 'tv:'")])
def test_unknown_torchvision_name_is_one_line(name, needle):
    with pytest.raises(SynthrayError, match="unknown architecture") as err:
        check_arch(name)
    assert needle in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 300


def test_list_archs_names_every_source():
    out = subprocess.run([sys.executable, "-m", "synthray", "list", "archs"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    source = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert lines[0].startswith("tiny-cnn ")
    for bagnet in ("bagnet9", "bagnet17", "bagnet33"):
        assert source[bagnet] == "synthray (the study's classifier/bag_net.py)"
    for name in STUDY_TV:
        assert source[f"tv:{name}"].startswith("torchvision (the study's")
    assert "swin_v2_tiny" in source["tv:swin_t"] and "list_models(module=torchvision.models)" in source["tv:<name>"]
    assert source["vit_tiny_patch16_224"] == "timm (the study's)" and "any timm model name" in source["<name>"]
    assert len(lines) < 15 and max(map(len, lines)) < 130


def _batchnorms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_sync_bn_converts_every_batchnorm_only_with_more_than_one_worker():
    plain = build_model("bagnet9", 10, sync_bn=True, world=1)
    synced = build_model("bagnet9", 10, sync_bn=True, world=2)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())
    assert len(_batchnorms(synced)) == len(_batchnorms(plain)) > 0
    assert all(isinstance(m, torch.nn.SyncBatchNorm) for m in _batchnorms(synced))
    assert synced.bn1.momentum == 0.001  # the stem's momentum survives the conversion
    assert synced.state_dict().keys() == plain.state_dict().keys()  # the stored weights load into plain BatchNorm
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in build_model("tv:resnet18", 10, sync_bn=False, world=4).modules())


def test_sync_bn_on_cpu_workers_is_one_line_and_enters_the_key_only_when_it_acts(tmp_path):
    with pytest.raises(SynthrayError, match="sync_bn=true needs training.device=gpu") as err:
        validate(compose([f"storage={tmp_path}", "training.sync_bn=true", "training.num_workers=2"]))
    assert "\n" not in str(err.value)
    validate(compose([f"storage={tmp_path}", "training.sync_bn=true"]))  # one worker: nothing to synchronise

    from synthray.core.artifacts import Artifact, DatasetRef, Store
    from synthray.graph.planner import model_artifact

    data = DatasetRef(Artifact(Store(str(tmp_path)), "real", {"d": 1}), "train")

    def key(*overrides):
        return model_artifact(compose([f"storage={tmp_path}", "device=gpu", *overrides]), "tiny-cnn", data, 10, "").key

    assert key("training.sync_bn=true") == key()
    assert key("training.sync_bn=true", "training.num_workers=2") != key("training.num_workers=2")


def test_fp32_precision_runs_without_autocast():
    net = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast_for("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert net(x).dtype == torch.float32
    with autocast_for("bf16", torch.device("cpu")):
        assert net(x).dtype == torch.bfloat16
    from synthray.graph.identity import numerics

    assert numerics(compose(["device=gpu", "training.precision=fp32"]))["precision"] == "fp32"
    assert numerics(compose(["device=gpu"]))["precision"] == "bf16"
