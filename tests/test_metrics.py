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
    from synthray.registry import SynthrayError
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
