"""Repeats of an experiment: K folds by work or file, seeds, and their summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from train.checkpoints import load_checkpoint
from train.cli import main as train_cli
from train.data import DatasetError, StoreDataModule, assign_folds
from train.experiment import load_experiment
from train.repeats import RepeatError, parse_seeds, plan, summarize

from .test_trainer import experiment


def test_folds_deal_every_key_into_one_test_fold_and_validation_from_the_others():
    keys = [f"work:{w}" for w in range(52) for _ in range(3)]  # 52 works x 3 versions
    splits = np.stack([assign_folds(keys, 5, k, (0.6, 0.2, 0.2), 0) for k in range(5)])
    tested = splits == 2
    assert (tested.sum(0) == 1).all()  # each file tested in exactly one fold
    per_work = tested.reshape(5, 52, 3)
    assert (per_work.all(2) | ~per_work.any(2)).all()  # a work's versions stay together
    assert sorted(per_work.any(2).sum(1)) == [10, 10, 10, 11, 11]  # sizes differ by one at most
    for k in range(5):
        valid_works = (splits[k].reshape(52, 3) == 1).all(1)
        assert valid_works.sum() == round(0.25 * (52 - per_work[k].any(1).sum()))
        assert not (valid_works & per_work[k].any(1)).any()


def test_folds_refuse_impossible_requests():
    with pytest.raises(DatasetError, match="at least 5"):
        assign_folds(["a", "b", "c"], 5, 0, (0.6, 0.2, 0.2), 0)
    with pytest.raises(DatasetError, match="fold must be"):
        assign_folds(["a", "b", "c"], 3, 3, (0.6, 0.2, 0.2), 0)


def test_folds_of_a_store_never_train_on_a_tested_work(demo_small, tiny_stores):
    def split_of(fold: int):
        dm = StoreDataModule(
            dataset=demo_small,
            feature="configs/features/lms.yaml",
            stores=tiny_stores,
            target="genre",
            folds=4,
            fold=fold,
            split_fractions=(0.5, 0.25, 0.25),
        )
        dm.setup()
        return dm.train_ds, dm.valid_ds, dm.test_ds

    seen_test = []
    for k in range(4):
        tr, va, te = split_of(k)
        works = [set(ds.file_work[ds.files].tolist()) for ds in (tr, va, te)]
        assert works[2] and works[1]
        assert not (works[0] & works[2]) and not (works[1] & works[2])
        assert not (works[0] & works[1])
        seen_test += te.files.tolist()
    assert sorted(seen_test) == list(range(len(tr.tables.names)))  # every file tested once


def test_fold_settings_are_checked(tmp_path, demo_small, tiny_stores):
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="dataset.fold"):
        experiment(tmp_path, demo_small, tiny_stores, dataset={"folds": 5, "fold": 5})
    with pytest.raises(ConfigError, match="dataset.folds"):
        experiment(tmp_path, demo_small, tiny_stores, dataset={"folds": 1, "fold": 0})


def test_seeds_parse_and_plan():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(RepeatError, match="--seeds"):
        parse_seeds("a,b")
    runs = plan(2, [0, 1])
    assert [r.label for r in runs] == [
        "fold-0-seed-0",
        "fold-0-seed-1",
        "fold-1-seed-0",
        "fold-1-seed-1",
    ]
    assert runs[3].overrides == ("dataset.folds=2", "dataset.fold=1", "train.seed=1")


def test_summary_mean_and_std_are_those_of_the_runs():
    runs = [
        {
            "label": f"seed-{i}",
            "folder": f"r{i}",
            "metrics": {"MAP": m, "files": 10, "split": "test"},
        }
        for i, m in enumerate([0.5, 0.7, 0.9])
    ]
    s = summarize(runs, "train run ...")
    assert s["metrics"]["MAP"]["values"] == [0.5, 0.7, 0.9]
    assert s["metrics"]["MAP"]["mean"] == pytest.approx(np.mean([0.5, 0.7, 0.9]))
    assert s["metrics"]["MAP"]["std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert "files" not in s["metrics"] and s["files"] == 30


def _exp_file(tmp_path, demo_small, tiny_stores):
    cfg = experiment(
        tmp_path, demo_small, tiny_stores, train={"epochs": 2, "samples_per_epoch": 64}
    )
    keep = {
        k: v for k, v in cfg.to_dict().items() if k not in ("source", "feature_file", "model_file")
    }
    path = tmp_path / "rep.yaml"
    path.write_text(yaml.safe_dump(keep))
    return path


def test_seeds_in_one_command_are_the_runs_one_by_one(tmp_path, demo_small, tiny_stores):
    path = _exp_file(tmp_path, demo_small, tiny_stores)
    r = CliRunner().invoke(
        train_cli,
        ["run", "--config", str(path), "--seeds", "0,1", "--out", str(tmp_path / "rep"), "-q"],
    )
    assert r.exit_code == 0, r.output
    (top,) = (tmp_path / "rep").iterdir()
    summary = json.loads((top / "summary.json").read_text())
    assert [x["label"] for x in summary["runs"]] == ["seed-0", "seed-1"]
    assert "mean ± std" in r.output and "--seeds 0,1" in summary["command"]
    for seed in (0, 1):  # the same run alone, with its seed set
        alone = CliRunner().invoke(
            train_cli,
            [
                "run",
                "--config",
                str(path),
                "--set",
                f"train.seed={seed}",
                "--out",
                str(tmp_path / f"one{seed}"),
                "-q",
            ],
        )
        assert alone.exit_code == 0, alone.output
        (one,) = (tmp_path / f"one{seed}").iterdir()
        a, b = load_checkpoint(one / "last.pt"), load_checkpoint(top / f"seed-{seed}" / "last.pt")
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), k
        solo = json.loads((one / "metrics_test.json").read_text())
        acc = summary["metrics"]["accuracy"]["values"][seed]
        assert solo["accuracy"] == acc
    values = summary["metrics"]["accuracy"]["values"]
    assert summary["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean(values))
    # train eval takes the summary folder: every run scored again, the same numbers
    ev = CliRunner().invoke(train_cli, ["eval", str(top)])
    assert ev.exit_code == 0, ev.output
    again = json.loads((top / "summary_test.json").read_text())
    assert again["metrics"]["accuracy"]["values"] == values


@pytest.mark.slow
def test_folds_in_one_command_test_every_file_once(tmp_path, demo_small, tiny_stores):
    path = _exp_file(tmp_path, demo_small, tiny_stores)
    r = CliRunner().invoke(
        train_cli,
        [
            "run",
            "--config",
            str(path),
            "--folds",
            "3",
            "--jobs",
            "2",
            "--out",
            str(tmp_path / "f"),
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    (top,) = (tmp_path / "f").iterdir()
    summary = json.loads((top / "summary.json").read_text())
    assert [x["label"] for x in summary["runs"]] == ["fold-0", "fold-1", "fold-2"]
    assert summary["files"] == 24  # all of demo_small, each once
    for k in range(3):
        cfg = yaml.safe_load((top / f"fold-{k}" / "config.yaml").read_text())
        assert cfg["dataset"]["folds"] == 3 and cfg["dataset"]["fold"] == k
        assert (top / f"fold-{k}" / "log.txt").read_text().count("epoch") >= 2
    loaded = load_experiment(path, ["dataset.folds=3", "dataset.fold=0"])
    assert loaded.dataset.fold == 0


@pytest.mark.slow
def test_the_default_experiment_learns_visibly(tmp_path, demo_medium, medium_stores):
    """`make train`'s experiment (on the smaller test demo, 4 epochs of 480 patches) on tunes
    it never trained on: the validation loss ends well below where it starts, and the test
    accuracy is far above chance (0.2: 5 instruments)."""
    import csv
    import re
    from pathlib import Path

    from train.loop import fit

    root = Path(__file__).parent.parent
    default = re.search(r"^EXP\s*\?=\s*(\S+)", (root / "Makefile").read_text(), re.M).group(1)
    cfg = load_experiment(
        root / default,
        [f"dataset.pyjama={demo_medium}", f"dataset.stores={medium_stores}", "train.epochs=4",
         "train.patience=4", "train.device=cpu", "train.samples_per_epoch=480"],
    )  # fmt: skip
    run = fit(cfg, tmp_path, progress=False, log=lambda m: None)
    rows = list(csv.DictReader((run.folder / "metrics.csv").read_text().splitlines()))
    valid = [float(r["valid_loss"]) for r in rows]
    assert valid[-1] < 0.8 * valid[0], valid
    assert run.metrics["file_accuracy"] >= 0.5, run.metrics["file_accuracy"]
    assert (run.folder / "curves.png").is_file()
