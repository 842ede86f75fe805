"""Progress events from wherever a stage runs to the sweep's live console on the driver.

A sweep starts one small actor, the board (named `BOARD`, no CPUs), that keeps each trial's current stage and how
far it has got. Trial processes, the Ray Data stages they drive and Ray Train workers post to it, fire and forget;
the driver polls it. Outside a sweep (tests calling stages directly, `synthray caption`, a bench) there is no board
and posting does nothing. A lost event costs a stale line on the console, never a result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

BOARD = "synthray-progress"

_trial: str | None = None      # the trial this process works for (tune_trial binds it)
_stages: list[str] = []        # this process's nested stages: an evaluation holds a training, and so on
_board: Any = None
_looked_up = 0.0


class ProgressBoard:
    """Ray actor: the latest stage and progress of every trial. A new stage resets done/total and its clock."""

    def __init__(self) -> None:
        self.trials: dict[str, dict[str, Any]] = {}

    def post(self, trial: str, stage: str | None = None, done: float | None = None, total: float | None = None,
             unit: str | None = None, at: float | None = None, returned: bool = False) -> None:
        """`returned`: the trial is back in the stage that holds the one that ended (an evaluation after its
        training); the console draws it again but prints no new line for it."""
        state = self.trials.setdefault(trial, {"stage": None, "stages": 0})
        at = at or time.time()
        if stage is not None and stage != state["stage"]:
            state.update(stage=stage, since=at, done=None, total=None, unit=None, first=None, stages=state["stages"] + 1,
                         returned=returned)
        if done is not None:
            if state.get("first") is None:  # rate counts from the first report: actor start-up is not throughput
                state["first"] = (at, float(done))
            state.update(done=float(done), total=None if total is None else float(total), unit=unit, at=at)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.trials


def start_board() -> Any:
    """Start this job's board (the driver does, once per sweep); returns its handle."""
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=0)(ProgressBoard)
    return actor.options(name=BOARD, get_if_exists=True).remote()


def _find_board() -> Any:
    """The board of this job, looked up at most every 30 s (a process may start before the driver's board)."""
    global _board, _looked_up
    if _board is None and time.monotonic() - _looked_up > 30:
        _looked_up = time.monotonic()
        try:
            import ray

            if ray.is_initialized():
                _board = ray.get_actor(BOARD)
        except (ValueError, ImportError):
            _board = None
    return _board


def bind_trial(label: str | None) -> None:
    """Name the trial that this process's stages belong to."""
    global _trial
    _trial = label
    _stages.clear()


def current_trial() -> str | None:
    return _trial


def post(trial: str | None = None, **event: Any) -> None:
    """Send an event (stage=, done=, total=, unit=) for `trial` (default: this process's); never raises."""
    trial = trial or _trial
    board = _find_board() if trial else None
    if board is None:
        return
    try:
        board.post.remote(trial, at=time.time(), **event)
    except Exception:  # noqa: BLE001 - the console is a view; a dead board must not fail a trial
        pass


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark `name` as this trial's current stage while the block runs; the enclosing stage comes back after it."""
    _stages.append(name)
    post(stage=name)
    try:
        yield
    finally:
        _stages.pop()
        if _stages:
            post(stage=_stages[-1], returned=True)


def advance(done: float, total: float | None, unit: str = "rows", trial: str | None = None) -> None:
    """Report `done` of `total` `unit` in the current stage (the console draws the bar, rate and ETA)."""
    post(trial, done=done, total=total, unit=unit)
