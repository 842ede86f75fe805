"""`synthray` command line: one subcommand per function (`set_defaults(func=...)`). Bad input ends in one line on
stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from synthray.cli_jobs import _cluster_args, _jobs, _logs, _stop, _submit
from synthray.core.registry import SynthrayError

log = logging.getLogger("synthray")

LISTABLE = ("generators", "archs", "probes", "experiments", "recipes")


def _parser() -> argparse.ArgumentParser:
    from synthray import __version__

    p = argparse.ArgumentParser(prog="synthray", description="Sweeps generators x prompt styles x architectures x probes on Ray.")
    p.add_argument("--version", action="version", version=f"synthray {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment (default: smoke)", description="Overrides use Hydra's grammar: "
                         "experiment=paper storage=/data/runs grid.arch=[resnet50,convnext_tiny] recipe.epochs=3")
    run.add_argument("overrides", nargs="*", help="key=value overrides")
    run.add_argument("-v", "--verbose", action="store_true", help="every log line on the console too (always in <sweep>/logs/)")
    run.set_defaults(func=_run)
    rep = sub.add_parser("report", help="the study's figures and the results table as one HTML page",
                         description="Inputs: sweep names (under --storage), sweep folders or URIs, or results.parquet files; "
                         "several merge into one report. Default: the newest sweep. `storage=<dir>` among the inputs "
                         "is the same as --storage <dir>.")
    rep.add_argument("inputs", nargs="*", help="sweeps or results.parquet files (storage=<dir> is read as --storage)")
    rep.add_argument("--storage", metavar="DIR", help="the storage root that sweep names are found under "
                     "(default: the config's storage, ./synthray-runs)")
    rep.add_argument("--out", default="synthray-report", help="output folder (default ./synthray-report)")
    rep.add_argument("--heatmap", metavar="GENERATOR/ARCH", help="the per-class heatmap's generator and architecture")
    rep.add_argument("--per-class", action="store_true", help="density against coverage per class too")
    rep.set_defaults(func=_report_command)
    res = sub.add_parser("resume", help="continue an interrupted sweep",
                         description="Continues a stopped sweep with the config it was started with (its config.yaml); "
                                     "the only setting read from the command line is where it lives: storage=<dir> "
                                     "(or --storage DIR). Any other key=value is refused.")
    res.add_argument("words", nargs="*", metavar="sweep|storage=<dir>",
                     help="sweep name, name prefix or folder (default: the newest), and storage=<dir>")
    res.add_argument("--storage", metavar="DIR", help="the storage root the sweep is under (default ./synthray-runs)")
    res.add_argument("--submit", action="store_true", help="resume it as a Ray Job on the cluster at --address")
    res.add_argument("-v", "--verbose", action="store_true", help="every log line on the console too (always in <sweep>/logs/)")
    res.add_argument("--follow", action="store_true", help="with --submit: print the job's log until it ends")
    _cluster_args(res, sends=True)
    res.set_defaults(func=_resume)
    sbm = sub.add_parser("submit", help="run a sweep as a Ray Job on a remote cluster (from a laptop)",
                         description="Packages this working dir and experiments/, then runs `synthray run` on the head.")
    sbm.add_argument("overrides", nargs="*", help="key=value overrides, as for run; storage must be a URI the cluster reaches")
    sbm.add_argument("--follow", action="store_true", help="print the job's log until it ends, then its results")
    _cluster_args(sbm, sends=True)
    sbm.set_defaults(func=_submit)
    jobs = sub.add_parser("jobs", help="list the cluster's jobs")
    _cluster_args(jobs)
    jobs.set_defaults(func=_jobs)
    logs = sub.add_parser("logs", help="print a job's log")
    logs.add_argument("job", help="submission id (from synthray submit or synthray jobs)")
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    _cluster_args(logs)
    logs.set_defaults(func=_logs)
    stop = sub.add_parser("stop", help="stop a job")
    stop.add_argument("job")
    _cluster_args(stop)
    stop.set_defaults(func=_stop)
    rsl = sub.add_parser("results", help="print a sweep's results table (from storage; object-store URIs work)")
    rsl.add_argument("target", help="a job id, a sweep name (with storage=...) or a sweep folder URI")
    rsl.add_argument("overrides", nargs="*", metavar="storage=<dir>", help="storage=<uri> for a sweep name")
    _cluster_args(rsl)
    rsl.set_defaults(func=_results)
    pln = sub.add_parser("plan", help="dry run: trials, what is reused, GPU-hours and peak GPUs; launches nothing",
                         description="Takes run's overrides; starts no Ray, builds and writes nothing. Reuse is read from "
                                     "storage when it is reachable (else every trial counts as to run). Needs no weights.")
    pln.add_argument("overrides", nargs="*", help="key=value overrides, as for run")
    pln.add_argument("--throughputs", metavar="YAML", help="throughput figures (default: synthray/conf/throughputs.yaml)")
    pln.add_argument("--cluster", metavar="YAML", help="a `ray up` cluster file: show the node type each GPU stage lands "
                                                        "on, and refuse a stage no node type holds")
    pln.set_defaults(func=_plan)
    cfg = sub.add_parser("config", help="print the composed configuration that run would use (Hydra's --cfg job)",
                         description="Composes the base config, the experiment and the overrides, resolves every "
                                     "interpolation, and prints YAML. Starts nothing, writes nothing.")
    cfg.add_argument("overrides", nargs="*", help="key=value overrides, as for run")
    cfg.add_argument("--package", "-p", metavar="KEY", help="print only this part, e.g. training or generators.sd15")
    cfg.set_defaults(func=_config)
    lst = sub.add_parser("list", help="list registered names")
    lst.add_argument("what", choices=LISTABLE)
    lst.set_defaults(func=_list_command)
    exp = sub.add_parser("export", help="write a synthetic dataset as an ImageFolder tree")
    exp.add_argument("dataset", help="dataset folder: <storage>/synthetic/<key>")
    exp.add_argument("out", help="output folder or storage URI (class folders are created inside)")
    exp.set_defaults(func=_export)
    stage = sub.add_parser("stage-weights", help="copy hub weights to hub.cache, so autoscaled nodes never need the hub",
                           description="Each NAME is one of: a diffusers generator of the zoo (sd15 ...: its pipeline); "
                                       "depth (probes.depth.model); captioner (captioner.local.model); a feature "
                                       "encoder (clip, dinov2, inception: metrics.encoders.<name>.model); or a hub id, "
                                       "org/name[@revision], staged as it is. Anything else is refused. Words with '=' "
                                       "are config overrides; hub.cache=<storage URI> is needed.")
    stage.add_argument("names", nargs="+", metavar="NAME|key=value",
                       help="model names or hub ids, and key=value overrides (hub.cache=s3://bucket/hub)")
    stage.set_defaults(func=_stage_weights_command)
    sdata = sub.add_parser("stage-data", help="copy an ImageFolder tree (ImageNet's train/ and val/) into storage once, "
                           "for every node to read", description="Copies the tree's image files, as they are, into "
                           "parquet shards under <storage>/staged/<key> (the key: the files' names, sizes and sha256), "
                           "once; prints the data.root a sweep reads it with. Words with '=' are config overrides: "
                           "storage=<URI>, and data.classes=<list> to stage only those classes.")
    sdata.add_argument("words", nargs="+", metavar="FOLDER|URI|key=value",
                       help="the tree (a local folder or a bucket prefix, s3://bucket/imagenet), and storage=<URI>")
    sdata.set_defaults(func=_stage_data_command)
    cap = sub.add_parser("caption", help="caption the real training images (captioner.*): builds or reuses the table",
                         description="The table prompts.captions=captioner reads; prints its URI and row count.")
    cap.add_argument("overrides", nargs="*", help="key=value overrides, as for run (captioner.backend=local ...)")
    cap.set_defaults(func=_caption)
    return p


def _results(args: argparse.Namespace) -> int:
    """A sweep's results table: by job id (from the cluster), or by sweep name/folder (from storage)."""
    from synthray.core import storage

    if "://" in args.target:
        storage.check_storage(args.target)  # before the sweep modules (and Ray) are imported: a missing bucket is fast
    from synthray.sweep.runner import find_sweep, format_table, read_results

    if args.target.startswith("raysubmit_"):
        from synthray import submit

        uri = submit.results_uri(submit.client(args.address, args.insecure), args.target)
    else:
        uri = f"{find_sweep(_storage_override(args.overrides, 'results'), args.target)}/results.parquet"
    print(format_table(read_results(uri)))
    print(f"results: {uri}")
    return 0


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
    from synthray.generation.kinds import kind_of

    cfg = compose([])
    rows = []
    for name, entry in cfg.generators.items():
        model = entry.get("model", "(real held-out images)")
        how = f"{entry.pipeline} {entry.steps} steps cfg {entry.guidance} {entry.resolution}px" if kind_of(entry).sampled \
            else f"control: {entry.kind} (held-out real images)"
        rows.append(f"{name:<17} released {entry.get('released') or '-':<11} protocols model-default,paper  {how:<52} {model}")
    rows.append("vae-reencode:<generator>  control: held-out real images encoded and decoded by that diffusers generator's VAE, "
                "e.g. vae-reencode:sd15")
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

    from synthray.core.storage import check_storage

    inputs, root = _split_storage(args.inputs, args.storage, "report")
    for where in [root, *(w for w in inputs if "://" in w)]:
        check_storage(where)  # before the report's modules are imported: a missing bucket is seconds
    from synthray.report.page import write_report

    heatmap = None
    if args.heatmap:
        if args.heatmap.count("/") != 1:
            raise SynthrayError(f"--heatmap takes GENERATOR/ARCH, e.g. sd15/tv:resnet50; got '{args.heatmap}'")
        heatmap = tuple(args.heatmap.split("/"))
    return str(write_report(inputs, Path(args.out), root, heatmap, args.per_class))


def _split_storage(words: Sequence[str], option: str | None, command: str) -> tuple[list[str], str]:
    """`words` without their `storage=<dir>` (the old spelling of --storage), and the storage root from either."""
    given = [w for w in words if w.startswith("storage=")]
    if option is not None:
        given.append(f"storage={option}")
    if len(given) > 1:
        raise SynthrayError(f"{command}: storage given {len(given)} times ({', '.join(given)}); give it once")
    return [w for w in words if not w.startswith("storage=")], _storage_override(given, command)


def _storage_override(overrides: Sequence[str], command: str = "resume") -> str:
    from synthray.config import compose

    for text in overrides:
        if not text.startswith("storage="):
            raise SynthrayError(f"{command} takes only storage=<dir> (its other settings come from the sweep's "
                                f"config.yaml), got '{text}'")
    return str(compose(list(overrides)).storage)


def _resume_words(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """resume's positional words: at most one sweep (no '='), and storage=<dir> (or --storage)."""
    sweeps = [w for w in args.words if "=" not in w]
    overrides = [w for w in args.words if "=" in w]
    if len(sweeps) > 1:
        raise SynthrayError(f"resume takes one sweep, got {len(sweeps)}: {' '.join(sweeps)}")
    if args.storage is not None:
        overrides.append(f"storage={args.storage}")
    return (sweeps[0] if sweeps else None), overrides


# --- the commands: each takes the parsed arguments and returns the exit code -----------------------------------

def _list_command(args: argparse.Namespace) -> int:
    print("\n".join(_list(args.what)))
    return 0


def _stage_weights_command(args: argparse.Namespace) -> int:
    from synthray.sweep.weights import stage_named_weights

    print("\n".join(stage_named_weights(args.names)))
    return 0


def _stage_data_command(args: argparse.Namespace) -> int:
    from synthray.graph.real import stage_data_command

    print("\n".join(stage_data_command(args.words)))
    return 0


def _caption(args: argparse.Namespace) -> int:

    from synthray.sweep.runner import caption_command

    print(caption_command(args.overrides))
    return 0


def _export(args: argparse.Namespace) -> int:
    from synthray.generation.export import export_imagefolder

    count = export_imagefolder(args.dataset, args.out)
    print(f"exported {count} images to {args.out}")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    print(f"report: {_report(args)}")
    return 0


def _config(args: argparse.Namespace) -> int:
    print(_config_yaml(args.overrides, args.package), end="")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from synthray.sweep.cost import plan_lines

    print("\n".join(plan_lines(args.overrides, args.throughputs, args.cluster)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from synthray.config import compose
    from synthray.core.storage import check_storage

    cfg = compose(args.overrides)
    check_storage(cfg.storage)  # before the stages (torch, Ray Data) are imported: a missing bucket is seconds
    from synthray.sweep.runner import run_sweep

    return _sweep_done(*run_sweep(cfg, verbose=args.verbose))


def _resume(args: argparse.Namespace) -> int:
    sweep, overrides = _resume_words(args)
    if args.submit:
        args.resume_words = [w for w in [sweep, *overrides] if w]
        return _submit(args)
    from synthray.core.storage import check_storage

    root = check_storage(_storage_override(overrides))  # before the stages are imported, as for run
    from synthray.sweep.runner import resume_sweep

    return _sweep_done(*resume_sweep(root, sweep, verbose=args.verbose))


def _sweep_done(table: Any, path: str) -> int:
    """After run or resume: the results table and its URI; exit 1 (and how to continue) if a trial did not finish."""
    from synthray.sweep.console import forward_worker_logs
    from synthray.sweep.runner import format_table

    forward_worker_logs(False)
    print(format_table(table))
    print(f"results: {path}")
    missing = int((table["status"] != "done").sum())
    if missing:
        from synthray.core import storage

        sweep_dir = storage.parent(path)
        root = storage.parent(storage.parent(sweep_dir))
        print(f"synthray: {missing} trial(s) did not finish; continue with: synthray resume {storage.name(sweep_dir)} storage={root}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from synthray.core.logs import setup_logging

    setup_logging()
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except SynthrayError as err:
        print(f"synthray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # A sweep run here stopped with this process; anything else has nothing to continue.
        resumable = args.command in ("run", "resume") and not getattr(args, "submit", False)
        print("synthray: interrupted" + ("; continue with: synthray resume" if resumable else ""), file=sys.stderr)
        return 130
