"""Experiment tracking: `tracking=[mlflow, wandb, tensorboard]` as Ray Tune logger callbacks on the driver."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import OmegaConf

from synthray.core.registry import SynthrayError
from synthray.core.secrets import missing_secret

TRACKERS = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}  # tracking= value: its package


def tracking_names(cfg: Any, secrets: bool = True) -> list[str]:
    """`tracking` as a checked list: one line for an unknown name or a package that does not import.

    The package is imported, not just found: on a cluster the sweep's driver runs on the head, whose packages are the
    cluster's (the nodes' wheel), not the laptop's that `synthray submit` checked, and a package that is there but
    broken fails the same way later. This runs in `validate`, at the start of `synthray run` and `resume`, so a
    missing tracker stops the sweep before any stage starts. `secrets`: also check that W&B has its key here (not in
    a dry plan, which may run on a laptop that never logs)."""
    from synthray.core.registry import unknown_name

    given = OmegaConf.select(cfg, "tracking", default=None)
    names = [] if given in (None, "") else [str(given)] if isinstance(given, str) else [str(n) for n in given]
    for name in names:
        if name not in TRACKERS:
            raise unknown_name("tracking", name, TRACKERS)
        check_tracker_imports(name)
        if name == "wandb" and secrets:
            check_wandb_key()
    return names


def check_wandb_key() -> None:
    """W&B logs from the driver's node: it needs $WANDB_API_KEY (or a `wandb login` netrc entry) there, unless
    it logs offline."""
    import netrc

    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise missing_secret("WANDB_API_KEY", "tracking=wandb", "or log offline with WANDB_MODE=offline")


def check_tracker_imports(name: str) -> None:
    """Import the package of tracker `name`; one line when it does not import, naming the cluster's head when this
    process is a Ray Job's driver (Ray sets RAY_JOB_CONFIG_JSON_ENV_VAR in a submitted job's entrypoint)."""
    import importlib

    package = TRACKERS[name]
    try:
        importlib.import_module(package)
    except Exception as err:  # noqa: BLE001 - ImportError, or whatever a broken install raises at import
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        install = "mlflow-skinny" if name == "mlflow" else package
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
            raise SynthrayError(f"tracking={name} needs the {package} package on the cluster's head: {why}; the nodes "
                                f"install it from the wheel's tracking extra (scripts/build-wheel.sh, then `ray up`)") from None
        raise SynthrayError(f"tracking={name} needs the {package} package: pip install {install} ({why})") from None


def tracking_callbacks(cfg: Any, sweep: str) -> list[Any]:
    """Ray Tune's logger callbacks for `tracking`: they see every report of every trial (per-epoch training metrics
    and the final results row) on the driver."""
    project = str(OmegaConf.select(cfg, "tracking_project", default=None) or cfg.name)
    callbacks = []
    for name in tracking_names(cfg):
        if name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            given = OmegaConf.select(cfg, "tracking_uri", default=None)
            if str(given or os.environ.get("MLFLOW_TRACKING_URI", "")).startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # asked for by name: MLflow 3 refuses it untold
            callbacks.append(MLflowLoggerCallback(tracking_uri=given,
                                                  experiment_name=project, tags={"sweep": sweep}, save_artifact=False))
        elif name == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            # The callback logs from a Ray actor, which does not see this process's environment: pass W&B's own
            # settings on (WANDB_MODE=offline, WANDB_DIR), as wandb.init arguments.
            given = {"mode": os.environ.get("WANDB_MODE"), "dir": os.environ.get("WANDB_DIR")}
            callbacks.append(WandbLoggerCallback(project=project, group=sweep, log_config=False,
                                                 **{k: v for k, v in given.items() if v}))
        else:
            from ray.tune.logger import TBXLoggerCallback

            callbacks.append(TBXLoggerCallback())
    return callbacks
