import numpy as np
import pytest

from synthray.metrics.accuracy import per_class, top1, topk
from synthray.metrics.prdc import prdc


def test_top1_topk_per_class():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    labels = np.array([0, 1, 2])
    assert top1(labels, logits) == 2 / 3
    assert topk(labels, logits, 2) == 1.0 and topk(labels, logits, 1) == 2 / 3
    assert topk(labels, logits, 5) == 1.0  # k larger than the class count means every class
    assert per_class(labels, logits, 4) == [1.0, 1.0, 0.0, None]


def test_collapsed_copy_is_dense_where_it_is_but_covers_little():
    real = np.random.default_rng(0).normal(size=(300, 16))
    collapsed = prdc(real, np.repeat(real[:1], 300, axis=0), k=5)
    assert collapsed["coverage"] < 0.05 and collapsed["precision"] == 1.0


def test_geneval_scores_join_by_generator(tmp_path):
    import pandas as pd

    from synthray.config import compose
    from synthray.core.registry import SynthrayError
    from synthray.sweep.geneval import join_geneval

    csv = tmp_path / "geneval.csv"
    csv.write_text("generator,geneval\nsd15,0.43\nflux-dev,0.66\n")
    cfg = compose([f"metrics.geneval={csv}"])
    table = join_geneval(cfg, pd.DataFrame({"generator": ["sd15", "real-holdout", "flux-dev"]}))
    assert table["geneval"].tolist()[0] == 0.43 and np.isnan(table["geneval"][1]) and table["geneval"][2] == 0.66
    for text, message in [("gen,score\na,1\n", "needs columns generator,geneval"),
                          ("generator,geneval\nsd15,high\n", "row 2: geneval 'high' is not a number"),
                          ("generator,geneval\nsd15,1\nsd15,2\n", "lists generator 'sd15' twice")]:
        csv.write_text(text)
        with pytest.raises(SynthrayError, match=message):
            join_geneval(cfg, table)


# --- The study's density/coverage settings (issue 12, item 2) ------------------------------------------------------


def test_equal_subsets_cut_the_larger_side_only():
    from synthray.metrics.distribution import equal_subsets

    real, fake = equal_subsets(1000, 300, seed=0)
    assert len(real) == len(fake) == 300 and np.array_equal(fake, np.arange(300))
    assert len(set(real.tolist())) == 300 and (np.diff(real) > 0).all() and real.max() < 1000
    again, _ = equal_subsets(1000, 300, seed=0)
    other, _ = equal_subsets(1000, 300, seed=1)
    assert np.array_equal(real, again) and not np.array_equal(real, other)  # seeded: fixed per seed
    r, f = equal_subsets(40, 90, seed=3)
    assert np.array_equal(r, np.arange(40)) and len(f) == 40
    r, f = equal_subsets(50, 50, seed=3)
    assert np.array_equal(r, np.arange(50)) and np.array_equal(f, np.arange(50))


def test_metric_settings_reach_the_key_only_when_they_change_it(tmp_path):
    from synthray.graph.identity import metrics_identity
    from tests.conftest import tiny_cfg

    base = tiny_cfg(tmp_path)
    assert (base.metrics.distance, base.metrics.equal_counts, base.metrics.max_samples) == ("euclidean", False, 200)
    ident = metrics_identity(base)
    assert "distance" not in ident and "equal_counts" not in ident and ident["max_samples"] == 200
    assert "gpus_per_actor" not in ident and "num_actors" not in ident
    study = metrics_identity(tiny_cfg(tmp_path, "metrics.distance=cosine", "metrics.equal_counts=true", "metrics.max_samples=null"))
    assert study["distance"] == "cosine" and study["equal_counts"] is True and study["max_samples"] is None
    # The GenEval CSV only joins a column into the table: keyed as unset, wherever it lies (legacy: its path).
    csv = tmp_path / "geneval.csv"
    csv.write_text("generator,geneval\ntiny-sd,0.5\n")
    with_csv = tiny_cfg(tmp_path, f"metrics.geneval={csv}")
    assert metrics_identity(with_csv) == ident and metrics_identity(with_csv, legacy=True)["geneval"] == str(csv)


@pytest.mark.parametrize("override, message", [
    ("metrics.distance=l1", "unknown metrics.distance 'l1'; choices: cosine, euclidean"),
    ("metrics.max_samples=5", "metrics.max_samples must be null .every row. or an int above metrics.prdc_k=5, got 5"),
    ("metrics.max_samples=2.5", "metrics.max_samples takes a whole number, got .2.5."),
    ("metrics.equal_counts=yes", "metrics.equal_counts takes true or false"),
    ("metrics.prdc_k=0", "metrics.prdc_k must be a positive int"),
])
def test_bad_metric_settings_are_one_line(tmp_path, override, message):
    from synthray.core.registry import SynthrayError
    from synthray.graph.metrics import check_encoders
    from tests.conftest import tiny_cfg

    with pytest.raises(SynthrayError, match=message) as err:
        check_encoders(tiny_cfg(tmp_path, override))
    assert "\n" not in str(err.value)
    check_encoders(tiny_cfg(tmp_path, "metrics.max_samples=null", "metrics.distance=cosine", "metrics.equal_counts=true"))


def test_max_samples_null_is_every_row(tmp_path):
    from synthray.core.images import write_table
    from synthray.graph.metrics import sample_limit
    from synthray.metrics.features import sample_ids
    from tests.conftest import tiny_cfg

    for part, ids in enumerate([[f"a{i:02d}" for i in range(30)], [f"b{i:02d}" for i in range(25)]]):
        write_table(str(tmp_path / f"part-{part:05d}.parquet"), {"id": ids, "image": [b""] * len(ids), "label": [0] * len(ids)})
    assert len(sample_ids(str(tmp_path), None, seed=0)) == 55
    some = sample_ids(str(tmp_path), 20, seed=0)
    assert len(some) == 20 and some == sorted(some) and some == sample_ids(str(tmp_path), 20, seed=0)
    assert sample_limit(tiny_cfg(tmp_path, "metrics.max_samples=null")) is None
    assert sample_limit(tiny_cfg(tmp_path)) == 200


@pytest.mark.slow
def test_study_settings_end_to_end(ray_cluster, shared_storage):
    """Cosine PRDC of every row, both sides cut to one count, through the features stage: the real train split
    against the real test split (fewer rows), pixel features."""
    from synthray.core.artifacts import DatasetRef
    from synthray.core.images import read_images
    from synthray.graph.metrics import features_of
    from synthray.graph.real import real_data
    from synthray.metrics.distribution import distribution_metrics, equal_subsets
    from tests.conftest import tiny_cfg

    cfg = tiny_cfg(shared_storage, "metrics.max_samples=null", "metrics.distance=cosine", "metrics.equal_counts=true",
                   "metrics.per_class=false")
    real = real_data(cfg)
    train, test = DatasetRef(real, "train"), DatasetRef(real, "test")
    train_sets, test_sets = features_of(cfg, train), features_of(cfg, test)
    (tx, _), (cx, _) = train_sets["pixels"], test_sets["pixels"]
    assert len(tx) == len(read_images(train.uri, columns=["id"])) > len(cx) > 200  # every row, beyond the tiny 200
    keep_t, keep_c = equal_subsets(len(tx), len(cx), int(cfg.seed))
    assert len(keep_t) == len(keep_c) == len(cx)
    row = distribution_metrics(cfg.metrics, int(cfg.seed), train_sets, test_sets)
    expected = prdc(tx[keep_t], cx[keep_c], k=5, distance="cosine")
    assert all(row[f"pixels_{m}"] == expected[m] for m in expected) and row["density"] == expected["density"]
