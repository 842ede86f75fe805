"""Compose the run configuration: base config, then `experiments/<name>.yaml`, then command-line overrides.

`recipe` works like a Hydra config group: `recipe=paper` (or `recipe: paper` in an experiment) selects
`conf/recipes/paper.yaml` or a YAML path, and `recipe.<field>=...` changes one field of the selected recipe.

Overrides use Hydra's grammar (`key=value`, `+key=value`, `~key`, lists as `[a,b]`) and are parsed with
Hydra's own parser; an unknown key or malformed override is a one-line `SynthrayError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from synthray.registry import SynthrayError, unknown_name

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR / "conf"
DEFAULT_EXPERIMENT = "smoke"


def experiment_dirs() -> list[Path]:
    """Where `experiment=<name>` is looked up, earlier directories winning: $SYNTHRAY_EXPERIMENTS,
    ./experiments, the source tree's `experiments/` (editable installs), then the copy a wheel installs
    as the package data `synthray/experiments/` (pyproject maps `synthray.experiments` onto `experiments/`)."""
    dirs = [Path(p) for p in os.environ.get("SYNTHRAY_EXPERIMENTS", "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "experiments")
    if (PACKAGE_DIR.parent / "pyproject.toml").is_file():  # a source tree, not site-packages/experiments
        dirs.append(PACKAGE_DIR.parent / "experiments")
    dirs.append(PACKAGE_DIR / "experiments")
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def list_experiments() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(experiment_dirs()):  # earlier directories win
        found.update({p.stem: p for p in sorted(d.glob("*.yaml"))})
    return dict(sorted(found.items()))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "recipes").glob("*.yaml"))


def _recipe(name: str) -> DictConfig:
    path = CONF_DIR / "recipes" / f"{name}.yaml"
    if not path.is_file():
        path = Path(name).expanduser()
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            raise unknown_name("recipe", name, list_recipes())
    return _load_yaml(path)


def _parse_overrides(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException as err:
            raise SynthrayError(f"malformed override '{text}': expected key=value ({str(err).splitlines()[0]})") from None
        if override.is_sweep_override():
            raise SynthrayError(f"override '{text}' is a Hydra sweep; give the grid as a list instead, e.g. grid.arch=[a,b]")
        parsed.append(override)
    return parsed


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError) as err:
        raise SynthrayError(f"cannot read config {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise SynthrayError(f"config {path} must hold a mapping")
    return cfg


def _experiment(name: str, experiments: dict[str, Path], seen: tuple[str, ...] = ()) -> DictConfig:
    """An experiment's deltas, after those of the experiments its `defaults: [<name>, ...]` lists (Hydra's
    convention): experiments/paper-texture.yaml is experiments/paper.yaml with another grid."""
    if name in seen:
        raise SynthrayError(f"experiment {name}: its defaults include itself ({' -> '.join((*seen, name))})")
    if name not in experiments:
        raise unknown_name("experiment", name, experiments)
    exp = _load_yaml(experiments[name])
    if isinstance(exp.get("recipe"), str):  # `recipe: paper` and a child's `recipe: {epochs: 5}` must merge
        exp.recipe = {"name": exp.recipe}
    bases = exp.pop("defaults", None) or []
    merged = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else bases:
        merged = OmegaConf.merge(merged, _experiment(str(base), experiments, (*seen, name)))
    return OmegaConf.merge(merged, exp) if bases else exp


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Return the resolved run config for these overrides (the default experiment is `smoke`)."""
    parsed = _parse_overrides(overrides)
    experiment, recipe = DEFAULT_EXPERIMENT, None
    rest = []
    for o in parsed:
        if o.key_or_group == "experiment" and not o.is_delete():
            experiment = str(o.value())
        elif o.key_or_group == "recipe" and not o.is_delete() and isinstance(o.value(), str):
            recipe = o.value()
        else:
            rest.append(o)
    experiments = list_experiments()
    if experiment not in experiments:
        raise unknown_name("experiment", experiment, experiments)

    cfg = _load_yaml(CONF_DIR / "config.yaml")
    cfg.generators = _load_yaml(CONF_DIR / "generators.yaml")
    OmegaConf.set_struct(cfg, True)
    exp = _experiment(experiment, experiments)
    # An experiment selects a recipe by name (`recipe: paper`) and may change its fields (`recipe: {name: paper, epochs: 5}`).
    exp_recipe = exp.pop("recipe", None)
    if isinstance(exp_recipe, str):
        exp_recipe = OmegaConf.create({"name": exp_recipe})
    recipe = recipe or (exp_recipe.get("name") if exp_recipe is not None else None) or cfg.recipe
    with open_dict(cfg):
        cfg.recipe = _recipe(recipe)
    if exp_recipe is not None:
        exp.recipe = exp_recipe
        if exp_recipe.get("name") not in (None, recipe):  # the command line chose another recipe: drop its name only
            del exp.recipe["name"]
    try:
        with open_dict(cfg.generators):  # experiments may add generators; other unknown keys are typos
            cfg = OmegaConf.merge(cfg, exp)
    except OmegaConfBaseException as err:
        raise SynthrayError(f"experiment {experiments[experiment]}: {_one_line(err)}") from None
    cfg.experiment = experiment
    for o in rest:
        _apply(cfg, o)
    _check_generators(cfg)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise SynthrayError(f"config: {_one_line(err)}") from None
    out = OmegaConf.create(resolved)
    _absolute_paths(out)
    OmegaConf.set_struct(out, True)
    return out


def _absolute_paths(cfg: DictConfig) -> None:
    """Resolve user paths against the directory the command ran in: Ray Tune runs each trial in its own folder."""
    from synthray.data.real import shipped_class_lists

    from synthray.storage import normalize

    cfg.storage = normalize(cfg.storage)  # URIs stay URIs; an unknown scheme is a one-line error
    if cfg.hub.cache:
        cfg.hub.cache = normalize(cfg.hub.cache)
    if cfg.scratch:
        cfg.scratch = str(Path(cfg.scratch).expanduser().resolve())
    if cfg.data.root:
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.prompts.captions and cfg.prompts.captions != "captioner":  # `captioner`: made by the captioner stage
        cfg.prompts.captions = str(Path(cfg.prompts.captions).expanduser().resolve())
    if cfg.metrics.geneval:
        cfg.metrics.geneval = str(Path(cfg.metrics.geneval).expanduser().resolve())
    if cfg.data.classes not in shipped_class_lists():
        cfg.data.classes = str(Path(cfg.data.classes).expanduser().resolve())


def _one_line(err: Exception) -> str:
    return str(err).splitlines()[0]


def _apply(cfg: DictConfig, o: Any) -> None:
    key = o.key_or_group
    if not key:
        raise SynthrayError(f"malformed override '{o.input_line}': expected key=value")
    try:
        if o.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is None or leaf not in node:
                raise SynthrayError(f"cannot delete unknown config key '{key}'")
            with open_dict(node):
                del node[leaf]
        elif o.is_add() or key.split(".")[:2] == ["grid", "axes"] or (key.startswith("generators.") and _new_generator_field(cfg, key)):
            with open_dict(cfg):
                OmegaConf.update(cfg, key, o.value(), merge=True, force_add=True)
        else:
            if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
                parent = key.rpartition(".")[0]
                node = OmegaConf.select(cfg, parent) if parent else cfg
                choices = list(node.keys()) if isinstance(node, DictConfig) else []
                raise unknown_name("config key", key, [f"{parent}.{c}" if parent else c for c in choices])
            old, new = OmegaConf.select(cfg, key), o.value()
            # Numbers whose null is a documented setting: every row (max_samples), the files as they are (image_size).
            nullable = new is None and key in ("metrics.max_samples", "data.image_size")
            words = NUMBER_WORDS.get(key, ())
            if (isinstance(old, (int, float)) and not isinstance(old, bool) and not nullable and not isinstance(new, (int, float))
                    and new not in words):
                raise SynthrayError(f"override '{o.input_line}': {key} takes a number{''.join(f' or {w}' for w in words)}, got '{new}'")
            OmegaConf.update(cfg, key, new, merge=True)
    except OmegaConfBaseException as err:
        raise SynthrayError(f"override '{o.input_line}': {_one_line(err)}") from None


_MISSING = object()
# Numbers that also take a word (checked where they are used).
NUMBER_WORDS = {"generation.batch_size": ("auto",)}

# The fields a generator entry may set, per kind (`conf/generators.yaml`); `call` is a free-form mapping.
GENERATOR_FIELDS: dict[str, tuple[str, ...]] = {
    "diffusers": ("kind", "pipeline", "model", "dtype", "variant", "steps", "guidance", "resolution", "released",
                  "distilled", "guidance_kwarg", "call", "scheduler", "paper"),
    "real-holdout": ("kind", "released"),
    "collapsed": ("kind", "released", "prototypes", "noise", "shift"),
    "vae-reencode": ("kind", "source", "dtype", "released"),  # `vae-reencode:<generator>` needs no entry
}
FREE_FORM_GENERATOR_FIELDS = ("call", "paper")


def _generator_fields(name: str, entry: Any) -> tuple[str, ...]:
    """The fields generator `name` may set, from its kind; a one-line error for a non-mapping or unknown kind."""
    if not isinstance(entry, DictConfig):
        raise SynthrayError(f"generator '{name}' must be a mapping with a kind ({', '.join(GENERATOR_FIELDS)}), got '{entry}'")
    kind = entry.get("kind")
    if kind not in GENERATOR_FIELDS:
        raise SynthrayError(f"generator '{name}': {unknown_name('generator kind', str(kind), GENERATOR_FIELDS)}")
    return GENERATOR_FIELDS[kind]


def _new_generator_field(cfg: DictConfig, key: str) -> bool:
    """Check a `generators.<name>[.<field>...]` override (no `+`); True when it sets an allowed field not yet there.

    The generator must exist (add one with `+generators.<name>=...`) and the field must be one its kind allows;
    only free-form fields (`call`) take sub-keys.
    """
    parts = key.split(".")
    name = parts[1]
    if name not in cfg.generators:
        err = unknown_name("generator", name, cfg.generators.keys())
        raise SynthrayError(f"{err}; to add one use +generators.{name}={{kind: ..., ...}}")
    if len(parts) == 2:
        return False
    allowed = _generator_fields(name, cfg.generators[name])
    field = parts[2]
    if field not in allowed or (len(parts) > 3 and field not in FREE_FORM_GENERATOR_FIELDS):
        raise unknown_name("config key", key, [f"generators.{name}.{f}" for f in allowed])
    return OmegaConf.select(cfg, key, default=_MISSING) is _MISSING


def _check_generators(cfg: DictConfig) -> None:
    """Every generator entry (zoo, experiment, `+generators.<name>=...`) sets only the fields its kind allows."""
    if not isinstance(cfg.get("generators"), DictConfig):
        raise SynthrayError(f"config: generators must be a mapping of generator names to entries, got '{cfg.get('generators')}'")
    try:
        for name, entry in cfg.generators.items_ex(resolve=False):
            allowed = _generator_fields(str(name), entry)
            for field in entry.keys():
                if field not in allowed:
                    raise unknown_name("config key", f"generators.{name}.{field}", [f"generators.{name}.{f}" for f in allowed])
    except OmegaConfBaseException as err:
        raise SynthrayError(f"config: {_one_line(err)}") from None


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
