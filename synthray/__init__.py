"""synthray: Ray sweeps that measure which text-to-image generator makes the best synthetic training data.

The Python API (`synthray.compose`, `plan`, `generate`, `run`, `resume`, `load_results`, `report`; see `synthray.api`) is
imported on first use, so `import synthray` stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__", "compose", "plan", "generate", "run", "resume", "load_results", "report"]

_API = frozenset(__all__) - {"__version__"}


def _version() -> str:
    """The installed package's version; in a source tree that is not installed, pyproject.toml's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synthray")
    except PackageNotFoundError:
        from pathlib import Path

        import tomllib

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = _version()
    elif name in _API:
        from synthray import api

        value = getattr(api, name)
    else:
        raise AttributeError(f"module 'synthray' has no attribute '{name}'")
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
