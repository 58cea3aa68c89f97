"""Beyond one machine, on loopback: precompute on a dask cluster gives the same store as loky,
also when a worker dies mid-run."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from common.pause import pause_env
from precompute.pipeline import execute, make_plan, run

from .conftest import done_markers, kill_tree, wait_for
from .test_precompute import _assert_same_store, _many

distributed = pytest.importorskip("distributed")


@pytest.mark.slow
def test_dask_local_cluster_gives_the_loky_store(tmp_path):
    ds = _many(tmp_path, n=8, seconds=1.5)
    ref = run(ds, "cqt", tmp_path / "loky", jobs=2)
    got = run(ds, "cqt", tmp_path / "dask", jobs=2, backend="dask")
    assert got.ok and got.files == 8
    _assert_same_store(got.store_path, ref.store_path)


@pytest.mark.slow
def test_a_killed_dask_worker_still_yields_the_complete_identical_store(tmp_path, monkeypatch):
    ds = _many(tmp_path, n=16, seconds=2.0)
    ref = run(ds, "hcqt", tmp_path / "loky", jobs=2)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    client = distributed.Client(cluster)
    try:
        plan = make_plan(ds, "hcqt", tmp_path / "dask")
        box = {}
        # the build waits after its first task's files: a worker dies while the build is on
        pause = tmp_path / "pause"
        pause.mkdir()
        monkeypatch.setenv("MIRPATCH_PAUSE", f"file_done:1:{pause}")
        worker = threading.Thread(
            target=lambda: box.update(
                s=execute(plan, backend="dask", scheduler=cluster.scheduler_address, progress=False)
            ),
        )
        worker.start()
        wait_for(lambda: (pause / "file_done.paused").exists() or not worker.is_alive())
        assert worker.is_alive() and done_markers(plan.stores)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        assert not plan.store_path.exists()
        (pause / "file_done.go").touch()
        worker.join()
        s = box["s"]
        assert s.ok and s.files == 16
        _assert_same_store(s.store_path, ref.store_path)
        assert victim not in client.run(os.getpid).values()  # that worker really died
    finally:
        client.close()
        cluster.close()


# -- distributed training: torchrun, 2 ranks on CPU (gloo) -----------------------------------------


def test_sharded_sampler_covers_every_index_once_and_matches_global_batches():
    import numpy as np

    from train.data import EpochSampler

    for n, G in ((50, 8), (64, 8), (7, 4)):
        full = EpochSampler(n, seed=3).indices()
        shards = [EpochSampler(n, seed=3, rank=r, world=2, global_batch=G) for r in (0, 1)]
        got = [s.indices() for s in shards]
        assert sorted(np.concatenate(got).tolist()) == list(range(n))  # every index once
        # batch k of rank r is the r-th half of global batch k
        for k in range(n // G):
            batch = full[k * G : (k + 1) * G]
            assert got[0][k * G // 2 : (k + 1) * G // 2].tolist() == batch[: G // 2].tolist()
            assert got[1][k * G // 2 : (k + 1) * G // 2].tolist() == batch[G // 2 :].tolist()


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process_with_the_same_global_batch(
    tmp_path, demo_small, tiny_stores
):
    import csv
    import subprocess
    import sys

    import torch
    import yaml

    from train.checkpoints import load_checkpoint

    from .test_trainer import experiment

    plain = {
        "name": "Plain",
        "block_l": [
            {
                "sequential_l": [
                    {
                        "layer_l": [
                            [
                                "Conv2d",
                                {"in_channels": -1, "out_channels": 4, "kernel_size": [128, 3]},
                            ],
                            ["Squeeze", {"dim": 2}],
                            ["Activation", "ReLU"],
                            ["Mean", {"dim": 2}],
                            ["Linear", {"in_features": -1, "out_features": "n_out"}],
                        ]
                    }
                ]
            }
        ],
    }
    cfg = experiment(
        tmp_path,
        demo_small,
        tiny_stores,
        model=plain,
        train={
            "epochs": 2,
            "batch_size": 8,
            "samples_per_epoch": 48,
            "optimizer": "sgd",
            "lr": 0.05,
            "checkpoint_every": 2,
        },
    )
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                k: v
                for k, v in cfg.to_dict().items()
                if k not in ("source", "feature_file", "model_file")
            }
        )
    )
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}

    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]

    def train_run(launcher: list[str], out: str, *extra: str) -> subprocess.CompletedProcess:
        args = (
            extra
            if "--resume" in extra
            else ("--config", str(cfg_path), "--out", str(tmp_path / out), *extra)
        )
        cmd = [*launcher, "-m", "train", "run", *args, "-q"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    one = train_run([sys.executable], "one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = train_run(torchrun, "two")
    assert two.returncode == 0, (two.stdout[-2000:], two.stderr[-3000:])
    (run_one,), (run_two,) = list((tmp_path / "one").iterdir()), list((tmp_path / "two").iterdir())
    assert json.loads((run_two / "ranks.json").read_text()) == {
        "world": 2,
        "identical_weights": True,
    }
    with open(run_two / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["samples"]) for r in rows] == [
        48,
        48,
    ]  # every sample of the epoch once, across ranks
    a, b = (
        load_checkpoint(run_one / "last.pt")["model"],
        load_checkpoint(run_two / "last.pt")["model"],
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert len(list(run_two.glob("*.pt"))) == 2  # only rank 0 wrote checkpoints

    # killed (kill -9, both ranks) in mid-epoch, once both wait after the checkpoint of step 4,
    # and resumed on 2 ranks: every rank goes on at step 5, to the same weights exactly
    pause = tmp_path / "pause"
    pause.mkdir()
    cmd = [*torchrun, "-m", "train", "run", "--config", str(cfg_path), "--out",
           str(tmp_path / "mid"), "-q"]  # fmt: skip
    killed = subprocess.Popen(cmd, env={**env, **pause_env("step", 2, pause)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)  # fmt: skip
    wait_for(lambda: (pause / "step.paused").exists(), killed, "the checkpoint of step 4")
    kill_tree(killed)  # the launcher and both ranks
    (run_mid,) = list((tmp_path / "mid").iterdir())
    pos = load_checkpoint(run_mid / "last.pt")["position"]
    assert (pos["epoch"], pos["batch"], pos["seen"]) == (0, 4, 32)  # both ranks' 4 x 4 patches
    resumed = train_run(torchrun, "mid", "--resume", str(run_mid))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    d = load_checkpoint(run_mid / "last.pt")["model"]
    for k in b:
        assert torch.equal(b[k], d[k]), k
    assert json.loads((run_mid / "ranks.json").read_text())["identical_weights"]
    with open(run_mid / "metrics.csv") as f:
        assert [int(r["samples"]) for r in csv.DictReader(f)] == [48, 48]


@pytest.mark.slow
def test_two_gloo_ranks_see_disjoint_batches(tmp_path, demo_small, tiny_stores):
    """Each rank's batches, as ``train run`` sets them up under torchrun: no patch twice in a
    step, the same number of steps, and (work batches) no work split across ranks. Patch and
    work batches in one launch."""
    import os
    import subprocess
    import sys

    from .test_trainer import ddp_experiment

    units, made = ("patch", "work"), []
    for u in units:
        (tmp_path / u).mkdir()
        made.append(ddp_experiment(tmp_path / u, demo_small, tiny_stores, u))
    out = tmp_path / "batches"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(Path(__file__).parent / "ddp_batches.py"), str(out), *(str(p) for _, p in made)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for k, (unit, (cfg, _)) in enumerate(zip(units, made)):
        got = [json.loads(Path(f"{out}.{k}.rank{r}.json").read_text()) for r in (0, 1)]
        assert got[0]["world"] == 2 and got[0]["backend"] == "gloo"
        if unit == "work":
            from train.data import StoreDataModule

            dm = StoreDataModule.from_experiment(cfg)
            dm.setup()
            works = dm.train_ds.file_work[dm.train_ds.patch_file]
        for e0, e1 in zip(got[0]["epochs"], got[1]["epochs"]):
            assert len(e0) == len(e1) > 0  # the same number of steps: no rank waits on the other
            for b0, b1 in zip(e0, e1):
                assert b0 and b1 and not set(b0) & set(b1)
                if unit == "work":  # whole works on each rank: every anchor's positive is at hand
                    assert not set(works[b0].tolist()) & set(works[b1].tolist())
        assert got[0]["epochs"][0] != got[0]["epochs"][1], unit  # reshuffled per epoch


def test_the_process_group_has_a_cpu_backend_on_gpus():
    import torch

    from train.distributed import backend_for

    # losses, counts and the weight check are reduced as CPU tensors: nccl alone rejects them
    assert "cpu:gloo" in backend_for(torch.device("cuda")).split(",")
    assert "cuda:nccl" in backend_for(torch.device("cuda")).split(",")
    assert backend_for(torch.device("cpu")) == "gloo"
