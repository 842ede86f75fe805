"""GenEval scores, computed outside synthray (they need an object detector), joined into the results by generator.

`metrics.geneval: published` reads the CSV shipped with synthray (`synthray/conf/geneval.csv`): each generator's
overall score as a paper, a model card or a leaderboard printed it, with its source and link; a generator with no
citable score has an empty cell and no point in the GenEval figure. Scores are never estimated here.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from synthray.core import storage
from synthray.core.registry import SynthrayError

PUBLISHED = Path(__file__).resolve().parents[1] / "conf" / "geneval.csv"


def load_geneval(cfg: Any) -> dict[str, float]:
    """generator -> GenEval overall score from `metrics.geneval` (CSV: generator,geneval; a local file or a storage
    URI, read through the storage layer so that the head of a cluster reads it too); {} when unset."""
    path = cfg.metrics.geneval
    if not path:
        return {}
    path = storage.normalize(str(PUBLISHED if path == "published" else path))
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise SynthrayError(f"metrics.geneval: no such file {path} (a CSV with columns generator,geneval)") from None
    except OSError as err:  # a folder, or storage that cannot be reached
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SynthrayError(f"metrics.geneval: cannot read {path} ({why})") from None
    table = pd.read_csv(io.BytesIO(data), dtype={"generator": str})
    if not {"generator", "geneval"} <= set(table.columns):
        raise SynthrayError(f"metrics.geneval: {path} needs columns generator,geneval; found {','.join(table.columns)}")
    table = table[table["geneval"].notna()]  # an empty cell: no published score for that generator
    scores = pd.to_numeric(table["geneval"], errors="coerce")
    bad = table.index[scores.isna()].tolist()
    if bad:
        raise SynthrayError(f"metrics.geneval: {path} row {bad[0] + 2}: geneval '{table['geneval'][bad[0]]}' is not a number")
    dup = table["generator"][table["generator"].duplicated()].tolist()
    if dup:
        raise SynthrayError(f"metrics.geneval: {path} lists generator '{dup[0]}' twice")
    return dict(zip(table["generator"], scores.astype(float)))


def join_geneval(cfg: Any, table: pd.DataFrame) -> pd.DataFrame:
    """The results table with a `geneval` column (NaN for generators the CSV does not list)."""
    scores = load_geneval(cfg)
    return table.assign(geneval=table["generator"].map(scores).astype(float))  # all NaN without a CSV: same schema
