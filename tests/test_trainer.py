"""The trainer and tasks: each task learns, resume is exact, eval is reproducible, predict = eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common.store import memmap_dataset
from train import metrics as M
from train.checkpoints import load_checkpoint
from train.devices import TrainingError, pick_device
from train.evaluate import evaluate_patches, evaluate_run, file_outputs
from train.experiment import load_experiment
from train.loop import fit
from train.predict import predict_audio
from train.tasks import task_for
from train.tasks import work as W

RHYTHM = yaml.safe_load(
    (Path(__file__).parent.parent / "configs/models/lms_rhythm.yaml").read_text()
)["model"]
TINY_PITCH = {
    "name": "TinyPitch",
    "block_l": [
        {
            "sequential_l": [
                {
                    "layer_l": [
                        ["BatchNorm2d", {"num_features": -1}],
                        [
                            "Conv2d",
                            {"in_channels": -1, "out_channels": 8, "kernel_size": 3, "padding": 1},
                        ],
                        ["Activation", "ReLU"],
                        [
                            "Conv2d",
                            {
                                "in_channels": -1,
                                "out_channels": 1,
                                "kernel_size": [7, 3],
                                "padding": [3, 1],
                            },
                        ],
                        ["Squeeze", {"dim": 1}],
                    ]
                }
            ]
        }
    ],
}
TINY_EMBED = {
    "name": "TinyEmbed",
    "block_l": [
        {
            "sequential_l": [
                {
                    "layer_l": [
                        ["BatchNorm2d", {"num_features": -1}],
                        [
                            "Conv2d",
                            {
                                "in_channels": -1,
                                "out_channels": 16,
                                "kernel_size": [12, 5],
                                "stride": [4, 1],
                            },
                        ],
                        ["Activation", "ReLU"],
                        ["Max", {"dim": 2}],
                        ["AutoPoolWeight", {"num_features": -1}],
                        ["Linear", {"in_features": -1, "out_features": 16}],
                        ["L2Normalize", {"dim": -1}],
                    ]
                }
            ]
        }
    ],
}


def experiment(tmp_path, demo_small, stores, **over):
    cfg = {
        "name": "t",
        "dataset": {
            "pyjama": str(demo_small),
            "stores": str(stores),
            "split_fractions": [0.5, 0.25, 0.25],
        },
        "feature": str(Path(__file__).parent.parent / "configs/features/lms.yaml"),
        "target": {"name": "genre"},
        "patch": {"frames": 64, "hop": 4},
        "model": RHYTHM,
        "train": {
            "epochs": 6,
            "batch_size": 16,
            "samples_per_epoch": 320,
            "lr": 0.003,
            "patience": 100,
            "seed": 0,
            "device": "cpu",
        },
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return load_experiment(p)


def losses(run_folder):
    import csv

    with open(Path(run_folder) / "metrics.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


CQT = str(Path(__file__).parent.parent / "configs/features/cqt.yaml")


@pytest.mark.parametrize(
    "task,over,metric,chance",
    [
        ("multiclass", {}, "accuracy", 0.25),
        ("multilabel", {"target": {"name": "tag"}, "model": None}, "roc_auc_macro", 0.5),
        (
            "multipitch",
            {
                "target": {"name": "pitchmidi"},
                "feature": CQT,
                "model": TINY_PITCH,
                "train": {"epochs": 3, "lr": 0.01},
            },
            "accuracy",
            0.05,
        ),
        (
            "work",
            {
                "target": {"name": "work-id"},
                "feature": CQT,
                "model": TINY_EMBED,
                "train": {
                    "epochs": 4,
                    "works_per_batch": 4,
                    "versions_per_work": 2,
                    "mining": "hard",
                },
            },
            "MAP",
            None,
        ),
    ],
)
def test_each_task_learns(tmp_path, demo_small, tiny_stores, task, over, metric, chance):
    if over.get("model", 1) is None:
        over["model"] = yaml.safe_load(
            (Path(__file__).parent.parent / "configs/models/lms_classifier.yaml").read_text()
        )["model"]
    cfg = experiment(tmp_path, demo_small, tiny_stores, **over)
    run = fit(cfg, tmp_path / "runs", progress=False, log=lambda m: None)
    ls = losses(run.folder)
    assert ls[-1] < ls[0], ls
    assert load_checkpoint(run.folder / "best.pt")["config"]["target"]["task"] == task
    m = evaluate_run(run.folder, split="train", device=torch.device("cpu"))
    if task == "work":
        works = len(
            set(memmap_dataset(next(tiny_stores.rglob("cqt-*.h5")), "targets/work-id")[:].tolist())
        )
        chance = (
            1 / works
        )  # MAP of a random ranking with one other version among ~works files, roughly
    assert m[metric] > chance + 0.2, m
    for png in ("curves.png",):
        assert (run.folder / png).is_file()
    assert json.loads((run.folder / "metrics_test.json").read_text())["split"] == "test"


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, demo_small, tiny_stores):
    cfg = experiment(tmp_path, demo_small, tiny_stores, train={"epochs": 3})
    straight = fit(cfg, tmp_path / "a", progress=False, log=lambda m: None)
    part = fit(cfg, tmp_path / "b", stop_after_epochs=1, progress=False, log=lambda m: None)
    assert not (part.folder / "metrics_test.json").exists()
    resumed = fit(cfg, tmp_path / "b", resume=part.folder, progress=False, log=lambda m: None)
    a, b = load_checkpoint(straight.folder / "last.pt"), load_checkpoint(resumed.folder / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert losses(straight.folder) == losses(resumed.folder)


def test_eval_is_reproducible_and_predict_gives_what_eval_gives(tmp_path, demo_small, tiny_stores):
    cfg = experiment(tmp_path, demo_small, tiny_stores, train={"epochs": 2})
    run = fit(cfg, tmp_path / "runs", progress=False, log=lambda m: None)
    cpu = torch.device("cpu")
    m1, m2 = evaluate_run(run.folder, device=cpu), evaluate_run(run.folder, device=cpu)
    assert m1 == m2
    from train.checkpoints import load_run
    from train.loop import datamodule

    model, ck = load_run(run.folder)
    dm = datamodule(ck["config"], store=ck["store"])
    dm.setup()
    task = task_for("multiclass", dm.test_ds.spec, ck["config"]["train"])
    outs = file_outputs(model, dm.test_ds, task, cpu)
    name = dm.test_ds.tables.names[dm.test_ds.files[0]]
    pred = predict_audio(run.folder, [demo_small.parent / name], device=cpu)[0]
    np.testing.assert_allclose(pred["output"], outs[0], rtol=1e-6, atol=1e-7)
    assert pred["labels"][0] == dm.test_ds.spec.vocabulary[int(np.argmax(outs[0]))]
    assert abs(sum(pred["scores"].values()) - 1) < 1e-3


def test_evaluation_is_in_eval_mode(tmp_path, demo_small, tiny_stores):
    cfg = experiment(tmp_path, demo_small, tiny_stores, train={"epochs": 1})
    run = fit(cfg, tmp_path / "runs", progress=False, log=lambda m: None)
    from train.checkpoints import load_run
    from train.loop import datamodule

    model, ck = load_run(run.folder)
    model.train()
    dm = datamodule(ck["config"], store=ck["store"])
    dm.setup()
    task = task_for("multiclass", dm.valid_ds.spec, ck["config"]["train"])
    bn = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    before = [m.running_mean.clone() for m in bn]
    r1 = evaluate_patches(model, dm.val_dataloader(), task, torch.device("cpu"))
    r2 = evaluate_patches(model, dm.val_dataloader(), task, torch.device("cpu"))
    assert not model.training
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bn))  # statistics untouched
    assert torch.equal(r1["out"], r2["out"])


def test_nan_loss_stops_with_a_clear_message(tmp_path, demo_small, tiny_stores):
    named = []
    for every in (None, 4):  # every step (CPU's default), and every 4th as on a GPU
        train = {"epochs": 2, "lr": 1e30, "optimizer": "sgd", "momentum": 0.0}
        cfg = experiment(tmp_path, demo_small, tiny_stores, train={**train, "sync_every": every})
        with pytest.raises(
            TrainingError, match=r"loss is (nan|inf) at epoch 0, step \d+: lower train.lr"
        ) as e:
            fit(cfg, tmp_path / f"runs{every}", progress=False, log=lambda m: None)
        named.append(int(str(e.value).split("step ")[1].split(":")[0]))
    # read back late, the first bad loss is still the one named
    assert named[0] == named[1] >= 1


def test_reading_the_loss_back_less_often_changes_no_result(
    tmp_path, demo_small, tiny_stores, monkeypatch
):
    # what a GPU run does by default (sync_every 20), checked on CPU: same weights, same losses
    import train.loop as trainer

    runs, read_at_once = {}, {}
    for every in (1, 3):
        sizes = read_at_once[every] = []

        def counting(pending, *a, _read=trainer.read_losses, _sizes=sizes):
            _sizes.append(len(pending))
            return _read(pending, *a)

        monkeypatch.setattr(trainer, "read_losses", counting)
        cfg = experiment(
            tmp_path, demo_small, tiny_stores, train={"epochs": 2, "sync_every": every}
        )
        runs[every] = fit(cfg, tmp_path / f"runs{every}", progress=False, log=lambda m: None)
        monkeypatch.undo()
    assert set(read_at_once[1]) <= {0, 1} and max(read_at_once[3]) == 3  # read back in threes
    a, b = (load_checkpoint(runs[k].folder / "last.pt") for k in (1, 3))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    np.testing.assert_allclose(losses(runs[1].folder), losses(runs[3].folder), rtol=1e-12)
    cfg = experiment(tmp_path, demo_small, tiny_stores, train={"sync_every": 0})
    with pytest.raises(TrainingError, match=r"train.sync_every must be 1 or more, got 0"):
        fit(cfg, tmp_path / "runs0", progress=False, log=lambda m: None)


def test_devices():
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(
            TrainingError, match=r"train.device is 'cuda' but no CUDA device is available"
        ):
            pick_device("cuda")


def test_experiment_errors_name_file_and_key(tmp_path, demo_small, tiny_stores):
    from common.config import ConfigError

    cfg = experiment(tmp_path, demo_small, tiny_stores)
    p = Path(cfg["source"])
    with pytest.raises(ConfigError, match=r"exp.yaml: train.lr: expected a number, got 'fast'"):
        load_experiment(p, ["train.lr=fast"])
    with pytest.raises(
        ConfigError, match=r"exp.yaml: train.optimiser: unknown key; did you mean 'optimizer'"
    ):
        load_experiment(p, ["train.optimiser=adam"])


# -- triplet mining against brute force ------------------------------------------------------------


@pytest.fixture
def small_batch():
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(12, 5, generator=g), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 5])  # works 4 and 5 have no positive
    return emb, labels, W.pairwise_distances(emb)


def test_hard_mining_matches_brute_force(small_batch):
    emb, labels, d = small_batch
    a, p, n = W.mine_triplets(d, labels, "hard", 0.3)
    expected = []
    for i in range(len(labels)):
        pos = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(len(labels)) if labels[j] != labels[i]]
        if pos:
            expected.append((i, max(pos, key=lambda j: d[i, j]), min(neg, key=lambda j: d[i, j])))
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == expected


def test_semihard_mining_matches_brute_force(small_batch):
    emb, labels, d = small_batch
    a, p, n = W.mine_triplets(
        d, labels, "semihard", 0.3, generator=torch.Generator().manual_seed(1)
    )
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        assert labels[j] == labels[i] and j != i
        neg = [m for m in range(len(labels)) if labels[m] != labels[i]]
        farther = [m for m in neg if d[i, m] > d[i, j]]
        ref = min(farther, key=lambda m: d[i, m]) if farther else max(neg, key=lambda m: d[i, m])
        assert k == ref


def test_random_mining_draws_valid_triplets(small_batch):
    emb, labels, d = small_batch
    seen_neg = set()
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        a, p, n = W.mine_triplets(d, labels, "random", 0.3, generator=g)
        assert a.tolist() == list(range(10))
        assert (labels[p] == labels[a]).all() and (p != a).all() and (labels[n] != labels[a]).all()
        seen_neg.update(n[a == 0].tolist())
    assert len(seen_neg) > 5  # not always the same negative
    loss = W.triplet_loss(emb, labels, margin=0.3, mining="hard")
    ref = torch.stack(
        [
            torch.relu(d[i, j] - d[i, k] + 0.3)
            for i, j, k in zip(*W.mine_triplets(d, labels, "hard", 0.3))
        ]
    ).mean()
    torch.testing.assert_close(loss, ref)


def test_retrieval_metrics_by_hand():
    emb = np.array([[0.0], [0.1], [1.0], [1.1], [5.0]])
    works = np.array([0, 0, 1, 1, 2])
    m = M.retrieval_metrics(emb, works)
    assert (
        m["queries"] == 4
        and m["MAP"] == 1.0
        and m["MRR"] == 1.0
        and m["P@1"] == 1.0
        and m["mean_rank"] == 1.0
    )
    # first relevant at ranks 1, 2, 3, 1 for the four queries
    m = M.retrieval_metrics(np.array([[0.0], [1.0], [1.4], [3.0]]), np.array([0, 0, 1, 1]))
    assert m["P@1"] == 0.5 and m["mean_rank"] == 1.75
    assert abs(m["MRR"] - (1 + 1 / 2 + 1 / 3 + 1) / 4) < 1e-12 and m["MAP"] == m["MRR"]


def test_multipitch_metrics_perfect_and_silent():
    grid = 24 + np.arange(360) / 5
    truth = np.zeros((360, 50), dtype=np.uint8)
    truth[180, 10:40] = 1
    m = M.multipitch_metrics([truth.astype(np.float32)], [truth], grid, 512 / 22050, 0.5)
    assert m["precision"] == m["recall"] == m["accuracy"] == 1.0
    m = M.multipitch_metrics([np.zeros((360, 50), np.float32)], [truth], grid, 512 / 22050, 0.5)
    assert m["recall"] == 0.0
