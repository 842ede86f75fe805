"""Speed features of the generation stage that must not change a bit: encoding overlapped with the next batch,
`batch_size: auto`, CUDA-graph compile mode; and the arithmetic behind the batch choice and the GPU idle share."""

from __future__ import annotations

import shutil

import pytest

from synthray.core.images import read_images
from synthray.core.models import Models
from synthray.core.registry import SynthrayError
from synthray.generation.stage import shard_tasks, worker_factory
from synthray.generation.throughput import (
    AUTO_FALLBACK,
    available_gpu_bytes,
    batch_ladder,
    batch_size_setting,
    busy_time,
    choose_batch,
    idle_share,
    kernel_intervals,
)
from synthray.graph.real import real_artifact
from synthray.graph.synthetic import build_prompt_table, generate_dataset, planned_dataset, synthetic_artifact
from tests.conftest import tiny_cfg
from tests.test_generation_compile import ROWS, generator, psnr

GiB = 2**30


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine, two OpenMP threads wait on each other up to 30x longer."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shard(storage, name: str, rows: int, *overrides: str) -> tuple[dict, int]:
    """The columns of one shard of `rows` rows as an actor writes them, and the batch the actor ran."""
    cfg = tiny_cfg(storage, "prompts.n_per_class=1", *overrides)
    table, real = build_prompt_table(cfg, name, "classname"), real_artifact(cfg)
    work = worker_factory(planned_dataset(cfg, name, "classname", table), real, Models.from_cfg(cfg))()
    return work(shard_tasks(table.iloc[:rows], rows)[0]), work.batch_size


@pytest.mark.slow
def test_overlapped_encoding_writes_the_same_shard(shared_storage):
    """Overlap on: the pipeline stops at its tensor and a background thread fetches, converts and encodes it while
    the next batch runs. Same bytes, same order as one batch after another through the plain "np" call; with a
    ragged last batch, more batches than are held in flight (IN_FLIGHT), and a resize in the tail."""
    for settings in (["generation.batch_size=2", "generation.stored_size=24"], ["generation.batch_size=4"]):
        before, _ = shard(shared_storage, "tiny-sd", 5, "generation.overlap=false", *settings)
        after, ran = shard(shared_storage, "tiny-sd", 5, "generation.overlap=true", *settings)
        assert len(after["image"]) == 5 and f"generation.batch_size={ran}" in settings
        assert after == before, settings


def test_batch_size_auto_without_a_gpu_runs_the_fallback(shared_storage):
    columns, ran = shard(shared_storage, "tiny-sd", 3, "generation.batch_size=auto")
    assert ran == AUTO_FALLBACK and len(columns["image"]) == 3


def dataset(*overrides: str):
    cfg = tiny_cfg("/unused", *overrides)
    return synthetic_artifact(cfg, "tiny-sd", "classname", build_prompt_table(cfg, "tiny-sd", "classname"))


def test_batch_size_and_overlap_in_the_key():
    key = dataset
    fixed = key("generation.batch_size=4")
    assert fixed.spec["batch_size"] == 4 and type(fixed.spec["batch_size"]) is int  # the keys built before stay
    assert key("generation.batch_size=auto").spec["batch_size"] == "auto"
    assert key("generation.overlap=false").key == fixed.key  # same bytes: not in the key
    assert key("generation.compile=reduce-overhead").spec["kernels"]["compile"] == "reduce-overhead"


@pytest.mark.parametrize("override, message", [
    ("generation.batch_size=abc", "generation.batch_size takes a number or auto, got 'abc'"),
    ("generation.batch_size=0", "generation.batch_size must be a whole number >= 1 or auto, got 0"),
    ("generation.overlap=sometimes", "generation.overlap takes true or false, got 'sometimes'"),
])
def test_bad_batch_or_overlap_is_one_line(override, message):
    with pytest.raises(SynthrayError, match=message) as err:
        dataset(override)  # what the plan computes for each trial, before anything launches
    assert "\n" not in str(err.value)


def test_batch_size_setting():
    assert batch_size_setting("auto") == "auto" and batch_size_setting(16) == 16
    for bad in ("16", 2.5, True, -1):
        with pytest.raises(SynthrayError, match="whole number >= 1 or auto"):
            batch_size_setting(bad)


def test_choose_batch_fits_free_memory_with_headroom():
    assert batch_ladder(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64] and batch_ladder(6) == [1, 2, 4]
    # 20 GiB free, 1 GiB per image: 17 GiB after 15 % headroom -> 16 (24 would not fit)
    assert choose_batch(20 * GiB, 1 * GiB) == 16
    assert choose_batch(20 * GiB, 1 * GiB, headroom=0.0) == 16  # 20 is not on the ladder; 24 does not fit
    assert choose_batch(40 * GiB, 1 * GiB) == 32  # 34 GiB budget
    assert choose_batch(120 * GiB, 0.5 * GiB) == 64  # capped
    assert choose_batch(120 * GiB, 0.5 * GiB, cap=32) == 32
    assert choose_batch(3 * GiB, 1 * GiB) == 2
    assert choose_batch(0.5 * GiB, 1 * GiB) == 1  # never 0: one image at a time still runs
    assert choose_batch(10 * GiB, 0) == 1  # a probe that measured nothing proves nothing
    # divisors of the shard (128: powers of two), so no shard ends in a ragged batch that compiles anew
    assert choose_batch(40 * GiB, 1 * GiB, shard=128) == 32 and choose_batch(30 * GiB, 1 * GiB, shard=128) == 16
    assert choose_batch(120 * GiB, 0.5 * GiB, shard=48) == 48 and choose_batch(120 * GiB, 0.5 * GiB, shard=16) == 16
    assert choose_batch(120 * GiB, 0.5 * GiB, shard=100) == 50 and choose_batch(120 * GiB, 0.5 * GiB, shard=7) == 7
    assert choose_batch(3 * GiB, 1 * GiB, shard=7) == 1


def test_available_memory_counts_the_allocators_slack_and_the_actors_share():
    # 30 GiB free to the driver, torch holds 12 GiB of which 10 are in use: 32 GiB available
    assert available_gpu_bytes(30 * GiB, 80 * GiB, 12 * GiB, 10 * GiB) == 32 * GiB
    # half a GPU (gpus_per_actor=0.5): at most 40 GiB of 80, less the 10 GiB this actor holds
    assert available_gpu_bytes(60 * GiB, 80 * GiB, 10 * GiB, 10 * GiB, share=0.5) == 30 * GiB


def test_idle_share_is_one_minus_the_union_of_kernel_intervals():
    assert busy_time([]) == 0.0
    assert busy_time([(0, 2), (1, 3), (5, 6)]) == 4.0  # overlap counted once
    assert busy_time([(0, 10), (2, 3), (4, 5)]) == 10.0  # nested (two streams)
    assert busy_time([(3, 4), (0, 1)]) == 2.0  # any order
    assert busy_time([(-5, 2), (8, 20)], 0, 10) == 4.0  # clipped to the window
    assert busy_time([(1, 1), (4, 2)]) == 0.0  # empty and reversed intervals add nothing
    assert idle_share([(0, 2), (1, 3), (5, 6)], 0, 10) == pytest.approx(0.6)
    assert idle_share([(0, 10)], 0, 10) == 0.0
    assert idle_share([], 0, 10) == 1.0
    assert idle_share([(0, 95), (96, 100)], 0, 100) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        idle_share([], 5, 5)


def test_kernel_intervals_read_a_chrome_trace():
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 100.0, "dur": 50.0},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH", "ts": 150.0, "dur": 30.0},  # copy engine, not compute
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 90.0, "dur": 5.0},
        {"ph": "X", "cat": "kernel", "name": "softmax", "ts": 160.0, "dur": 10.0},
        {"ph": "i", "cat": "kernel", "name": "marker", "ts": 1.0},
    ]}
    assert kernel_intervals(trace) == [(100.0, 150.0), (160.0, 170.0)]
    assert idle_share(kernel_intervals(trace), 100.0, 170.0) == pytest.approx(10 / 70)


def test_batch_size_auto_through_the_ray_data_stage(ray_cluster, shared_storage):
    cfg = tiny_cfg(shared_storage, "prompts.n_per_class=1", "generation.batch_size=auto")
    ref = generate_dataset(cfg, "tiny-sd", "classname")
    assert ref.artifact.spec["batch_size"] == "auto" and ref.artifact.meta()["quality"] == {"ok": 10}
    assert len(read_images(ref.uri)) == 10


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-pixart", "tiny-sana", "tiny-lumina2",
                                  "tiny-qwenimage"])
def test_overlap_writes_the_same_shard_for_every_family(shared_storage, name):
    """Every pipeline's "pt" output, fetched and converted on the tail thread, gives its "np" output's bytes."""
    before, _ = shard(shared_storage, name, 3, "generation.overlap=false", "generation.batch_size=2")
    after, _ = shard(shared_storage, name, 3, "generation.overlap=true", "generation.batch_size=2")
    assert after == before


@pytest.mark.slow
@pytest.mark.deep  # 40 s of CPU compiling, as test_generation_compile's default-mode case; kept out of CI's time
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")), reason="inductor on CPU needs a C++ compiler")
def test_reduce_overhead_compiles_and_draws_the_eager_images_on_cpu(shared_storage, tmp_path, monkeypatch):
    """CUDA graphs are skipped on CPU; the mode still compiles and runs, within float noise of eager."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "unused"))
    cfg = tiny_cfg(shared_storage)
    eager = generator(cfg, "tiny-sd")(ROWS)
    graphs = generator(cfg, "tiny-sd", compile="reduce-overhead", compile_cpu=True, scratch=str(tmp_path / "node"))
    assert graphs.compile_cache is not None, "compiled, not eager"
    for a, b in zip(eager, graphs(ROWS)):
        assert psnr(a, b) >= 35
