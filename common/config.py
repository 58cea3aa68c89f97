"""YAML configuration: safe loading, file references, ``--set`` overrides, checked keys.

Every error names the file and the key path, e.g.
``configs/experiments/x.yaml: train.lr: expected a number, got 'fast'``.
Only ``yaml.safe_load`` is used: a config never runs code.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

REQUIRED = object()


class ConfigError(UserError, ValueError):
    """A configuration problem located by file and key path."""

    def __init__(self, file: str | os.PathLike | None, key: str | None, reason: str):
        self.file, self.key, self.reason = (str(file) if file else None), key, reason
        super().__init__(": ".join(p for p in (self.file, key, reason) if p))


@dataclass(frozen=True)
class Field:
    """One expected key: its type, default and allowed values.

    ``kind`` is one of ``int``, ``float``, ``number``, ``str``, ``bool``,
    ``list``, ``dict``, ``any``, ``path``; ``item`` checks list elements.
    """

    kind: str
    default: Any = REQUIRED
    choices: Sequence | None = None
    item: str | None = None
    nullable: bool = False
    help: str = ""


_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "number": "a number",
    "str": "a string",
    "path": "a path",
    "bool": "true or false",
    "list": "a list",
    "dict": "a mapping",
}


def _type_ok(kind: str, v: Any) -> bool:
    if kind == "any":
        return True
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind in ("float", "number"):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind in ("str", "path"):
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "list":
        return isinstance(v, list)
    if kind == "dict":
        return isinstance(v, dict)
    raise ValueError(f"unknown field kind {kind!r}")


def close_names(name: str, known: Sequence[str], n: int = 3) -> str:
    """`` (did you mean: a, b?)`` or ``known keys: ...`` for error messages."""
    known = [str(k) for k in known]
    same_but_case = [k for k in known if k.lower() == str(name).lower()]
    close = (
        same_but_case
        + [
            k
            for k in difflib.get_close_matches(str(name), known, n=n, cutoff=0.5)
            if k not in same_but_case
        ][: n - len(same_but_case)]
    )
    if close:
        return f"did you mean {', '.join(repr(c) for c in close)}?"
    return f"known: {', '.join(sorted(map(str, known)))}"


# The configs shipped with mirpatch: the repository's configs/ (common/configs links to it), which
# a wheel installs as common/configs/.
SHIPPED = Path(__file__).resolve().parent / "configs"


def find_config(
    name: str | os.PathLike, base: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """The YAML file ``name`` names, and the place it stands for.

    ``name`` is a path, relative to ``base`` (default: the current folder). A relative path
    that is not there names a shipped config by its path in the repository
    (``configs/models/lms_classifier.yaml``; the ``configs/`` may be left out), so that the
    commands of a checkout work as written where mirpatch is installed from a wheel. Returns
    ``(file, stands_for)``: for a file found where named, the file twice; for a shipped one,
    the file and ``configs/<its path>`` under the current folder, which is where its relative
    dataset paths are taken from (``../../data/demo/demo.pyjama`` of a shipped experiment is
    ``./data/demo/demo.pyjama``, as in a checkout). A name found nowhere is returned as it was
    named, for the reader's "file not found".
    """
    named = Path(name)
    here = named if base is None or named.is_absolute() else Path(base) / named
    if here.is_file() or named.is_absolute():
        return here, here
    parts = named.parts[1:] if named.parts[:1] == ("configs",) else named.parts
    if parts and ".." not in parts and SHIPPED.joinpath(*parts).is_file():
        return SHIPPED.joinpath(*parts), Path("configs", *parts)
    return here, here


def shipped_configs() -> list[str]:
    """Every shipped config, by the name that finds it (``configs/models/x.yaml``)."""
    return sorted(f"configs/{p.relative_to(SHIPPED).as_posix()}" for p in SHIPPED.rglob("*.yaml"))


def load_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file with ``yaml.safe_load`` (a relative path that is not there may name a
    shipped config: :func:`find_config`); errors name the file and line."""
    path = find_config(path)[0]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        close = close_names(str(path), shipped_configs(), n=3)
        if not close.startswith("did you mean"):
            close = "nor a shipped config (`train configs` lists them)"
        raise ConfigError(path, None, f"file not found; {close}") from None
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(path, None, f"invalid YAML: {where}{problem}") from None


def validate(data: Any, schema: Mapping[str, Any], file: Any = None, prefix: str = "") -> dict:
    """Check ``data`` against ``schema`` and return a copy with defaults filled in.

    ``schema`` maps each key to a :class:`Field` or to a nested schema
    (a mapping). Unknown keys are errors naming the close known keys.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, prefix or None, f"expected a mapping, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            raise ConfigError(file, path, f"unknown key; {close_names(key, list(schema))}")
        spec = schema[key]
        if isinstance(spec, Mapping):
            out[key] = validate(value, spec, file, path)
        else:
            out[key] = check_value(value, spec, file, path)
    for key, spec in schema.items():
        if key in out:
            continue
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, Mapping):
            out[key] = validate({}, spec, file, path)
        elif spec.default is REQUIRED:
            raise ConfigError(file, path, "missing (required)")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def check_value(value: Any, spec: Field, file: Any, path: str) -> Any:
    if value is None and spec.nullable:
        return None
    if not _type_ok(spec.kind, value):
        raise ConfigError(
            file, path, f"expected {_KIND_WORDS.get(spec.kind, spec.kind)}, got {value!r}"
        )
    if spec.kind == "float":
        value = float(value)
    if spec.item is not None:
        for i, v in enumerate(value):
            if not _type_ok(spec.item, v):
                raise ConfigError(
                    file,
                    f"{path}[{i}]",
                    f"expected {_KIND_WORDS.get(spec.item, spec.item)}, got {v!r}",
                )
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(
            file, path, f"{value!r} is not one of {', '.join(map(str, spec.choices))}"
        )
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.001"`` -> ``(["train", "lr"], 0.001)`` (the value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected KEY.PATH=VALUE")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of ``data`` with each ``KEY.PATH=VALUE`` set (parents created)."""
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError("--set", ".".join(keys[: i + 1]), f"is {nxt!r}, not a mapping")
            node = nxt
        node[keys[-1]] = value
    return data


def load_config(
    path: str | os.PathLike,
    overrides: Sequence[str] = (),
    references: Sequence[str] = (),
) -> dict:
    """Load a YAML mapping, inline referenced files and apply ``--set`` overrides.

    A key listed in ``references`` whose value is a string is a path to another
    YAML file, relative to ``path``'s folder (or a shipped config); its content replaces the string
    (and ``<key>_file`` records where it came from). Overrides apply after the
    references are inlined, so ``--set feature.hop_length=256`` works.
    """
    path = find_config(path)[0]
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            path, None, f"expected a mapping at the top level, got {type(data).__name__}"
        )
    for key in references:
        ref = data.get(key)
        if isinstance(ref, str):
            ref_path = find_config(ref, path.parent)[0].resolve()
            if not ref_path.is_file():
                raise ConfigError(
                    path, key, f"referenced file {ref!r} not found (looked at {ref_path})"
                )
            sub = load_yaml(ref_path)
            # A model file holds `model: {...}`, as in the tutorial; unwrap it.
            if isinstance(sub, dict) and set(sub) == {key}:
                sub = sub[key]
            data[key] = sub
            data[f"{key}_file"] = str(ref_path)
    return apply_overrides(data, overrides)


# -- typed settings: dataclasses whose fields are the schema -----------------------------------


def setting(
    default: Any = REQUIRED,
    kind: str = "any",
    *,
    choices: Sequence | None = None,
    item: str | None = None,
    nullable: bool = False,
    help: str = "",
) -> Any:
    """A dataclass field that is also one key of the schema (see :func:`schema_of`)."""
    meta = {"setting": Field(kind, default, choices, item, nullable, help)}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type) -> Any:
    """A dataclass field holding a nested group of settings (a YAML mapping)."""
    return dataclasses.field(metadata={"section": cls})


def schema_of(cls: type) -> dict[str, Any]:
    """The schema :func:`validate` checks, read off a settings dataclass: each
    :func:`setting` is a :class:`Field`, each :func:`section` a nested schema."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if "setting" in f.metadata:
            out[f.name] = f.metadata["setting"]
        elif "section" in f.metadata:
            out[f.name] = schema_of(f.metadata["section"])
    return out


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """A settings dataclass from a mapping :func:`validate` checked against its schema."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        nested = f.metadata.get("section")
        kwargs[f.name] = from_dict(nested, data[f.name]) if nested else data[f.name]
    return cls(**kwargs)
