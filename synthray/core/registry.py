"""Name registries (timm style): members register on import; an unknown name fails with one line."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any


class SynthrayError(Exception):
    """A user-facing problem: the CLI prints it as one line and exits non-zero."""


def error_line(err: BaseException, *names: str) -> str | None:
    """The message of the last error named `names` in `err` or the errors it wraps; None if there is none.

    Ray Tune, Train and Data pass a worker's error on wrapped, sometimes only as the text of a traceback
    ("RayTaskError(CorruptArtifact): ..."), so the text is searched as well as the chain.
    """
    pattern = re.compile(rf"(?:{'|'.join(names)})\)?: (.+)")
    seen: BaseException | None = err
    while seen is not None:
        if type(seen).__name__ in names:
            return str(seen).strip().splitlines()[-1]
        found = pattern.findall(str(seen))
        if found:
            return found[-1].strip()
        seen = seen.__cause__ or seen.__context__
    return None


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> SynthrayError:
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return SynthrayError(f"unknown {kind} '{name}'{hint}; choices: {', '.join(choices)}")


class Registry:
    """Maps names to builders. `register` is a decorator; `get` raises a one-line error with close matches."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        def wrap(obj: Any) -> Any:
            self._entries[name or obj.__name__] = obj
            return obj

        return wrap

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise unknown_name(self.kind, name, self._entries)
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
