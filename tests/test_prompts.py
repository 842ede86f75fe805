import pandas as pd
import pytest

from synthray.core.registry import SynthrayError
from synthray.data.real import load_classes
from synthray.prompts.table import load_captions, prompt_table

CLASSES = load_classes("digits")


def test_classname_table_has_stable_distinct_seeds():
    table = prompt_table(CLASSES, generator="g", style="classname", n_per_class=3, template="a digit {name}")
    assert len(table) == 30 and table["id"].is_unique
    assert table.loc[0, "prompt"] == "a digit zero" and table.loc[29, "label"] == 9
    assert table["seed"].is_unique
    again = prompt_table(CLASSES, generator="g", style="classname", n_per_class=3, template="a digit {name}")
    pd.testing.assert_frame_equal(table, again)
    other = prompt_table(CLASSES, generator="h", style="classname", n_per_class=3)
    assert not set(other["seed"]) & set(table["seed"]), "seeds depend on the generator"


def test_caption_table_one_image_per_caption(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text("class_id,caption\n0,a thick zero\n0,a slanted zero\n1,a thin one\n" +
                    "".join(f"{c},digit {c}\n" for c in range(2, 10)))
    caps = load_captions(path, CLASSES["id"].tolist())
    table = prompt_table(CLASSES, generator="g", style="caption", n_per_class=2, captions=caps)
    zeros = table[table["class_id"] == "0"]
    assert list(zeros["prompt"]) == ["zero, a thick zero", "zero, a slanted zero"]
    ones = table[table["class_id"] == "1"]
    assert list(ones["replicate"]) == [0, 1] and ones["id"].is_unique  # one caption, cycled


def test_caption_validation_reports_rows(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"id": "a", "class_id": "0", "caption": "ok"}\n{"id": "a", "class_id": "77", "caption": " "}\n')
    with pytest.raises(SynthrayError) as err:
        load_captions(path, CLASSES["id"].tolist())
    msg = str(err.value)
    assert "unknown class ids in rows 2" in msg and "empty captions in rows 2" in msg and "duplicate ids in rows 1, 2" in msg
