"""The schema's machinery: `schema` makes a dataclass whose fields default to MISSING, with `Literal` choices as str
Enums for OmegaConf; `field_type`, `choices` and `keys` read a schema back (one-line errors, did-you-mean)."""

import dataclasses
import enum
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from omegaconf import MISSING

Number = Any  # int or float, as written
Device = Literal["cpu", "gpu"]


def _enum(choices: tuple[str, ...]) -> type[enum.Enum]:
    """OmegaConf validates Enums, not Literals: a str Enum whose member names are the words (`4:4:4` too)."""
    return enum.Enum("|".join(choices), [(c, c) for c in choices], type=str)  # type: ignore[return-value]


def _omegaconf_type(tp: Any) -> Any:
    if typing.get_origin(tp) is Literal:
        return _enum(typing.get_args(tp))
    if typing.get_origin(tp) is typing.Union:  # Optional[Literal[...]]
        args = typing.get_args(tp)
        return Optional[tuple(_omegaconf_type(a) for a in args if a is not type(None))[0]]  # type: ignore[misc]
    return tp


def schema(cls: type) -> type:
    """A dataclass whose fields default to MISSING (or their section's schema), `Literal`s made Enums for OmegaConf."""
    hints = typing.get_type_hints(cls)
    cls.__annotations__ = {name: _omegaconf_type(tp) for name, tp in hints.items()}
    for name, tp in hints.items():
        if dataclasses.is_dataclass(tp):
            setattr(cls, name, field(default_factory=tp))
        elif not hasattr(cls, name):
            setattr(cls, name, MISSING)
    return dataclass(cls)


def field_type(cls: type, key: str) -> Any:
    """The type of `key` (dotted, below `cls`; `""`: `cls` itself), Optional unwrapped; None when no field."""
    tp: Any = cls
    for part in filter(None, key.split(".")):
        fields = {f.name: f.type for f in dataclasses.fields(tp)} if dataclasses.is_dataclass(tp) else {}
        tp = fields.get(part)
        if typing.get_origin(tp) is typing.Union:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def choices(cls: type, key: str) -> tuple[str, ...] | None:
    """The words `key` takes, or None when it is not a choice key."""
    tp = field_type(cls, key)
    return tuple(m.name for m in tp) if isinstance(tp, type) and issubclass(tp, enum.Enum) else None


def keys(cls: type, key: str) -> list[str]:
    """The fields of section `key` (`""`: the top level); [] when it is not a section."""
    tp = field_type(cls, key)
    return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []


