"""Compose the run configuration with Hydra's compose API (`conf/config.yaml`'s defaults list).

Config groups: `experiment` (experiments/<name>.yaml in every folder of `experiment_dirs()`, merged at the top level,
or `experiment=<path>.yaml`) and `recipe` (conf/recipes/<name>.yaml, or `recipe=<path>.yaml`); an experiment extends
another with `defaults: [paper]` and picks a recipe with `defaults: [{override /recipe: paper}]`. The schema
(synthray/schema.py) types every key. `recipe.<field>=...` changes one field of the selected recipe.

Overrides use Hydra's grammar (`key=value`, `+key=value`, `~key`, lists as `[a,b]`) and are parsed with Hydra's own
parser; group choices go to `hydra.compose`, values are applied to its result (Hydra's `OmegaConf.update`) so that an
unknown key, a malformed override, a wrong type or a word outside a choice is a one-line `SynthrayError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from synthray.core.registry import SynthrayError, unknown_name
from synthray.schema import Config, choices, keys

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR / "conf"
DEFAULT_EXPERIMENT = "smoke"
SCHEMA_NAME = "synthray_schema"


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


def _is_path(value: str) -> bool:
    return value.endswith((".yaml", ".yml"))


def _choose(group: str, value: str, names: Any, sources: list[str]) -> tuple[str, Path | None]:
    """A group's option name for `value` (a name or a YAML path), and the file a path names (ahead in `sources`)."""
    if not _is_path(value):
        if value not in names:
            raise unknown_name(group, value, names)
        return value, None
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise SynthrayError(f"{group} file not found: {path}")
    sources.insert(0, f"{group}@{path}")
    return path.stem, path


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
    sources = [f"experiment@{d.resolve()}" for d in experiment_dirs()] + [f"recipe@{CONF_DIR / 'recipes'}"]
    experiment, path = _choose("experiment", experiment, experiments, sources)
    files = {("experiment", name): p for name, p in experiments.items()} | ({("experiment", experiment): path} if path else {})
    choices_ = [f"experiment@_global_={experiment}"]
    if recipe is not None:
        recipe, path = _choose("recipe", recipe, list_recipes(), sources)
        files[("recipe", recipe)] = path or CONF_DIR / "recipes" / f"{recipe}.yaml"
        choices_.append(f"recipe={recipe}")
    _check_loops(experiment, files)
    cfg = _hydra_compose(choices_, sources, files)
    cfg.experiment = experiment
    for o in rest:
        _apply(cfg, o)
    _check_generators(cfg)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except OmegaConfBaseException as err:
        raise SynthrayError(f"config: {_explain(err)}") from None
    for key in _missing(cfg):  # a key no file sets stays out, as a recipe without lr_schedule
        parent, _, leaf = key.rpartition(".")
        node = resolved
        for part in filter(None, parent.split(".")):
            node = node[part]
        del node[leaf]
    out = OmegaConf.create(resolved)
    _absolute_paths(out)
    OmegaConf.set_struct(out, True)
    return out


def _check_loops(name: str, files: dict[tuple[str, str], Path], seen: tuple[str, ...] = ()) -> None:
    """Hydra recurses without end on an experiment whose defaults list leads back to it: name the loop instead."""
    if name in seen:
        raise SynthrayError(f"experiment {name}: its defaults include itself ({' -> '.join((*seen, name))})")
    path = files.get(("experiment", name))
    try:
        exp = OmegaConf.load(path) if path else None
    except (OSError, OmegaConfBaseException, ValueError):
        return  # Hydra reports it
    bases = exp.get("defaults") if isinstance(exp, DictConfig) else None
    for base in [bases] if isinstance(bases, str) else bases or []:
        if isinstance(base, str) and not base.startswith(("_", "/", "override")):
            _check_loops(base, files, (*seen, name))


def _hydra_compose(overrides: list[str], sources: list[str], files: dict[tuple[str, str], Path]) -> DictConfig:
    from hydra.errors import HydraException

    from synthray.hydra_search import hydra_compose

    try:
        return hydra_compose(CONF_DIR, "config", overrides, sources, {SCHEMA_NAME: Config})
    except (HydraException, OmegaConfBaseException) as err:
        raise _composition_error(str(err), files) from None


def _composition_error(text: str, files: dict[tuple[str, str], Path]) -> SynthrayError:
    """Hydra's message, in one line, naming the experiment or recipe file it is about."""
    where = re.match(r"In '(experiment|recipe)/([^']+)': (?:\w+ raised while composing config:\n)?", text)
    what = f"{where[1]} {files.get((where[1], where[2]), where[2])}: " if where else "config: "
    text = text[where.end():] if where else text
    missing = re.search(r"Could not (?:find|load) '(experiment|recipe)/([^']+)'", text)
    if missing:
        names = list_experiments() if missing[1] == "experiment" else list_recipes()
        return SynthrayError(f"{what}{unknown_name(missing[1], missing[2], names)}")
    if "is not a subclass of Recipe" in text:  # `recipe: paper` in an experiment's body
        return SynthrayError(f"{what}select a recipe in the defaults list, e.g. defaults: [{{override /recipe: paper}}]")
    return SynthrayError(what + _explain(text))


def _explain(err: Exception | str) -> str:
    """One line for an OmegaConf error: the schema's choices, types and keys in synthray's words."""
    text = str(err)
    first = text.partition("\n")[0]
    key = getattr(err, "full_key", None) or (re.search(r"full_key: (\S+)", text) or [None, ""])[1]
    value = re.match(r"(?:Invalid value|Value) '(.*?)'", first)
    if first.startswith("Invalid value") and choices(Config, key):
        return str(unknown_name(key, value[1] if value else "?", choices(Config, key)))
    if "converted to Integer" in first and value:
        return f"{key} takes a whole number, got '{value[1]}'"
    if ("converted to Boolean" in first or "is not a valid bool" in first) and value:
        return f"{key} takes true or false, got '{value[1]}'"
    if "is not Optional" in first or "cannot be assigned None" in first:
        return f"{key} cannot be null"
    if key == "generators" and ("Dict[str, Any]" in first or "is not a subclass" in first):
        return f"generators must be a mapping of generator names to entries, got '{getattr(err, 'value', '?')}'"
    if "is not a subclass of" in first or "Cannot assign" in first:
        return f"{key} is a section; set one of its keys, e.g. {key}.<key>=..."
    if re.match(r"Key '.*' not in '", first) and key:
        parent = key.rpartition(".")[0]
        return str(unknown_name("config key", key, [f"{parent}.{k}" if parent else k for k in keys(Config, parent)]))
    return first


def _missing(cfg: DictConfig, prefix: str = "") -> list[str]:
    """The dotted keys of `cfg` that the schema has and no file set."""
    out = []
    for key in cfg.keys():
        if OmegaConf.is_missing(cfg, key):
            out.append(f"{prefix}{key}")
        elif isinstance(cfg._get_node(key), DictConfig) and not cfg._get_node(key)._is_none():
            out += _missing(cfg[key], f"{prefix}{key}.")
    return out


def _absolute_paths(cfg: DictConfig) -> None:
    """Resolve user paths against the directory the command ran in: Ray Tune runs each trial in its own folder."""
    from synthray.core.storage import normalize
    from synthray.data.real import RENAMED_LISTS, shipped_class_lists

    cfg.storage = normalize(cfg.storage)  # URIs stay URIs; an unknown scheme is a one-line error
    if cfg.hub.cache:
        cfg.hub.cache = normalize(cfg.hub.cache)
    if cfg.scratch:
        cfg.scratch = str(Path(cfg.scratch).expanduser().resolve())
    if cfg.data.root:  # a URI names a copy `synthray stage-data` made (RealSpec.check refuses any other)
        cfg.data.root = _path_or_uri("data.root", cfg.data.root)
    if cfg.prompts.captions and cfg.prompts.captions != "captioner":  # `captioner`: made by the captioner stage
        cfg.prompts.captions = _path_or_uri("prompts.captions", cfg.prompts.captions)  # read through storage
    if cfg.metrics.geneval and cfg.metrics.geneval != "published":  # read through the storage layer (sweep/geneval.py)
        cfg.metrics.geneval = _path_or_uri("metrics.geneval", cfg.metrics.geneval)
    cfg.data.classes = RENAMED_LISTS.get(cfg.data.classes, cfg.data.classes)  # an earlier name of a shipped list
    if cfg.data.classes not in shipped_class_lists():
        cfg.data.classes = str(Path(cfg.data.classes).expanduser().resolve())


def _is_uri(value: Any) -> bool:
    return "://" in str(value) or str(value).startswith(("s3:/", "gs:/"))


def _path_or_uri(key: str, value: Any) -> str:
    """A storage URI as a canonical URI, a local path as an absolute path; an unknown scheme (or `s3:/x`, what a
    path made of `s3://x`) is one line naming `key`, never a local folder named after it."""
    from synthray.core.storage import normalize

    if not _is_uri(value):
        return str(Path(str(value)).expanduser().resolve())
    try:
        return normalize(str(value))
    except SynthrayError as err:
        raise SynthrayError(re.sub(r"^storage '[^']*'", f"{key}={str(value).strip()}", str(err))) from None


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
                choices = [c for c in node.keys() if not OmegaConf.is_missing(node, c)] if isinstance(node, DictConfig) else []
                raise unknown_name("config key", key, [f"{parent}.{c}" if parent else c for c in choices])
            old, new = OmegaConf.select(cfg, key), o.value()
            # Numbers whose null is a documented setting: every row (max_samples), the files as they are (image_size),
            # no time limit (compile_timeout_s).
            nullable = new is None and key in ("metrics.max_samples", "data.image_size", "generation.compile_timeout_s", "labels.classes")
            words = NUMBER_WORDS.get(key, ())
            if (isinstance(old, (int, float)) and not isinstance(old, bool) and not nullable and not isinstance(new, (int, float))
                    and new not in words):
                raise SynthrayError(f"override '{o.input_line}': {key} takes a number{''.join(f' or {w}' for w in words)}, got '{new}'")
            # OmegaConf would read yes/no/on/off/1/0 as booleans: nothing is silently corrected.
            if _is_bool_field(cfg, key) and new is not None and not isinstance(new, bool):
                raise SynthrayError(f"override '{o.input_line}': {key} takes true or false, got '{new}'")
            OmegaConf.update(cfg, key, new, merge=True)
    except OmegaConfBaseException as err:
        raise SynthrayError(f"override '{o.input_line}': {_explain(err)}") from None


_MISSING = object()


def _is_bool_field(cfg: DictConfig, key: str) -> bool:
    """Whether the schema types `key` as a bool (not a bool-or-word such as generation.compile)."""
    from omegaconf.nodes import BooleanNode

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and isinstance(node._get_node(leaf), BooleanNode)


# Numbers that also take a word (checked where they are used).
NUMBER_WORDS = {"generation.batch_size": ("auto",), "recipe.load_size": ("native",)}

def _generator_fields(name: str, entry: Any) -> tuple[str, ...]:
    """The fields generator `name` may set, from its kind's record (`generation/kinds.py`); a one-line error for a
    non-mapping or unknown kind."""
    from synthray.generation.kinds import KINDS

    if not isinstance(entry, DictConfig):
        raise SynthrayError(f"generator '{name}' must be a mapping with a kind ({', '.join(KINDS.names())}), got '{entry}'")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise SynthrayError(f"generator '{name}': {unknown_name('generator kind', str(kind), KINDS.names())}")
    return KINDS.get(kind).fields


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
    from synthray.generation.kinds import KINDS

    allowed = _generator_fields(name, cfg.generators[name])
    field = parts[2]
    if field not in allowed or (len(parts) > 3 and field not in KINDS.get(cfg.generators[name].kind).free_form):
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
