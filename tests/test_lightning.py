"""Training under Lightning: an experiment learns (scored by the project's own evaluation), and
2 CPU ranks under Lightning's DDP see disjoint patches each step, whole works for the work task.
Runs where Lightning is installed (CI installs it through the Makefile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

L = pytest.importorskip("lightning")

from train.lightning import LightningSetupError, MirpatchDataModule, MirpatchModule  # noqa: E402

from .test_trainer import ddp_experiment, experiment  # noqa: E402


def _trainer(**kw):
    return L.Trainer(max_epochs=2, accelerator="cpu", use_distributed_sampler=False,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False, **kw)  # fmt: skip


@pytest.mark.slow
def test_an_experiment_learns_under_lightning(tmp_path, demo_medium, medium_stores):
    # the demo's lms store; its instrument label is a class that carries over to tunes never
    # heard, which the dance type needs more tunes than a test can afford (as test_trainer's)
    cfg = experiment(tmp_path, demo_medium, medium_stores, target={"name": "instrument"},
                     dataset={"split_fractions": [0.6, 0.2, 0.2]})  # fmt: skip
    data = MirpatchDataModule(cfg)
    model = MirpatchModule(data)
    _trainer().fit(model, datamodule=data)
    metrics = model.evaluate("test")
    test = data.data.test_ds
    labels = test.file_targets["instrument"][test.patch_file]
    majority = np.bincount(labels).max() / len(labels)
    assert metrics["accuracy"] > majority + 0.1, (metrics["accuracy"], majority)
    with pytest.raises(LightningSetupError, match="use_distributed_sampler=False"):
        other = MirpatchDataModule(cfg)
        L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False).fit(MirpatchModule(other), datamodule=other)  # fmt: skip


@pytest.mark.slow
def test_two_ranks_under_lightning_ddp_see_disjoint_batches(tmp_path, demo_small, tiny_stores):
    """Patch batches, and work batches of the cover task, in one launch of 2 ranks."""
    units = ("patch", "work")
    paths = []
    for u in units:
        (tmp_path / u).mkdir()
        paths.append(ddp_experiment(tmp_path / u, demo_small, tiny_stores, u)[1])
    out = tmp_path / "batches"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "lightning_ddp.py"), str(out),
                        *map(str, paths)], capture_output=True, text=True, timeout=600, env=env,
                       cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for k, unit in enumerate(units):
        got = [json.loads(Path(f"{out}.{k}.rank{r}.json").read_text()) for r in (0, 1)]
        assert got[0]["world"] == 2 and len(got[0]["steps"]) == len(got[1]["steps"]) > 0, unit
        epochs = {s["epoch"] for s in got[0]["steps"]}
        assert epochs == {0, 1}
        for s0, s1 in zip(got[0]["steps"], got[1]["steps"]):
            assert s0["patches"] and s1["patches"] and not set(s0["patches"]) & set(s1["patches"])
            if unit == "work":  # whole works on each rank, every one with its positives
                assert not set(s0["y"]) & set(s1["y"])
                for s in (s0, s1):
                    assert all(s["y"].count(w) >= 2 for w in s["y"])
        first = [s["patches"] for s in got[0]["steps"] if s["epoch"] == 0]
        second = [s["patches"] for s in got[0]["steps"] if s["epoch"] == 1]
        assert first != second, unit  # the samplers were told the epoch: batches differ


@pytest.mark.slow
def test_grad_clip_and_amp_of_the_experiment_act_under_lightning(tmp_path, demo_small, tiny_stores):
    """``train.grad_clip`` bounds the gradients the optimiser steps with, and ``train.amp``
    runs the forward in bfloat16 on the CPU, under MirpatchModule as in ``train run``."""
    import torch

    class Seen(L.Callback):
        def __init__(self):
            self.norms, self.dtypes = [], set()

        def on_before_optimizer_step(self, trainer, module, optimizer):
            grads = [p.grad.norm() for p in module.core.parameters() if p.grad is not None]
            self.norms.append(float(torch.stack(grads).norm()))

    def fit(**train) -> Seen:
        cfg = experiment(tmp_path, demo_small, tiny_stores,
                         train={"epochs": 1, "samples_per_epoch": 96, **train})  # fmt: skip
        data = MirpatchDataModule(cfg)
        model, seen = MirpatchModule(data), Seen()
        model.setup()
        conv = next(m for m in model.core.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, i, o: seen.dtypes.add(o.dtype) if m.training else 0)
        L.Trainer(max_epochs=1, accelerator="cpu", use_distributed_sampler=False, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                  callbacks=[seen]).fit(model, datamodule=data)  # fmt: skip
        assert len(seen.norms) == 96 // 16
        return seen

    free = fit()
    clipped = fit(grad_clip=1e-3)
    assert max(free.norms) > 1e-2, free.norms
    assert max(clipped.norms) <= 1e-3 * (1 + 1e-4), clipped.norms
    assert free.dtypes == {torch.float32}
    assert fit(amp=True).dtypes == {torch.bfloat16}
