"""Typed configuration in three layers: defaults (pydantic models), YAML files, CLI overrides.

Every job config is a :class:`pydantic.BaseModel` that forbids unknown keys. :func:`load_config`
reads a YAML file, applies ``--set key.sub=value`` overrides and validates; any problem becomes a
:class:`~medcl.errors.ConfigError` naming the key and the file (or the override) it came from.
:func:`save_config` writes the resolved config next to a job's outputs.
"""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from medcl.errors import ConfigError

C = TypeVar("C", bound=BaseModel)

RESOLVED_CONFIG_NAME = "config.yaml"


class StrictModel(BaseModel):
    """Base of every medcl config section: unknown keys are errors, values validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path), None, "config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(str(path), None, f"not valid YAML{where}: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "not a text file (YAML expected)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(str(path), None, f"top level must be a mapping, got {kind}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``"a.b=3"`` into ``(["a", "b"], 3)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item}", None, "override must look like key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item}", None, "override must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item}", key, f"value is not valid YAML: {exc}") from None
    return key.split("."), value


def _set_dotted(out: dict[str, Any], parts: list[str], value: Any, source: str) -> None:
    node: dict[str, Any] = out
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                source, ".".join(parts[: i + 1]), "is not a section; cannot set a sub-key"
            )
        node = child
    node[parts[-1]] = value


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str], values: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Return a copy of ``data`` with overrides applied, and a map ``dotted key -> origin``.

    ``overrides`` are ``key.sub=value`` strings (values parsed as YAML); ``values`` maps dotted
    keys to already-typed values (command-line flags) and is applied last.
    """
    out = copy.deepcopy(data)
    origin: dict[str, str] = {}
    for item in overrides:
        parts, value = parse_override(item)
        _set_dotted(out, parts, value, f"--set {item}")
        origin[".".join(parts)] = f"--set {item}"
    for key, value in (values or {}).items():
        flag = "--" + key.replace("_", "-").replace(".", "-")
        _set_dotted(out, key.split("."), value, flag)
        origin[key] = f"option {flag}"
    return out, origin


def _describe_errors(exc: ValidationError, source: str, origin: Mapping[str, str]) -> ConfigError:
    problems = []
    first_key: str | None = None
    first_source = source
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = f"{err['msg']} (got {err.get('input')!r})"
        src = source
        if key is not None:
            # an error in a key set by an override names the override, not the file
            for dotted, ov in origin.items():
                if key == dotted or key.startswith(dotted + "."):
                    src = ov
        if first_key is None:
            first_key, first_source = key, src
        problems.append(f"key '{key}': {msg}" if src == source else f"key '{key}' ({src}): {msg}")
    if len(problems) == 1:
        return ConfigError(first_source, first_key, problems[0].split(": ", 1)[1])
    return ConfigError(source, None, "; ".join(problems))


def build_config(
    cls: type[C],
    data: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    source: str = "<defaults>",
    values: Mapping[str, Any] | None = None,
) -> C:
    """Validate ``data`` with ``overrides`` and ``values`` applied into a ``cls`` instance."""
    merged, origin = apply_overrides(dict(data or {}), overrides, values)
    try:
        return cls.model_validate(merged)
    except ValidationError as exc:
        raise _describe_errors(exc, source, origin) from None


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> C:
    """Load ``cls`` from the YAML file at ``path`` (defaults when ``None``) plus overrides.

    Precedence: model defaults < file < ``overrides`` (``--set``) < ``values`` (flags).
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        data = _read_yaml(p)
        source = str(p)
    return build_config(cls, data, overrides, source, values)


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """A YAML-safe dict of ``cfg`` (paths as strings, tuples as lists)."""
    return cfg.model_dump(mode="json")


def save_config(cfg: BaseModel, out_dir: str | Path, name: str = RESOLVED_CONFIG_NAME) -> Path:
    """Write the resolved ``cfg`` as YAML into ``out_dir`` and return the file's path.

    A comment header records the medcl version and the time, so a result can be traced back.
    """
    from medcl import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    header = f"# resolved {type(cfg).__name__}, medcl {__version__}, {stamp}\n"
    body = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(header + body, encoding="utf-8")
    tmp.replace(target)
    return target
