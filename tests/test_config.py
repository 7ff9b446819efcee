"""Config loading: YAML, overrides, flags, precise errors, resolved config written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import Field

from medcl.config import StrictModel, build_config, load_config, save_config
from medcl.errors import ConfigError


class Optim(StrictModel):
    lr: float = 1e-3
    epochs: int = 10


class Job(StrictModel):
    name: str = "job"
    size: tuple[int, int] = (64, 64)
    optim: Optim = Optim()
    tags: list[str] = Field(default_factory=list)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_defaults_file_overrides_and_flags_in_order(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: from-file\noptim:\n  lr: 0.5\n  epochs: 3\n")
    cfg = load_config(Job, p, ["optim.epochs=7", "size=[32, 16]"], {"name": "from-flag"})
    assert cfg.name == "from-flag"
    assert cfg.optim.lr == 0.5
    assert cfg.optim.epochs == 7
    assert cfg.size == (32, 16)
    assert cfg.tags == []


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "optim:\n  lr: 0.1\n  momentum: 0.9\n")
    with pytest.raises(ConfigError) as err:
        load_config(Job, p)
    assert str(p) in str(err.value)
    assert "optim.momentum" in str(err.value)
    assert "unknown key" in str(err.value)


def test_wrong_type_names_key_file_and_value(tmp_path: Path) -> None:
    p = _write(tmp_path, "optim:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"key 'optim.epochs'.*'many'") as err:
        load_config(Job, p)
    assert err.value.source == str(p)
    assert err.value.key == "optim.epochs"


def test_bad_override_is_blamed_on_the_override(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(Job, p, ["optim.epochs=ten"])
    assert err.value.source == "--set optim.epochs=ten"
    assert err.value.key == "optim.epochs"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(Job, p, ["optim.warmup=3"])


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        build_config(Job, {}, ["no-equals-sign"])
    with pytest.raises(ConfigError, match="not a section"):
        build_config(Job, {"name": "a"}, ["name.sub=1"])


def test_malformed_yaml_reports_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: a\noptim: [1, 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+") as err:
        load_config(Job, p)
    assert str(p) in str(err.value)


def test_non_mapping_and_missing_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping, got list"):
        load_config(Job, p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Job, tmp_path / "absent.yaml")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(Job, _write(tmp_path, "")) == Job()


def test_save_config_round_trips(tmp_path: Path) -> None:
    cfg = build_config(Job, {"name": "r", "size": [8, 4], "optim": {"lr": 0.25}})
    out = save_config(cfg, tmp_path / "run")
    assert out == tmp_path / "run" / "config.yaml"
    text = out.read_text()
    assert text.startswith("# resolved Job, medcl")
    assert load_config(Job, out) == cfg
    assert yaml.safe_load(text)["size"] == [8, 4]


def test_every_shipped_config_is_valid_yaml_mapping() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert files, "configs/ holds no YAML"
    for f in files:
        assert isinstance(yaml.safe_load(f.read_text()), dict), f
