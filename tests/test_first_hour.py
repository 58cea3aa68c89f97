"""A researcher's first hour with their own data: commands mirpatch suggests work when pasted,
nothing is dropped without a word, a store is easy to use from a notebook, results are
readable, and splits keep groups together."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from precompute.cli import main as precompute
from precompute.pipeline import run
from train.cli import main as train
from train.data import StoreDataModule, StoreDataset
from train.errors import DatasetError
from train.experiment import load_experiment

from .conftest import tone, write_wav
from .test_trainer import experiment

LANGS = ("de", "en", "fr", "it")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """Voice prompts as the user had them: one folder per language, the same 6 prompt names
    in each, 8 kHz, some shorter than one patch; imported with a group per prompt."""
    root = tmp_path_factory.mktemp("prompts")
    for k, lang in enumerate(LANGS):
        for i in range(6):
            seconds = 0.9 if (i == 5 and lang == "it") else 2.0 + 0.3 * i
            write_wav(root / "speech" / lang / f"p{i:02d}.wav", tone(55 + 3 * k + i, seconds, 8000),
                      sr=8000)  # fmt: skip
    out = root / "speech.pyjama"
    res = CliRunner().invoke(precompute, ["import", "folder", str(root / "speech"), "--key",
                                          "lang", "-o", str(out), "--group-by", "stem"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


def _experiment(tmp_path, pyjama, stores, **train) -> str:
    cfg = {
        "name": "speech",
        "dataset": {"pyjama": str(pyjama), "stores": str(stores), "split_fractions": [0.5, 0.25, 0.25]},
        "feature": {"kind": "lms", "sr": 22050, "hop_length": 512},
        "target": {"name": "lang"},
        "patch": {"frames": 32, "hop": 16},
        "model": {"name": "M", "block_l": [{"sequential_l": [{"layer_l": [
            ["Mean", {"dim": 3}], ["Flatten", {}], ["Linear", {"in_features": -1, "out_features": "n_out"}]]}]}]},
        "train": {"epochs": 2, "batch_size": 8, "device": "cpu", **train},
    }  # fmt: skip
    path = tmp_path / "speech.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_the_command_a_missing_store_suggests_makes_the_store_train_then_uses(tmp_path, prompts):
    stores = tmp_path / "stores"
    exp = _experiment(tmp_path, prompts, stores)
    res = CliRunner().invoke(train, ["run", "--config", exp, "--set", "feature.n_mels=64", "-q"])
    assert res.exit_code == 2 and "make it with:" in res.output, res.output
    line = res.output.split("make it with:")[1].strip().splitlines()[0]
    args = shlex.split(line)
    assert args[:2] == ["precompute", "run"] and "n_mels=64" in args
    made = CliRunner().invoke(precompute, args[1:] + ["-q"])
    assert made.exit_code == 0, made.output
    made_store = Path(made.output.strip().splitlines()[-1]).resolve()
    dm = StoreDataModule.from_experiment(load_experiment(exp, ["feature.n_mels=64"]))
    assert dm.prepare_data().resolve() == made_store  # the store train was asking for


def test_short_files_low_rates_and_groups_are_said_and_kept(tmp_path, prompts):
    stores = tmp_path / "stores"
    res = CliRunner().invoke(precompute, ["run", "--dataset", str(prompts), "--feature", "lms",
                                          "--set", "hop_length=512", "--stores", str(stores),
                                          "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    # 8 kHz audio under a feature that reaches 11025 Hz: said once, with the choice
    assert re.search(r"24 of 24 file\(s\) recorded at 8000 Hz: this lms reaches 11025 Hz.*"
                     r"--set fmax=4000", res.output), res.output  # fmt: skip
    store = res.output.strip().splitlines()[-1]
    info = CliRunner().invoke(precompute, ["info", store])
    assert '"shorter_than_a_patch"' in info.output and '"it": 1' in info.output, info.output
    ds = StoreDataset(store, target="lang", patch_frames=64, split=None)
    from train.loop import data_notes

    notes = "\n".join(data_notes(ds))
    assert "1 of the 24 files are shorter than one patch (64 frames)" in notes
    assert "(1 it)" in notes
    # the same prompt in every language is in one split, and in one fold
    for folds in (None, 3):
        kw = {"folds": folds, "fold": 0} if folds else {}
        parts = [
            StoreDataset(store, target="lang", split=s, **kw) for s in ("train", "valid", "test")
        ]
        groups = [{str(p.tables.names[f]).rsplit("/", 1)[1] for f in p.files} for p in parts]
        assert (
            not (groups[0] & groups[1])
            and not (groups[0] & groups[2])
            and not (groups[1] & groups[2])
        )
        assert sum(len(p.files) for p in parts) == 24


def test_a_notebook_batch_trains_with_cross_entropy_and_from_experiment_is_the_runs_split(
    tmp_path, demo_small, tiny_stores
):
    cfg = experiment(tmp_path, demo_small, tiny_stores)
    ds = StoreDataset.from_experiment(cfg.source, split="test")
    dm = StoreDataModule.from_experiment(cfg)
    dm.setup()
    assert ds.files.tolist() == dm.test_ds.files.tolist() and len(ds) == len(dm.test_ds)
    assert ds.classes == ds.spec.vocabulary == ds.vocabulary and len(ds.classes) == 4
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch["y"].dtype == torch.int64
    logits = torch.zeros(len(batch["y"]), len(ds.classes), requires_grad=True)
    F.cross_entropy(logits, batch["y"]).backward()  # as a notebook would, no conversion


def test_a_run_writes_a_row_per_test_file_and_eval_prints_a_table(
    tmp_path, demo_small, tiny_stores
):
    from train.loop import fit

    cfg = experiment(tmp_path, demo_small, tiny_stores, train={"epochs": 2})
    run_ = fit(cfg, tmp_path / "runs", progress=False, log=lambda m: None)
    with open(run_.folder / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == run_.metrics["files"] and {"file", "truth", "prediction", "score"} <= set(
        rows[0]
    )
    assert (run_.folder / "confusion_files.png").is_file()
    res = CliRunner().invoke(train, ["eval", str(run_.folder)])
    assert res.exit_code == 0 and res.output.count("\n") < 20, res.output
    assert "file_accuracy" in res.output and "recall per class" in res.output
    out = tmp_path / "pred"
    audio = [demo_small.parent / str(rows[0]["file"]), tmp_path / "missing.wav"]
    CliRunner().invoke(train, ["predict", str(run_.folder), *map(str, audio), "--out", str(out)])
    with open(out / "predictions.csv") as f:
        pred = list(csv.DictReader(f))
    assert pred[0]["labels"] and pred[0]["top"] and "not found" in pred[1]["error"]


def test_small_defects_of_the_first_hour(tmp_path, prompts, demo_small, tiny_stores):
    stores = tmp_path / "stores"
    store = run(prompts, "lms", stores).store_path
    # a stem shared by 4 files is refused naming them; a path under the dataset's root works
    res = CliRunner().invoke(
        precompute, ["show", str(store), "--file", "p01", "-o", str(tmp_path / "a.png")]
    )
    assert res.exit_code == 2 and "names 4 files" in res.output and res.output.startswith("error:")
    res = CliRunner().invoke(
        precompute, ["show", str(store), "--file", "it/p01.wav", "-o", str(tmp_path / "a.png")]
    )
    assert res.exit_code == 0, res.output
    # ls shows the view's size and its features'
    res = CliRunner().invoke(precompute, ["ls", str(stores)])
    assert "view" in res.output.splitlines()[0] and "features" in res.output.splitlines()[0]
    # verify says what it checked
    res = CliRunner().invoke(precompute, ["verify", str(store)])
    assert (
        res.exit_code == 0 and res.output.startswith("ok: 24 files") and "checksums" in res.output
    )
    # one style of error: "error:" and exit 2, in validate too
    res = CliRunner().invoke(precompute, ["validate", str(tmp_path / "none.pyjama")])
    assert res.exit_code == 2 and res.output.startswith("error:"), res.output
    # train summary says what is missing
    res = CliRunner().invoke(
        train, ["summary", "configs/models/lms_classifier.yaml", "--input-shape", "1,128,64"]
    )
    assert res.exit_code == 2 and "--n-out" in res.output, res.output
    with pytest.raises(DatasetError, match="split group 'nothing'"):
        StoreDataset(store, target="lang", split="test", split_group="nothing")
