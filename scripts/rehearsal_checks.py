"""The dress rehearsal's figures, read from what the sweeps left: the bucket (results, artifacts' meta and manifests),
Ray's actor table, and the report's folder. Each check returns its figure; `check_all` adds `ok` and `failures`.
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path
from typing import Any

# Artifact kinds whose work runs on (fake) GPU workers: generation, views (depth), features, evaluations, models.
GPU_KINDS = ("synthetic", "views", "features", "evaluations", "models", "clipscores")
BIG_GB = 24  # "big" generators declare more GPU memory than the smallest tier


def latest_results(s3: Any, prefix: str, name: str) -> Any:
    """The newest `results.parquet` of the sweeps named `name` (folders `<name>-<time>/`) under `prefix`."""
    import pandas as pd

    found = sorted(o["Key"] for o in s3.objects(f"{prefix}/sweeps/{name}-")
                   if o["Key"].endswith("/results.parquet") and o["Key"][len(f"{prefix}/sweeps/{name}-"):][:1].isdigit())
    if not found:
        return None
    return pd.read_parquet(io.BytesIO(s3.read(found[-1])))


def trials_done(s3: Any, prefix: str, expected: dict[str, int]) -> dict[str, str]:
    """Per sweep, `done/expected`, from its newest results table."""
    out = {}
    for name, count in expected.items():
        table = latest_results(s3, prefix, name)
        done = 0 if table is None else int((table["status"] == "done").sum())
        out[name] = f"{done}/{count}"
    return out


def metas(s3: Any, prefix: str) -> list[dict[str, Any]]:
    """Every complete artifact of a GPU kind: {kind, key, spec, meta}."""
    out = []
    for obj in s3.objects(f"{prefix}/"):
        parts = obj["Key"][len(prefix) + 1:].split("/")
        if len(parts) == 3 and parts[0] in GPU_KINDS and parts[2] == "_MANIFEST.json":
            base = f"{prefix}/{parts[0]}/{parts[1]}"
            out.append({"kind": parts[0], "key": parts[1], "spec": json.loads(s3.read(f"{base}/spec.json")),
                        "meta": json.loads(s3.read(f"{base}/meta.json"))})
    return out


def _generator(spec: dict[str, Any]) -> str | None:
    gen = spec.get("generator")
    return gen.get("name") if isinstance(gen, dict) else gen


def placement(found: list[dict[str, Any]], head: str, memory: dict[str, float]) -> dict[str, Any]:
    """Where the work ran, from each artifact's meta `placement` ({node, labels, gpu} per node it ran on)."""
    big, on_head, unplaced, by_kind = [], [], [], {}
    for art in found:
        where = art["meta"].get("placement")
        by_kind[art["kind"]] = by_kind.get(art["kind"], 0) + 1
        if not where:
            unplaced.append(f"{art['kind']}/{art['key'][:8]}")
            continue
        if any(w.get("node") == head for w in where):
            on_head.append(f"{art['kind']}/{art['key'][:8]}")
        gen = _generator(art["spec"]) if art["kind"] == "synthetic" else None
        if gen and memory.get(gen, 0) > BIG_GB:
            tiers = sorted({w.get("labels", {}).get("synthray.io/gpu-memory-gb") for w in where}, key=str)
            big.append((gen, tiers))
    wrong = [f"{g} on {t}" for g, t in big if t != ["80"]]
    return {"artifacts by kind": by_kind, "big generations": len(big), "big generations off the 80 GB node": wrong,
            "on the head": on_head, "without placement": unplaced}


def trial_resources(cluster: Any) -> dict[str, Any]:
    """The resources every Tune trial actor (ImplicitFunc: a function trainable) asked Ray for."""
    rows = cluster.ray_json(
        "from ray.util.state import list_actors\n"
        "out = [dict(a.required_resources or {}) for a in list_actors(filters=[('class_name', '=', 'ImplicitFunc')], "
        "detail=True, limit=10000)]")
    gpu = [r for r in rows if r.get("GPU", 0) > 0]
    cpus = sorted({r.get("CPU", 0) for r in rows})
    return {"trial actors": len(rows), "with a GPU": len(gpu), "CPUs each": cpus}


def rebuilt(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Artifacts complete before the kill whose manifest changed afterwards (rewritten: rebuilt)."""
    return sorted(k for k, v in before.items() if after.get(k) != v)


# The report's figures the rehearsal cannot draw without a sibling sweep, and the siblings that give their trials:
# structure/texture needs depth (rehearsal-probes) or texture (rehearsal-texture), high-/low-pass the probes, the VAE
# table the controls (real-holdout, vae-reencode:sd15). Every other figure draws from the main sweep alone (class
# names or both prompt styles, test_resnet standing in for ResNet-50, rgb): release date, GenEval, CLIPScore,
# density/coverage, asymmetry, the per-class heatmap.
NEEDS = {"structure-texture": ("rehearsal-probes", "rehearsal-texture"), "frequency": ("rehearsal-probes",),
         "vae-bottleneck": ("rehearsal-controls",)}


def undrawable(sweeps: Any) -> list[str]:
    """The figures that the rehearsal's `sweeps` (names) legitimately leave "Not drawn"."""
    return sorted(name for name, by in NEEDS.items() if not set(by) & set(sweeps))


def report_figures(report: Path) -> dict[str, Any]:
    """Per figure section of the page: drawn, or not drawn with the page's reason; and the figures whose note says
    an architecture stands in for ResNet-50."""
    page = (report / "report.html").read_text()
    sections = re.findall(r'<section id="([^"]+)">(.*?)</section>', page, re.S)
    missing = {name: html.unescape(why) for name, body in sections
               for why in re.findall(r'<p class="note">Not drawn: (.*?)</p>', body, re.S)}
    return {"drawn": [name for name, _ in sections if name not in missing], "not drawn": missing,
            "stand-in": [name for name, body in sections if "stands in." in body]}


def zoo_memory() -> dict[str, float]:
    from synthray.config import compose

    cfg = compose(["experiment=rehearsal"])
    return {name: float(e.get("gpu_memory_gb") or cfg.generation.gpu_memory_gb) for name, e in cfg.generators.items()
            if e.get("kind") == "diffusers"}


def check_all(s3: Any, cluster: Any, head: str, expected: dict[str, int], before: dict[str, str], storage: str,
              report: Path) -> dict[str, Any]:
    from rehearsal import result_manifests

    prefix = storage.split(f"s3://{s3.bucket}/", 1)[1]
    figures: dict[str, Any] = {"trials done": trials_done(s3, prefix, expected)}
    figures["placement"] = placement(metas(s3, prefix), head, zoo_memory())
    figures["trial resources"] = trial_resources(cluster)
    figures["finished before the kill"] = len(before)
    figures["rebuilt after the resume"] = rebuilt(before, result_manifests(s3))
    figures["report"] = report_figures(report)
    failures = [f"{name}: {value}" for name, value in figures["trials done"].items()
                if value != f"{expected[name]}/{expected[name]}"]
    place = figures["placement"]
    if place["big generations off the 80 GB node"] or place["on the head"] or place["without placement"]:
        failures.append("placement")
    if not place["big generations"]:
        failures.append("no big generator ran")
    if figures["trial resources"]["with a GPU"] or any(c > 1 for c in figures["trial resources"]["CPUs each"]):
        failures.append("a trial held a GPU or more than one CPU")
    if figures["rebuilt after the resume"]:
        failures.append("artifacts rebuilt after the resume")
    # Every figure the sweeps can draw is drawn, and only those: the cut-down (no siblings) leaves exactly
    # structure-texture, frequency and the VAE table; the full rehearsal none.
    not_drawn, want = sorted(figures["report"]["not drawn"]), undrawable(expected)
    if not_drawn != want:
        failures.append(f"report: not drawn {not_drawn}, expected {want}")
    figures["failures"] = failures
    figures["ok"] = not failures
    return figures
