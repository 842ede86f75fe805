"""The results table's columns, defined once: `results.parquet` (sweep/runner.py), the table `synthray run` and
`synthray results` print (`runner.format_table`) and the report's table (report/page.py) all order them from here.

Extra grid axes (`grid.axes`) are columns named by their dotted config key (`generation.guidance`); they follow the
four named axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synthray.graph.grid import AXES, TASK  # noqa: E402,F401 - the grid axes lead every table

# Every trial's figures, in order, after the axes.
FIGURES = ("synth_to_real_acc", "real_to_synth_acc", "real_to_real_acc", "synth_to_real_acc_last", "best_epoch",
           "density", "coverage", "precision", "recall", "fd", "clipscore", "geneval", "n_synthetic", "released")
# A dense task's figures (grid.task: detection, segmentation), after the classification ones; their per-class lists
# (`..._per_class`) stay in the record, as the classifiers' do.
DENSE_FIGURES = ("synth_to_real_map", "real_to_synth_map", "real_to_real_map", "synth_to_real_map_50",
                 "synth_to_real_miou", "real_to_synth_miou", "real_to_real_miou", "n_labelled")
RESULT_COLUMNS = [*AXES, *FIGURES]
STATUS = "status"              # done | missing, added when the table is collected
NOT_SHOWN = ("precision", "recall")  # in results.parquet, left out of the printed and reported tables


def extra_axis_columns(columns: Sequence[str]) -> list[str]:
    """The extra grid axes among `columns`: the names with a dot (config keys)."""
    return [c for c in columns if "." in c]


def leading_columns(extra_axes: Sequence[str] = ()) -> list[str]:
    """The columns `results.parquet` starts with: the four axes, a dense sweep's task, the extra axes, the figures
    (classification's, then the dense tasks'), the status."""
    return [*AXES, TASK, *extra_axes, *FIGURES, *DENSE_FIGURES, STATUS]


def shown_columns(table: Any, first: Sequence[str] = ()) -> list[str]:
    """The columns a table of results shows, in order, of those `table` has: `first` (e.g. the report's `sweep`),
    the axes, the extra axes, the figures but `NOT_SHOWN`, the status."""
    order = [*first, *leading_columns(extra_axis_columns(list(table.columns)))]
    return [c for c in order if c in table and c not in NOT_SHOWN]
