"""`synthray` command line: run, resume and list. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from synthray.registry import SynthrayError

log = logging.getLogger("synthray")

LISTABLE = ("generators", "archs", "probes", "experiments", "recipes")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthray", description="Sweeps generators x prompt styles x architectures x probes on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment (default: smoke)", description="Overrides use Hydra's grammar: "
                         "experiment=paper storage=/data/runs grid.arch=[resnet50,convnext_tiny] recipe.epochs=3")
    run.add_argument("overrides", nargs="*", help="key=value overrides")
    run.add_argument("-v", "--verbose", action="store_true", help="every log line on the console too (always in <sweep>/logs/)")
    rep = sub.add_parser("report", help="the study's figures and the results table as one HTML page",
                         description="Inputs: sweep names (under storage=), sweep folders or URIs, or results.parquet files; "
                         "several merge into one report. Default: the newest sweep.")
    rep.add_argument("inputs", nargs="*", help="sweeps or results.parquet files, and storage=<dir> for sweep names")
    rep.add_argument("--out", default="synthray-report", help="output folder (default ./synthray-report)")
    rep.add_argument("--heatmap", metavar="GENERATOR/ARCH", help="the per-class heatmap's generator and architecture")
    rep.add_argument("--per-class", action="store_true", help="density against coverage per class too")
    res = sub.add_parser("resume", help="continue an interrupted sweep")
    res.add_argument("sweep", nargs="?", help="sweep name, name prefix or folder (default: the newest)")
    res.add_argument("overrides", nargs="*", help="only storage=<dir> is read")
    res.add_argument("--submit", action="store_true", help="resume it as a Ray Job on the cluster at --address")
    res.add_argument("-v", "--verbose", action="store_true", help="every log line on the console too (always in <sweep>/logs/)")
    res.add_argument("--follow", action="store_true", help="with --submit: print the job's log until it ends")
    _cluster_args(res)
    sbm = sub.add_parser("submit", help="run a sweep as a Ray Job on a remote cluster (from a laptop)",
                         description="Packages this working dir and experiments/, then runs `synthray run` on the head.")
    sbm.add_argument("overrides", nargs="*", help="key=value overrides, as for run; storage must be a URI the cluster reaches")
    sbm.add_argument("--follow", action="store_true", help="print the job's log until it ends, then its results")
    _cluster_args(sbm)
    jobs = sub.add_parser("jobs", help="list the cluster's jobs")
    _cluster_args(jobs)
    logs = sub.add_parser("logs", help="print a job's log")
    logs.add_argument("job", help="submission id (from synthray submit or synthray jobs)")
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    _cluster_args(logs)
    stop = sub.add_parser("stop", help="stop a job")
    stop.add_argument("job")
    _cluster_args(stop)
    rsl = sub.add_parser("results", help="print a sweep's results table (from storage; object-store URIs work)")
    rsl.add_argument("target", help="a job id, a sweep name (with storage=...) or a sweep folder URI")
    rsl.add_argument("overrides", nargs="*", help="storage=<uri> for a sweep name")
    _cluster_args(rsl)
    pln = sub.add_parser("plan", help="dry run: trials, what is reused, GPU-hours and peak GPUs; launches nothing",
                         description="Takes run's overrides; starts no Ray, builds and writes nothing. Reuse is read from "
                                     "storage when it is reachable (else every trial counts as to run). Needs no weights.")
    pln.add_argument("overrides", nargs="*", help="key=value overrides, as for run")
    pln.add_argument("--throughputs", metavar="YAML", help="throughput figures (default: synthray/conf/throughputs.yaml)")
    cfg = sub.add_parser("config", help="print the composed configuration that run would use (Hydra's --cfg job)",
                         description="Composes the base config, the experiment and the overrides, resolves every "
                                     "interpolation, and prints YAML. Starts nothing, writes nothing.")
    cfg.add_argument("overrides", nargs="*", help="key=value overrides, as for run")
    cfg.add_argument("--package", "-p", metavar="KEY", help="print only this part, e.g. training or generators.sd15")
    lst = sub.add_parser("list", help="list registered names")
    lst.add_argument("what", choices=LISTABLE)
    exp = sub.add_parser("export", help="write a synthetic dataset as an ImageFolder tree")
    exp.add_argument("dataset", help="dataset folder: <storage>/synthetic/<key>")
    exp.add_argument("out", help="output folder (class folders are created inside)")
    stage = sub.add_parser("stage-weights", help="copy hub weights to hub.cache, so autoscaled nodes never need the hub",
                           description="Names: generators of the zoo (sd15 ...), depth, captioner, clip, dinov2, inception, or hub "
                                       "ids (org/name[@revision]). Needs hub.cache=<storage URI>.")
    stage.add_argument("names", nargs="+", help="model names, then key=value overrides (hub.cache=s3://bucket/hub)")
    cap = sub.add_parser("caption", help="caption the real training images (captioner.*): builds or reuses the table",
                         description="The table prompts.captions=captioner reads; prints its URI and row count.")
    cap.add_argument("overrides", nargs="*", help="key=value overrides, as for run (captioner.backend=local ...)")
    return p


def _cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="the cluster's job API, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")
    parser.add_argument("--with-credentials", action="store_true",
                        help="also pass this machine's cloud credentials (AWS_*, GOOGLE_APPLICATION_CREDENTIALS) to the job")


def _cluster_command(args: argparse.Namespace) -> int:
    """submit, jobs, logs, stop, results and resume --submit: talk to a remote cluster's job API."""
    from synthray import submit

    if args.command == "results" and not args.target.startswith("raysubmit_"):
        from synthray.sweep.runner import find_sweep, format_table, read_results

        root = _storage_override(args.overrides)
        uri = f"{find_sweep(root, args.target)}/results.parquet"
        print(format_table(read_results(uri)))
        print(f"results: {uri}")
        return 0
    if args.command in ("submit", "resume"):
        what = (["run", args.overrides] if args.command == "submit"
                else ["resume", [a for a in [args.sweep, *args.overrides] if a]])
        job = submit.submit(args.address, what[0], what[1], args.with_credentials)
        print(f"submitted {job}; follow it with: synthray logs {job} --follow", flush=True)
        if not getattr(args, "follow", False):
            return 0
        args.job = job
    jobs = submit.client(args.address)
    if args.command == "jobs":
        print("\n".join(submit.list_jobs(jobs)))
    elif args.command == "stop":
        submit.job_info(jobs, args.job)
        jobs.stop_job(args.job)
        print(f"stopping {args.job}")
    elif args.command in ("logs", "submit", "resume"):
        if args.follow:
            for chunk in submit.follow_logs(jobs, args.job):
                print(chunk, end="", flush=True)
        else:
            submit.job_info(jobs, args.job)
            print(jobs.get_job_logs(args.job), end="")
        status = submit.job_info(jobs, args.job).status.value
        if args.command != "logs" or args.follow:
            print(f"job {args.job}: {status}")
            return 0 if status == "SUCCEEDED" else 1
    elif args.command == "results":
        from synthray.sweep.runner import format_table, read_results

        uri = submit.results_uri(jobs, args.target)
        print(format_table(read_results(uri)))
        print(f"results: {uri}")
    return 0


def _stage_weights(words: Sequence[str]) -> list[str]:
    """Stage each named model's hub snapshot to hub.cache; returns one line per model."""
    from synthray.config import compose
    from synthray.models import Models, stage_weights
    from synthray.storage import check_storage

    names = [w for w in words if "=" not in w]
    cfg = compose([w for w in words if "=" in w])
    if cfg.hub.cache:
        check_storage(cfg.hub.cache)
    models, lines = Models.from_cfg(cfg), []
    for name in names:
        if name in cfg.generators and cfg.generators[name].kind == "diffusers":
            model, use = str(cfg.generators[name].model), "pipeline"
        elif name == "depth":
            model, use = str(cfg.probes.depth.model), "depth"
        elif name == "captioner":
            model, use = str(cfg.captioner.local.model), "captioner"
        elif name in cfg.metrics.encoders:
            model, use = str(cfg.metrics.encoders[name].model), "encoder"
        else:
            model, use = name, None
        uri, count = stage_weights(models, model, use)
        lines.append(f"staged {model} ({count} files) at {uri}")
    return lines


def _list(what: str) -> list[str]:
    from synthray.config import compose, list_experiments

    if what == "experiments":
        return [f"{name:<16} {path}" for name, path in list_experiments().items()]
    if what == "recipes":
        from synthray.config import list_recipes

        out = []
        for name in list_recipes():
            r = compose([f"recipe={name}"]).recipe
            out.append(f"{name:<8} {r.epochs} epochs, batch {r.batch_size}, {r.optimizer} lr {r.lr}, "
                       f"{r.test_transform.crop}px, cutmix {r.cutmix.prob}")
        return out
    if what == "probes":
        from synthray.probes.transforms import PROBES

        return PROBES.names()
    if what == "archs":
        from synthray.training.archs import describe

        return describe()
    cfg = compose([])
    rows = []
    for name, entry in cfg.generators.items():
        model = entry.get("model", "(real held-out images)")
        how = f"{entry.pipeline} {entry.steps} steps cfg {entry.guidance} {entry.resolution}px" if entry.kind == "diffusers" else f"control: {entry.kind} (held-out real images)"
        rows.append(f"{name:<17} released {entry.get('released') or '-':<11} protocols model-default,paper  {how:<52} {model}")
    rows.append("vae-reencode:<generator>  control: held-out real images encoded and decoded by that diffusers generator's VAE, e.g. vae-reencode:sd15")
    return rows


def _config_yaml(overrides: Sequence[str], package: str | None) -> str:
    from omegaconf import OmegaConf

    from synthray.config import compose

    cfg = compose(overrides)
    if package:
        part = OmegaConf.select(cfg, package, default=None)
        if part is None:
            raise SynthrayError(f"config has no key '{package}'; top-level keys: {', '.join(cfg.keys())}")
        return OmegaConf.to_yaml(part) if OmegaConf.is_config(part) else f"{part}\n"
    return OmegaConf.to_yaml(cfg)


def _report(args: Any) -> str:
    from pathlib import Path

    from synthray.report.page import write_report

    overrides = [a for a in args.inputs if a.startswith("storage=")]
    inputs = [a for a in args.inputs if not a.startswith("storage=")]
    heatmap = None
    if args.heatmap:
        if args.heatmap.count("/") != 1:
            raise SynthrayError(f"--heatmap takes GENERATOR/ARCH, e.g. sd15/tv:resnet50; got '{args.heatmap}'")
        heatmap = tuple(args.heatmap.split("/"))
    return str(write_report(inputs, Path(args.out), _storage_override(overrides, "report"), heatmap, args.per_class))


def _storage_override(overrides: Sequence[str], command: str = "resume") -> str:
    from synthray.config import compose

    for text in overrides:
        if not text.startswith("storage="):
            raise SynthrayError(f"{command} takes only storage=<dir>, got '{text}'")
    return str(compose(list(overrides)).storage)


def main(argv: Sequence[str] | None = None) -> int:
    from synthray.logs import setup_logging

    setup_logging()
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            print("\n".join(_list(args.what)))
            return 0
        if args.command == "stage-weights":
            print("\n".join(_stage_weights(args.names)))
            return 0
        if args.command == "caption":
            from synthray.captioning.stage import caption_command

            print(caption_command(args.overrides))
            return 0
        if args.command in ("submit", "jobs", "logs", "stop", "results") or getattr(args, "submit", False):
            return _cluster_command(args)
        if args.command == "export":
            from pathlib import Path

            from synthray.generation.export import export_imagefolder

            count = export_imagefolder(args.dataset, Path(args.out))
            print(f"exported {count} images to {args.out}")
            return 0
        if args.command == "report":
            print(f"report: {_report(args)}")
            return 0
        if args.command == "config":
            print(_config_yaml(args.overrides, args.package), end="")
            return 0
        if args.command == "plan":
            from synthray.sweep.cost import plan_lines

            print("\n".join(plan_lines(args.overrides, args.throughputs)))
            return 0
        from synthray.sweep.runner import format_table, resume_sweep, run_sweep

        if args.command == "run":
            from synthray.config import compose

            table, path = run_sweep(compose(args.overrides), verbose=args.verbose)
        else:
            sweep = args.sweep
            if sweep and "=" in sweep:  # `synthray resume storage=x`: no sweep name given
                args.overrides.insert(0, sweep)
                sweep = None
            table, path = resume_sweep(_storage_override(args.overrides), sweep, verbose=args.verbose)
        from synthray.sweep.console import forward_worker_logs

        forward_worker_logs(False)
    except SynthrayError as err:
        print(f"synthray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synthray: interrupted; continue with: synthray resume", file=sys.stderr)
        return 130
    print(format_table(table))
    print(f"results: {path}")
    missing = int((table["status"] != "done").sum())
    if missing:
        from synthray import storage

        sweep_dir = storage.parent(path)
        root = storage.parent(storage.parent(sweep_dir))
        print(f"synthray: {missing} trial(s) did not finish; continue with: synthray resume {storage.name(sweep_dir)} storage={root}", file=sys.stderr)
        return 1
    return 0
