"""YAML recipe + dotted overrides → validated dataclasses, and back to YAML.

Unknown or mistyped keys are errors that name the key, the file and the valid choices. A mapping
whose class has presets (``model``) may name one with ``preset: NAME``: the preset supplies every
field the mapping does not set itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from xlsr.config.presets import MODEL_PRESETS, WAV2VEC2_PRESETS
from xlsr.config.schema import ConfigError, ModelConfig, TrainConfig, Wav2Vec2Config
from xlsr.config.validation import validate
from xlsr.fileio import atomic_write_text

log = logging.getLogger("xlsr.config")

PRESET_KEY = "preset"
_PRESETS: dict[type, dict[str, typing.Callable[[], Any]]] = {
    ModelConfig: MODEL_PRESETS,
    Wav2Vec2Config: WAV2VEC2_PRESETS,
}
# Keys that moved into ``objective.wav2vec2`` (from ``model`` and the former ``loss`` section).
_WAV2VEC2_KEYS = {f.name for f in dataclasses.fields(Wav2Vec2Config)}


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), cls: type = TrainConfig) -> Any:
    """Read a YAML recipe, apply ``a.b=value`` overrides, build ``cls`` and check every rule."""
    source = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for override in overrides:
        _apply_override(raw, override)
    cfg = from_dict(cls, raw, source=source)
    if isinstance(cfg, TrainConfig):
        validate(cfg, source)
    return cfg


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


# Keys earlier versions wrote into every saved config.yaml, read and dropped (with a warning) so that
# old runs and checkpoints stay readable: dotted key -> what replaced it.
RETIRED_KEYS = {
    "validation.probe_layer": "the probes weigh every layer (docs/evaluation.md)",
}


def from_dict(cls: type, data: Any, source: str = "<dict>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, rejecting unknown keys and wrong types."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(data).__name__}")
    retired = [key for key in data if f"{prefix}{key}" in RETIRED_KEYS]
    for key in retired:
        log.warning("%s: '%s%s' is no longer used (%s); ignored", source, prefix, key,
                    RETIRED_KEYS[f"{prefix}{key}"])  # fmt: skip
    data = {key: value for key, value in data.items() if key not in retired}
    if cls is TrainConfig:
        data = _wav2vec2_section(data, source)
    presets = _PRESETS.get(cls, {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    valid = [*fields, PRESET_KEY] if presets else list(fields)
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}'{hint}; valid keys under '{where}': "
                + ", ".join(valid)
            )
    hints = typing.get_type_hints(cls)
    values = {
        key: _convert(hints[key], value, source, f"{prefix}{key}")
        for key, value in data.items()
        if key in fields
    }
    if presets and PRESET_KEY in data:
        name = data[PRESET_KEY]
        if not isinstance(name, str) or name not in presets:
            raise ConfigError(
                f"{source}: '{prefix}{PRESET_KEY}' must be one of {list(presets)}, got {name!r}"
            )
        return dataclasses.replace(presets[name](), **values)
    return cls(**values)


def _wav2vec2_section(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``objective.wav2vec2`` takes the size of ``model.preset`` unless it names its own; a wav2vec
    2.0 key under ``model`` or ``loss`` (where xlsr 0.1 had them) is an error naming its new place."""
    model, loss = data.get("model") or {}, data.get("loss")
    moved = [f"model.{key}" for key in model if key in _WAV2VEC2_KEYS] if isinstance(model, dict) else []
    if loss is not None:
        moved.append("loss")
    if moved:
        example = "diversity_weight" if moved[0] == "loss" else moved[0].rpartition(".")[2]
        raise ConfigError(
            f"{source}: {', '.join(moved)} moved to objective.wav2vec2 (e.g. objective.wav2vec2.{example}); "
            "the model section holds the encoder only"
        )
    preset = model.get(PRESET_KEY) if isinstance(model, dict) else None
    objective = data.get("objective") or {}
    section = objective.get("wav2vec2") if isinstance(objective, dict) else None
    section = section if section is not None else {}
    if (
        isinstance(preset, str)
        and preset in WAV2VEC2_PRESETS
        and isinstance(section, dict)
        and PRESET_KEY not in section
    ):
        data = {**data, "objective": {**objective, "wav2vec2": {PRESET_KEY: preset, **section}}}
    return data


def _convert(hint: Any, value: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, source, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        return _convert_sequence(origin, args, value, source, key)
    return _convert_scalar(hint, value, source, key)


def _convert_sequence(origin: type, args: tuple, value: Any, source: str, key: str) -> Any:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
    if origin is list:
        return [_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{source}: '{key}' must have {len(args)} entries, got {value!r}")
    pairs = enumerate(zip(args, value, strict=True))
    return tuple(_convert(a, v, source, f"{key}[{i}]") for i, (a, v) in pairs)


def _convert_scalar(hint: Any, value: Any, source: str, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    raise ConfigError(f"{source}: '{key}' must be {getattr(hint, '__name__', hint)}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe data (tuples become lists); every field, so no preset is needed to read it back."""

    def plain(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config (every field) atomically: a run's ``config.yaml``."""
    atomic_write_text(path, dump_config(cfg))
