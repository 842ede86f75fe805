"""A full paper-shaped results table with synthetic numbers, for the report's tests:

- the paper's 13 generators x 2 prompt styles x 4 architectures x 5 probes (520 trials), with release dates from
  the shipped zoo and GenEval from the shipped CSV (none for sd35-large-turbo, as in `experiment=paper`);
- the controls of `experiment=paper-controls`: three VAE re-encodes of the real training images (SD1.5, SDXL, FLUX),
  class-name, the 4 architectures, on the pixel, high-pass and low-pass views (36 trials), whose Real->Real is the
  baseline; `paper_table(controls="holdout")` has those of `experiment=paper-controls-holdout` instead, real-holdout
  beside the same VAEs (48 trials).

Columns as `synthray.sweep.runner.collect` writes them (sweep/columns.py, sweep/trial.py). The numbers follow the
paper's story (older generators and caption prompts transfer better) so the figures have a shape to look at.

    .venv/bin/python -m tests.paper_table /tmp/paper.parquet   # then: synthray report /tmp/paper.parquet
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

GENERATORS = ["sd15", "sd21", "sdxl", "sdxl-turbo", "sd3-medium", "flux1-dev", "flux1-schnell", "sd35-large",
              "sd35-large-turbo", "sd35-medium", "sana", "lumina2", "qwen-image"]
STYLES = ["classname", "caption"]
ARCHS = ["tv:resnet50", "vit_tiny_patch16_224", "tv:convnext_tiny", "tv:swin_t"]
PROBES = ["rgb", "depth", "texture", "lowpass", "highpass"]
CONTROLS = ["vae-reencode:sd15", "vae-reencode:sdxl", "vae-reencode:flux1-dev"]
HOLDOUT_CONTROLS = ["real-holdout", *CONTROLS]
CONTROL_PROBES = ["rgb", "highpass", "lowpass"]
CONF = Path(__file__).resolve().parent.parent / "synthray" / "conf"
ARCH_SHIFT = {"tv:resnet50": 0.0, "vit_tiny_patch16_224": -0.08, "tv:convnext_tiny": 0.03, "tv:swin_t": 0.01}
PROBE_SHIFT = {"rgb": 0.0, "depth": -0.15, "texture": -0.2, "lowpass": -0.1, "highpass": -0.18}


def _released() -> dict[str, str | None]:
    from omegaconf import OmegaConf

    zoo = OmegaConf.load(CONF / "generators.yaml")
    return {g: zoo[g].get("released") for g in GENERATORS}


def _row(rng: np.random.Generator, n_classes: int, generator: str, style: str, arch: str, probe: str, acc: float,
         released: str | None, geneval: float | None, density: float, coverage: float) -> dict:
    acc = float(np.clip(acc + rng.normal(0, 0.01), 0.01, 0.99))
    per_class = np.clip(acc + rng.normal(0, 0.1, n_classes), 0, 1)
    cls = {str(c): float(v) for c, v in enumerate(per_class)}
    return {"generator": generator, "prompt_style": style, "arch": arch, "probe": probe,
            "synth_to_real_acc": acc, "synth_to_real_top5": min(1.0, acc + 0.25),
            "synth_to_real_per_class": [float(v) for v in per_class], "synth_to_real_acc_last": acc - 0.01,
            "real_to_synth_acc": float(np.clip(acc + 0.25 + 0.1 * density, 0, 1)), "real_to_synth_top5": 0.95,
            "real_to_real_acc": 0.78 + ARCH_SHIFT[arch] + PROBE_SHIFT[probe] / 2, "real_to_real_top5": 0.93,
            "best_epoch": int(rng.integers(40, 80)), "selection_acc": acc, "selection_loss": 2.0,
            "clip_precision": 0.7, "clip_recall": 0.3, "clip_density": density, "clip_coverage": coverage,
            "clip_fd": 0.2, "clip_per_class": {"coverage": cls, "density": {c: 1.5 * v for c, v in cls.items()}},
            "precision": 0.7, "recall": 0.3, "density": density, "coverage": coverage, "fd": 0.2,
            "clipscore": 0.15 + 0.02 * (geneval or 0.5), "n_synthetic": 100_000, "released": released,
            "dataset": f"synthetic-{generator}-{style}", "synth_model": f"model-{generator}-{arch}-{probe}",
            "real_model": f"real-{arch}-{probe}", "geneval": geneval, "status": "done"}


def paper_table(seed: int = 0, n_classes: int = 20, controls: str = "study") -> pd.DataFrame:
    """The table: 520 generator trials and 36 control trials (`controls="holdout"`: 48), in the runner's row shape."""
    rng = np.random.default_rng(seed)
    released = _released()
    scores = pd.read_csv(CONF / "geneval.csv").set_index("generator")["geneval"]
    rows = []
    for (age, gen), style, arch, probe in itertools.product(enumerate(GENERATORS), STYLES, ARCHS, PROBES):
        newer = age / (len(GENERATORS) - 1)  # 0 (sd15) .. 1 (qwen-image)
        # structure holds, texture and high frequencies fall with newer generators (the paper's reading)
        fall = {"depth": 0.05, "texture": 0.3, "highpass": 0.3, "lowpass": 0.12}.get(probe, 0.2)
        acc = 0.45 - fall * newer + (0.06 if style == "caption" else 0.0) + ARCH_SHIFT[arch] + PROBE_SHIFT[probe]
        geneval = None if pd.isna(scores.get(gen)) else float(scores[gen])
        rows.append(_row(rng, n_classes, gen, style, arch, probe, acc, released[gen], geneval,
                         density=0.8 + 0.7 * newer, coverage=0.6 - 0.35 * newer))
    names = {"study": CONTROLS, "holdout": HOLDOUT_CONTROLS}[controls]
    for (i, gen), arch, probe in itertools.product(enumerate(names), ARCHS, CONTROL_PROBES):
        cost = 0.0 if gen == "real-holdout" else 0.02 + 0.01 * i + (0.08 if probe == "highpass" else 0.0)
        acc = 0.7 + ARCH_SHIFT[arch] + PROBE_SHIFT[probe] - cost
        row = _row(rng, n_classes, gen, "classname", arch, probe, acc, None, None, density=1.0, coverage=0.95)
        rows.append(dict(row, clipscore=None))
    return pd.DataFrame(rows)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "paper.parquet")
    paper_table().to_parquet(out, index=False)
    print(out)
