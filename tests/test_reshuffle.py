"""recipe.shuffle: epoch, the study's data order (`DataLoader(shuffle=True)`): every epoch a new permutation of
every training row, drawn from (seed, epoch) and the rows' ids alone, so it survives a resume and ignores the
batch size, the blocks and the worker count. Real Ray Data on the session's cluster."""

import numpy as np
import pytest

from synthray.training.inputs import UID, epoch_rows, row_uids

ROWS = 300


def rows(ray_cluster, blocks):
    import ray.data

    ids = [f"img-{i:04d}" for i in range(ROWS)]
    table = {"image": np.arange(ROWS, dtype=np.int64), "label": np.arange(ROWS, dtype=np.int64) % 10, UID: row_uids(ids)}
    return ray.data.from_numpy(table["image"]).map_batches(
        lambda b: {"image": b["data"], "label": b["data"] % 10, UID: table[UID][b["data"]]}, batch_format="numpy"
    ).repartition(blocks).materialize()


def order(dataset, epoch, batch_size=32, world=1, rank=0, seed=0):
    """The row order one worker sees in `epoch`, batch by batch, as the training loop iterates it."""
    batches = epoch_rows(dataset, seed, epoch, world, rank).iter_batches(batch_size=batch_size, batch_format="numpy")
    return np.concatenate([b["image"] for b in batches]).tolist()


@pytest.mark.slow
def test_each_epoch_is_a_new_permutation_of_every_row(ray_cluster):
    data = rows(ray_cluster, 4)
    first, second = order(data, 0), order(data, 1)
    assert sorted(first) == sorted(second) == list(range(ROWS))  # every row, once
    assert first != second
    # not a rotation or a reversal of the previous epoch: few rows keep their neighbour
    neighbours = {(a, b) for a, b in zip(first, first[1:])}
    assert sum((a, b) in neighbours for a, b in zip(second, second[1:])) < 10
    assert order(data, 0, seed=1) != first  # the seed draws another sequence of permutations


@pytest.mark.slow
def test_the_permutation_ignores_batch_size_blocks_and_reruns(ray_cluster):
    """An epoch rerun after a kill (the same seed and epoch) sees the same order, whatever the batch size or the
    dataset's blocks."""
    data = rows(ray_cluster, 4)
    assert order(data, 3, batch_size=32) == order(data, 3, batch_size=64) == order(rows(ray_cluster, 7), 3, batch_size=17)


def test_workers_split_one_global_permutation(ray_cluster):
    """Two workers see disjoint, equal parts of the same permutation one worker sees."""
    data = rows(ray_cluster, 4)
    whole = order(data, 2)
    parts = [order(data, 2, world=2, rank=r) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == ROWS // 2 and not set(parts[0]) & set(parts[1])
    assert parts[0] + parts[1] == whole


@pytest.mark.parametrize("recipe, shuffle", [("smoke", "once"), ("paper", "epoch")])
def test_recipes_choose_their_order(recipe, shuffle, tmp_path):
    from synthray.config import compose

    assert compose(["experiment=smoke", f"storage={tmp_path}", f"recipe={recipe}"]).recipe.shuffle == shuffle


def test_an_unknown_order_is_one_line(tmp_path):
    from synthray.config import compose

    with pytest.raises(Exception) as err:
        compose(["experiment=smoke", f"storage={tmp_path}", "recipe.shuffle=always"])
    assert "shuffle" in str(err.value) and "\n" not in str(err.value).strip()
