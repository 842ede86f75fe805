"""The stage graph: one frozen spec per artifact (`specs.py`), read from the composed config by the planner
(`planner.plan(cfg) -> Graph`) and its per-stage readers (`real`, `synthetic`, `captions`, `probes`, `metrics`,
`identity`, `grid`). Nothing below the graph reads the config: stages take specs."""

from typing import Any

__all__ = ["Graph", "TrialPlan", "plan"]


def __getattr__(name: str) -> Any:
    if name in __all__:  # lazily: `import synthray.graph.specs` stays light
        from synthray.graph import planner

        return getattr(planner, name)
    raise AttributeError(name)
