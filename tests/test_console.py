"""The sweep console: the progress board the stages report to, the live view, the plain lines and the log capture.
The whole path through a real sweep (plain and on a pseudo-terminal) is in test_sweep.py."""

import io
import logging
import sys
import time

import pytest
from rich.console import Console

from synthray.core import progress
from synthray.core.progress import ProgressBoard
from synthray.sweep.console import SweepConsole, progress_text, rate_and_eta

LABELS = ["real-holdout/classname/tiny-cnn/rgb", "tiny-sd/classname/tiny-cnn/rgb", "sd15/caption/tv:resnet50/highpass/guidance=1.5"]


def test_board_resets_a_new_stage_and_counts_its_rate_from_the_first_report():
    board = ProgressBoard()
    board.post("t", stage="generate", at=100.0)
    board.post("t", done=100, total=400, unit="rows", at=110.0)  # actor start-up before this is not throughput
    board.post("t", done=300, total=400, unit="rows", at=120.0)
    state = board.snapshot()["t"]
    assert state["stages"] == 1 and state["done"] == 300
    rate, eta = rate_and_eta(state)
    assert rate == 20.0 and eta == 5.0
    assert progress_text(state) == "300/400 rows, 20 rows/s, ETA 0:05"
    assert progress_text(state, compact=True) == "300/400 rows 20/s 0:05"
    board.post("t", stage="train", at=121.0)
    assert board.snapshot()["t"]["done"] is None and board.snapshot()["t"]["stages"] == 2
    board.post("t", done=1, total=30, unit="epochs", at=123.0)  # one report: counted from the stage's start
    assert rate_and_eta(board.snapshot()["t"]) == (0.5, 58.0)
    board.post("t", stage="evaluate", returned=True, at=124.0)
    assert board.snapshot()["t"]["returned"] is True


def test_stages_nest_and_report_to_the_board_actor(ray_cluster):
    import ray

    board = progress.start_board()
    try:
        progress._board, progress._looked_up = None, 0.0  # look the new board up
        progress.bind_trial("tiny-sd/classname/tiny-cnn/rgb")
        with progress.stage("evaluate tiny-sd"):
            with progress.stage("generate tiny-sd"):
                progress.advance(128, 300)
                state = _wait(board, lambda s: s.get("done") == 128)
                assert state["stage"] == "generate tiny-sd" and state["total"] == 300 and state["unit"] == "rows"
            state = _wait(board, lambda s: s["stage"] == "evaluate tiny-sd")
            assert state["returned"] and state["stages"] == 3 and state["done"] is None
    finally:
        progress.bind_trial(None)
        progress._board = None
        ray.kill(board)


def _wait(board, ready):
    import ray

    deadline = time.time() + 30
    while time.time() < deadline:
        state = ray.get(board.snapshot.remote()).get("tiny-sd/classname/tiny-cnn/rgb")
        if state and ready(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"the board never showed it: {state}")


def _console_with_state(tmp_path, width):
    console = SweepConsole(str(tmp_path / "sweeps" / "smoke-1"), LABELS, live=False, stream=io.StringIO())
    console.set_state(LABELS[0], "done", "synth→real 0.814, real→synth 0.923, real→real 0.937")
    console.set_state(LABELS[1], "running")
    now = time.time()
    console.board_state = {LABELS[1]: {"stage": "generate tiny-sd, classname, 300 images", "stages": 3, "since": now - 20,
                                       "first": (now - 10, 128.0), "done": 256.0, "total": 300.0, "unit": "rows", "at": now}}
    out = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    out.print(console.render())
    return out.export_text()


def test_live_view_shows_every_trial_its_state_stage_bar_rate_and_eta(tmp_path):
    wide = _console_with_state(tmp_path, 160)
    lines = wide.splitlines()
    assert lines[0].startswith("sweep smoke-1: 1 running · 1 done · 1 pending · 0 failed")
    running = next(line for line in lines if line.startswith(LABELS[1]))
    assert "running" in running and "generate tiny-sd" in running and "━" in running
    assert "256/300 rows, 13 rows/s, ETA 0:03" in running
    assert [line.split()[0] for line in lines[2:]] == [LABELS[1], LABELS[2], LABELS[0]]  # running first, done last
    narrow = _console_with_state(tmp_path, 80)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    # Under 110 columns the stage goes under the trial, and the figures stay whole.
    assert "256/300 rows 13/s 0:03" in narrow and "  generate tiny-sd" in narrow


@pytest.mark.slow
def test_the_console_sends_every_printed_line_to_the_log_and_warnings_to_the_terminal(ray_cluster, tmp_path):
    terminal = io.StringIO()
    saved = sys.stdout, sys.stderr
    sweep = tmp_path / "sweeps" / "smoke-1"
    with SweepConsole(str(sweep), LABELS, stream=terminal) as console:
        print("Started a local Ray instance.")  # before the start, the log is held in memory
        assert not sweep.exists()
        console.start()
        print("a Tune status table")
        sys.stderr.write("(tune_trial pid=1) [synthray] building synthetic\n")
        logging.getLogger("ray.tune").warning("from a library's logger")
        logging.getLogger("synthray").info("driver detail")
        logging.getLogger("synthray").warning("trial x failed: why")
        console.say("[synthray] plan: 3 trials")
        console.set_state(LABELS[0], "running")
    assert (sys.stdout, sys.stderr) == saved
    shown = terminal.getvalue().splitlines()
    assert shown == ["[synthray] trial x failed: why", "[synthray] plan: 3 trials", f"[synthray] {LABELS[0]}: running"]
    log = (sweep / "logs" / "sweep.log").read_text()
    for line in ("Started a local Ray instance.", "a Tune status table", "(tune_trial pid=1) [synthray] building synthetic",
                 "driver detail", "trial x failed: why", "plan: 3 trials", f"{LABELS[0]}: running"):
        assert line in log, line
    # -v: every log line on the terminal as well.
    terminal = io.StringIO()
    with SweepConsole(str(sweep), LABELS, verbose=True, stream=terminal) as console:
        console.start()
        print("a worker line")
    assert "a worker line" in terminal.getvalue()
    assert (sweep / "logs" / "sweep.log").read_text().count("--- synthray ") == 2  # a second run appends
    # A start that fails (Ray could not be reached) leaves nothing behind, and says what Ray said.
    other = tmp_path / "sweeps" / "smoke-2"
    with pytest.raises(ConnectionError), SweepConsole(str(other), LABELS, stream=io.StringIO()):
        print("could not reach the cluster")
        raise ConnectionError("no cluster")
    assert not other.exists()


def test_plain_lines_print_each_stage_once_and_an_unseen_holder_on_return(tmp_path):
    import io

    from synthray.sweep.console import SweepConsole

    out = io.StringIO()
    console = SweepConsole(str(tmp_path / "sweep"), ["a", "b"], stream=out, live=False)
    polls = [
        {"a": {"stage": "generate", "stages": 1}, "b": {"stage": "build model", "stages": 2}},  # b's holder began and
        {"a": {"stage": "build model", "stages": 2}, "b": {"stage": "generate", "stages": 3, "returned": True}},  # ended
        {"a": {"stage": "generate", "stages": 3, "returned": True}, "b": {"stage": "train", "stages": 4}},  # unseen
    ]
    for snapshot in polls:
        console._plain_lines(snapshot)
    lines = out.getvalue().splitlines()
    assert [ln for ln in lines if ln.startswith("[synthray] a:")] == ["[synthray] a: generate", "[synthray] a: build model"]
    assert [ln for ln in lines if ln.startswith("[synthray] b:")] == [
        "[synthray] b: build model", "[synthray] b: generate", "[synthray] b: train"]
