"""The study's generation choices as named switches, each keyed only where it changes bytes:
- `generation.empty_prompt_at_cfg0`: gen/gen_images.py gives a model that is not distilled, run at CFG 0, an empty
  class-name prompt; only those datasets' prompt rows (and keys) change;
- `generation.bad_images`: the study keeps NaN and all-black images, trains, evaluates and measures on them; `keep`
  re-keys only what reads generated rows (models on them, Real->Synth evaluations, the generated side's features and
  CLIPScores, and the results), `drop` is synthray's filter, under the stored keys.
"""

import pytest

from synthray.config import compose
from synthray.core.artifacts import DatasetRef
from synthray.core.registry import SynthrayError
from synthray.graph.planner import plan
from synthray.graph.specs import SyntheticSpec
from tests.conftest import tiny_cfg

SMOKE = ["experiment=smoke", "recipe.test_transform.geometry=round"]  # the smoke experiment as its keys were stored


def datasets(graph) -> dict[tuple[str, str], SyntheticSpec]:
    return {(s.generator, s.style): s for s in graph.specs.values() if isinstance(s, SyntheticSpec)}


def test_empty_prompt_at_cfg0_empties_only_non_distilled_class_name_rows_at_guidance_0(tmp_path):
    """At guidance 0, tiny-sd (not distilled) gets empty class-name prompts; tiny-sdxl marked distilled (as the zoo
    marks SDXL-Turbo, SD3.5-Large-Turbo and FLUX-schnell) keeps its prompts, so do captions and the controls. Only the
    emptied datasets, and what reads them, get new keys."""
    captions = tmp_path / "captions.csv"
    captions.write_text("class_id,caption\n" + "".join(f"{c},a photo {c}\n" for c in range(10)))
    args = [*SMOKE, f"storage={tmp_path}", "grid.generator=[real-holdout,tiny-sd,tiny-sdxl]", "generation.guidance=0",
            "+generators.tiny-sdxl.distilled=true", "grid.prompt_style=[classname,caption]", f"prompts.captions={captions}"]
    off, on = (plan(compose([*args, f"generation.empty_prompt_at_cfg0={v}"])) for v in ("false", "true"))
    before, after = datasets(off), datasets(on)
    assert set(before) == set(after) and len(before) == 6
    for (generator, style), spec in after.items():
        emptied = generator == "tiny-sd" and style == "classname"
        assert (spec.key != before[generator, style].key) is emptied, (generator, style)
        if emptied:
            assert set(spec.prompts["prompts"]) == {""} and set(spec.table["prompt"]) == {""}
            assert spec.prompts["seeds"] == before[generator, style].prompts["seeds"]  # the same noise, unconditioned
        elif spec.table is not None:
            assert "" not in set(spec.table["prompt"])
    moved = set(off.artifacts()) - set(on.artifacts())
    emptied = before["tiny-sd", "classname"]
    for ref in moved:  # every moved artifact is the emptied dataset or reads it
        spec = off.specs.get(ref)
        assert spec is not None and (spec is emptied or emptied.ref in refs_below(spec)), ref
    assert {r.split("/", 1)[0] for r in moved} >= {"synthetic", "models", "results"}


def refs_below(spec) -> set[str]:
    out = set()
    for child in spec.inputs():
        out |= {child.ref, *refs_below(child)}
    return out


@pytest.mark.slow
def test_empty_prompt_at_cfg0_keeps_every_key_where_no_generator_runs_unconditionally(tmp_path):
    """The smoke experiment (CFG 2) keeps its stored keys with the switch on; so do the paper's 13 generators, none
    of which the study runs at CFG 0 without being distilled (prompts cut to 2 a class: the rule is per row)."""
    smoke = [*SMOKE, f"storage={tmp_path}"]
    assert plan(compose([*smoke, "generation.empty_prompt_at_cfg0=true"])).artifacts() == plan(compose(smoke)).artifacts()
    from synthray.graph.synthetic import planned_dataset

    paper = ["experiment=paper", f"storage={tmp_path}", "prompts.n_per_class=2"]
    on, off = compose(paper), compose([*paper, "generation.empty_prompt_at_cfg0=false"])
    assert on.generation.empty_prompt_at_cfg0 and not off.generation.empty_prompt_at_cfg0
    for generator in on.grid.generator:
        a, b = planned_dataset(on, generator, "classname"), planned_dataset(off, generator, "classname")
        assert a.key == b.key and "" not in a.prompts["prompts"], generator
    # CFG 0 for every generator: only the ones the study empties (gen_images.py's list: not the three distilled)
    zero = [compose([*paper, "generation.guidance=0", f"generation.empty_prompt_at_cfg0={v}"]) for v in ("true", "false")]
    emptied = {g for g in on.grid.generator
               if planned_dataset(zero[0], g, "classname").key != planned_dataset(zero[1], g, "classname").key}
    assert emptied == set(on.grid.generator) - {"sdxl-turbo", "sd35-large-turbo", "flux1-schnell"}


def test_keeping_bad_images_rekeys_only_models_on_generated_rows(tmp_path):
    """`keep` changes which generated rows are read: the model trained on them, the Real->Synth evaluation and the
    generated side's features move (the study's eval.py and image_dist/calc.py read every saved image), and so do
    the results; the datasets, the real data, views, the real models and the real side's features keep their keys.
    `drop` is the stored keys."""
    smoke = [*SMOKE, f"storage={tmp_path}"]
    drop, keep = plan(compose([*smoke, "generation.bad_images=drop"])), plan(compose([*smoke, "generation.bad_images=keep"]))
    assert drop.artifacts() == plan(compose(smoke)).artifacts()
    moved = {r.split("/", 1)[0] for r in set(drop.artifacts()) ^ set(keep.artifacts())}
    assert moved == {"models", "evaluations", "features", "results"}, moved
    for trial_drop, trial_keep in zip(drop, keep):
        assert trial_keep.synth_model.identity()["bad_images"] == "keep"
        assert trial_keep.synth_model.key != trial_drop.synth_model.key
        assert trial_keep.real_model.key == trial_drop.real_model.key and trial_keep.real_model.bad_images is None
        assert trial_keep.evaluations["real_to_synth"].identity()["bad_images"] == "keep"
        for on_real in ("synth_to_real", "real_to_real"):  # real rows have no flags: nothing to keep
            assert trial_keep.evaluations[on_real].bad_images is None
        real, synthetic = trial_keep.features
        assert "bad_images" not in real.settings and synthetic.settings["bad_images"] == "keep"
        assert real.key == trial_drop.features[0].key and synthetic.key != trial_drop.features[1].key
        assert trial_keep.result.key != trial_drop.result.key


def test_a_switch_given_a_value_it_does_not_take_is_one_line(tmp_path):
    with pytest.raises(SynthrayError, match="unknown generation.bad_images 'maybe'; choices: drop, keep") as err:
        compose([f"storage={tmp_path}", "generation.bad_images=maybe"])
    assert "\n" not in str(err.value)
    with pytest.raises(SynthrayError, match="generation.empty_prompt_at_cfg0 takes true or false, got 'maybe'"):
        compose([f"storage={tmp_path}", "generation.empty_prompt_at_cfg0=maybe"])


@pytest.mark.slow
def test_bad_images_keep_trains_on_them_where_drop_fails(ray_cluster, tmp_path, caplog):
    """A pipeline whose VAE decodes everything to black: `keep` (the study's) generates the dataset, counts the
    images in its meta and logs them, and a model trains on every row; `drop` (synthray's) fails the stage, for a
    copy generated under `keep` too, and has no row to train on."""
    import torch
    from diffusers import StableDiffusionPipeline

    from synthray.core.models import Models
    from synthray.graph.planner import train
    from synthray.graph.synthetic import generate_dataset

    base = tiny_cfg(tmp_path / "runs", "prompts.n_per_class=2")
    entry = base.generators["tiny-sd"]
    folder = Models.from_cfg(base).locate(str(entry.model), "pipeline", resolution=int(entry.resolution))
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.zero_()
        pipe.vae.decoder.conv_out.bias.fill_(-10.0)  # decoded pixels clamp to 0
    pipe.save_pretrained(tmp_path / "black-sd")
    fields = {"kind": "diffusers", "pipeline": "StableDiffusionPipeline", "model": f"'{tmp_path / 'black-sd'}'",
              "dtype": "float32", "steps": 2, "guidance": 2.0, "resolution": 32}
    added = "+generators.black-sd={" + ",".join(f"{k}:{v}" for k, v in fields.items()) + "}"

    def cfg(mode):
        return tiny_cfg(tmp_path / "runs", "prompts.n_per_class=2", added, f"generation.bad_images={mode}")

    with caplog.at_level("INFO", logger="synthray"):
        data = generate_dataset(cfg("keep"), "black-sd")
    meta = data.artifact.meta()
    assert meta["bad"] == 20 and meta["quality"] == {"black": 20} and meta["bad_images"] == "keep"
    assert any("20 of 20 images are NaN or all black" in r.getMessage() and "kept" in r.getMessage() for r in caplog.records)
    model = train(cfg("keep"), "tiny-cnn", data, 10, label="tiny-cnn on black")
    held = model.meta()["selection_rows"]
    assert model.meta()["rows"] + held == 20 and model.meta()["rows"] > 0 and model.spec["bad_images"] == "keep"

    # Evaluation and the metrics' samples read them too under keep, and none under drop.
    from synthray.core.images import shard_files
    from synthray.metrics.evaluation import WEIGHTS, _eval_worker
    from synthray.metrics.features import sample_ids

    assert len(sample_ids(data.uri, None, 0, usable_only=False)) == 20 and sample_ids(data.uri, None, 0) == []
    work = _eval_worker({name: model.file(file) for name, file in WEIGHTS.items()}, "tiny-cnn", 10,
                        model.spec["recipe"], 8, "cpu")
    shards = [{"name": f.rsplit("/", 1)[1], "src": f, "folder": data.uri} for f in shard_files(data.uri)]
    assert sum(len(work({**t, "usable": False})["id"]) for t in shards) == 20
    assert sum(len(work(t)["id"]) for t in shards) == 0

    with pytest.raises(SynthrayError, match=r"20 of 20 images are NaN or all black .* generation.bad_images=keep"):
        generate_dataset(cfg("drop"), "black-sd")  # the same dataset, held to drop's guard
    with pytest.raises(RuntimeError, match="no usable training rows"):
        train(cfg("drop"), "tiny-cnn", DatasetRef(data.artifact, "data"), 10, label="tiny-cnn on black, dropped")
