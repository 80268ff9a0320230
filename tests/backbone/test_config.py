from dataclasses import dataclass, field

import pytest

from backbone.config import deep_merge, load_config, parse_overrides, save_config, set_dotted
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


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    # PyYAML follows YAML 1.1, which reads 1e-4 (no dot) as a string.
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  lr: 1e-4\n")
    assert load_config(Outer, p).inner.lr == 1e-4
    assert load_config(Outer, None, ["inner.lr=1e-9", "width=-2E3"]).width == -2000.0
    with pytest.raises(InputError, match="width"):
        load_config(Outer, None, ["width=1e"])
    assert load_config(Outer, None, ["name=1e-4"]).name == "1e-4"  # a string field stays a string


def test_save_then_load_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["inner.lr=0.5", "name=abc"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Outer, tmp_path / "saved.yaml") == cfg


def test_deep_merge_merges_sections_and_replaces_values():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    merged = deep_merge(base, {"a": {"y": [3]}, "c": {"z": 0}})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": 2, "c": {"z": 0}}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2}  # inputs untouched
    assert deep_merge({"a": {"x": 1}}, {"a": 5}) == {"a": 5}  # a value replaces a section


def test_set_dotted_makes_sections_and_refuses_a_value_as_a_section():
    data = {"a": {"x": 1}}
    set_dotted(data, "a.b.c", 2)
    assert data == {"a": {"x": 1, "b": {"c": 2}}}
    with pytest.raises(InputError, match="'x' is not a section"):
        set_dotted(data, "a.x.y", 3)


def test_override_syntax_error():
    with pytest.raises(InputError, match="key=value"):
        parse_overrides(["novalue"])


def test_every_shipped_config_loads_into_its_dataclass():
    # A renamed or mistyped field in configs/ fails here, not in a user's 12-minute run.
    from pathlib import Path

    from backbone.train import ClassifierConfig
    from detect.config import DetectorConfig
    from proposals import ProposalConfig
    from proposals.multibox_train import MultiBoxConfig

    # A config's name says what it configures: the first of these words in it.
    words = {"detector": DetectorConfig, "multibox": MultiBoxConfig, "proposals": ProposalConfig,
             "classifier": ClassifierConfig, "fashion_mnist": ClassifierConfig, "imagenet": ClassifierConfig}
    files = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert len(files) >= 8
    for f in files:
        kind = next((cls for word, cls in words.items() if word in f.stem), None)
        assert kind is not None, f"{f.name}: a config without a known dataclass"
        assert isinstance(load_config(kind, f, []), kind), f
    assert load_config(ClassifierConfig, files[[f.stem for f in files].index("fashion_mnist_classifier")],
                       []).train.label_smoothing == 0.1
