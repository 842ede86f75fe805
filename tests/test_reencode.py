"""The VAE re-encode control: held-out real images through each pipeline family's VAE, loaded from disk, then
the same control and real-holdout side by side through the sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synthray.core.artifacts import DatasetRef
from synthray.core.images import to_uint8
from synthray.core.models import Models, model_identity
from synthray.core.registry import SynthrayError
from synthray.generation.kinds import RealHoldoutGenerator, build_generator
from synthray.generation.kinds import tiny_params as _tiny_params
from synthray.graph.real import real_artifact, real_data
from synthray.graph.synthetic import build_prompt_table, generator_entry, synthetic_artifact
from tests.conftest import tiny_cfg

FAMILIES = ["sd", "sdxl", "sd3", "flux", "pixart", "sana", "lumina2", "qwenimage"]
ROWS = pd.DataFrame({"class_id": ["1", "2", "3"], "index_in_class": [0, 1, 2], "seed": [5, 6, 7]})


@pytest.fixture(scope="module")
def control(shared_storage):
    """The tiny config and the URI of the real digits' control split (the images real-holdout draws)."""
    cfg = tiny_cfg(shared_storage)
    return cfg, DatasetRef(real_data(cfg), "control").uri


def _uint8(images) -> list[np.ndarray]:
    return [to_uint8(im)[0] for im in images]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_vae_family_reencodes_the_real_holdout_images(control, family):
    import diffusers

    cfg, uri = control
    entry = generator_entry(cfg, f"vae-reencode:tiny-{family}")
    folder = Models.from_cfg(cfg).locate(entry["model"], "pipeline", **_tiny_params(entry))
    gen = build_generator({"kind": "vae-reencode", "control_uri": uri, "model_path": folder,
                           "pipeline": entry["pipeline"], "dtype": entry["dtype"]})
    real = [np.asarray(im) for im in RealHoldoutGenerator({"control_uri": uri})(ROWS)]
    first, again = _uint8(gen(ROWS)), _uint8(gen(ROWS))
    assert [im.shape for im in first] == [im.shape for im in real] == [(32, 32, 3)] * 3
    for a, b, r in zip(first, again, real):
        np.testing.assert_array_equal(a, b)
        assert np.abs(a.astype(int) - r).mean() > 5, "the VAE changed the image"
    # The latent is sampled with the row's seed; Sana's DC-AE has no posterior to sample from.
    reseeded = _uint8(gen(ROWS.assign(seed=[8, 9, 10])))
    assert any(not np.array_equal(a, b) for a, b in zip(first, reseeded)) == (family != "sana")
    # Pre- and post-processing are those of the whole pipeline, loaded the ordinary way.
    pipe = getattr(diffusers, entry["pipeline"]).from_pretrained(folder)
    assert type(gen.processor) is type(pipe.image_processor) and gen.processor.config == pipe.image_processor.config
    assert type(gen.vae) is type(pipe.vae)


def test_vae_reencode_names_resolve_to_their_source_and_bad_sources_are_one_line(tmp_path):
    cfg = tiny_cfg(tmp_path, "+generators.my-vae={kind: vae-reencode, source: tiny-sd, dtype: bfloat16}")
    sd15 = generator_entry(cfg, "vae-reencode:sd15")
    assert sd15 == {"kind": "vae-reencode", "source": "sd15", "model": cfg.generators.sd15.model, "resolution": 512,
                    "pipeline": "StableDiffusionPipeline", "dtype": "float16", "released": None}
    # The study's dtypes: float16, float32 for SDXL's VAE; tiny twins stay float32.
    assert generator_entry(cfg, "vae-reencode:sdxl")["dtype"] == "float32"
    assert generator_entry(cfg, "vae-reencode:tiny-sd")["dtype"] == "float32"
    assert generator_entry(cfg, "my-vae")["dtype"] == "bfloat16" and generator_entry(cfg, "my-vae")["model"] == "tiny:sd"
    for name, needle in [("vae-reencode:nope", "unknown generator 'nope'"),
                         ("vae-reencode:real-holdout", "real-holdout is a real-holdout generator and has no VAE"),
                         ("vae-reencod:sd15", "vae-reencode:<generator>")]:
        with pytest.raises(SynthrayError, match=needle) as err:
            generator_entry(cfg, name)
        assert "\n" not in str(err.value)


@pytest.mark.slow
def test_dataset_key_is_the_real_data_the_vae_its_dtype_and_the_batch_size(tmp_path):
    def key(*overrides: str, generator: str = "vae-reencode:tiny-sd") -> str:
        cfg = tiny_cfg(tmp_path, *overrides)
        return synthetic_artifact(cfg, generator, "classname", build_prompt_table(cfg, generator, "classname")).key

    cfg = tiny_cfg(tmp_path)
    table = build_prompt_table(cfg, "vae-reencode:tiny-sd", "classname")
    spec = synthetic_artifact(cfg, "vae-reencode:tiny-sd", "classname", table).spec
    assert spec["real"] == real_artifact(cfg).key and spec["model"] == model_identity("tiny:sd", resolution=32)
    assert spec["dtype"] == "float32" and spec["batch_size"] == 4 and spec["pipeline"] == "StableDiffusionPipeline"
    base = key()
    # Where it runs is not part of the key ...
    assert key("generation.device=gpu", "generation.num_actors=3") == base
    assert synthetic_artifact(tiny_cfg(tmp_path / "elsewhere"), "vae-reencode:tiny-sd", "classname", table).key == base
    # ... what it reads and computes with is.
    assert len({base, key("generation.batch_size=2"), key("data.control_fraction=0.4"), key(generator="vae-reencode:tiny-sdxl"),
                key("generators.tiny-sd.model=tiny:sdxl"), key(generator="real-holdout")}) == 6


def test_validate_accepts_vae_reencode_and_checks_the_source_weights(tmp_path):
    from synthray.sweep.plan import validate

    assert len(validate(tiny_cfg(tmp_path, "grid.generator=[real-holdout,vae-reencode:tiny-sd,vae-reencode:tiny-qwenimage]"))) == 3
    missing = tmp_path / "no-weights"
    with pytest.raises(SynthrayError, match=f"generators.tiny-sd.model={missing}: not a diffusers save_pretrained folder"):
        validate(tiny_cfg(tmp_path, "grid.generator=[vae-reencode:tiny-sd]", f"generators.tiny-sd.model={missing}"))
    with pytest.raises(SynthrayError, match="collapsed is a collapsed generator and has no VAE"):
        validate(tiny_cfg(tmp_path, "grid.generator=[vae-reencode:collapsed]"))


@pytest.mark.slow
def test_cli_lists_vae_reencode_and_refuses_an_unknown_source(tmp_path):
    from tests.rig import run_cli

    listed = run_cli("list", "generators", cwd=tmp_path)
    assert listed.returncode == 0 and "vae-reencode:<generator>" in listed.stdout
    bad = run_cli("run", f"storage={tmp_path / 'runs'}", "grid.generator=[vae-reencode:sd51]", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "vae-reencode:sd51: unknown generator 'sd51' (did you mean " in bad.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_vae_reencode_runs_through_the_sweep_beside_real_holdout(ray_cluster, tmp_path):
    """The issue's check: `grid.generator=[real-holdout,vae-reencode:tiny-sd]` on the digits gives a result row
    each. The tiny-sd VAE has random weights, so what it returns has little of the digit left."""
    from synthray.sweep.runner import run_sweep

    cfg = tiny_cfg(tmp_path, "grid.generator=[real-holdout,vae-reencode:tiny-sd]", "grid.probe=[rgb]", "recipe.epochs=8",
                   "recipe.lr=3e-3", "recipe.batch_size=16", "prompts.n_per_class=20", "tune.max_concurrent_trials=2")
    table, _ = run_sweep(cfg)
    rows = table.set_index("generator")
    assert sorted(rows.index) == ["real-holdout", "vae-reencode:tiny-sd"] and (rows["status"] == "done").all()
    assert rows["synth_to_real_acc"].between(0, 1).all() and (rows["n_synthetic"] == 200).all()
    for generator in rows.index:
        print(f"[figure] {generator}: synth->real {rows.loc[generator, 'synth_to_real_acc']:.3f}, "
              f"real->real {rows.loc[generator, 'real_to_real_acc']:.3f}, density {rows.loc[generator, 'density']:.3f}, "
              f"coverage {rows.loc[generator, 'coverage']:.3f}")
    # The same real images, untouched, teach the digits; through a random-weight VAE they teach little.
    assert rows.loc["real-holdout", "synth_to_real_acc"] > rows.loc["vae-reencode:tiny-sd", "synth_to_real_acc"] + 0.2
    assert rows.loc["real-holdout", "dataset"] != rows.loc["vae-reencode:tiny-sd", "dataset"]
