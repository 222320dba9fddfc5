"""A config file's keys with the files it includes, read without Lightning (job scripts ask `spp-cls run-dir` for
each cell, and Lightning takes seconds to import).

A config file includes another with a first key `config: OTHER.yaml` (a path relative to the including file), as
LightningCLI's parser reads it: the included file's keys first, then the including file's keys over them. The keys
after `config:` are dotted (`model.head: spp`); a nested section there would replace the included file's whole
section in LightningCLI's reading, so the config tests refuse one.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

INCLUDE_KEY = "config"


def flat_keys(section: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"head": "spp"}} -> {"model.head": "spp"}; dotted keys stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_keys(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_config(path: Path) -> dict[str, Any]:
    """The file's keys, dotted, over those of the files it includes (recursively)."""
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, Mapping):
        raise ValueError(f"{path}: a config file holds keys, not {type(content).__name__}")
    included = content.get(INCLUDE_KEY)
    keys: dict[str, Any] = {}
    for other in [included] if isinstance(included, str) else included or []:
        keys.update(read_config(path.parent / other))
    keys.update(flat_keys({key: value for key, value in content.items() if key != INCLUDE_KEY}))
    return keys


def section(keys: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The keys below `name.`, without that prefix: section(keys, "model")["head"]."""
    prefix = f"{name}."
    return {key[len(prefix):]: value for key, value in keys.items() if key.startswith(prefix)}
