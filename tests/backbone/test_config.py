from dataclasses import dataclass, field

import pytest

from backbone.config import load_config, save_config, parse_overrides
from backbone.errors import InputError


@dataclass
class Inner:
    lr: float = 0.01  # learning rate
    steps: list[int] = field(default_factory=lambda: [1, 2])  # milestones


@dataclass
class Outer:
    name: str = "x"  # a name
    width: float = 1.0  # width multiplier
    epochs: int = 3  # epochs
    amp: bool = False  # mixed precision
    inner: Inner = field(default_factory=Inner)  # a section


def test_defaults_yaml_and_overrides_merge(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 5\ninner:\n  lr: 0.1\n")
    cfg = load_config(Outer, p, ["inner.steps=[3, 4]", "width=2"])
    assert cfg.epochs == 5 and cfg.inner.lr == 0.1 and cfg.inner.steps == [3, 4]
    assert cfg.width == 2.0 and isinstance(cfg.width, float)  # int accepted for float
    assert cfg.name == "x"


def test_unknown_key_names_the_key_and_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  lrr: 0.1\n")
    with pytest.raises(InputError, match=r"c\.yaml.*inner\.lrr"):
        load_config(Outer, p)


def test_wrong_type_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: three\n")
    with pytest.raises(InputError, match="epochs"):
        load_config(Outer, p)
    with pytest.raises(InputError, match="amp"):
        load_config(Outer, None, ["amp=3"])


def test_save_then_load_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["inner.lr=0.5", "name=abc"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Outer, tmp_path / "saved.yaml") == cfg


def test_override_syntax_error():
    with pytest.raises(InputError, match="key=value"):
        parse_overrides(["novalue"])
