"""A run killed in mid-epoch (``kill -9``, once a mid-epoch checkpoint is written) and resumed
ends on the weights of a run never interrupted: with 0 and 2 DataLoader workers, and under
Lightning. Every kill lands on an event (the run waits at a pause point), never on a timer."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from common.pause import pause_env
from train.checkpoints import load_checkpoint
from train.data import EpochSampler, StoreDataModule, WorkBatchSampler

from .conftest import wait_for
from .test_trainer import experiment

ROOT = Path(__file__).parent.parent


def _config(tmp_path: Path, demo_small, tiny_stores, **train) -> Path:
    """6 steps an epoch, a checkpoint every 2 of them, dropout in the model."""
    tmp_path.mkdir(exist_ok=True)
    cfg = experiment(tmp_path, demo_small, tiny_stores, train={
        "epochs": 2, "samples_per_epoch": 96, "batch_size": 16, "checkpoint_every": 2, **train})  # fmt: skip
    path = tmp_path / "exp.yaml"
    keep = {
        k: v for k, v in cfg.to_dict().items() if k not in ("source", "feature_file", "model_file")
    }
    path.write_text(yaml.safe_dump(keep))
    return path


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _paused_at(n: int, folder: Path) -> dict[str, str]:
    """The environment of a run that waits after its ``n``-th pause at a step."""
    return _env(MIRPATCH_PAUSE=pause_env("step", n, folder)["MIRPATCH_PAUSE"])


def _train(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train", "run", *args, "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _finished(p: subprocess.Popen) -> None:
    out, err = p.communicate()
    assert p.returncode == 0, err[-3000:]


def _kill_at(p: subprocess.Popen, folder: Path) -> None:
    """Wait until the run pauses after its checkpoint, then kill it and its workers."""
    wait_for(lambda: (folder / "step.paused").exists(), p, "the mid-epoch checkpoint")
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _losses(run: Path) -> list[str]:
    with open(run / "metrics.csv") as f:
        return [r["train_loss"] for r in csv.DictReader(f)]


@pytest.mark.slow
def test_kill_9_in_mid_epoch_then_resume_gives_the_uninterrupted_weights(
    tmp_path, demo_small, tiny_stores
):
    """With 0 and with 2 DataLoader workers, against one run never interrupted (workers give
    the batches no workers give)."""
    cfg = {w: _config(tmp_path / f"w{w}", demo_small, tiny_stores, num_workers=w) for w in (0, 2)}
    _finished(_train(["--config", str(cfg[0]), "--out", str(tmp_path / "a")], _env()))
    (straight,) = (tmp_path / "a").iterdir()
    a = load_checkpoint(straight / "last.pt")
    for workers in (0, 2):
        pause, out = tmp_path / f"pause{workers}", tmp_path / f"b{workers}"
        pause.mkdir()
        # the 2nd checkpoint is after step 4 of the 6 of epoch 0
        p = _train(["--config", str(cfg[workers]), "--out", str(out)], _paused_at(2, pause))
        _kill_at(p, pause)
        (killed,) = out.iterdir()
        ck = load_checkpoint(killed / "last.pt")
        assert ck["position"]["epoch"] == 0 and ck["position"]["batch"] == 4 and ck["step"] == 4
        assert not (killed / "metrics_test.json").exists() and _losses(killed) == []
        r = subprocess.run([sys.executable, "-m", "train", "run", "--resume", str(killed), "-q"],
                           env=_env(), capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        assert "at epoch 0, batch 4 (step 4)" in r.stdout
        b = load_checkpoint(killed / "last.pt")
        assert a["step"] == b["step"] == 12
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (workers, k)
        assert _losses(straight) == _losses(killed)  # the resumed epoch's loss counts all 6 steps


def test_a_data_module_resumes_an_epoch_after_the_batches_done(demo_small, tiny_stores):
    def batches(dm: StoreDataModule, epoch: int) -> list[list[int]]:
        dm.set_epoch(epoch)
        return [b["X"].flatten(1)[:, :4].sum(1).tolist() for b in loader]

    for works in (False, True):
        kw = {"target": "work-id", "works_per_batch": 2} if works else {"target": "genre"}
        dm = StoreDataModule(dataset=demo_small, feature="configs/features/lms.yaml",
                             stores=tiny_stores, batch_size=8, **kw)  # fmt: skip
        dm.setup()
        loader = dm.train_dataloader()
        sampler = dm._samplers[0]
        assert isinstance(sampler, WorkBatchSampler if works else EpochSampler)
        whole = batches(dm, 3)
        state = {"epoch": 3, "batch": 2}
        loader.load_state_dict(state)
        assert batches(dm, 3) == whole[2:]  # the rest of epoch 3, in its order
        assert batches(dm, 4) != whole and len(batches(dm, 3)) == len(whole)  # then as usual
        dm.set_epoch(3)
        for _ in range(2):
            dm.batch_done()
        assert loader.state_dict() == state


@pytest.mark.slow
def test_a_lightning_fit_killed_in_mid_epoch_resumes_from_its_checkpoint(
    tmp_path, demo_small, tiny_stores
):
    pytest.importorskip("lightning")
    cfg = _config(tmp_path, demo_small, tiny_stores)
    script = str(Path(__file__).parent / "lightning_resume.py")

    def fit(out: str, env: dict, *ckpt: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, script, str(cfg), str(tmp_path / out), *ckpt],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip

    _finished(fit("a", _env()))
    pause = tmp_path / "pause"
    pause.mkdir()
    p = fit("b", _paused_at(4, pause))
    _kill_at(p, pause)
    (mid,) = (tmp_path / "b").glob("*step=4.ckpt")  # mid-epoch: epoch 0 has 6 steps
    _finished(fit("b", _env(), str(mid)))
    a, b = (torch.load(tmp_path / x / "weights.pt", weights_only=True) for x in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k
