"""One logging setup for the driver and every Ray worker: synthray's own lines stand out, library chatter is muted."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def setup_logging(level: int = logging.INFO) -> None:
    logger = logging.getLogger("synthray")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[synthray] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    # Progress bars of diffusers/transformers inside actors would interleave with synthray's own progress lines.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Each trial logs what it reused or built; Ray's de-duplication would fold the second trial's lines away.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if "ray" not in sys.modules:
        # A command that has not loaded Ray (the CLI at start, `synthray jobs`, a refused input) does not pay ~5 s
        # to import Ray Data here; init_ray calls this again once Ray is loaded, and Ray's workers have it loaded.
        return
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    except ImportError:
        pass
