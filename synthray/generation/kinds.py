"""Generator kinds as records: everything synthray knows about a kind lives in its `GeneratorKind`, so no code
outside a record branches on a kind's name.

A record says which fields a zoo entry of its kind may set, what its dataset key records of the entry (`identity`),
what its workers need besides the key (`worker`), whether it loads a model (and so runs on `generation.device`),
whether it draws held-out real images (a control), and builds its generator. The kinds:
- `diffusers`: any diffusers pipeline class, from a hub id, a local folder or a tiny offline twin;
- `real-holdout`, `collapsed` (`controls.py`): held-out real images, as they are or mode-collapsed;
- `vae-reencode` (`reencode.py`): held-out real images through a diffusers generator's VAE, `vae-reencode:<generator>`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from synthray.core.models import model_identity
from synthray.core.registry import Registry, SynthrayError, unknown_name
from synthray.generation.compiled import check_speed_settings, kernels_identity
from synthray.generation.controls import CollapsedGenerator, RealHoldoutGenerator
from synthray.generation.generators import DiffusersGenerator
from synthray.generation.reencode import PREFIX as REENCODE_PREFIX
from synthray.generation.reencode import VaeReencodeGenerator, reencode_entry

Entry = dict[str, Any]
PROTOCOLS = ("model-default", "paper")
# What a model-loading entry may declare about where it runs, over the generation section's defaults, and whether
# the hub gates its weights (a download needs $HF_TOKEN); never keyed.
PLACEMENT_FIELDS = ("gpu_memory_gb", "gpus_per_actor", "cpu_offload", "gated")
__all__ = ["KINDS", "PLACEMENT_FIELDS", "PROTOCOLS", "GeneratorKind", "RealHoldoutGenerator", "build_generator", "check_scheduler",
           "zoo_entry", "kind_of", "sampling_params", "tiny_params", "unconditional_at_cfg0"]


@dataclass(frozen=True)
class GeneratorKind:
    """One generator kind. `identity(entry, generation)`: its part of a dataset's key; `worker(entry, generation)`:
    what its workers read besides the key (model name, offload, compile caches: never in a key)."""

    name: str
    generator: Callable[[dict[str, Any]], Any]
    fields: tuple[str, ...]
    identity: Callable[[Entry, Any], dict[str, Any]]
    worker: Callable[[Entry, Any], dict[str, Any]]
    loads_model: bool = False         # loads a pipeline folder, and runs where generation.device says
    draws_real: bool = False          # draws held-out real images: needs data.control_fraction > 0
    free_form: tuple[str, ...] = ()   # fields that take sub-keys (`call`, `paper`)
    sampled: bool = False             # has steps, guidance and resolution (`sampling_params`)
    complete: Callable[[Any, str, Entry], Entry] | None = None  # fills an entry in from the zoo (vae-reencode: its source's)

    @property
    def control(self) -> bool:
        """A control: real images, changed or not, in place of a generator's (the figures draw them apart)."""
        return self.draws_real


KINDS = Registry("generator kind")


def tiny_params(entry: Entry) -> dict[str, Any]:
    """A tiny pipeline twin is built at the generator's resolution; real checkpoints take no build parameters."""
    return {"resolution": int(entry["resolution"])} if str(entry.get("model", "")).startswith("tiny:") else {}


def _model(entry: Entry) -> dict[str, Any]:
    return {"pipeline": entry["pipeline"], "dtype": entry["dtype"], "model": str(entry["model"]), "tiny_params": tiny_params(entry)}


def _diffusers_identity(entry: Entry, g: Any) -> dict[str, Any]:
    return {"pipeline": entry["pipeline"], "model": model_identity(str(entry["model"]), **tiny_params(entry)), "dtype": entry["dtype"],
            "call": dict(entry.get("call") or {}), "guidance_kwarg": entry.get("guidance_kwarg"),
            # These can change low bits of the output; CPU offload only moves weights, so it is left out.
            "kernels": kernels_identity(g, entry["pipeline"])}


def _diffusers_worker(entry: Entry, g: Any) -> dict[str, Any]:
    return {**_model(entry), "variant": entry.get("variant"), "cpu_offload": bool(g.cpu_offload),
            "compile_cpu": bool(g.compile_cpu), "compile_cache": g.compile_cache,
            "compile_timeout_s": g.get("compile_timeout_s", 600)}


def _control_identity(entry: Entry, g: Any) -> dict[str, Any]:
    """A control's own settings (collapsed: prototypes, noise, shift)."""
    return {"control": {k: v for k, v in dict(entry).items() if k not in ("kind", "released")}}


KINDS.register("diffusers")(GeneratorKind(
    "diffusers", DiffusersGenerator,
    ("kind", "pipeline", "model", "dtype", "variant", "steps", "guidance", "resolution", "released", "distilled",
     "guidance_kwarg", "call", "scheduler", "paper", *PLACEMENT_FIELDS),
    _diffusers_identity, _diffusers_worker, loads_model=True, free_form=("call", "paper"), sampled=True))
KINDS.register("real-holdout")(GeneratorKind(
    "real-holdout", RealHoldoutGenerator, ("kind", "released"), _control_identity, lambda entry, g: {}, draws_real=True))
KINDS.register("collapsed")(GeneratorKind(
    "collapsed", CollapsedGenerator, ("kind", "released", "prototypes", "noise", "shift"), _control_identity,
    lambda entry, g: {}, draws_real=True))
def _reencode_identity(entry: Entry, g: Any) -> dict[str, Any]:
    out = {"pipeline": entry["pipeline"], "dtype": entry["dtype"], "model": model_identity(str(entry["model"]), **tiny_params(entry))}
    if str(g.get("reencode_split") or "control") == "train":  # held-out datasets keep the keys they were stored under
        out["reencode_split"] = "train"
    return out


KINDS.register("vae-reencode")(GeneratorKind(  # `vae-reencode:<generator>` needs no entry
    "vae-reencode", VaeReencodeGenerator, ("kind", "source", "dtype", "released", *PLACEMENT_FIELDS),
    _reencode_identity, lambda entry, g: _model(entry), loads_model=True, draws_real=True, complete=reencode_entry))


def kind_of(entry: Entry) -> GeneratorKind:
    return KINDS.get(str(entry.get("kind")))


def zoo_entry(zoo: Any, name: str, dtype: str | None = None) -> Entry:
    """The entry for `name` in `zoo` (the generator entries by name) as a plain dict, or a one-line error listing
    the zoo. A `dtype` replaces every model's (e.g. bfloat16 for all, where the study ran SD1.x/2.x/XL in float16)."""
    if name not in zoo and name.startswith(REENCODE_PREFIX):
        entry = reencode_entry(zoo, name)  # vae-reencode:<generator>, made from the source's entry
    elif name not in zoo:
        raise unknown_name("generator", name, [*zoo.keys(), f"{REENCODE_PREFIX}<generator>"])
    else:
        entry = dict(zoo[name])
        kind = kind_of(entry)  # an unknown kind is a zoo typo
        entry = kind.complete(zoo, name, entry) if kind.complete else entry
    if dtype and "dtype" in entry:
        entry["dtype"] = str(dtype)
    return entry


def sampling_params(entry: dict[str, Any], protocol: str, overrides: Any = None) -> dict[str, Any]:
    """Steps, guidance and resolution (and scheduler, when one is set) under a protocol: the model's own, or the
    study's (CFG 2, 50 steps, 512px). `overrides` is the `generation` section (or a dict): its non-null
    `guidance`, `steps` and `scheduler` replace the generator's, the way a grid axis sweeps them."""
    if protocol not in PROTOCOLS:
        raise unknown_name("generation protocol", protocol, PROTOCOLS)
    if not kind_of(entry).sampled:
        return {}
    if overrides is not None and "compile" in overrides:  # the generation section: its speed settings, checked early
        check_speed_settings(overrides)
    params: dict[str, Any] = {"steps": int(entry["steps"]), "guidance": float(entry["guidance"]), "resolution": int(entry["resolution"])}
    if protocol == "paper" and not str(entry["model"]).startswith("tiny:"):
        # gen/gen_images.py: 50 steps, CFG 2.0 and 512 px for every model; turbo/schnell run 4 steps at CFG 0.0.
        # An entry's `paper` mapping holds its exceptions (SDXL-Turbo: no size passed, the model's own).
        few = entry.get("distilled", False)
        params = {"steps": 4 if few else 50, "guidance": 0.0 if few else 2.0, "resolution": 512}
        exceptions = dict(entry.get("paper") or {})
        if set(exceptions) - set(params):
            raise SynthrayError(f"generator paper exceptions may set {', '.join(params)}; "
                                f"got {', '.join(sorted(set(exceptions) - set(params)))}")
        params.update(exceptions)
    if entry.get("scheduler"):
        params["scheduler"] = str(entry["scheduler"])
    for key, kind in (("guidance", float), ("steps", int), ("scheduler", str)):
        value = (overrides or {}).get(key)
        if value is None:
            continue
        if kind is not str and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or
                                (kind is int and (value != int(value) or value < 1))):
            raise SynthrayError(f"generation.{key} must be a {'whole number >= 1' if kind is int else 'number >= 0'}, got {value!r}")
        params[key] = kind(value)
    if "scheduler" in params:
        check_scheduler(params["scheduler"])
    return params


def unconditional_at_cfg0(entry: Entry, params: dict[str, Any]) -> bool:
    """Whether the study would give this generator an empty prompt: gen/gen_images.py empties the class-name prompts
    at guidance 0 for every model but the few-step ones (FLUX-schnell, SD3.5-Large-Turbo, SD/SDXL-Turbo), which
    are the entries marked `distilled` in the zoo. `params`: the entry's `sampling_params`."""
    return kind_of(entry).sampled and not entry.get("distilled", False) and float(params["guidance"]) == 0.0


def check_scheduler(name: str) -> None:
    """A diffusers scheduler class name, or a one-line error listing them."""
    import diffusers

    known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("_"))
    if name not in known:
        raise unknown_name("scheduler", name, known)


def build_generator(spec: dict[str, Any]) -> Any:
    """The generator a worker runs: `spec["kind"]`'s class on the worker's settings."""
    return kind_of(spec).generator(spec)
