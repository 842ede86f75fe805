"""Hydra's compose over synthray's config folders: a config group may be any folder of YAML files (or one file).

Hydra looks a group up as `<search path entry>/<group>/`; `experiments/` holds experiment files itself, and
`experiment=<path>.yaml` names a file anywhere. `GroupSource` (scheme `synthray-group://<group>@<folder or file>`)
serves such a folder as one group, and a `SearchPathPlugin` puts the entries of the current call on Hydra's search
path, both registered through Hydra's public `Plugins.instance().register`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_LOCK = threading.Lock()  # GlobalHydra and the search path below are process-wide
_SEARCH: list[str] = []


def hydra_compose(conf_dir: Path, config_name: str, overrides: list[str], sources: list[str],
                  schemas: dict[str, Any]) -> DictConfig:
    """`hydra.compose(config_name, overrides)` over `conf_dir`, with `sources` (`<group>@<folder or file>`, first
    wins) on the search path and `schemas` in the ConfigStore. Hydra's and OmegaConf's exceptions pass through."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _register(schemas)
    with _LOCK:
        _SEARCH[:] = sources
        if GlobalHydra.instance().is_initialized():  # synthray has no @hydra.main: a leftover from an interrupted call
            GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(conf_dir), version_base=None, job_name="synthray"):
                return compose(config_name=config_name, overrides=overrides)
        finally:
            _SEARCH.clear()


_REGISTERED: list[bool] = []


def _register(schemas: dict[str, Any]) -> None:
    """`schemas` in Hydra's ConfigStore; `_SEARCH`'s groups on its search path (once a process)."""
    if _REGISTERED:
        return
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.config_store import ConfigStore
    from hydra.core.object_type import ObjectType
    from hydra.core.plugins import Plugins
    from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class GroupSource(ConfigSource):
        """`synthray-group://<group>@<folder or file.yaml>`: one config group from a folder of YAML files (or one
        file), as `experiments/` holds experiments without an `experiment/` folder of its own."""

        @staticmethod
        def scheme() -> str:
            return "synthray-group"

        def _split(self) -> tuple[str, Path]:
            group, _, target = self.path.partition("@")
            return group, Path(target)

        def _file(self, config_path: str) -> Path | None:
            group, target = self._split()
            head, _, name = self._normalize_file_name(config_path).partition("/")
            if head != group or "/" in name:
                return None
            if target.suffix in (".yaml", ".yml"):
                return target if Path(name).stem == target.stem else None
            return target / name

        def load_config(self, config_path: str) -> ConfigResult:
            path = self._file(config_path)
            if path is None or not path.is_file():
                raise ConfigLoadError(f"Config not found: {config_path}")
            text = path.read_text(encoding="utf-8")
            return ConfigResult(config=OmegaConf.create(text) if text.strip() else OmegaConf.create(),
                                path=f"{self.scheme()}://{self.path}", provider=self.provider,
                                header=ConfigSource._get_header_dict(text[:512]))

        def available(self) -> bool:
            return self._split()[1].exists()

        def is_group(self, config_path: str) -> bool:
            return config_path in ("", self._split()[0])

        def is_config(self, config_path: str) -> bool:
            path = self._file(config_path)
            return path is not None and path.is_file()

        def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
            group, target = self._split()
            if config_path == "":
                return [group] if results_filter in (None, ObjectType.GROUP) else []
            if config_path != group or results_filter == ObjectType.GROUP:
                return []
            return [target.stem] if target.is_file() else sorted(f.stem for f in target.glob("*.yaml"))

    class SearchPath(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            for entry in _SEARCH:
                search_path.append(provider="synthray", path=f"synthray-group://{entry}")

    Plugins.instance().register(GroupSource)
    Plugins.instance().register(SearchPath)
    for name, node in schemas.items():
        ConfigStore.instance().store(name=name, node=node)
    _REGISTERED.append(True)
