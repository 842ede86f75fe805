"""The sweep's console: one quiet view on the terminal, and every line in `<sweep>/logs/sweep.log`.

While a sweep runs, all the driver would print (Ray's start-up lines, Tune's status tables, and every worker's log
lines, which Ray forwards to the driver) goes to the log instead. The terminal gets:
- on an interactive terminal, one live view (rich): every trial's state and current stage, and the stage's progress
  bar with its rate and ETA;
- elsewhere (a pipe, a CI log, a Ray Job's log), plain lines at a bounded rate: a trial's start, each new stage, a
  progress line at most every `PLAIN_EVERY_S` per trial, and the trial's end;
- with `verbose`, every log line as well.
Warnings and errors of synthray's own logger on the driver always reach the terminal. The stages report to a small
actor (`synthray.core.progress`); Tune's trial states come through `ConsoleCallback`.
"""

from __future__ import annotations

import io
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from synthray.core import storage
from synthray.core.registry import SynthrayError
from synthray.graph.grid import trial_label
from synthray.sweep.capture import LogStream, forward_worker_logs, own_width, replaces_sys_streams, stream_handlers

PLAIN_EVERY_S = 30.0   # a progress line per trial at most this often on a non-interactive terminal
SHOWN_TRIALS = 12      # rows of the live view; the rest are counted
UPLOAD_EVERY_S = 60.0  # how often a log on object storage is rewritten while the sweep runs

_active: SweepConsole | None = None


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def rate_and_eta(state: dict[str, Any]) -> tuple[float | None, float | None]:
    """Units per second since the stage's first report (start-up is not throughput), and seconds left."""
    done, total, first, at = state.get("done"), state.get("total"), state.get("first"), state.get("at")
    if done is None or first is None or at is None:
        return None, None
    t0, d0 = first
    if at <= t0 or done <= d0:  # one report: count from the stage's start
        t0, d0 = state.get("since") or t0, 0.0
    rate = (done - d0) / (at - t0) if at > t0 and done > d0 else None
    eta = (total - done) / rate if rate and total else None
    return rate, eta


def progress_text(state: dict[str, Any], compact: bool = False) -> str:
    """`128/300 rows, 20.3 rows/s, ETA 0:08` (compact: `128/300 rows 20/s 0:08`) for a stage that reports
    progress, else ''."""
    if state.get("done") is None:
        return ""
    unit = state.get("unit") or ""
    done, total = state["done"], state.get("total")
    rate, eta = rate_and_eta(state)
    parts = [f"{done:.0f}/{total:.0f} {unit}" if total else f"{done:.0f} {unit}"]
    if rate:
        figure = f"{rate:.1f}" if rate < 10 else f"{rate:.0f}"
        parts.append(f"{figure}/s" if compact else f"{figure} {unit}/s")
    if eta is not None:
        parts.append(_clock(eta) if compact else f"ETA {_clock(eta)}")
    return (" " if compact else ", ").join(parts)


class SweepConsole:
    """Context manager around a sweep run: log capture, the view, and the board the stages report to."""

    def __init__(self, sweep_dir: str, labels: list[str], verbose: bool = False, stream: TextIO | None = None,
                 live: bool | None = None, title: str | None = None):
        self.stream = stream or sys.stdout
        self.live_mode = bool(self.stream.isatty()) if live is None else live
        self.verbose, self.title = verbose, title or storage.name(sweep_dir)
        self.labels = list(labels)
        self.states: dict[str, str] = {label: "pending" for label in labels}
        self.outcomes: dict[str, str] = {}
        self.board_state: dict[str, dict[str, Any]] = {}
        self.log_uri = storage.join(sweep_dir, "logs", "sweep.log")
        self.started = time.time()
        self.board: Any = None
        self._printed: dict[str, tuple[int, float]] = {}  # label -> (stages printed, time of the last progress line)
        self._shown: dict[str, set[str]] = {}  # label -> the stage names printed for it
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self.live: Any = None  # the rich view, on a terminal, between enter and exit
        self.log: LogStream | None = None  # set on enter

    # --- the terminal -------------------------------------------------------------------------------------------
    def say(self, line: str, log: bool = True) -> None:
        """A line for the user: on the terminal (above the live view) and, unless it is there already, in the log."""
        with self._lock:
            if self.live is not None:
                from rich.text import Text

                self.live.console.print(Text(line))
            else:
                self.stream.write(line + "\n")
                self.stream.flush()
        if log and self.log is not None:
            with self.log.lock:  # straight to the file: under -v the log's echo would print it twice
                self._file.write(line + "\n")
                self._file.flush()

    def _echo(self, line: str) -> None:  # -v: a log line on the terminal
        with self._lock:
            if self.live is not None:
                from rich.text import Text

                self.live.console.print(Text.from_ansi(line))
            else:
                self.stream.write(line + "\n")

    # --- entering and leaving -----------------------------------------------------------------------------------
    def __enter__(self) -> SweepConsole:
        global _active
        import ray  # noqa: F401 - first: Ray makes its log handlers at import, and they are re-pointed below

        from synthray.core.logs import setup_logging

        setup_logging()  # synthray's handler exists before the streams move, so that it is moved back after

        # Until the sweep has started (Ray is up) the log is held in memory: a start that fails writes nothing.
        self._tmp, self._file = None, io.StringIO()
        self.log = LogStream(self._file, self._echo if self.verbose else None)
        self._file.write(f"--- synthray {time.strftime('%Y-%m-%d %H:%M:%S')}: {self.title}\n")
        self._saved = (sys.stdout, sys.stderr)
        self._repointed = []
        for handler in stream_handlers():
            if handler.stream in (*self._saved, sys.__stdout__, sys.__stderr__):
                self._repointed.append((handler, handler.stream))
                handler.setStream(self.log)
        if replaces_sys_streams():  # the command line; a sweep run from Python leaves them alone
            sys.stdout = sys.stderr = self.log
        self._terminal = logging.StreamHandler(_SayStream(self))
        self._terminal.setLevel(logging.WARNING)
        self._terminal.setFormatter(logging.Formatter("[synthray] %(message)s"))
        logging.getLogger("synthray").addHandler(self._terminal)
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(file=self.stream, width=own_width(self.stream)), get_renderable=self.render,
                             refresh_per_second=4, redirect_stdout=False, redirect_stderr=False)
            self.live.start()
        _active = self
        self._forwarding = forward_worker_logs(True)
        self._thread = threading.Thread(target=self._poll_loop, name="synthray-console", daemon=True)
        self._thread.start()
        return self

    def start(self, board: bool = True) -> None:
        """The sweep has started (Ray is up): write the log where it belongs, and start the board the stages
        report to (`board=False`: nothing will run, and Ray is not up)."""
        from synthray.core.progress import start_board

        if storage.is_local(self.log_uri):
            self.log_path = Path(self.log_uri)
        else:  # object storage takes whole files: write locally, upload as it grows and at the end
            self._tmp = tempfile.mkdtemp(prefix="synthray-log-")
            self.log_path = Path(self._tmp) / "sweep.log"
            if storage.exists(self.log_uri):  # a resumed sweep appends to its log
                self.log_path.write_bytes(storage.read_bytes(self.log_uri))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log.lock:
            held, self._file = self._file.getvalue(), open(self.log_path, "a", encoding="utf-8", errors="replace")
            self._file.write(held)
            self.log.file = self._file
        self.board = start_board() if board else None

    def __exit__(self, *exc: Any) -> None:
        global _active
        if self.board is not None:  # the trials' last log lines are still on their way to the driver: into the log
            self.log.settle()
        forward_worker_logs(self._forwarding)
        self._stop.set()
        self._thread.join(timeout=10)
        self._poll()
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None
        _active = None
        logging.getLogger("synthray").removeHandler(self._terminal)
        for handler, stream in self._repointed:
            handler.setStream(stream)
        for handler in stream_handlers():  # made during the sweep (a library's first log line): back to stderr
            if handler.stream is self.log:
                handler.setStream(self._saved[1])
        if replaces_sys_streams():
            sys.stdout, sys.stderr = self._saved
        if isinstance(self._file, io.StringIO):  # it never started: what Ray said may explain why
            if exc[0] is not None and not issubclass(exc[0], SynthrayError):
                self._saved[1].write(self._file.getvalue())
            return
        self._file.close()
        self._upload()
        if self._tmp:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)
        if self.board is not None:
            import ray

            try:
                ray.kill(self.board)
            except Exception:  # noqa: BLE001 - Ray may be shutting down
                pass

    def _upload(self) -> None:
        if self._tmp:
            try:
                storage.write_bytes(self.log_uri, self.log_path.read_bytes())
            except Exception as err:  # noqa: BLE001 - a log upload must not end the sweep
                self._saved[1].write(f"[synthray] could not upload the log to {self.log_uri}: {err}\n")

    # --- states -------------------------------------------------------------------------------------------------
    def set_state(self, label: str, state: str, outcome: str | None = None) -> None:
        with self._lock:
            if label not in self.states:
                self.labels.append(label)
            before = self.states.get(label)
            self.states[label] = state
            if outcome:
                self.outcomes[label] = outcome
        if not self.live_mode and state != before:
            self.say(f"[synthray] {label}: {state}" + (f": {outcome}" if outcome else ""))

    def _poll(self) -> None:
        if self.board is None:
            return
        import ray

        try:
            snapshot = ray.get(self.board.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a view: try again next time
            return
        with self._lock:
            self.board_state = snapshot
        if not self.live_mode:
            self._plain_lines(snapshot)

    def _poll_loop(self) -> None:
        last_upload = time.monotonic()
        while not self._stop.wait(0.5 if self.live_mode else 2.0):
            self._poll()
            if self._tmp and time.monotonic() - last_upload > UPLOAD_EVERY_S:
                last_upload = time.monotonic()
                self._upload()

    def _plain_lines(self, snapshot: dict[str, dict[str, Any]]) -> None:
        """A line per new stage of a trial, and a progress line at most every PLAIN_EVERY_S."""
        now = time.time()
        for label, state in snapshot.items():
            if self.states.get(label) in ("done", "failed") or not state.get("stage"):
                continue
            seen, last = self._printed.get(label, (0, 0.0))
            if state["stages"] > seen:
                self._printed[label] = (state["stages"], now)
                shown = self._shown.setdefault(label, set())
                # Back in the stage that holds the one that ended: no new line, unless the holder itself was never
                # printed (it began a nested stage within one poll: a model loaded in the trial's own process).
                if not state.get("returned") or state["stage"] not in shown:
                    shown.add(state["stage"])
                    self.say(f"[synthray] {label}: {state['stage']}")
            elif state.get("done") is not None and now - last >= PLAIN_EVERY_S:
                self._printed[label] = (seen, now)
                self.say(f"[synthray] {label}: {state['stage']}: {progress_text(state)}")

    # --- the live view ------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {"running": 0, "done": 0, "pending": 0, "failed": 0}
        for state in self.states.values():
            out[state if state in out else "running"] += 1
        return out

    def render(self) -> Any:
        """The live view (a rich renderable that lays itself out for the terminal's width)."""
        return _View(self)

    def table(self, width: int) -> Any:
        """A header with counts and the elapsed time, then one row per trial (running first). Under 110 columns the
        stage goes under the trial's name, so the bar, rate and ETA keep their room."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            states, board, outcomes = dict(self.states), dict(self.board_state), dict(self.outcomes)
        order = {"running": 0, "retrying": 0, "failed": 1, "pending": 2, "done": 3}
        labels = sorted(states, key=lambda lb: (order.get(states[lb], 0), self.labels.index(lb) if lb in self.labels else 0))
        counts = " · ".join(f"{n} {state}" for state, n in self.counts().items())
        table = Table(title=Text(f"sweep {self.title}: {counts} · {_clock(time.time() - self.started)}", style="bold"),
                      title_justify="left", box=None, pad_edge=False, header_style="dim", expand=True)
        wide = width >= 110
        widest = max((len(lb) for lb in labels[:SHOWN_TRIALS]), default=5)
        table.add_column("trial" if wide else "trial / stage", no_wrap=True, overflow="ellipsis", min_width=min(widest, 34),
                         max_width=None if wide else max(20, width - 48))
        table.add_column("state", no_wrap=True, min_width=8)
        if wide:
            table.add_column("stage", no_wrap=True, overflow="ellipsis", ratio=1)
        table.add_column("", no_wrap=True, width=12 if wide else 8)
        table.add_column("progress", no_wrap=True, min_width=None if wide else 24)
        style = {"running": "cyan", "done": "green", "failed": "red", "pending": "dim", "retrying": "yellow"}
        for label in labels[:SHOWN_TRIALS]:
            state, info = states[label], board.get(label, {})
            stage, bar, text = "", Text(""), ""
            if state in ("running", "retrying"):
                stage = info.get("stage") or "starting"
                if info.get("done") is not None and info.get("total"):
                    bar = ProgressBar(total=info["total"], completed=info["done"], width=12 if wide else 8)
                text = progress_text(info, compact=not wide)
            elif state in ("done", "failed"):
                stage = outcomes.get(label, "")
            name = Text(label)
            if not wide and stage:
                name.append(f"\n  {stage}", style="dim")
            table.add_row(name, Text(state, style=style.get(state, "")), *([stage] if wide else []), bar, text)
        if len(labels) > SHOWN_TRIALS:
            table.add_row(Text(f"… and {len(labels) - SHOWN_TRIALS} more", style="dim"))
        return table


class _View:
    def __init__(self, console: SweepConsole):
        self.console = console

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield self.console.table(options.max_width)


class _SayStream(io.TextIOBase):
    """Where synthray's driver warnings go: the terminal, through the console."""

    def __init__(self, console: SweepConsole):
        self.console = console

    def write(self, text: str) -> int:
        for line in text.rstrip("\n").split("\n"):
            self.console.say(line, log=False)  # synthray's own handler has put it in the log
        return len(text)


def _tune_callback_base() -> type:
    from ray.tune import Callback

    return Callback


class ConsoleCallback(_tune_callback_base()):  # type: ignore[misc]
    """Tune's trial states for the sweep console of this process. It holds no reference to the console (it is
    pickled into Tune's state, and a resumed sweep gets it back), so it finds the active one when called."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _update(trial, "running")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _update(trial, "retrying")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _update(trial, "done", outcome_text(trial.last_result or {}))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _update(trial, "failed", "see the log")


def outcome_text(row: dict[str, Any]) -> str | None:
    """`synth→real 0.814, real→synth 0.923, real→real 0.937` from a trial's results row."""
    metric = "map" if "synth_to_real_map" in row else "miou" if "synth_to_real_miou" in row else "acc"
    names = (("synth_to_real", "synth→real"), ("real_to_synth", "real→synth"), ("real_to_real", "real→real"))
    figures = [(f"{k}_{metric}", n if metric == "acc" else f"{n} {metric}") for k, n in names
               if isinstance(row.get(f"{k}_{metric}"), (int, float))]
    return ", ".join(f"{n} {row[k]:.3f}" for k, n in figures) or None


def _update(trial: Any, state: str, outcome: str | None = None) -> None:
    if _active is not None:
        _active.set_state(trial_label(trial.config), state, outcome)

