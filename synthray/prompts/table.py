"""Prompt tables: classes x prompt style x n per class, one row per image to generate.

Every row carries a seed hashed from (generator, prompt id, replicate), so a row's image does not depend on
which batch, shard or actor produced it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from synthray.core.artifacts import seed_hash
from synthray.core.registry import SynthrayError, unknown_name

PROMPT_STYLES = ("classname", "caption")
PROMPT_COLUMNS = ["id", "label", "class_id", "class_name", "prompt", "prompt_id", "replicate", "index_in_class", "seed"]


def load_captions(path: str | Path, class_ids: list[str]) -> pd.DataFrame:
    """Read a captions table (CSV, JSONL or parquet with columns class_id, caption[, id]) and validate it.

    Unknown class ids, empty captions and duplicate ids are reported with their 1-based row numbers.
    """
    import io

    from synthray.core import storage

    local = storage.is_local(str(path))  # a storage URI (s3://, gs://) is read through the storage layer
    path = Path(path).expanduser() if local else str(path)
    suffix = Path(str(path)).suffix
    if not (Path(path).is_file() if local else storage.exists(str(path))):
        raise SynthrayError(f"captions table not found: {path}")
    readers = {".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
               ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=str),
               ".parquet": pd.read_parquet}
    if suffix not in readers:
        raise SynthrayError(f"captions table {path}: unsupported format; use .csv, .jsonl or .parquet")
    table = readers[suffix](path if local else io.BytesIO(storage.read_bytes(str(path))))
    missing = {"class_id", "caption"} - set(table.columns)
    if missing:
        raise SynthrayError(f"captions table {path}: missing columns {sorted(missing)}")
    table = table.astype({"class_id": str, "caption": str})
    if "id" not in table.columns:
        table["id"] = [str(i) for i in range(len(table))]
    rows = lambda mask: ", ".join(str(i + 1) for i in table.index[mask][:10])  # noqa: E731
    problems = []
    unknown = ~table["class_id"].isin(class_ids)
    if unknown.any():
        problems.append(f"unknown class ids in rows {rows(unknown)}")
    empty = table["caption"].str.strip() == ""
    if empty.any():
        problems.append(f"empty captions in rows {rows(empty)}")
    dup = table["id"].astype(str).duplicated(keep=False)
    if dup.any():
        problems.append(f"duplicate ids in rows {rows(dup)}")
    if problems:
        raise SynthrayError(f"captions table {path}: " + "; ".join(problems))
    return table


def prompt_table(
    classes: pd.DataFrame,
    *,
    generator: str,
    style: str,
    n_per_class: int,
    template: str = "{name}",
    caption_template: str = "{name}, {caption}",
    captions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Rows (columns `PROMPT_COLUMNS`) for every class in `classes` (columns id, name; row order = label).

    `classname`: `n_per_class` replicates of `template`. `caption`: one image per caption, the class's first
    `n_per_class` captions, cycling with a higher replicate index when a class has fewer.
    """
    if style not in PROMPT_STYLES:
        raise unknown_name("prompt style", style, PROMPT_STYLES)
    if n_per_class < 1:
        raise SynthrayError(f"prompts.n_per_class must be >= 1, got {n_per_class}")
    rows = []
    for label, (cid, name) in enumerate(zip(classes["id"], classes["name"])):
        if style == "classname":
            items = [(f"{cid}", template.format(name=name), r) for r in range(n_per_class)]
        else:
            if captions is None:
                raise SynthrayError("prompt_style=caption needs prompts.captions=<captions table>")
            own = captions[captions["class_id"] == cid]
            if own.empty:
                raise SynthrayError(f"captions table has no caption for class {cid} ({name})")
            items = []
            for i in range(n_per_class):
                cap = own.iloc[i % len(own)]
                items.append((f"{cid}/{cap['id']}", caption_template.format(name=name, caption=cap["caption"]), i // len(own)))
        for index_in_class, (prompt_id, prompt, replicate) in enumerate(items):
            rows.append({
                "id": f"{generator}/{prompt_id}/{replicate}", "label": label, "class_id": cid, "class_name": name,
                "prompt": prompt, "prompt_id": prompt_id, "replicate": replicate, "index_in_class": index_in_class,
                "seed": seed_hash(generator, prompt_id, replicate),
            })
    return pd.DataFrame(rows, columns=PROMPT_COLUMNS)
