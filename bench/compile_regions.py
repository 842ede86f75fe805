"""CPU compile time of the tiny twins, denoiser compiled by regions against the whole model (issue 25).

For each family and scope, a fresh process builds the generator with `generation.compile=default` on CPU and an
empty compile cache, and times its first batch (compiling) against its second (compiled): the difference is the
cold compile. A second fresh process on the same cache times the warm start (loading compiled code). Each figure
is given in wall seconds and in CPU seconds (this process and the compilers it ran): on a shared machine the wall
time measures the neighbours too, the CPU time does not.

  python bench/compile_regions.py                       # tiny-sd and tiny-flux, batch 2, 2 steps
  python bench/compile_regions.py --families sd --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PIPELINES = {"sd": "StableDiffusionPipeline", "flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline",
             "pixart": "PixArtAlphaPipeline", "sdxl": "StableDiffusionXLPipeline"}


def one(family: str, scope: str, model: Path, scratch: Path, batch: int, steps: int) -> dict[str, Any]:
    """In this process: build the compiled generator, time two batches. Returns the figures."""
    import pandas as pd

    from synthray.generation.generators import DiffusersGenerator

    spec = {"name": f"tiny-{family}", "pipeline": PIPELINES[family], "dtype": "float32", "model_path": str(model),
            "params": {"steps": steps, "guidance": 2.0, "resolution": 32}, "compile": "default", "compile_scope": scope,
            "compile_cpu": True, "compile_cache": "node", "scratch": str(scratch), "compile_timeout_s": None}
    generate = DiffusersGenerator(spec)
    rows = pd.DataFrame({"prompt": [f"a digit {i}" for i in range(batch)], "seed": range(batch)})
    times, cpu = [], []
    for _ in range(2):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        generate(rows)
        times.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
    return {"family": family, "scope": scope, "first_batch_s": times[0], "steady_batch_s": times[1],
            "compile_s": times[0] - times[1], "compile_cpu_s": cpu[0] - cpu[1]}


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the C++ compiler runs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(family: str, scope: str, model: Path, scratch: Path, batch: int, steps: int) -> dict[str, Any]:
    """`one` in a fresh process: nothing compiled in memory, only what the cache folder holds."""
    # One compile thread: inductor compiles in this process and waits for each compiler, so CPU time counts it all.
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--one", family, scope, str(model), str(scratch), str(batch), str(steps)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", choices=sorted(PIPELINES), default=["sd", "flux"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "synthray-bench")
    p.add_argument("--no-warm", dest="warm", action="store_false", help="skip the warm starts")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--one", nargs=6, help=argparse.SUPPRESS)  # the child process: family scope model scratch batch steps
    args = p.parse_args()
    if args.one:
        family, scope, model, scratch, batch, steps = args.one
        print(json.dumps(one(family, scope, Path(model), Path(scratch), int(batch), int(steps))))
        return

    from synthray.tiny.pipelines import TINY_BUILDERS

    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for family in args.families:
        model = args.workdir / f"tiny-{family}"
        if not (model / "model_index.json").exists():
            TINY_BUILDERS[family](model)
        for scope in ("whole", "regions"):
            scratch = Path(tempfile.mkdtemp(dir=args.workdir, prefix=f"compile-{family}-{scope}-"))
            cold = run(family, scope, model, scratch, args.batch, args.steps)
            print(f"tiny-{family} {scope:7s}: cold compile {cold['compile_s']:6.1f} s wall, {cold['compile_cpu_s']:6.1f} s CPU "
                  f"(steady batch {cold['steady_batch_s']:.2f} s)", flush=True)
            warm = run(family, scope, model, scratch, args.batch, args.steps) if args.warm else None
            if warm:
                print(f"tiny-{family} {scope:7s}: warm start {warm['compile_s']:6.1f} s wall, "
                      f"{warm['compile_cpu_s']:6.1f} s CPU", flush=True)
            results.append({**cold, "warm_start_s": warm and warm["compile_s"], "warm_start_cpu_s": warm and warm["compile_cpu_s"]})
    print("\n| twin | cold compile, whole | by regions | whole / regions | warm start, whole | by regions |")
    print("|---|---|---|---|---|---|")
    for family in args.families:
        whole, regions = (next(r for r in results if r["family"] == family and r["scope"] == s) for s in ("whole", "regions"))
        cells = [f"{r['compile_s']:.1f} s wall, {r['compile_cpu_s']:.1f} s CPU" for r in (whole, regions)]
        ratio = f"{whole['compile_s'] / regions['compile_s']:.2f} wall, {whole['compile_cpu_s'] / regions['compile_cpu_s']:.2f} CPU"
        warm = [f"{r['warm_start_s']:.1f} s wall, {r['warm_start_cpu_s']:.1f} s CPU" if r["warm_start_s"] is not None else "–"
                for r in (whole, regions)]
        print(f"| tiny-{family} | {cells[0]} | {cells[1]} | {ratio} | {warm[0]} | {warm[1]} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
