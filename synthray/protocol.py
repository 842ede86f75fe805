"""The study's protocol, point by point, from one table (`conf/protocol.yaml`).

The same rows render PROTOCOL.md (`python -m synthray.protocol > PROTOCOL.md`) and drive tests/test_protocol.py,
which composes `experiment=paper` and checks every row's keys against it, so the document and the config cannot
drift apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from synthray.config import CONF_DIR

ROWS_FILE = CONF_DIR / "protocol.yaml"
STUDY_REPO = "Bill2462/When-Pretty-Isn-t-Useful-codebase"
_ABSENT = object()

HEADER = f"""# Protocol: the study, point by point

`experiment=paper` reproduces the study's public code ([{STUDY_REPO}](https://github.com/{STUDY_REPO})) by
default. Each row gives the study's value and the file that holds it, the configuration synthray composes for
`experiment=paper` (see it with `synthray config experiment=paper`), and the switch for a run that deliberately
differs. `tests/test_protocol.py` checks every row against the composed configuration; this file is generated from
`synthray/conf/protocol.yaml` (`python -m synthray.protocol > PROTOCOL.md`).

Status: **same** (synthray does what the study's code does; the switch departs from it), **differs** (synthray does
not, yet; the row says how), **not pinned down** (the study's code leaves it open; the row says what synthray chose
and why).

"""


STATUSES = ("same", "differs", "not pinned down")


def rows() -> list[dict[str, Any]]:
    """Every row: area, item, study, file, paper (config key -> value), switch, status[, experiment]. A row without a
    status is `same`, or `differs` when its switch says synthray's value is not the study's."""
    out = yaml.safe_load(Path(ROWS_FILE).read_text())
    for r in out:
        r.setdefault("status", "differs" if str(r["switch"]).startswith("- (not the study's") else "same")
    return out


def _show(value: Any) -> str:
    """A value as it is written on the command line: null, true, [a,b]."""
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return "null" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))


def render() -> str:
    """PROTOCOL.md: one markdown table, one row per item."""
    lines = [HEADER, "| Area | Item | Status | The study | Study file | synthray `experiment=paper` | Switch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows():
        paper = "<br>".join(f"`{k}={_show(v)}`" for k, v in r["paper"].items())
        if r.get("experiment", "paper") != "paper":
            paper = f"`experiment={r['experiment']}`:<br>{paper}"
        cells = [r["area"], r["item"], r["status"], r["study"], f"`{r['file']}`", paper, r["switch"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return math.isclose(float(actual), expected, rel_tol=1e-12, abs_tol=0.0)
    return type(actual) is type(expected) and actual == expected if isinstance(expected, bool) else actual == expected


def mismatches(cfg: Any) -> list[str]:
    """One line per key whose value in `cfg` is not the protocol's (an absent key counts as null). Rows that name
    an experiment (the grids, the VAE control) are checked only for that experiment, and their keys win over the
    rows of every experiment there (the study stored its VAE control at Pillow's quality 75, its generated images
    at 95)."""
    out = []
    table = rows()
    own = {key for r in table if r.get("experiment") == cfg.get("experiment") for key in r["paper"]}
    for r in table:
        if r.get("experiment") not in (None, cfg.get("experiment")):
            continue
        for key, expected in r["paper"].items():
            if r.get("experiment") is None and key in own:
                continue
            actual = _plain(OmegaConf.select(cfg, key, default=_ABSENT))
            actual = None if actual is _ABSENT else actual
            if not _equal(actual, expected):
                out.append(f"{r['item']}: {key} is {actual!r}, the study's is {expected!r}")
    return out


if __name__ == "__main__":
    print(render(), end="")
