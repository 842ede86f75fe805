"""Which epoch becomes the model: recipe.selection (metric accuracy | loss, set train | real-test)."""

import numpy as np
import pytest
import torch

from synthray.config import compose
from synthray.core import storage
from synthray.core.artifacts import Artifact, DatasetRef, Store
from synthray.core.registry import SynthrayError
from synthray.graph.planner import model_artifact
from synthray.sweep.plan import validate
from synthray.training.loop import improves
from tests.conftest import tiny_cfg


def test_recipes_say_how_they_select():
    assert dict(compose([]).recipe.selection) == {"metric": "accuracy", "set": "train"}
    assert dict(compose(["recipe=paper"]).recipe.selection) == {"metric": "loss", "set": "real-test"}  # the study's


@pytest.mark.parametrize("override, message", [
    ("recipe.selection.metric=top5", "unknown recipe.selection.metric 'top5'; choices: accuracy, loss"),
    ("recipe.selection.set=val", "unknown recipe.selection.set 'val'; choices: real-test, train"),
])
def test_bad_selection_is_one_line(tmp_path, override, message):
    with pytest.raises(SynthrayError, match=message) as err:
        validate(compose([f"storage={tmp_path}", override]))
    assert "\n" not in str(err.value)


def test_lower_loss_or_higher_accuracy_wins_and_ties_keep_the_earlier_epoch():
    assert improves(0.5, None, "loss") and improves(0.4, 0.5, "loss") and not improves(0.5, 0.5, "loss")
    assert improves(0.6, 0.5, "accuracy") and not improves(0.5, 0.5, "accuracy") and not improves(0.4, 0.5, "accuracy")
    assert improves(2.0, float("nan"), "loss") and not improves(float("nan"), 2.0, "loss")


@pytest.mark.slow
def test_a_model_selected_on_the_real_test_split_depends_on_it(tmp_path):
    store = Store(str(tmp_path))
    data = DatasetRef(Artifact(store, "synthetic", {"d": 1}), "data")
    test_a = DatasetRef(Artifact(store, "views", {"v": "a"}), "test")
    test_b = DatasetRef(Artifact(store, "views", {"v": "b"}), "test")

    def art(selection, *overrides):
        return model_artifact(compose([f"storage={tmp_path}", *overrides]), "tiny-cnn", data, 10, "m", selection)

    on_test = ("recipe.selection.set=real-test",)
    assert art(test_a, *on_test).spec["selection"] == test_a.ref
    assert art(test_a, *on_test).key != art(test_b, *on_test).key
    assert art(test_a, *on_test).key != art(test_a, *on_test, "recipe.selection.metric=loss").key
    # Selecting on the training set's own rows ignores the real test split, so it stays out of the key.
    assert art(test_a).key == art(test_b).key == art(None).key and "selection" not in art(test_a).spec
    assert art(None).key != art(test_a, *on_test).key
    with pytest.raises(SynthrayError, match="no real test split was given"):
        art(None, *on_test)


def _shifted_labels(real, root):
    """The real test split with every label moved to the next class: a selection set whose loss rises as the
    model learns, so the lowest-loss epoch is an early one and never simply the last."""
    from synthray.core.images import read_images, write_table

    rows = read_images(real.file("test"))
    rows["label"] = (rows["label"] + 1) % 10
    out = Artifact(Store(storage.normalize(root)), "test-data", {"shifted_labels_of": real.ref})

    def make(build):
        write_table(str(build.local / "test" / "part-00000.parquet"), {c: rows[c].tolist() for c in rows.columns})

    out.build(make)
    return DatasetRef(out, "test"), len(rows)


@pytest.mark.slow
def test_selection_on_the_real_test_split_keeps_the_lowest_loss_epoch_and_trains_on_every_row(ray_cluster, shared_storage, tmp_path):
    from synthray.graph.planner import train
    from synthray.graph.real import real_data
    from synthray.metrics.accuracy import predict
    from synthray.training.trainer import split_counts

    real = real_data(tiny_cfg(shared_storage))
    selection, n_selection = _shifted_labels(real, tmp_path / "data")
    cfg = tiny_cfg(tmp_path / "runs", "recipe.epochs=4", "recipe.batch_size=16", "recipe.selection.metric=loss",
                   "recipe.selection.set=real-test", "training.precision=fp32")
    data = DatasetRef(real, "train")
    art = train(cfg, "tiny-cnn", data, 10, label="selected on real test", selection=selection)
    meta = art.meta()
    losses = [h["selection_loss"] for h in meta["history"]]
    assert meta["rows"] == split_counts(data.uri, 0.0, 0)[0], "real-test selection takes no training rows away"
    assert meta["selection"] == {"metric": "loss", "set": "real-test", "data": selection.ref}
    assert meta["selection_rows"] == n_selection
    assert meta["best_epoch"] == 1 + int(np.argmin(losses)) < meta["epochs"] == 4
    assert meta["selection_loss_best"] == min(losses)
    assert {h["compute_dtype"] for h in meta["history"]} == {"float32"}  # training.precision=fp32: no autocast
    # model.pt is that epoch's weights and last.pt the final one's: their cross-entropy on the selection set,
    # recomputed outside training, is the loss each epoch reported.
    for weights, expected in (("model.pt", min(losses)), ("last.pt", losses[-1])):
        labels, logits = predict(art, selection, weights)
        loss = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels)).item()
        assert loss == pytest.approx(expected, rel=1e-4), weights


@pytest.mark.slow
def test_torchvision_model_trains_through_ray_train_in_channels_last(ray_cluster, shared_storage, tmp_path):
    """A `tv:` model takes the loop every other nn.Module takes (DDP wrapper, channels_last, the recipe's size)."""
    from synthray.graph.planner import train
    from synthray.graph.real import real_data
    from synthray.metrics.accuracy import load_model

    real = real_data(tiny_cfg(shared_storage))
    cfg = tiny_cfg(tmp_path, "recipe.epochs=1", "training.channels_last=true")
    art = train(cfg, "tv:resnet18", DatasetRef(real, "control"), 10, label="tv:resnet18")
    assert art.meta()["epochs"] == 1 and art.spec["numerics"]["channels_last"] is True
    net = load_model(art)
    assert type(net).__module__.startswith("torchvision") and net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
