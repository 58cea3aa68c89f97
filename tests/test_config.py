"""YAML configs: safe loading, references, overrides and errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError, Field, apply_overrides, load_config, load_yaml, validate

SCHEMA = {
    "train": {
        "lr": Field("float", 0.001),
        "epochs": Field("int", 10),
        "optimizer": Field("str", "adam", choices=["adam", "sgd"]),
    },
    "name": Field("str"),
}


def test_validate_fills_defaults_and_checks_types(tmp_path):
    assert validate({"name": "x", "train": {"lr": 1}}, SCHEMA) == {
        "name": "x",
        "train": {"lr": 1.0, "epochs": 10, "optimizer": "adam"},
    }


@pytest.mark.parametrize(
    "data,message",
    [
        (
            {"name": "x", "train": {"lr": "fast"}},
            "configs/experiments/x.yaml: train.lr: expected a number, got 'fast'",
        ),
        (
            {"name": "x", "train": {"lrr": 0.1}},
            "configs/experiments/x.yaml: train.lrr: unknown key; did you mean 'lr'?",
        ),
        (
            {"name": "x", "trian": {}},
            "configs/experiments/x.yaml: trian: unknown key; did you mean 'train'?",
        ),
        ({"train": {}}, "configs/experiments/x.yaml: name: missing (required)"),
        (
            {"name": "x", "train": {"optimizer": "rmsprop"}},
            "configs/experiments/x.yaml: train.optimizer: 'rmsprop' is not one of adam, sgd",
        ),
        (
            {"name": "x", "train": {"epochs": 2.5}},
            "configs/experiments/x.yaml: train.epochs: expected an integer, got 2.5",
        ),
        (
            {"name": "x", "train": 3},
            "configs/experiments/x.yaml: train: expected a mapping, got int",
        ),
    ],
)
def test_errors_name_file_and_key_path(data, message):
    with pytest.raises(ConfigError) as err:
        validate(data, SCHEMA, "configs/experiments/x.yaml")
    assert str(err.value) == message


def test_safe_load_only(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("x: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match=r"evil.yaml: invalid YAML"):
        load_yaml(p)


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML: line 3, column 1"):
        load_yaml(p)


def test_references_are_relative_to_the_file_and_overrides_apply(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "exp").mkdir()
    (tmp_path / "features" / "lms.yaml").write_text("kind: lms\nhop_length: 1024\n")
    (tmp_path / "models" / "m.yaml").write_text("model:\n  name: M\n  block_l: []\n")
    (tmp_path / "exp" / "x.yaml").write_text(
        "feature: ../features/lms.yaml\nmodel: ../models/m.yaml\ntrain: {lr: 0.1}\n"
    )
    cfg = load_config(
        tmp_path / "exp" / "x.yaml",
        ["train.lr=0.001", "feature.hop_length=512", "train.tags=[a, b]"],
        references=("feature", "model"),
    )
    assert cfg["feature"] == {"kind": "lms", "hop_length": 512}
    assert cfg["model"] == {"name": "M", "block_l": []}
    assert cfg["train"] == {"lr": 0.001, "tags": ["a", "b"]}
    assert cfg["feature_file"].endswith("features/lms.yaml")


def test_missing_reference_names_file_and_key(tmp_path):
    (tmp_path / "x.yaml").write_text("feature: nope.yaml\n")
    with pytest.raises(
        ConfigError, match=r"x.yaml: feature: referenced file 'nope.yaml' not found"
    ):
        load_config(tmp_path / "x.yaml", references=("feature",))


def test_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match=r"train: is 3, not a mapping"):
        apply_overrides({"train": 3}, ["train.lr=1"])


def test_every_shipped_experiment_and_template_loads_and_maps_covers_the_piano():
    from train.experiment import load_experiment

    root = Path(__file__).parent.parent / "configs" / "experiments"
    for p in sorted(root.rglob("*.yaml")):
        cfg = load_experiment(p)  # paths to fill in are not opened here; keys and values are
        assert cfg.feature["kind"] and cfg.model["name"], p
    from common.features import make_feature

    maps = load_experiment(root / "templates" / "maps.yaml")
    midi = make_feature(maps.feature).pitch_midi()
    assert midi.min() <= 21 and midi.max() >= 108  # A0 to C8: every piano key has its bins
