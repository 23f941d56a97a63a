"""The config model's keys, walked: every leaf key as a dotted path (tenant entries as
`tenants[].key`) and the sections holding a model. Shared by the key table's meta tests and the
unknown-keys test."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from crawlguard.config import Config


def _submodel(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model inside an annotation, and whether it sits in a list (tenant entries)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = get_origin(annotation)
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            listed = found[1] or origin in (list, tuple, set, frozenset)
            if origin is Union or origin is types.UnionType:
                listed = found[1]
            return found[0], listed
    return None


def leaf_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{info.alias or name}"
        sub = _submodel(info.annotation)
        if sub is None:
            keys.append(dotted)
        else:
            inner, listed = sub
            keys += leaf_keys(inner, f"{dotted}[]." if listed else f"{dotted}.")
    return keys


def sections() -> dict[str, tuple[type[BaseModel], bool]]:
    """Top-level keys holding a model (section or list of entries)."""
    out: dict[str, tuple[type[BaseModel], bool]] = {}
    for name, info in Config.model_fields.items():
        sub = _submodel(info.annotation)
        if sub is not None:
            out[name] = sub
    return out
