"""What cover models are measured against: the training-free 2DFTM baseline, and scoring a run
on every file of another dataset (`train eval RUN --on PYJAMA`)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from train.baselines import embed, twodftm
from train.cli import main
from train.data import StoreDataset
from train.metrics import retrieval_metrics

from .test_trainer import ddp_experiment


def test_the_2dftm_is_the_same_in_every_key_and_at_every_shift_in_time():
    rng = np.random.default_rng(0)
    c = rng.random((12, 80))
    v = twodftm(c)
    np.testing.assert_allclose(twodftm(np.roll(c, 3, axis=0)), v, atol=1e-12)
    np.testing.assert_allclose(twodftm(np.roll(c, -5, axis=0)), v, atol=1e-12)
    # a window's magnitude is blind to where its pattern starts: the same median over windows
    # of a periodic chroma, wherever it is cut
    period = rng.random((12, 8))
    np.testing.assert_allclose(twodftm(np.tile(period, 10)[:, 3:75]),
                               twodftm(np.tile(period, 10)[:, :72]), atol=1e-12)  # fmt: skip
    assert np.linalg.norm(v) == pytest.approx(1.0)
    assert not np.allclose(twodftm(rng.random((12, 80))), v)


@pytest.mark.slow
def test_baseline_and_eval_on_another_dataset_score_every_file(tmp_path, demo_small, tiny_stores):
    cfg, path = ddp_experiment(tmp_path, demo_small, tiny_stores, "work")
    runner = CliRunner()
    # the baseline on every file of a dataset: the retrieval metrics of its embeddings
    r = runner.invoke(main, ["baseline", "--config", str(path), "--on", str(demo_small),
                             "--out", str(tmp_path / "b")])  # fmt: skip
    assert r.exit_code == 0, r.output
    (summary,) = (tmp_path / "b").glob("baseline-*.json")
    got = json.loads(summary.read_text())
    ds = StoreDataset.from_experiment(cfg, split=None)
    want = retrieval_metrics(embed(ds), ds.file_targets["work-id"][ds.files])
    assert got["metrics"]["MAP"]["mean"] == pytest.approx(want["MAP"])
    # on the folds `train run --folds 3` tests: every file once
    r = runner.invoke(main, ["baseline", "--config", str(path), "--folds", "3",
                             "--out", str(tmp_path / "b")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "fold-2" in r.output and "24 files in all" in r.output, r.output

    # a run scored on every file of a dataset: one row per file, the files and patches counted
    r = runner.invoke(main, ["run", "--config", str(path), "--set", "train.epochs=1",
                             "--out", str(tmp_path / "runs"), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "runs").iterdir()
    r = runner.invoke(main, ["eval", str(run), "--on", str(demo_small)])
    assert r.exit_code == 0, r.output
    name = demo_small.stem
    m = json.loads((run / f"metrics_on-{name}.json").read_text())
    assert m["files"] == 24 and m["patches"] == len(ds) and m["queries"] == 24
    assert 0 < m["MAP"] <= 1
    with open(run / f"predictions_on-{name}.csv") as f:
        assert len(list(csv.DictReader(f))) == 24
    assert f"on-{name}: 24 files, {len(ds)} patches" in r.output
