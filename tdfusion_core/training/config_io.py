"""Reading settings safely: YAML files, ``--set KEY=VALUE`` overrides and their checks, with one-line errors.

Why hand-written rather than OmegaConf, jsonargparse, pydantic or cattrs: :class:`tdfusion_core.training.config.TrainConfig`
stays a plain attrs class (other code builds and evolves it directly), and what users need here is small but
specific: YAML 1.2 numbers (``1e-4`` is a float, which PyYAML's YAML 1.1 reads as a string), duplicate keys
refused, strict booleans (``switch: "false"`` is an error, not ``True``), and messages of one line naming the file,
the line and the fix ("did you mean ..."). cattrs would structure ``"false"`` with ``bool()`` (i.e. ``True``) and
report errors as exception groups; OmegaConf and pydantic would need a second schema next to the attrs class. The
checks below read the attrs field types, so a field added to ``TrainConfig`` is checked with no extra code.

* :func:`load_yaml` / :func:`parse_value`: YAML with those rules.
* :func:`apply_override`: ``task_options.num_classes=1`` sets one key of a nested mapping.
* :func:`check_values`: unknown keys (with the closest valid key) and wrong types (with the expected type).
* :func:`check_task_options`: options a task does not accept (see :meth:`tdfusion_core.kernel.task.Task.accepted_options`).
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml


class ConfigError(ValueError):
    """A settings problem, described in one line (file, key, what was expected and what was found)."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The ``--config`` file does not exist."""


# ---------------------------------------------------------------------------------------------------- YAML
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.2) and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"line {line}: duplicate key {key!r} (first given on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in list(_Loader.yaml_implicit_resolvers):
    _Loader.yaml_implicit_resolvers[_first] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers[_first] if tag != "tag:yaml.org,2002:float"
    ]
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str, source: str = "config") -> Any:
    """Parse YAML ``text`` (``1e-4`` is a number, duplicate keys are an error); errors name ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{source}: YAML syntax error at {where}{exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {exc}") from None


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    """The mapping of settings in a YAML file (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileNotFoundError(f"config file not found: {path}")
    values = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value lines), not {type(values).__name__}")
    return values


def parse_value(text: str, source: str = "--set") -> Any:
    """A ``--set`` value read as YAML (``1e-4`` → 0.0001, ``true`` → True, ``[1, 2]`` → a list)."""
    return load_yaml(text, source)


def apply_override(values: dict[str, Any], pair: str, source: str = "--set") -> None:
    """Apply ``KEY=VALUE`` or ``KEY.SUBKEY=VALUE`` to ``values`` in place (dashes in keys become underscores)."""
    if "=" not in pair:
        raise ConfigError(f"{source}: expected KEY=VALUE, got {pair!r}")
    key, text = pair.split("=", 1)
    parts = [p.strip().replace("-", "_") if i == 0 else p.strip() for i, p in enumerate(key.split("."))]
    if not all(parts):
        raise ConfigError(f"{source}: empty key in {pair!r}")
    value = parse_value(text, f"{source} {key}")
    target = values
    for depth, part in enumerate(parts[:-1]):
        child = target.get(part)
        if child is None:
            child = target[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"{source} {key}: {where} is {type(child).__name__}, not a mapping of options")
        target = child
    target[parts[-1]] = value


# ---------------------------------------------------------------------------------------------------- checks
def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return {dict: "a mapping", list: "a list", tuple: "a list"}.get(origin, str(tp))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


_NO_MATCH = object()


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (ints become floats where a float is expected), or ``_NO_MATCH``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return value if value in typing.get_args(tp) else _NO_MATCH
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = _coerce(value, arg)
            if out is not _NO_MATCH:
                return out
        return _NO_MATCH
    if tp is type(None):
        return value if value is None else _NO_MATCH
    if tp is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _NO_MATCH
    if tp is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value if isinstance(value, str) else _NO_MATCH
    if origin is dict or tp is dict:
        return value if isinstance(value, Mapping) else _NO_MATCH
    if origin in (list, tuple) or tp in (list, tuple):
        return value if isinstance(value, (list, tuple)) else _NO_MATCH
    return value  # a type this checker does not know: the class's own validators decide


def _shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_values(cls: type, values: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Check ``values`` against the fields of attrs class ``cls``: unknown keys (with the closest valid one) and
    types (with the expected type). Returns the values with ints widened to floats where floats are expected.
    Fields with a converter are left to it."""
    fields = {a.name: a for a in attrs.fields(cls)}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {key!r}{did_you_mean(str(key), fields)}; see docs/config.md")
        if fields[key].converter is not None:
            out[key] = value
            continue
        coerced = _coerce(value, hints.get(key, Any))
        if coerced is _NO_MATCH:
            raise ConfigError(f"{source}: {key} must be {_type_name(hints[key])}, got {_shown(value)}")
        out[key] = coerced
    return out


def build(cls: type, values: Mapping[str, Any], source: str = "config") -> Any:
    """``cls(**values)`` after :func:`check_values`; the class's own validation errors are prefixed by ``source``."""
    checked = check_values(cls, values, source)
    try:
        return cls(**checked)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def finite_positive(name: str, value: Any) -> None:
    """Raise a one-line error unless ``value`` is a finite number > 0 (``None`` passes)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {_shown(value)}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


# ---------------------------------------------------------------------------------------------------- task options
def accepted_options(factory: Any) -> set[str] | None:
    """Option names a task factory accepts, or ``None`` when it takes any (see ``Task.accepted_options``)."""
    method = getattr(factory, "accepted_options", None)
    if callable(method):
        found: set[str] | None = method()
        return found
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_task_options(task_name: str, factory: Any, options: Mapping[str, Any], source: str = "task_options") -> None:
    """Refuse options the task does not accept, naming the closest accepted one."""
    known = accepted_options(factory)
    if known is None:
        return
    for key in options:
        if key not in known:
            raise ConfigError(
                f"{source}: task {task_name!r} has no option {key!r}{did_you_mean(str(key), known)}; "
                f"it accepts: {', '.join(sorted(known))}"
            )
